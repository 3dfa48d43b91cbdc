"""A model family: the module class, the name a model directory's config.json records it under, and the one
check of its field values. Each model file registers its families at its foot (`register`); the package
imports every model file (vitjax/models/__init__.py), so `FAMILIES` -- and from it `ARCHITECTURES` and the
config.json checks -- gains a family by the family's own file alone.

`problems(model)` is the one range check of a family: `setup` calls it (a model built in code) and so does
config.json loading (after the type check, with every problem listed at once)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

from vitjax.models.layers import ACTIVATIONS

# A config.json is read before its params: the model is traced (jax.eval_shape) to learn the shapes, and Swin
# builds its window masks in numpy. These caps keep a hostile or mistyped file from exhausting memory there;
# they are far beyond any published model (ViT-22B: depth 48, width 6144; Swin windows up to 24).
MAX_DEPTH, MAX_DIM, MAX_PIXELS, MAX_TOKENS, MAX_WINDOW, MAX_STAGES = 1000, 65536, 8192, 65536, 64, 8
CROP_MODES = ('center', 'squash', 'border')
INTERPOLATIONS = ('bicubic', 'bilinear', 'nearest', 'lanczos', 'box', 'hamming')


@dataclasses.dataclass(frozen=True)
class Family:
    name: str  # config.json's `architecture`
    cls: type  # the flax module
    problems: Callable[[Any], list[str]]  # a built module -> what of its own fields is out of range


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    if family.name in FAMILIES and FAMILIES[family.name].cls is not family.cls:
        raise ValueError(f'two families named {family.name!r}: {FAMILIES[family.name].cls} and {family.cls}')
    FAMILIES[family.name] = family
    return family


def family_of(model: Any) -> Family:
    """The family of `model`'s class, or of the nearest registered class it derives from."""
    for cls in type(model).__mro__:
        for f in FAMILIES.values():
            if f.cls is cls:
                return f
    raise TypeError(f'{type(model).__name__} is not a vitjax model')


def problems(model: Any) -> list[str]:
    """Every out-of-range field of `model`: the common ones, the family's, then the preprocessing's."""
    return common_problems(model) + family_of(model).problems(model) + preprocessing_problems(model.pretrained_cfg)


def check(model: Any) -> None:
    """Raise one ValueError listing every out-of-range field of `model` (a module's `setup` calls this)."""
    problems_ = problems(model)
    if problems_:
        raise ValueError('invalid model config: ' + '; '.join(problems_))


def _pair(x: Any) -> tuple:
    return (x, x) if isinstance(x, int) else tuple(x)


def multiple_of(size: Any, unit: Any) -> bool:
    """Each side of `size` a multiple of `unit`'s (True when either is malformed: common_problems says so)."""
    s, u = _pair(size), _pair(unit)
    return len(s) != 2 or len(u) != 2 or min(u) < 1 or all(a % b == 0 for a, b in zip(s, u))


def whole_patches_only(m: Any) -> bool:
    """Any input size, but cut into whole patches (dynamic_img_pad pads up to them instead)."""
    return bool(getattr(m, 'dynamic_img_size', False)) and not getattr(m, 'dynamic_img_pad', False)


def common_problems(m: Any) -> list[str]:
    """The fields every family has: input, patches, head, width, MLP ratio, norms, dropout, activation."""
    p = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            p.append(what)
    img, patch = _pair(m.img_size), _pair(m.patch_size)
    need(len(img) == 2 and all(1 <= s <= MAX_PIXELS for s in img),
         f'img_size={m.img_size}: one or two sizes in 1..{MAX_PIXELS}')
    need(len(patch) == 2 and min(patch) >= 1, f'patch_size={m.patch_size}: one or two sizes >= 1')
    if not p:
        need(all(a <= b for a, b in zip(patch, img)), f'patch_size={m.patch_size} is larger than img_size={m.img_size}')
        need(math.prod(m.grid_size) <= MAX_TOKENS,  # the family's grid: a hybrid's CNN strides before its patches
             f'img_size / patch_size gives more than {MAX_TOKENS} patches')
        # a model that takes any size takes whole patches only (as timm's non-strict patch embedding): its own
        # input size must be one, or it refuses its own images at the first call
        need(not whole_patches_only(m) or multiple_of(img, patch),
             f'img_size={m.img_size}: this model takes any size in whole patches (dynamic_img_size), so a '
             f'multiple of patch_size={m.patch_size}')
    need(m.in_chans >= 1, f'in_chans={m.in_chans}: must be >= 1')
    need(m.num_classes >= 0, f'num_classes={m.num_classes}: must be >= 0 (0: no head)')
    need(1 <= m.embed_dim <= MAX_DIM, f'embed_dim={m.embed_dim}: must be in 1..{MAX_DIM}')
    need(0 < m.mlp_ratio <= 64, f'mlp_ratio={m.mlp_ratio}: must be in (0, 64]')
    need(m.norm_eps > 0, f'norm_eps={m.norm_eps}: must be > 0')
    for k in ('drop_rate', 'pos_drop_rate', 'proj_drop_rate', 'attn_drop_rate'):
        if hasattr(m, k):
            need(0 <= getattr(m, k) < 1, f'{k}={getattr(m, k)}: must be in [0, 1)')
    # 1 is a rate stochastic depth takes: timm's linear schedule then always drops the last block's branches
    need(0 <= m.drop_path_rate <= 1, f'drop_path_rate={m.drop_path_rate}: must be in [0, 1]')
    need(m.act_layer in ACTIVATIONS, f'act_layer={m.act_layer!r}: one of {sorted(ACTIVATIONS)}')
    return p


def preprocessing_problems(c: Any) -> list[str]:
    p = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            p.append(what)
    # input_size need not equal img_size: timm keeps it when a model is built at another size
    need(all(1 <= s <= MAX_PIXELS for s in c.input_size), f'pretrained_cfg.input_size={c.input_size}: sizes in '
         f'1..{MAX_PIXELS}')
    need(all(s > 0 for s in c.std), f'pretrained_cfg.std={c.std}: must be > 0 (images are divided by it)')
    need(0 < c.crop_pct <= 2, f'pretrained_cfg.crop_pct={c.crop_pct}: must be in (0, 2]')
    need(c.crop_mode in CROP_MODES, f'pretrained_cfg.crop_mode={c.crop_mode!r}: one of {CROP_MODES}')
    need(c.interpolation in INTERPOLATIONS, f'pretrained_cfg.interpolation={c.interpolation!r}: one of '
         f'{INTERPOLATIONS}')
    return p
