"""timm's VisionTransformer (ViT, DeiT, MAE, CLIP, SigLIP, DINOv2, DeiT III) name table, torch-free (the torch side:
porting/timm_vit.py)."""
from __future__ import annotations

from vitjax.weights.engine import (CONV, OUT_KERNEL, POOL_HEADS_BIAS, POOL_HEADS_KERNEL, POOL_KV_BIAS, POOL_KV_KERNEL,
                                   POOL_OUT_KERNEL, QKV_BIAS, QKV_KERNEL, Rule, linear, norm)
from vitjax.weights.table import Table

BLOCK = (
    *norm('blocks.{i}.norm1', 'blocks_{i}/norm1'),
    Rule('blocks.{i}.attn.qkv.weight', tuple(f'blocks_{{i}}/attn/{n}/kernel' for n in ('query', 'key', 'value')),
         QKV_KERNEL),
    Rule('blocks.{i}.attn.qkv.bias', tuple(f'blocks_{{i}}/attn/{n}/bias' for n in ('query', 'key', 'value')),
         QKV_BIAS),
    *norm('blocks.{i}.attn.q_norm', 'blocks_{i}/attn/q_norm'),
    *norm('blocks.{i}.attn.k_norm', 'blocks_{i}/attn/k_norm'),
    Rule('blocks.{i}.attn.proj.weight', 'blocks_{i}/attn/out/kernel', OUT_KERNEL),
    Rule('blocks.{i}.attn.proj.bias', 'blocks_{i}/attn/out/bias'),
    Rule('blocks.{i}.ls1.gamma', 'blocks_{i}/ls1/gamma'),
    *norm('blocks.{i}.norm2', 'blocks_{i}/norm2'),
    *linear('blocks.{i}.mlp.fc1', 'blocks_{i}/mlp/fc1'),
    *linear('blocks.{i}.mlp.fc1_g', 'blocks_{i}/mlp/fc1_g'),  # SwiGLU (AIMv2)
    *linear('blocks.{i}.mlp.fc1_x', 'blocks_{i}/mlp/fc1_x'),
    *norm('blocks.{i}.mlp.norm', 'blocks_{i}/mlp/norm'),
    *linear('blocks.{i}.mlp.fc2', 'blocks_{i}/mlp/fc2'),
    Rule('blocks.{i}.ls2.gamma', 'blocks_{i}/ls2/gamma'),
)

RULES = (
    Rule('cls_token', 'cls_token'),
    Rule('reg_token', 'reg_token'),
    Rule('dist_token', 'dist_token'),
    Rule('pos_embed', 'pos_embed'),
    Rule('patch_embed.proj.weight', 'patch_embed/proj/kernel', CONV),
    Rule('patch_embed.proj.bias', 'patch_embed/proj/bias'),
    *norm('patch_embed.norm', 'patch_embed/norm'),
    *norm('norm_pre', 'norm_pre'),
    *BLOCK,
    *norm('norm', 'norm'),
    *norm('fc_norm', 'fc_norm'),
    # MAP head (global_pool='map', SigLIP)
    Rule('attn_pool.latent', 'attn_pool/latent'),
    Rule('attn_pool.q.weight', 'attn_pool/query/kernel', POOL_HEADS_KERNEL),
    Rule('attn_pool.q.bias', 'attn_pool/query/bias', POOL_HEADS_BIAS),
    Rule('attn_pool.kv.weight', ('attn_pool/key/kernel', 'attn_pool/value/kernel'), POOL_KV_KERNEL),
    Rule('attn_pool.kv.bias', ('attn_pool/key/bias', 'attn_pool/value/bias'), POOL_KV_BIAS),
    Rule('attn_pool.proj.weight', 'attn_pool/out/kernel', POOL_OUT_KERNEL),
    Rule('attn_pool.proj.bias', 'attn_pool/out/bias'),
    *norm('attn_pool.norm', 'attn_pool/norm'),
    *linear('attn_pool.mlp.fc1', 'attn_pool/mlp/fc1'),
    *linear('attn_pool.mlp.fc2', 'attn_pool/mlp/fc2'),
    *linear('head', 'head'),
    *linear('head_dist', 'head_dist'),
)

# vitjax VisionTransformer fields that timm.create_model takes under the same name (export builds timm's model).
CREATE_KWARGS = ('img_size', 'patch_size', 'in_chans', 'num_classes', 'global_pool', 'embed_dim', 'depth', 'num_heads',
                 'mlp_ratio', 'qkv_bias', 'qk_norm', 'init_values', 'class_token', 'pos_embed', 'no_embed_class',
                 'reg_tokens', 'pre_norm', 'final_norm', 'fc_norm', 'dynamic_img_size')

TABLES = (Table('timm', 'vit', RULES, create_kwargs=CREATE_KWARGS, timm_modules=('vision_transformer', 'deit')),)
