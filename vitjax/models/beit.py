"""timm's Beit (BEiT, BEiT v2): VisionTransformer with a learned relative-position bias table in every block
(`rel_pos_type='bias'`), query and value biases only, LayerScale, no absolute position embedding, and mean pooling
with fc_norm. A class of its own so that a model directory records which timm class it converts from and
exports to; the defaults are timm Beit's where they differ from VisionTransformer's."""
from __future__ import annotations

from typing import Optional

from vitjax.models.family import Family, register
from vitjax.models.vit import VisionTransformer, vit_problems


class Beit(VisionTransformer):
    global_pool: str = 'avg'
    key_bias: bool = False  # timm's k_bias is a zero buffer
    pos_embed: str = 'none'
    rel_pos_type: str = 'bias'
    init_values: Optional[float] = 0.1


register(Family('beit', Beit, vit_problems))
