"""timm Beit (BEiT, BEiT v2), the torch side: the config reader (a row of porting.sources; the name table is
vitjax/weights/timm_beit.py). The Flax side is vitjax's VisionTransformer with BEiT's options
(vitjax.models.beit.Beit): a relative-position bias table in every block, query and value biases, LayerScale as
gamma_1 / gamma_2."""
from __future__ import annotations

from typing import Any

from porting.source import Source, load_timm, timm_class
from porting.timm_vit import (activation, is_identity, mlp_layer, norm_layer, patch_fields, pretrained_cfg)
from porting.timm_vit import reference_state as vit_reference
from vitjax import weights
from vitjax.weights.engine import require


def torch_config(model) -> dict[str, Any]:
    """Read vitjax Beit kwargs off an instantiated timm Beit; every option vitjax lacks is named in the error."""
    from timm.models.beit import Beit as TimmBeit
    require(isinstance(model, TimmBeit), f'architecture {type(model).__name__}')
    blk = model.blocks[0]
    attn = blk.attn
    require(attn.qkv.out_features == 3 * model.embed_dim, 'attn_head_dim other than embed_dim / num_heads')
    own, shared = attn.relative_position_bias_table is not None, model.rel_pos_bias is not None
    require(not (own and shared), 'both per-block and shared relative position biases')
    grid = tuple(model.patch_embed.grid_size)
    require(not own or tuple(attn.window_size) == grid, 'a relative position window other than the patch grid')
    mlp, mlp_ratio = mlp_layer(blk.mlp, model.embed_dim)
    norm_kind, eps = norm_layer(model)
    require((blk.gamma_1 is None) == (blk.gamma_2 is None), 'LayerScale on one branch only')
    pe = model.patch_embed
    return dict(
        **patch_fields(pe.img_size, pe.patch_size, pe.proj.in_channels),
        num_classes=model.num_classes,
        global_pool=model.global_pool,
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=attn.num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=attn.q_bias is not None,
        key_bias=False,
        mlp_layer=mlp,
        scale_mlp_norm=not is_identity(getattr(blk.mlp, 'norm', None)),
        init_values=float(blk.init_values) if blk.gamma_1 is not None else None,
        pos_embed='learn' if model.pos_embed is not None else 'none',
        rel_pos_type='bias' if own or shared else '',
        shared_rel_pos=shared,
        final_norm=True,
        fc_norm=not is_identity(model.fc_norm),
        norm_layer=norm_kind,
        norm_eps=eps,
        act_layer=activation(blk.mlp.act) if mlp == 'mlp' else 'silu',
    )


def reference_state(state: dict, src, dst, ref) -> dict:
    """The source state dict as timm's checkpoint_filter_fn adapts it to `dst`'s size (the parity reference)."""
    from timm.models.beit import checkpoint_filter_fn
    return checkpoint_filter_fn(vit_reference(state, src, dst, ref), ref)


SOURCES = (Source(weights.get('timm', 'beit'), timm_class('Beit'), torch_config, pretrained_cfg, load_timm,
                  lambda path, state: True, resize_state=reference_state),)
