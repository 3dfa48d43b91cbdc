"""timm's VisionTransformerRelPos (vision_transformer_relpos): VisionTransformer with a learned relative-position
bias in every block's attention (timm's log-coordinate MLP by default, or a table; shared by all blocks for the
`srelpos` names), no absolute position embedding, no class token and mean pooling unless the name says otherwise
(`cls`, `clsgap`), LayerScale, or residual post-norm blocks (`rpn`). A class of its own so that a model
directory records which timm class it converts from and exports to; the defaults are timm's where they differ."""
from __future__ import annotations

from typing import Optional

from vitjax.models.family import Family, register
from vitjax.models.vit import VisionTransformer, vit_problems


class VisionTransformerRelPos(VisionTransformer):
    global_pool: str = 'avg'
    qkv_bias: bool = True
    class_token: bool = False
    pos_embed: str = 'none'
    rel_pos_type: str = 'mlp'
    fc_norm: Optional[bool] = False
    init_values: Optional[float] = 1e-6


register(Family('relpos_vit', VisionTransformerRelPos, vit_problems))
