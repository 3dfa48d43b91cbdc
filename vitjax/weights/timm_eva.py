"""timm's Eva (EVA-02, DINOv3, Perception Encoder, RoPE-ViT) name table, torch-free (the torch side:
porting/timm_eva.py)."""
from __future__ import annotations

from vitjax.weights.engine import HEADS_BIAS, HEADS_KERNEL, OUT_KERNEL, QKV_BIAS, QKV_KERNEL, Rule, linear, norm
from vitjax.weights.timm_vit import RULES as VIT_RULES
from vitjax.weights.table import Table

_QKV = tuple(f'blocks_{{i}}/attn/{n}/kernel' for n in ('query', 'key', 'value'))

BLOCK = (
    *norm('blocks.{i}.norm1', 'blocks_{i}/norm1'),
    # fused q/k/v: EvaAttention keeps q and v biases apart (its key bias is a zero buffer); AttentionRope fuses all
    Rule('blocks.{i}.attn.qkv.weight', _QKV, QKV_KERNEL),
    Rule('blocks.{i}.attn.qkv.bias', tuple(t.replace('kernel', 'bias') for t in _QKV), QKV_BIAS),
    Rule('blocks.{i}.attn.q_bias', 'blocks_{i}/attn/query/bias', HEADS_BIAS),
    Rule('blocks.{i}.attn.v_bias', 'blocks_{i}/attn/value/bias', HEADS_BIAS),
    *(Rule(f'blocks.{{i}}.attn.{p}_proj.{w}', f'blocks_{{i}}/attn/{n}/{f}', t)
      for p, n in (('q', 'query'), ('k', 'key'), ('v', 'value'))
      for w, f, t in (('weight', 'kernel', HEADS_KERNEL), ('bias', 'bias', HEADS_BIAS))),
    *norm('blocks.{i}.attn.q_norm', 'blocks_{i}/attn/q_norm'),
    *norm('blocks.{i}.attn.k_norm', 'blocks_{i}/attn/k_norm'),
    *norm('blocks.{i}.attn.norm', 'blocks_{i}/attn/norm'),
    Rule('blocks.{i}.attn.proj.weight', 'blocks_{i}/attn/out/kernel', OUT_KERNEL),
    Rule('blocks.{i}.attn.proj.bias', 'blocks_{i}/attn/out/bias'),
    Rule('blocks.{i}.gamma_1', 'blocks_{i}/ls1/gamma'),
    *norm('blocks.{i}.norm2', 'blocks_{i}/norm2'),
    *linear('blocks.{i}.mlp.fc1', 'blocks_{i}/mlp/fc1'),
    *linear('blocks.{i}.mlp.fc1_g', 'blocks_{i}/mlp/fc1_g'),
    *linear('blocks.{i}.mlp.fc1_x', 'blocks_{i}/mlp/fc1_x'),
    *norm('blocks.{i}.mlp.norm', 'blocks_{i}/mlp/norm'),
    *linear('blocks.{i}.mlp.fc2', 'blocks_{i}/mlp/fc2'),
    Rule('blocks.{i}.gamma_2', 'blocks_{i}/ls2/gamma'),
)

# Embeddings, final norms, the attention pool and the head are named as in timm's VisionTransformer.
RULES = (*(r for r in VIT_RULES if not r.source.startswith('blocks.')), *BLOCK, Rule('rope.freqs', 'rope/freqs'))

# vitjax fields that timm's Eva constructor takes under the same name; the model name fixes the rest (export
# checks that the built model reads back to the same config).
CREATE_KWARGS = ('img_size', 'patch_size', 'in_chans', 'num_classes', 'global_pool', 'embed_dim', 'depth', 'num_heads',
                 'mlp_ratio', 'qkv_bias', 'qk_norm', 'init_values', 'class_token', 'no_embed_class',
                 'dynamic_img_size')

TABLES = (Table('timm', 'eva', RULES, create_kwargs=CREATE_KWARGS, timm_modules=('eva',)),)
