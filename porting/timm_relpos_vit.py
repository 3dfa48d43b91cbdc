"""timm VisionTransformerRelPos (the relative-position ViTs: log-coordinate MLP or table biases, per block or shared
(`srelpos`), class token + average pool (`clsgap`), residual post-norm blocks (`rpn`)), the torch side: the config
reader (a row of porting.sources; the name table is vitjax/weights/timm_relpos_vit.py). The Flax side is vitjax's
VisionTransformer with those options (vitjax.models.relpos_vit.VisionTransformerRelPos)."""
from __future__ import annotations

from typing import Any

from porting.source import Source, load_timm, timm_class
from porting.timm_vit import (_init_values, activation, is_identity, mlp_layer, norm_layer, patch_fields,
                              pretrained_cfg, reference_state)
from vitjax import weights
from vitjax.weights.engine import require


def _bias(mod) -> dict[str, Any]:
    kind = type(mod).__name__
    if kind == 'RelPosBias':
        return dict(rel_pos_type='bias')
    require(kind == 'RelPosMlp', f'relative position module {kind}')
    require(mod.mode == 'cr', f"RelPosMlp mode {mod.mode!r} (rel_pos_type 'mlp_swin')")
    return dict(rel_pos_type='mlp', rel_pos_dim=int(mod.mlp.fc1.out_features))


def torch_config(model) -> dict[str, Any]:
    """Read vitjax kwargs off an instantiated timm VisionTransformerRelPos; what vitjax lacks is named."""
    from timm.models.vision_transformer_relpos import VisionTransformerRelPos as Timm
    require(isinstance(model, Timm), f'architecture {type(model).__name__}')
    blk = model.blocks[0]
    post = type(blk).__name__ == 'ResPostRelPosBlock'
    require(post or type(blk).__name__ == 'RelPosBlock', f'block type {type(blk).__name__}')
    shared = model.shared_rel_pos is not None
    rel = _bias(model.shared_rel_pos if shared else blk.attn.rel_pos)
    require(tuple((model.shared_rel_pos if shared else blk.attn.rel_pos).window_size) ==
            tuple(model.patch_embed.grid_size), 'a relative position window other than the patch grid')
    mlp, mlp_ratio = mlp_layer(blk.mlp, model.embed_dim)
    require(mlp == 'mlp', f'MLP {mlp}')
    norm_kind, eps = norm_layer(model)
    ls = getattr(blk, 'ls1', None)
    pe = model.patch_embed
    return dict(
        **patch_fields(pe.img_size, pe.patch_size, pe.proj.in_channels),
        num_classes=model.num_classes,
        global_pool=model.global_pool,
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=blk.attn.num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=blk.attn.qkv.bias is not None,
        qk_norm=not is_identity(blk.attn.q_norm),
        init_values=_init_values(ls) if ls is not None and not is_identity(ls) else None,
        class_token=model.cls_token is not None,
        pos_embed='none',
        **rel,
        shared_rel_pos=shared,
        res_post_norm=post,
        fc_norm=not is_identity(model.fc_norm),
        norm_layer=norm_kind,
        norm_eps=eps,
        act_layer=activation(blk.mlp.act),
    )


SOURCES = (Source(weights.get('timm', 'relpos_vit'), timm_class('VisionTransformerRelPos'), torch_config,
                  pretrained_cfg, load_timm, lambda path, state: True, resize_state=reference_state),)
