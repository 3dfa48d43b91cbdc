"""vitjax: Vision Transformers in JAX/Flax with verified weight import from PyTorch (timm)."""
import importlib

# The public names load on first use (PEP 562): `train.py` imports `vitjax.train.hostmem` to re-execute itself before
# jax starts, and importing the package must not start jax for it.
_PUBLIC = {'save': 'vitjax.io', 'load': 'vitjax.loader', 'PretrainedCfg': 'vitjax.models',
           'SwinTransformer': 'vitjax.models', 'VisionTransformer': 'vitjax.models',
           'create_model': 'vitjax.registry', 'list_models': 'vitjax.registry', 'list_pretrained': 'vitjax.registry'}

__all__ = ['create_model', 'list_models', 'list_pretrained', 'load', 'save', 'VisionTransformer', 'SwinTransformer',
           'PretrainedCfg']
__version__ = '0.1.0'


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    try:  # `import vitjax; vitjax.io.save(...)`: submodules as the eager package gave them
        return importlib.import_module(f'{__name__}.{name}')
    except ModuleNotFoundError as e:
        if e.name != f'{__name__}.{name}':
            raise
    raise AttributeError(f"module 'vitjax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
