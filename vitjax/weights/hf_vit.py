"""Hugging Face's ViTForImageClassification / ViTModel name table, torch-free (the torch side:
porting/hf_vit.py)."""
from __future__ import annotations

from vitjax.weights.engine import CONV, HEADS_BIAS, HEADS_KERNEL, OUT_KERNEL, Rule, linear, norm
from vitjax.weights.table import Table

LAYER = 'encoder.layer.{i}'

RULES = (
    Rule('embeddings.cls_token', 'cls_token'),
    Rule('embeddings.position_embeddings', 'pos_embed'),
    Rule('embeddings.patch_embeddings.projection.weight', 'patch_embed/proj/kernel', CONV),
    Rule('embeddings.patch_embeddings.projection.bias', 'patch_embed/proj/bias'),
    *norm(f'{LAYER}.layernorm_before', 'blocks_{i}/norm1'),
    *[r for n in ('query', 'key', 'value') for r in (
        Rule(f'{LAYER}.attention.attention.{n}.weight', f'blocks_{{i}}/attn/{n}/kernel', HEADS_KERNEL),
        Rule(f'{LAYER}.attention.attention.{n}.bias', f'blocks_{{i}}/attn/{n}/bias', HEADS_BIAS))],
    Rule(f'{LAYER}.attention.output.dense.weight', 'blocks_{i}/attn/out/kernel', OUT_KERNEL),
    Rule(f'{LAYER}.attention.output.dense.bias', 'blocks_{i}/attn/out/bias'),
    *norm(f'{LAYER}.layernorm_after', 'blocks_{i}/norm2'),
    *linear(f'{LAYER}.intermediate.dense', 'blocks_{i}/mlp/fc1'),
    *linear(f'{LAYER}.output.dense', 'blocks_{i}/mlp/fc2'),
    *norm('layernorm', 'norm'),
    *linear('classifier', 'head'),
)

TABLES = (Table('hf', 'vit', RULES),)
