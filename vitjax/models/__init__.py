"""The model classes, the names config.json uses for them, and the checks a config.json passes on load.

Every model file of this package is imported here; each registers its families at its foot
(vitjax/models/family.py), so the tables below are derived and a new family is its file alone."""
import collections.abc
import dataclasses
import importlib
import math
import pkgutil
import typing
from typing import Any, Union

import flax.linen as nn

from vitjax.models.family import FAMILIES, family_of
from vitjax.models.family import problems as problems_of
from vitjax.models.naflex import NaFlexVit
from vitjax.models.swin import SwinTransformer
from vitjax.models.vit import Eva, PretrainedCfg, VisionTransformer, model_config  # noqa: F401

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f'{__name__}.{_m.name}')

Model = nn.Module  # one of ARCHITECTURES' classes

# The `architecture` field of a model directory's config.json names one of these.
ARCHITECTURES = {name: f.cls for name, f in FAMILIES.items()}
NOT_STORED = ('parent', 'name', 'dtype', 'pretrained_cfg')  # model_config() leaves these out of config.json
# timm buffers that vitjax keeps as params, so that they load, save and export with the rest: never trained (Gemma 4's
# clamp bounds and soft-token standardization), by train.py's optimizer or through the NNX face.
BUFFERS = (r'(^|/)(input|output)_(min|max)$', r'(^|/)std_(bias|scale)$')


def img_size_of(model: Model) -> tuple[int, int]:
    s = model.img_size
    return (s, s) if isinstance(s, int) else tuple(s)


def init_variables(model: Model, rng: Any) -> dict:
    """Fresh variables of `model` (jitted: one compiled init, not an op-by-op trace)."""
    import jax
    import jax.numpy as jnp
    h, w = img_size_of(model)
    return jax.jit(model.init)({'params': rng}, jnp.zeros((1, h, w, model.in_chans), jnp.float32))


def architecture_of(model) -> str:
    """config.json's name for `model`'s class (exactly that class: a subclass is not its parent's family)."""
    name = family_of(model).name
    if type(model) is not FAMILIES[name].cls:
        raise TypeError(f'{type(model).__name__} is not a vitjax model')
    return name


def _fits(v: Any, t: Any) -> bool:
    """`v` (JSON, lists already tuples) is a value of the annotation `t`; floats must be finite."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if t is Any:
        return True
    if origin is Union:
        return any(_fits(v, a) for a in args)
    if t is type(None) or t is bool or t is str:
        return type(v) is t if t is not type(None) else v is None
    if t is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if t is float:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if origin in (tuple, collections.abc.Sequence):
        if not isinstance(v, tuple):
            return False
        if origin is tuple and Ellipsis not in args:
            return len(v) == len(args) and all(map(_fits, v, args))
        return all(_fits(x, args[0]) for x in v)
    return isinstance(v, t)


def _describe(t: Any, many: bool = False) -> str:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is Union:
        return ' or '.join(_describe(a, many) for a in args)
    if origin in (tuple, collections.abc.Sequence):
        n = f'{len(args)} ' if origin is tuple and Ellipsis not in args else ''
        return ('lists' if many else 'a list') + f' of {n}{_describe(args[0], True)}'
    name = {type(None): 'null', float: 'finite number', int: 'integer', bool: 'boolean', str: 'string'}.get(t, t)
    return name if t is type(None) else f'{name}s' if many else f'an {name}' if name[0] in 'aeiou' else f'a {name}'


def type_problems(cls: type, values: dict[str, Any], prefix: str = '') -> list[str]:
    """Unknown fields and values that are not of the type the dataclass declares (one rule for every model)."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init} - set(NOT_STORED)
    out = [f'{prefix}{k}: unknown field (known: {", ".join(sorted(known))})' for k in values if k not in known]
    return out + [f'{prefix}{k}={v!r}: must be {_describe(hints[k])}'
                  for k, v in values.items() if k in known and not _fits(v, hints[k])]


def checked_model(cls: type, fields: dict[str, Any], pretrained: dict[str, Any],
                  what: str = 'invalid model config') -> Model:
    """`cls(**fields)` with its preprocessing, or one ValueError (`what: ...`) listing every wrong type and range."""
    pre = {k: v for k, v in pretrained.items() if k in {f.name for f in dataclasses.fields(PretrainedCfg)}}
    problems = type_problems(cls, fields) + type_problems(PretrainedCfg, pre, 'pretrained_cfg.')
    if not problems:  # ranges are only meaningful on values of the right types
        model = cls(**fields, pretrained_cfg=PretrainedCfg(**pre))
        problems += problems_of(model)
    if problems:
        raise ValueError(f'{what}: ' + '; '.join(problems))
    return model


__all__ = ['ARCHITECTURES', 'Eva', 'Model', 'NaFlexVit', 'PretrainedCfg', 'SwinTransformer', 'VisionTransformer',
           'architecture_of', 'checked_model', 'model_config']
