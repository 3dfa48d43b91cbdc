"""timm's SwinTransformerV2 name table, torch-free (the torch side: porting/timm_swin_v2.py)."""
from __future__ import annotations

from vitjax.weights.engine import CONV, LINEAR, Rule, linear, norm
from vitjax.weights.timm_swin import CREATE_KWARGS as SWIN_KWARGS
from vitjax.weights.table import Table

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

TABLES = (Table('timm', 'swinv2', RULES,
                buffers=('relative_position_index', 'relative_coords_table', 'attn_mask', 'k_bias'),
                create_kwargs=CREATE_KWARGS, timm_modules=('swin_transformer_v2',)),)
