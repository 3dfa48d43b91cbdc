"""timm SwinTransformer, the torch side: the config reader (a row of porting.sources; the name table is
vitjax/weights/timm_swin.py)."""
from __future__ import annotations

from typing import Any

from porting.source import Source, load_timm, timm_class
from porting.timm_vit import activation, pretrained_cfg
from vitjax import weights
from vitjax.weights.engine import require


def stage_fields(model, block: str) -> dict[str, Any]:
    """The fields timm's Swin V1 and V2 share, read off the built model (blocks of class `block`)."""
    import torch.nn as tnn
    norms = [m for m in model.modules() if isinstance(m, tnn.LayerNorm)]
    eps = {m.eps for m in norms}
    require(len(eps) == 1, f'mixed LayerNorm eps {eps}')
    require(all(m.elementwise_affine and m.bias is not None for m in norms), 'LayerNorm without affine/bias')
    stages = list(model.layers)
    blocks = [b for s in stages for b in s.blocks]
    require(all(type(b).__name__ == block for b in blocks), f'a block other than {block}')
    require(len({activation(b.mlp.act) for b in blocks}) == 1, 'mixed activations')
    require(len({b.mlp.fc1.out_features / b.mlp.fc1.in_features for b in blocks}) == 1, 'per-stage mlp ratios')
    dims = [s.blocks[0].dim if len(s.blocks) else s.dim for s in stages]
    require(all(d == model.embed_dim * 2 ** i for i, d in enumerate(dims)), f'stage widths {dims}')
    windows = [tuple(w) for w in model._ref_window_sizes]
    img = tuple(model.patch_embed.img_size)
    patch = tuple(model.patch_embed.patch_size)
    b0 = blocks[0]
    return dict(
        img_size=img[0] if img[0] == img[1] else img,
        patch_size=patch[0] if patch[0] == patch[1] else patch,
        in_chans=model.in_chans,
        num_classes=model.num_classes,
        global_pool=model.global_pool,
        embed_dim=model.embed_dim,
        depths=[len(s.blocks) for s in stages],
        num_heads=[s.blocks[0].attn.num_heads for s in stages],
        window_size=(windows[0][0] if len(set(windows)) == 1 and windows[0][0] == windows[0][1]
                     else list(windows[0]) if len(set(windows)) == 1 else [list(w) for w in windows]),
        always_partition=bool(b0.always_partition),
        dynamic_img_size=bool(model.dynamic_img_size),
        mlp_ratio=b0.mlp.fc1.out_features / b0.dim,
        norm_eps=eps.pop(),
        act_layer=activation(b0.mlp.act),
    )


def torch_config(model) -> dict[str, Any]:
    """Read SwinTransformer kwargs off an instantiated timm Swin (any name composed of supported options)."""
    from timm.models.swin_transformer import SwinTransformer as TimmSwin

    require(type(model) is TimmSwin, f'architecture {type(model).__name__}')
    config = stage_fields(model, 'SwinTransformerBlock')
    blocks = [b for s in model.layers for b in s.blocks]
    require(len({b.attn.qkv.bias is not None for b in blocks}) == 1, 'per-block qkv bias')
    head_dims = {b.attn.qkv.out_features // 3 // b.attn.num_heads for b in blocks}
    default_hd = all(b.attn.qkv.out_features // 3 == b.dim for b in blocks)
    return dict(config, head_dim=None if default_hd else head_dims.pop(), qkv_bias=blocks[0].attn.qkv.bias is not None)


def reference_state(state: dict, src, dst, ref) -> dict:
    """The source state dict as timm itself adapts it to `ref` (relative-position tables resized per window)."""
    from timm.models.swin_transformer import checkpoint_filter_fn
    return checkpoint_filter_fn(dict(state), ref)


SOURCES = (Source(weights.get('timm', 'swin'), timm_class('SwinTransformer'), torch_config, pretrained_cfg, load_timm,
                  lambda path, state: True, resize_state=reference_state),)
