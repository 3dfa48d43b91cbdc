"""The model classes, the names config.json uses for them, and the checks a config.json passes on load."""
import collections.abc
import dataclasses
import math
import typing
from typing import Any, Union

from vitjax.models.layers import ACTIVATIONS, NORM_LAYERS
from vitjax.models.swin import SWIN_POOLS, SwinTransformer
from vitjax.models.naflex import NaFlexVit
from vitjax.models.rope import ROPE_TYPES
from vitjax.models.vit import MLP_LAYERS, POOLS, Eva, PretrainedCfg, VisionTransformer, model_config, to_2tuple

Model = Union[VisionTransformer, Eva, NaFlexVit, SwinTransformer]

# The `architecture` field of a model directory's config.json names one of these.
ARCHITECTURES = {'vit': VisionTransformer, 'eva': Eva, 'naflexvit': NaFlexVit, 'swin': SwinTransformer}

# A config.json is read before its params: the model is traced (jax.eval_shape) to learn the shapes, and Swin
# builds its window masks in numpy. These caps keep a hostile or mistyped file from exhausting memory there;
# they are far beyond any published model (ViT-22B: depth 48, width 6144; Swin windows up to 24).
MAX_DEPTH, MAX_DIM, MAX_PIXELS, MAX_TOKENS, MAX_WINDOW, MAX_STAGES = 1000, 65536, 8192, 65536, 64, 8
CROP_MODES = ('center', 'squash', 'border')
INTERPOLATIONS = ('bicubic', 'bilinear', 'nearest', 'lanczos', 'box', 'hamming')
NOT_STORED = ('parent', 'name', 'dtype', 'pretrained_cfg')  # model_config() leaves these out of config.json


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
    for name, cls in ARCHITECTURES.items():
        if type(model) is cls:
            return name
    raise TypeError(f'{type(model).__name__} is not a vitjax model')


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


