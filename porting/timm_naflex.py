"""timm NaFlexVit (SigLIP 2's NaFlex scheme), the torch side: the config reader (a row of porting.sources; the name
table is vitjax/weights/timm_naflex.py)."""
from __future__ import annotations

from typing import Any

from porting.source import Source, load_timm, timm_class
from porting.timm_vit import blocks_config, is_identity, patch_fields, pretrained_cfg, require_map_pool
from vitjax import weights
from vitjax.weights.engine import require


def torch_config(model) -> dict[str, Any]:
    """Read vitjax NaFlexVit kwargs off an instantiated timm NaFlexVit; unsupported options are named."""
    from timm.models.naflexvit import NaFlexVit as TimmNaFlex
    require(isinstance(model, TimmNaFlex), f'architecture {type(model).__name__}')
    e = model.embeds
    require(e.is_linear and e.norm_input is None and e.channels_last, 'a NaFlex embedding other than linear '
            '(ph, pw, C) patches')
    require(e.patch_interpolator is None, 'variable patch sizes (the patch interpolator)')
    require(not e.dynamic_img_pad, 'dynamic_img_pad')
    require(e.pos_embed_type == 'learned', f'{e.pos_embed_type!r} position embeddings')
    require(e.pos_embed_interp_mode in ('bicubic', 'bilinear') and e.pos_embed_antialias
            and not e.pos_embed_align_corners and not e.pos_embed_ar_preserving and not e.pos_embed_use_grid_sample,
            'position-embedding resizing other than antialiased bicubic / bilinear')
    require(model.rope is None, 'RoPE in a NaFlexVit')
    require(model.patch_drop is None, 'patch dropout')
    require(not model.use_key_only_attn_mask, 'key-only attention masks')
    require(e.proj.bias is not None, 'a patch projection without bias')
    require_map_pool(model)
    pool = model.attn_pool
    # no size of its own: the preprocessing's (timm builds its position grid independently of it)
    img = tuple(getattr(e, 'default_img_size', None) or model.pretrained_cfg.get('input_size', (3, 384, 384))[1:])
    return dict(
        **patch_fields(img, e.patch_size, e.in_chans),
        num_classes=model.num_classes,
        global_pool=model.global_pool,
        embed_dim=model.embed_dim,
        **blocks_config(model),
        embed_norm=not is_identity(e.norm),
        class_token=e.cls_token is not None,
        reg_tokens=int(e.reg_token.shape[1]) if e.reg_token is not None else 0,
        no_embed_class=True,
        pos_embed_grid=tuple(int(v) for v in e.pos_embed.shape[1:3]),
        pos_embed_interp=e.pos_embed_interp_mode,
        pre_norm=not is_identity(model.norm_pre),
        final_norm=not (is_identity(model.norm) and is_identity(model.fc_norm)),
        fc_norm=not is_identity(model.fc_norm),
        pool_include_prefix=bool(model.pool_include_prefix),
        attn_pool_num_heads=pool.num_heads if pool is not None else None,
        attn_pool_mlp_ratio=pool.mlp.fc1.out_features / model.embed_dim if pool is not None else None,
        dynamic_img_size=True,
    )


def reference_state(state: dict, src, dst, ref) -> dict:
    """NaFlexViT's position grid does not depend on the input size: timm resizes it in the forward."""
    return dict(state)


# NaFlexViT takes any input size, so the img_size vitjax records is nominal.


SOURCES = (Source(weights.get('timm', 'naflexvit'), timm_class('NaFlexVit'), torch_config, pretrained_cfg, load_timm,
                  lambda path, state: True, resize_state=reference_state),)
