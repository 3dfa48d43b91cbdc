"""timm's qwen3_vit (the vision towers of Qwen3-VL / Qwen3.5 / Qwen3.8): the encoder's and the classifier's name
tables, torch-free (the torch side: porting/timm_qwen3_vit.py)."""
from __future__ import annotations

import dataclasses

from vitjax.weights.engine import CONV, Rule, linear, norm
from vitjax.weights.timm_eva import BLOCK
from vitjax.weights.table import Table

ENCODER_RULES = (
    Rule('patch_embed.proj.weight', 'patch_embed/proj/kernel', CONV),
    Rule('patch_embed.proj.bias', 'patch_embed/proj/bias'),
    Rule('pos_embed', 'pos_embed'),
    *BLOCK,
    *norm('merger.norm', 'merger/norm'),
    *linear('merger.fc1', 'merger/fc1'),
    *linear('merger.fc2', 'merger/fc2'),
)


def classifier_rules(encoder_rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """A tower classifier's table: timm's classifier holds the encoder as `encoder.` (vitjax's as `encoder/`),
    then the head; its norm has no params."""
    return (*(dataclasses.replace(r, source=f'encoder.{r.source}', target=tuple(f'encoder/{t}' for t in r.targets))
              for r in encoder_rules), *linear('head', 'head'))


CLASSIFIER_RULES = classifier_rules(ENCODER_RULES)

TRUNK_KWARGS = ('img_size', 'patch_size', 'in_chans', 'out_features', 'embed_dim', 'depth', 'num_heads', 'mlp_ratio',
                'merge_size', 'pos_embed_grid_size', 'rope_temperature', 'norm_eps')

ENCODER_KWARGS = TRUNK_KWARGS + ('global_pool',)

CLASSIFIER_KWARGS = TRUNK_KWARGS + ('num_classes', 'global_pool', 'encoder_pool', 'final_norm')

TABLES = (
    Table('timm', 'qwen3_vit_enc', ENCODER_RULES, create_kwargs=ENCODER_KWARGS, timm_modules=('qwen3_vit',)),
    Table('timm', 'qwen3_vit', CLASSIFIER_RULES, create_kwargs=CLASSIFIER_KWARGS),
)
