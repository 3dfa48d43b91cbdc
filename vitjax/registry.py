"""timm model names -> VisionTransformer configs, decoded from the name's parts (no table of full names).

`vit_base_patch16_384.augreg_in21k_ft_in1k` reads as: family `vit`, size `base`, patch 16, input 384, and
the weights' tag, which decides the class count and preprocessing the weights expect.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp

from vitjax.models import PretrainedCfg, VisionTransformer

# Width / depth / heads for timm's size words.
SIZES: dict[str, dict[str, Any]] = {
    'tiny': dict(embed_dim=192, depth=12, num_heads=3),
    'small': dict(embed_dim=384, depth=12, num_heads=6),
    'base': dict(embed_dim=768, depth=12, num_heads=12),
    'large': dict(embed_dim=1024, depth=24, num_heads=16),
    'huge': dict(embed_dim=1280, depth=32, num_heads=16),
}
FAMILIES = ('vit', 'deit')
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

# The architectures we advertise: every one is a timm name, decodes to timm's config (tests/test_registry.py)
# and converts with logit parity (README table).
_ARCHS = tuple(
    [f'vit_{s}_patch{p}_{r}' for s, p, r in [
        ('tiny', 16, 224), ('tiny', 16, 384), ('small', 16, 224), ('small', 16, 384), ('small', 32, 224),
        ('small', 32, 384), ('base', 8, 224), ('base', 16, 224), ('base', 16, 384), ('base', 32, 224),
        ('base', 32, 384), ('large', 16, 224), ('large', 16, 384), ('large', 32, 384)]]
    + [f'deit_{s}_patch16_224' for s in ('tiny', 'small', 'base')] + ['deit_base_patch16_384']
    + [f'deit_{s}_distilled_patch16_224' for s in ('tiny', 'small', 'base')] + ['deit_base_distilled_patch16_384'])


def list_models(pattern: str = '*') -> list[str]:
    """Architecture names matching a shell-style pattern, e.g. `list_models('deit_*')`."""
    return sorted(n for n in _ARCHS if fnmatch.fnmatch(n, pattern))


def split_tag(name: str) -> tuple[str, str]:
    arch, _, tag = name.partition('.')
    return arch, tag


def _unknown(name: str, why: str) -> ValueError:
    close = difflib.get_close_matches(split_tag(name)[0], _ARCHS, n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else '; see vitjax.list_models()'
    return ValueError(f'unknown model {name!r} ({why}){hint}')


def _pretrained_cfg(family: str, img: int, tag: str) -> tuple[PretrainedCfg, Optional[int]]:
    """Preprocessing and class count implied by the weights' tag (timm's pretrained_cfg for that tag)."""
    if family == 'deit' or tag.startswith(('mae', 'fb_', 'dino')):
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:  # the original JAX ViT weights and AugReg normalise to [-1, 1]
        mean, std = INCEPTION_MEAN, INCEPTION_STD
    crop_pct = 1.0 if img >= 384 else 0.9
    num_classes: Optional[int] = None
    if tag == 'mae' or tag.endswith('orig_in21k'):
        num_classes = 0  # headless feature extractors
    elif tag.endswith('_in21k'):
        num_classes = 21843
    elif tag.endswith('in1k'):
        num_classes = 1000
    return PretrainedCfg((3, img, img), mean, std, crop_pct, tag=tag), num_classes


def model_args(name: str) -> tuple[dict[str, Any], PretrainedCfg]:
    """Decode a timm name (optionally `.tag`) into VisionTransformer kwargs and its PretrainedCfg."""
    arch, tag = split_tag(name)
    parts = arch.split('_')
    family = parts.pop(0) if parts else ''
    if family not in FAMILIES:
        raise _unknown(name, f'family {family!r} is not one of {FAMILIES}')
    if not parts or parts[0] not in SIZES:
        raise _unknown(name, f'size must be one of {tuple(SIZES)}')
    kwargs: dict[str, Any] = dict(SIZES[parts.pop(0)])
    img = 224
    for part in parts:
        if m := re.fullmatch(r'patch(\d+)', part):
            kwargs['patch_size'] = int(m[1])
        elif re.fullmatch(r'\d+', part):
            img = int(part)
        elif part == 'distilled' and family == 'deit':
            kwargs['distilled'] = True
        else:
            raise _unknown(name, f'unsupported name part {part!r}')
    if 'patch_size' not in kwargs:
        raise _unknown(name, 'no patch size (e.g. patch16)')
    kwargs['img_size'] = img
    cfg, num_classes = _pretrained_cfg(family, img, tag)
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    return kwargs, cfg


def build_model(name: str, num_classes: Optional[int] = None, img_size: Union[None, int, tuple] = None,
                **overrides: Any) -> VisionTransformer:
    """The module for a timm name with overrides applied (no parameters)."""
    kwargs, cfg = model_args(name)
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    if img_size is not None:
        kwargs['img_size'] = img_size
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        cfg = PretrainedCfg((3, h, w), cfg.mean, cfg.std, cfg.crop_pct, cfg.crop_mode, cfg.interpolation, cfg.tag)
    kwargs.update(overrides)
    return VisionTransformer(**kwargs, pretrained_cfg=cfg)


def create_model(name: str, pretrained: Optional[str] = None, num_classes: Optional[int] = None,
                 img_size: Union[None, int, tuple] = None, rng: Optional[jax.Array] = None,
                 **overrides: Any) -> tuple[VisionTransformer, dict]:
    """timm's `create_model`, returning `(model, variables)`.

    With `pretrained=DIR` (a directory written by `porting.convert` or `train.py`), the weights are loaded
    and adapted: the head is re-initialised when `num_classes` differs, position embeddings are resampled
    when `img_size` differs. Otherwise the variables are a fresh initialisation from `rng`.
    """
    from vitjax import io  # io imports the registry for names; keep the cycle lazy

    rng = jax.random.PRNGKey(0) if rng is None else rng
    if pretrained is not None:
        return io.load(pretrained, num_classes=num_classes, img_size=img_size, rng=rng, expect_name=name,
                       **overrides)
    model = build_model(name, num_classes, img_size, **overrides)
    return model, init_variables(model, rng)


def init_variables(model: VisionTransformer, rng: jax.Array) -> dict:
    h, w = img_size_of(model)
    return jax.jit(model.init)({'params': rng}, jnp.zeros((1, h, w, model.in_chans), jnp.float32))


def img_size_of(model: VisionTransformer) -> tuple[int, int]:
    s = model.img_size
    return (s, s) if isinstance(s, int) else tuple(s)
