"""timm's ViT hybrids (a ResNetV2 HybridEmbed) name table, torch-free (the torch side:
porting/timm_hybrid_vit.py)."""
from __future__ import annotations

from vitjax.weights.engine import CONV, Rule, norm
from vitjax.weights.timm_vit import CREATE_KWARGS as VIT_CREATE_KWARGS, RULES as VIT_RULES
from vitjax.weights.table import Table

_B = 'patch_embed.backbone.stages.{i}.blocks.{j}'

_F = 'patch_embed/backbone/stages_{i}_blocks_{j}'

BACKBONE = (
    # the stem is the backbone itself when there are no stages (vit_tiny_r_s16_p8), else backbone.stem
    *(r for p in ('patch_embed.backbone.stem', 'patch_embed.backbone')
      for r in (Rule(f'{p}.conv.weight', 'patch_embed/backbone/stem/conv/kernel', CONV),
                *norm(f'{p}.norm', 'patch_embed/backbone/stem/norm'))),
    *(r for n in ('1', '2', '3')
      for r in (Rule(f'{_B}.conv{n}.weight', f'{_F}/conv{n}/kernel', CONV), *norm(f'{_B}.norm{n}', f'{_F}/norm{n}'))),
    Rule(f'{_B}.downsample.conv.weight', f'{_F}/downsample/conv/kernel', CONV),
    *norm(f'{_B}.downsample.norm', f'{_F}/downsample/norm'),
)

RULES = (*VIT_RULES, *BACKBONE)

# timm builds the backbone from the model name; the ViT fields go by name as for VisionTransformer
CREATE_KWARGS = tuple(k for k in VIT_CREATE_KWARGS if k not in ('pre_norm', 'dynamic_img_size'))

TABLES = (Table('timm', 'hybrid_vit', RULES, create_kwargs=CREATE_KWARGS, timm_modules=('vision_transformer_hybrid',)),)
