"""torchvision's VisionTransformer (vit_b_16, vit_l_16, ...) name table, torch-free (the torch side:
porting/torchvision_vit.py)."""
from __future__ import annotations

from vitjax.weights.engine import CONV, OUT_KERNEL, QKV_BIAS, QKV_KERNEL, Rule, linear, norm
from vitjax.weights.table import Table

LAYER = 'encoder.layers.encoder_layer_{i}'

RULES = (
    Rule('class_token', 'cls_token'),
    Rule('encoder.pos_embedding', 'pos_embed'),
    Rule('conv_proj.weight', 'patch_embed/proj/kernel', CONV),
    Rule('conv_proj.bias', 'patch_embed/proj/bias'),
    *norm(f'{LAYER}.ln_1', 'blocks_{i}/norm1'),
    Rule(f'{LAYER}.self_attention.in_proj_weight',
         tuple(f'blocks_{{i}}/attn/{n}/kernel' for n in ('query', 'key', 'value')), QKV_KERNEL),
    Rule(f'{LAYER}.self_attention.in_proj_bias',
         tuple(f'blocks_{{i}}/attn/{n}/bias' for n in ('query', 'key', 'value')), QKV_BIAS),
    Rule(f'{LAYER}.self_attention.out_proj.weight', 'blocks_{i}/attn/out/kernel', OUT_KERNEL),
    Rule(f'{LAYER}.self_attention.out_proj.bias', 'blocks_{i}/attn/out/bias'),
    *norm(f'{LAYER}.ln_2', 'blocks_{i}/norm2'),
    *linear(f'{LAYER}.mlp.0', 'blocks_{i}/mlp/fc1'),
    *linear(f'{LAYER}.mlp.3', 'blocks_{i}/mlp/fc2'),
    *norm('encoder.ln', 'norm'),
    *linear('heads.head', 'head'),
)

TABLES = (Table('torchvision', 'vit', RULES),)
