"""timm's VisionTransformerSAM (SAM's image encoder) name table, torch-free (the torch side:
porting/timm_sam.py)."""
from __future__ import annotations

from vitjax.weights.engine import CONV, Rule, linear, norm
from vitjax.weights.timm_vit import BLOCK as VIT_BLOCK
from vitjax.weights.table import Table

RULES = (
    Rule('pos_embed', 'pos_embed'),  # (1, H, W, D) on both sides
    Rule('patch_embed.proj.weight', 'patch_embed/proj/kernel', CONV),
    Rule('patch_embed.proj.bias', 'patch_embed/proj/bias'),
    *VIT_BLOCK,
    Rule('blocks.{i}.attn.rel_pos_h', 'blocks_{i}/attn/rel_pos/rel_pos_h'),
    Rule('blocks.{i}.attn.rel_pos_w', 'blocks_{i}/attn/rel_pos/rel_pos_w'),
    Rule('neck.0.weight', 'neck/conv1/kernel', CONV),
    *norm('neck.1', 'neck/norm1'),
    Rule('neck.2.weight', 'neck/conv2/kernel', CONV),
    *norm('neck.3', 'neck/norm2'),
    *norm('neck', 'neck/norm'),  # no conv neck: one LayerNorm2d
    *linear('head.fc', 'head'),
)

# vitjax fields that timm's VisionTransformerSAM takes under the same name
CREATE_KWARGS = ('img_size', 'patch_size', 'in_chans', 'num_classes', 'global_pool', 'embed_dim', 'depth',
                 'num_heads', 'mlp_ratio', 'qkv_bias', 'init_values', 'use_abs_pos', 'use_rel_pos', 'window_size',
                 'global_attn_indexes', 'neck_chans')

TABLES = (Table('timm', 'sam', RULES, create_kwargs=CREATE_KWARGS, timm_modules=('vision_transformer_sam',)),)
