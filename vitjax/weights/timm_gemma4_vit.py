"""timm's gemma4_vit (the vision tower of Gemma 4): the encoder's and the classifier's name tables, torch-free (the
torch side: porting/timm_gemma4_vit.py)."""
from __future__ import annotations

import numpy as np

from vitjax.weights.engine import LINEAR, Rule, Transform
from vitjax.weights.timm_qwen3_vit import classifier_rules
from vitjax.weights.table import Table


def _bounded(x: np.ndarray) -> np.ndarray:
    big = np.finfo(x.dtype).max
    return np.where(np.isposinf(x), big, np.where(np.isneginf(x), -big, x)).astype(x.dtype)


def _unbounded(x: np.ndarray) -> np.ndarray:
    big = np.finfo(x.dtype).max
    return np.where(x == big, np.inf, np.where(x == -big, -np.inf, x)).astype(x.dtype)


# A clamp bound: timm's unbounded +-inf as +-float max (the model format holds finite numbers only) and back.
BOUND = Transform('bound', lambda x, c: (_bounded(x),), lambda t, c: _unbounded(t[0]))

BOUNDS = ('input_min', 'input_max', 'output_min', 'output_max')


def _clippable(src: str, dst: str) -> tuple[Rule, ...]:
    return (Rule(f'{src}.linear.weight', f'{dst}/linear/kernel', LINEAR),
            *(Rule(f'{src}.{b}', f'{dst}/{b}', BOUND) for b in BOUNDS))


ENCODER_RULES = (
    Rule('patch_embed.input_proj.weight', 'input_proj/kernel', LINEAR),
    Rule('patch_embed.position_embedding_table', 'position_embedding_table'),
    *(Rule(f'blocks.{{i}}.norm{n}.weight', f'blocks_{{i}}/norm{n}/scale') for n in (1, 2, 3, 4)),
    *(r for p in ('q', 'k', 'v', 'o')
      for r in _clippable(f'blocks.{{i}}.attn.{p}_proj', f'blocks_{{i}}/attn/{p}_proj')),
    Rule('blocks.{i}.attn.q_norm.weight', 'blocks_{i}/attn/q_norm/scale'),
    Rule('blocks.{i}.attn.k_norm.weight', 'blocks_{i}/attn/k_norm/scale'),
    *(r for p in ('gate', 'up', 'down')
      for r in _clippable(f'blocks.{{i}}.mlp.{p}_proj', f'blocks_{{i}}/mlp/{p}_proj')),
    Rule('std_bias', 'std_bias'),
    Rule('std_scale', 'std_scale'),
)

CLASSIFIER_RULES = classifier_rules(ENCODER_RULES)

TRUNK_KWARGS = ('img_size', 'patch_size', 'in_chans', 'embed_dim', 'depth', 'num_heads', 'head_dim', 'num_kv_heads',
                'intermediate_size', 'norm_eps', 'rope_theta', 'position_embedding_size', 'pooling_kernel_size',
                'standardize', 'use_clipped_linears')

ENCODER_KWARGS = TRUNK_KWARGS + ('global_pool',)

CLASSIFIER_KWARGS = TRUNK_KWARGS + ('num_classes', 'global_pool', 'encoder_pool', 'final_norm')

NOMINAL = ('init_values', 'img_size')  # a rebuilt timm model reads back the weights' input size

TABLES = (
    Table('timm', 'gemma4_vit_enc', ENCODER_RULES, create_kwargs=ENCODER_KWARGS, nominal=NOMINAL,
          timm_modules=('gemma4_vit',)),
    Table('timm', 'gemma4_vit', CLASSIFIER_RULES, create_kwargs=CLASSIFIER_KWARGS, nominal=NOMINAL),
)
