"""timm's SwinTransformer name table, torch-free (the torch side: porting/timm_swin.py)."""
from __future__ import annotations

from vitjax.weights.engine import CONV, LINEAR, Rule, linear, norm
from vitjax.weights.table import Table

# vitjax SwinTransformer fields that timm.create_model takes under the same name.
CREATE_KWARGS = ('img_size', 'patch_size', 'in_chans', 'num_classes', 'global_pool', 'embed_dim', 'depths',
                 'num_heads', 'head_dim', 'window_size', 'always_partition', 'dynamic_img_size', 'mlp_ratio',
                 'qkv_bias')

BLOCK = (
    *norm('layers.{i}.blocks.{j}.norm1', 'layers_{i}/blocks_{j}/norm1'),
    Rule('layers.{i}.blocks.{j}.attn.relative_position_bias_table',
         'layers_{i}/blocks_{j}/attn/relative_position_bias_table'),
    *linear('layers.{i}.blocks.{j}.attn.qkv', 'layers_{i}/blocks_{j}/attn/qkv'),
    *linear('layers.{i}.blocks.{j}.attn.proj', 'layers_{i}/blocks_{j}/attn/proj'),
    *norm('layers.{i}.blocks.{j}.norm2', 'layers_{i}/blocks_{j}/norm2'),
    *linear('layers.{i}.blocks.{j}.mlp.fc1', 'layers_{i}/blocks_{j}/mlp/fc1'),
    *linear('layers.{i}.blocks.{j}.mlp.fc2', 'layers_{i}/blocks_{j}/mlp/fc2'),
)

RULES = (
    Rule('patch_embed.proj.weight', 'patch_embed/proj/kernel', CONV),
    Rule('patch_embed.proj.bias', 'patch_embed/proj/bias'),
    *norm('patch_embed.norm', 'patch_embed/norm'),
    *norm('layers.{i}.downsample.norm', 'layers_{i}/downsample/norm'),
    Rule('layers.{i}.downsample.reduction.weight', 'layers_{i}/downsample/reduction/kernel', LINEAR),
    *BLOCK,
    *norm('norm', 'norm'),
    *linear('head.fc', 'head'),
)

TABLES = (Table('timm', 'swin', RULES, buffers=('relative_position_index', 'attn_mask'), create_kwargs=CREATE_KWARGS,
                timm_modules=('swin_transformer',)),)