def range_problems(m: Model) -> list[str]:
    p = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            p.append(what)
    img, patch = to_2tuple(m.img_size), to_2tuple(m.patch_size)
    need(len(img) == 2 and all(1 <= s <= MAX_PIXELS for s in img),
         f'img_size={m.img_size}: one or two sizes in 1..{MAX_PIXELS}')
    need(len(patch) == 2 and min(patch) >= 1, f'patch_size={m.patch_size}: one or two sizes >= 1')
    if not p:
        need(all(a <= b for a, b in zip(patch, img)), f'patch_size={m.patch_size} is larger than img_size={m.img_size}')
        need(math.prod(b // a for a, b in zip(patch, img)) <= MAX_TOKENS,
             f'img_size / patch_size gives more than {MAX_TOKENS} patches')
    need(m.in_chans >= 1, f'in_chans={m.in_chans}: must be >= 1')
    need(m.num_classes >= 0, f'num_classes={m.num_classes}: must be >= 0 (0: no head)')
    need(1 <= m.embed_dim <= MAX_DIM, f'embed_dim={m.embed_dim}: must be in 1..{MAX_DIM}')
    need(0 < m.mlp_ratio <= 64, f'mlp_ratio={m.mlp_ratio}: must be in (0, 64]')
    need(m.norm_eps > 0, f'norm_eps={m.norm_eps}: must be > 0')
    for k in ('drop_rate', 'pos_drop_rate', 'proj_drop_rate', 'attn_drop_rate', 'drop_path_rate'):
        if hasattr(m, k):
            need(0 <= getattr(m, k) < 1, f'{k}={getattr(m, k)}: must be in [0, 1)')
    need(m.act_layer in ACTIVATIONS, f'act_layer={m.act_layer!r}: one of {sorted(ACTIVATIONS)}')
    if isinstance(m, VisionTransformer):
        need(1 <= m.depth <= MAX_DEPTH, f'depth={m.depth}: must be in 1..{MAX_DEPTH}')
        need(m.num_heads >= 1 and m.embed_dim % m.num_heads == 0,
             f'num_heads={m.num_heads}: must be >= 1 and divide embed_dim={m.embed_dim}')
        need(0 <= m.reg_tokens <= MAX_TOKENS, f'reg_tokens={m.reg_tokens}: must be in 0..{MAX_TOKENS}')
        need(m.global_pool in POOLS, f'global_pool={m.global_pool!r}: one of {POOLS}')
        need(m.pos_embed in ('learn', '', 'none'), f"pos_embed={m.pos_embed!r}: 'learn' or 'none'")
        need(m.norm_layer in NORM_LAYERS, f'norm_layer={m.norm_layer!r}: one of {sorted(NORM_LAYERS)}')
        need(m.mlp_layer in MLP_LAYERS, f'mlp_layer={m.mlp_layer!r}: one of {MLP_LAYERS}')
        need(m.rope_type in ('',) + ROPE_TYPES, f"rope_type={m.rope_type!r}: '' or one of {ROPE_TYPES}")
        need(m.rope_grid_indexing in ('ij', 'xy'), f"rope_grid_indexing={m.rope_grid_indexing!r}: 'ij' or 'xy'")
        need(not m.rope_type or (m.embed_dim // m.num_heads) % 4 == 0,
             f'rope_type={m.rope_type!r} needs a head dim divisible by 4, got {m.embed_dim // max(m.num_heads, 1)}')
        need(m.pos_embed_interp in ('bicubic', 'bilinear'), f"pos_embed_interp={m.pos_embed_interp!r}: 'bicubic' or 'bilinear'")
        need(m.pos_embed_grid is None or (len(m.pos_embed_grid) == 2 and all(1 <= g <= MAX_PIXELS for g in m.pos_embed_grid)),
             f'pos_embed_grid={m.pos_embed_grid}: two sizes in 1..{MAX_PIXELS} (or null)')
        need(m.rope_temperature > 0, f'rope_temperature={m.rope_temperature}: must be > 0')
        need(m.attn_pool_num_heads is None or (m.attn_pool_num_heads >= 1
                                               and m.embed_dim % m.attn_pool_num_heads == 0),
             f'attn_pool_num_heads={m.attn_pool_num_heads}: must divide embed_dim={m.embed_dim}')
    else:
        n = len(m.depths)
        need(1 <= n <= MAX_STAGES and all(d >= 1 for d in m.depths) and sum(m.depths) <= MAX_DEPTH,
             f'depths={m.depths}: 1..{MAX_STAGES} stages of >= 1 blocks, {MAX_DEPTH} blocks in all at most')
        need(len(m.num_heads) == n and all(h >= 1 for h in m.num_heads),
             f'num_heads={m.num_heads}: one count >= 1 per stage (depths has {n})')
        need(n > MAX_STAGES or m.embed_dim * 2 ** (n - 1) <= MAX_DIM,
             f'the last stage width embed_dim * 2**{n - 1} is over {MAX_DIM}')
        need(m.head_dim is None or m.head_dim >= 1, f'head_dim={m.head_dim}: must be >= 1 (or null)')
        ws = m.window_size
        flat = [ws] if isinstance(ws, int) else [x for w in ws for x in ((w,) if isinstance(w, int) else w)]
        need(all(1 <= w <= MAX_WINDOW for w in flat), f'window_size={ws}: sizes in 1..{MAX_WINDOW}')
        need(m.global_pool in SWIN_POOLS, f'global_pool={m.global_pool!r}: one of {SWIN_POOLS}')
    c = m.pretrained_cfg  # input_size need not equal img_size: timm keeps it when a model is built at another size
    need(all(1 <= s <= MAX_PIXELS for s in c.input_size), f'pretrained_cfg.input_size={c.input_size}: sizes in '
         f'1..{MAX_PIXELS}')
    need(all(s > 0 for s in c.std), f'pretrained_cfg.std={c.std}: must be > 0 (images are divided by it)')
    need(0 < c.crop_pct <= 2, f'pretrained_cfg.crop_pct={c.crop_pct}: must be in (0, 2]')
    need(c.crop_mode in CROP_MODES, f'pretrained_cfg.crop_mode={c.crop_mode!r}: one of {CROP_MODES}')
    need(c.interpolation in INTERPOLATIONS, f'pretrained_cfg.interpolation={c.interpolation!r}: one of '
         f'{INTERPOLATIONS}')
    return p


def checked_model(cls: type, fields: dict[str, Any], pretrained: dict[str, Any]) -> Model:
    """`cls(**fields)` with its preprocessing, or one ValueError listing every wrong type and range."""
    pre = {k: v for k, v in pretrained.items() if k in {f.name for f in dataclasses.fields(PretrainedCfg)}}
    problems = type_problems(cls, fields) + type_problems(PretrainedCfg, pre, 'pretrained_cfg.')
    if not problems:  # ranges are only meaningful on values of the right types
        model = cls(**fields, pretrained_cfg=PretrainedCfg(**pre))
        problems = range_problems(model)
    if problems:
        raise ValueError('invalid model config: ' + '; '.join(problems))
    return model


__all__ = ['ARCHITECTURES', 'Eva', 'Model', 'NaFlexVit', 'PretrainedCfg', 'SwinTransformer', 'VisionTransformer', 'architecture_of',
           'checked_model', 'model_config']
