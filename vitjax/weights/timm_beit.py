"""timm's Beit (BEiT, BEiT v2) name table, torch-free (the torch side: porting/timm_beit.py)."""
from __future__ import annotations

from vitjax.weights.engine import Rule
from vitjax.weights.timm_eva import BLOCK as EVA_BLOCK
from vitjax.weights.timm_vit import RULES as VIT_RULES
from vitjax.weights.table import Table

# The embeddings, norms and head are named as in timm's VisionTransformer, the blocks as in Eva's (q_bias /
# v_bias, gamma_1 / gamma_2), plus each block's table.
RULES = (*(r for r in VIT_RULES if not r.source.startswith('blocks.')), *EVA_BLOCK,
         Rule('blocks.{i}.attn.relative_position_bias_table', 'blocks_{i}/attn/rel_pos/relative_position_bias_table'),
         Rule('rel_pos_bias.relative_position_bias_table', 'rel_pos/relative_position_bias_table'))  # shared

# vitjax fields that timm's Beit constructor takes under the same name; use_* are Beit's own names for the rest
CREATE_KWARGS = ('img_size', 'patch_size', 'in_chans', 'num_classes', 'global_pool', 'embed_dim', 'depth',
                 'num_heads', 'mlp_ratio', 'qkv_bias', 'init_values')

TABLES = (Table('timm', 'beit', RULES, create_kwargs=CREATE_KWARGS, timm_modules=('beit',)),)
