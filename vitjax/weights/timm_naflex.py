"""timm's NaFlexVit (SigLIP 2's NaFlex scheme) name table, torch-free (the torch side: porting/timm_naflex.py)."""
from __future__ import annotations

from vitjax.weights.engine import Rule, Transform, norm
from vitjax.weights.timm_vit import RULES as VIT_RULES
from vitjax.weights.table import Table


def _patch(c) -> tuple[int, int, int]:
    p = c['patch_size']
    ph, pw = (p, p) if isinstance(p, int) else p
    return ph, pw, int(c['in_chans'])


# Linear (D, ph*pw*C) over (ph, pw, C)-ordered patches <-> conv kernel (ph, pw, C, D): one matrix, two shapes.
PATCH_LINEAR = Transform('patch_linear', lambda x, c: (x.T.reshape(*_patch(c), x.shape[0]),),
                         lambda t, c: t[0].reshape(-1, t[0].shape[-1]).T)

POS_GRID = Transform('pos_grid', lambda x, c: (x.reshape(1, -1, x.shape[-1]),),
                     lambda t, c: t[0].reshape(1, *c['pos_embed_grid'], t[0].shape[-1]))

RULES = (
    Rule('embeds.proj.weight', 'patch_embed/proj/kernel', PATCH_LINEAR),
    Rule('embeds.proj.bias', 'patch_embed/proj/bias'),
    *norm('embeds.norm', 'patch_embed/norm'),
    Rule('embeds.pos_embed', 'pos_embed', POS_GRID),
    Rule('embeds.cls_token', 'cls_token'),
    Rule('embeds.reg_token', 'reg_token'),
    *(r for r in VIT_RULES if not r.source.startswith(('patch_embed.', 'pos_embed', 'cls_token', 'reg_token',
                                                       'dist_token'))),
)

# Not img_size: given one, timm sizes the position grid from it (img_size / patch) instead of the checkpoint's
# 16x16. Any input size goes as it is, so the size vitjax records is nominal (SOURCES below).
CREATE_KWARGS = ('in_chans', 'num_classes', 'depth', 'embed_dim', 'num_heads', 'global_pool',
                 'reg_tokens', 'class_token', 'init_values', 'qkv_bias', 'qk_norm', 'mlp_ratio')

TABLES = (Table('timm', 'naflexvit', RULES, create_kwargs=CREATE_KWARGS, nominal=('init_values', 'img_size'),
                timm_modules=('naflexvit',)),)
