"""timm's deepseek_vit (the vision tower of DeepSeek V4 / V4.1): the encoder's and the classifier's name tables,
torch-free (the torch side: porting/timm_deepseek_vit.py)."""
from __future__ import annotations

from vitjax.weights.engine import CONV, Rule, linear, norm
from vitjax.weights.timm_eva import BLOCK
from vitjax.weights.timm_qwen3_vit import classifier_rules
from vitjax.weights.table import Table

ENCODER_RULES = (
    Rule('patch_embed.proj.weight', 'patch_embed/proj/kernel', CONV),
    Rule('patch_embed.proj.bias', 'patch_embed/proj/bias'),
    *BLOCK,
    *norm('norm', 'norm'),
    *linear('aligner.fc1', 'aligner/fc1'),
    *linear('aligner.fc2', 'aligner/fc2'),
)

CLASSIFIER_RULES = classifier_rules(ENCODER_RULES)

TRUNK_KWARGS = ('img_size', 'patch_size', 'in_chans', 'out_features', 'embed_dim', 'depth', 'num_heads', 'mlp_ratio',
                'downsample_ratio', 'rope_temperature', 'norm_eps', 'dynamic_img_pad')

ENCODER_KWARGS = TRUNK_KWARGS + ('global_pool',)

CLASSIFIER_KWARGS = TRUNK_KWARGS + ('num_classes', 'global_pool', 'encoder_pool', 'final_norm')

TABLES = (
    Table('timm', 'deepseek_vit_enc', ENCODER_RULES, create_kwargs=ENCODER_KWARGS, timm_modules=('deepseek_vit',)),
    Table('timm', 'deepseek_vit', CLASSIFIER_RULES, create_kwargs=CLASSIFIER_KWARGS),
)
