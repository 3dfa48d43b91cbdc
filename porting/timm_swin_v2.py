"""timm SwinTransformerV2: the name table and the config reader (a row of porting.sources)."""
from __future__ import annotations

from typing import Any

from porting.engine import CONV, LINEAR, Rule, linear, norm, require
from porting.source import Source, load_timm, timm_class
from porting.timm_swin import CREATE_KWARGS as SWIN_KWARGS
from porting.timm_swin import stage_fields
from porting.timm_vit import pretrained_cfg

CREATE_KWARGS = tuple(k for k in SWIN_KWARGS if k != 'head_dim') + ('pretrained_window_sizes',)

ATTN = 'layers.{i}.blocks.{j}.attn', 'layers_{i}/blocks_{j}/attn'
RULES = (
    Rule('patch_embed.proj.weight', 'patch_embed/proj/kernel', CONV),
    Rule('patch_embed.proj.bias', 'patch_embed/proj/bias'),
    *norm('patch_embed.norm', 'patch_embed/norm'),
    Rule('layers.{i}.downsample.reduction.weight', 'layers_{i}/downsample/reduction/kernel', LINEAR),
    *norm('layers.{i}.downsample.norm', 'layers_{i}/downsample/norm'),
    *(Rule(f'{ATTN[0]}.{p}', f'{ATTN[1]}/{p}') for p in ('logit_scale', 'q_bias', 'v_bias')),
    Rule(f'{ATTN[0]}.qkv.weight', f'{ATTN[1]}/qkv/kernel', LINEAR),
    *linear(f'{ATTN[0]}.cpb_mlp.0', f'{ATTN[1]}/cpb_mlp_0'),
    Rule(f'{ATTN[0]}.cpb_mlp.2.weight', f'{ATTN[1]}/cpb_mlp_2/kernel', LINEAR),
    *linear(f'{ATTN[0]}.proj', f'{ATTN[1]}/proj'),
    *norm('layers.{i}.blocks.{j}.norm1', 'layers_{i}/blocks_{j}/norm1'),
    *linear('layers.{i}.blocks.{j}.mlp.fc1', 'layers_{i}/blocks_{j}/mlp/fc1'),
    *linear('layers.{i}.blocks.{j}.mlp.fc2', 'layers_{i}/blocks_{j}/mlp/fc2'),
    *norm('layers.{i}.blocks.{j}.norm2', 'layers_{i}/blocks_{j}/norm2'),
    *norm('norm', 'norm'),
    *linear('head.fc', 'head'),
)


def model_config(model) -> dict[str, Any]:
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


SOURCES = (Source('timm', 'swinv2', RULES, timm_class('SwinTransformerV2'), model_config, pretrained_cfg,
                  load_timm, lambda path, state: True,
                  buffers=('relative_position_index', 'relative_coords_table', 'attn_mask', 'k_bias'),
                  create_kwargs=CREATE_KWARGS, resize_state=reference_state,
                  timm_modules=('swin_transformer_v2',)),)
