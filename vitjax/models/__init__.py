from vitjax.models.swin import SwinTransformer
from vitjax.models.vit import PretrainedCfg, VisionTransformer, model_config

from typing import Union

Model = Union[VisionTransformer, SwinTransformer]

# The `architecture` field of a model directory's config.json names one of these.
ARCHITECTURES = {'vit': VisionTransformer, 'swin': SwinTransformer}


def architecture_of(model) -> str:
    for name, cls in ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise TypeError(f'{type(model).__name__} is not a vitjax model')


__all__ = ['ARCHITECTURES', 'Model', 'PretrainedCfg', 'SwinTransformer', 'VisionTransformer', 'architecture_of',
           'model_config']
