"""timm SwinTransformerV2, the torch side: the config reader (a row of porting.sources; the name table is
vitjax/weights/timm_swin_v2.py)."""
from __future__ import annotations

from typing import Any

from porting.source import Source, load_timm, timm_class
from porting.timm_swin import stage_fields
from porting.timm_vit import pretrained_cfg
from vitjax import weights
from vitjax.weights.engine import require


def torch_config(model) -> dict[str, Any]:
    """Read SwinTransformerV2 kwargs off an instantiated timm Swin V2."""
    from timm.models.swin_transformer_v2 import SwinTransformerV2 as TimmSwinV2

    require(type(model) is TimmSwinV2, f'architecture {type(model).__name__}')
    config = stage_fields(model, 'SwinTransformerV2Block')
    blocks = [b for s in model.layers for b in s.blocks]
    require(len({b.attn.q_bias is not None for b in blocks}) == 1, 'per-block qkv bias')
    require(all(not b.attn.qkv_bias_separate for b in blocks), 'qkv_bias_separate')  # the same sum, another order
    require(all(b.dynamic_mask == model.dynamic_img_size for b in blocks), 'a dynamic mask on a fixed-size model')
    pws = []
    for s in model.layers:
        w = {tuple(b.attn.pretrained_window_size) for b in s.blocks}
        require(len(w) == 1, f'per-block pretrained windows {w}')
        w = w.pop()
        pws.append(w[0] if w[0] == w[1] else list(w))
    return dict(config, qkv_bias=blocks[0].attn.q_bias is not None, pretrained_window_sizes=pws)


def reference_state(state: dict, src, dst, ref) -> dict:
    """The source state dict as timm itself loads it into `ref` (the CPB MLP serves any window: no resize)."""
    from timm.models.swin_transformer_v2 import checkpoint_filter_fn
    return checkpoint_filter_fn(dict(state), ref)


SOURCES = (Source(weights.get('timm', 'swinv2'), timm_class('SwinTransformerV2'), torch_config, pretrained_cfg,
                  load_timm, lambda path, state: True, resize_state=reference_state),)
