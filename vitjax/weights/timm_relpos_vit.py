"""timm's VisionTransformerRelPos name table, torch-free (the torch side: porting/timm_relpos_vit.py)."""
from __future__ import annotations

from vitjax.weights.engine import Rule, linear
from vitjax.weights.timm_vit import RULES as VIT_RULES
from vitjax.weights.table import Table


def _rel_pos(src: str, dst: str) -> tuple[Rule, ...]:
    return (Rule(f'{src}.relative_position_bias_table', f'{dst}/relative_position_bias_table'),
            *linear(f'{src}.mlp.fc1', f'{dst}/fc1'), *linear(f'{src}.mlp.fc2', f'{dst}/fc2'))


# timm's ViT names (its Block and RelPosBlock share them), plus each block's or the shared bias module
RULES = (*VIT_RULES, *_rel_pos('blocks.{i}.attn.rel_pos', 'blocks_{i}/attn/rel_pos'),
         *_rel_pos('shared_rel_pos', 'rel_pos'))

# vitjax fields that timm's VisionTransformerRelPos takes under the same name; the model name fixes block_fn
CREATE_KWARGS = ('img_size', 'patch_size', 'in_chans', 'num_classes', 'global_pool', 'embed_dim', 'depth',
                 'num_heads', 'mlp_ratio', 'qkv_bias', 'qk_norm', 'init_values', 'class_token', 'fc_norm',
                 'rel_pos_type', 'rel_pos_dim', 'shared_rel_pos')

TABLES = (Table('timm', 'relpos_vit', RULES, create_kwargs=CREATE_KWARGS, timm_modules=('vision_transformer_relpos',)),)
