"""vitjax: Vision Transformers in JAX/Flax with verified weight import from PyTorch (timm)."""
from vitjax.io import save
from vitjax.loader import load
from vitjax.models import PretrainedCfg, SwinTransformer, VisionTransformer
from vitjax.hub import list_pretrained
from vitjax.registry import create_model, list_models

__all__ = ['create_model', 'list_models', 'list_pretrained', 'load', 'save', 'VisionTransformer', 'SwinTransformer', 'PretrainedCfg']
__version__ = '0.1.0'
