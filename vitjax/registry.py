"""timm model names -> VisionTransformer / SwinTransformer / NaFlexVit configs.

Every architecture timm has pretrained weights for (in the modules vitjax converts) is read from the zoo
table, `vitjax/zoo.json`, generated from timm itself (porting/zoo.py): its config and each tag's
preprocessing are timm's own. What the table adds nothing to, the name parser below keeps: other sizes,
patches and resolutions of the plain families (`vit_base_patch8_384`, `deit_small_patch16_384`), decoded
from the name's parts for random init, with the family's default preprocessing; they have no tags.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
from typing import Any, Optional, Union

import jax

from vitjax import io
from vitjax.models import ARCHITECTURES, Model, PretrainedCfg, img_size_of, init_variables  # noqa: F401

# Width / depth / heads for timm's size words.
SIZES: dict[str, dict[str, Any]] = {
    'tiny': dict(embed_dim=192, depth=12, num_heads=3),
    'small': dict(embed_dim=384, depth=12, num_heads=6),
    'base': dict(embed_dim=768, depth=12, num_heads=12),
    'large': dict(embed_dim=1024, depth=24, num_heads=16),
    'huge': dict(embed_dim=1280, depth=32, num_heads=16),
    'so150m': dict(embed_dim=896, depth=18, num_heads=14, mlp_ratio=2304 / 896),  # timm's 2.572 -> 2304 wide
}
SWIN_SIZES: dict[str, dict[str, Any]] = {
    'tiny': dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    'small': dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    'base': dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    'large': dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}
NAME_FAMILIES = ('vit', 'deit', 'deit3', 'swin')  # the parser's first name part
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

# Name parts that switch on a model option (timm's variant words). Not `gap`: timm's SBB ViTs give it other heads,
# norms and embeddings from one name to the next (vit_base_patch16_gap_224 has 16 heads, ..._reg4_gap_256 12);
# those with weights are rows of the zoo table, with timm's own configs.
VARIANTS: dict[str, dict[str, Any]] = {
    'dinov2': dict(init_values=1e-5),
    'clip': dict(pre_norm=True, norm_eps=1e-5),
    'quickgelu': dict(act_layer='quick_gelu'),
    'siglip': dict(class_token=False, global_pool='map'),
    'distilled': dict(distilled=True),
}
def _patterns(value: Any, what: str, tags: bool) -> list[str]:
    """timm's filters: one shell-style pattern or several, '' none; with `tags`, a pattern without a tag also
    matches `pattern.*`."""
    if not value:
        return []
    try:
        pats = [value] if isinstance(value, str) else list(value)
    except TypeError:
        pats = [value]
    if not all(isinstance(p, str) for p in pats):
        raise TypeError(f'{what} must be a shell-style pattern or a list of them, got {value!r}')
    return [q for p in pats for q in ([p] if not tags or p.partition('.')[2] else [p.partition('.')[0] + '.*', p])]


def _listed(names: list[str], filter: Any, exclude_filters: Any, tags: bool) -> list[str]:
    """timm's `list_models` selection and natural sort order over `names`."""
    include = _patterns(filter, 'filter', tags)
    out = {n for p in include for n in fnmatch.filter(names, p)} if include else set(names)
    out -= {n for p in _patterns(exclude_filters, 'exclude_filters', tags) for n in fnmatch.filter(out, p)}
    return sorted(out, key=lambda s: [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', s.lower())])


def list_models(filter: Any = '', exclude_filters: Any = '') -> list[str]:
    """The architectures of the zoo table, each built with timm's own config, as `timm.list_models(filter,
    exclude_filters=...)`: shell-style patterns (one or a list; '' is every name), e.g. `list_models('deit_*')`.
    `list_pretrained` gives their weights' tags. `create_model` also builds other sizes, patches and resolutions
    of the plain families from their names (`vit_base_patch16_320`), which no list can hold."""
    from vitjax import hub
    return _listed(list(hub.zoo()['architectures']), filter, exclude_filters, tags=False)


def list_pretrained(filter: Any = '', exclude_filters: Any = '') -> list[str]:
    """`arch.tag` names vitjax loads from the hub, as `timm.list_pretrained(filter, exclude_filters)`: a pattern
    without a tag also matches the tags of the architectures it matches."""
    from vitjax import hub
    return _listed(list(hub.zoo()['tags']), filter, exclude_filters, tags=True)


def split_tag(name: str) -> tuple[str, str]:
    arch, _, tag = name.partition('.')
    return arch, tag


def _unknown(name: str, why: str) -> ValueError:
    from vitjax import hub
    close = difflib.get_close_matches(split_tag(name)[0], list(hub.zoo()['architectures']), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else '; see vitjax.list_models()'
    return ValueError(f'unknown model {name!r} ({why}){hint}')


def _default_cfg(family: str, variants: list[str], img: int) -> PretrainedCfg:
    """The preprocessing timm's default config gives the family of a name without weights."""
    if 'clip' in variants or 'quickgelu' in variants:
        mean, std = CLIP_MEAN, CLIP_STD
    elif family == 'vit':
        mean, std = INCEPTION_MEAN, INCEPTION_STD  # the original JAX ViT's [-1, 1]
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return PretrainedCfg((3, img, img), mean, std, 1.0 if img >= 384 or 'dinov2' in variants else 0.9)


def _zoo_args(arch: str, tag: str) -> tuple[str, dict[str, Any], PretrainedCfg]:
    """timm's own config and preprocessing for a name of the zoo table (vitjax/zoo.json)."""
    from vitjax import hub
    z = hub.zoo()
    row = z['architectures'][arch]
    tag = tag or row['tags'][0]
    if f'{arch}.{tag}' not in z['tags']:
        raise ValueError(f'unknown tag {tag!r} for {arch} (timm has: {", ".join(row["tags"])})')
    t = z['tags'][f'{arch}.{tag}']
    kwargs = io.as_tuples(dict(row['config'], **t.get('config', {}), num_classes=t['num_classes']))
    known = {f.name for f in dataclasses.fields(PretrainedCfg)}
    pre = io.as_tuples({k: v for k, v in t.items() if k in known and v is not None})
    return row['family'], kwargs, PretrainedCfg(**pre, tag=tag)


def model_args(name: str) -> tuple[str, dict[str, Any], PretrainedCfg]:
    """A timm name (optionally `.tag`) -> (architecture, module kwargs, PretrainedCfg): from the zoo table for
    every architecture timm has pretrained weights for, decoded from the name's parts for the others."""
    arch, tag = split_tag(name)
    from vitjax import hub
    if arch in hub.zoo()['architectures']:
        return _zoo_args(arch, tag)
    parts = arch.split('_')
    family = parts.pop(0) if parts else ''
    if family not in NAME_FAMILIES:
        if any(n.startswith(f'{family}_') for n in hub.zoo()['architectures']):  # eva02, naflexvit, aimv2, ...
            raise _unknown(name, f'{family} models are the zoo\'s names only: vitjax.list_pretrained({family + "*"!r})')
        raise _unknown(name, f'family {family!r} is not one of {NAME_FAMILIES}')
    if tag:
        raise _unknown(name, f'timm has no pretrained weights for {arch}, so no tag {tag!r}; without the tag it '
                             'is a random-init model decoded from its name')
    sizes = SWIN_SIZES if family == 'swin' else SIZES
    if not parts or parts[0] not in sizes:
        raise _unknown(name, f'size must be one of {tuple(sizes)}')
    size = parts.pop(0)
    kwargs: dict[str, Any] = dict(sizes[size])
    if family == 'deit3':
        kwargs.update(no_embed_class=True, init_values=1e-6)
    img, variants = None, []
    for part in parts:
        if m := re.fullmatch(r'patch(\d+)', part):
            kwargs['patch_size'] = int(m[1])
        elif m := re.fullmatch(r'window(\d+)', part):
            if family != 'swin':
                raise _unknown(name, f'{part!r} is a Swin option')
            kwargs['window_size'] = int(m[1])
        elif m := re.fullmatch(r'reg(\d+)', part):
            kwargs.update(reg_tokens=int(m[1]), no_embed_class=True)
        elif re.fullmatch(r'\d+', part):
            img = int(part)
        elif part in VARIANTS and family in ('vit', 'deit') and (part != 'distilled' or family == 'deit'):
            kwargs.update(VARIANTS[part])
            variants.append(part)
        else:
            raise _unknown(name, f'unsupported name part {part!r}')
    if 'patch_size' not in kwargs:
        raise _unknown(name, 'no patch size (e.g. patch16)')
    img = img or (518 if 'dinov2' in variants else 224)
    kwargs['img_size'] = img
    return ('swin' if family == 'swin' else 'vit'), kwargs, _default_cfg(family, variants, img)


def build_model(name: str, num_classes: Optional[int] = None, img_size: Union[None, int, tuple] = None,
                **overrides: Any) -> Model:
    """The module for a timm name with overrides applied (no parameters)."""
    from vitjax.adapt import check_fields
    arch, kwargs, cfg = model_args(name)
    cls = ARCHITECTURES[arch]
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f'{name}: {cls.__name__} has no option {", ".join(unknown)}')
    asked = {'num_classes': num_classes, 'img_size': img_size}
    kwargs.update(io.as_tuples({**overrides, **{k: v for k, v in asked.items() if v is not None}}))
    check_fields(cls, kwargs, cfg, f'{name}: invalid options')  # types and ranges before anything is built
    return cls(**kwargs, pretrained_cfg=cfg if img_size is None else cfg.at_size(kwargs['img_size']))


def create_model(name: str, pretrained: Union[bool, str, None] = None, num_classes: Optional[int] = None,
                 img_size: Union[None, int, tuple] = None, rng: Optional[jax.Array] = None,
                 revision: Optional[str] = None, **overrides: Any) -> tuple[Model, dict]:
    """timm's `create_model`, returning `(model, variables)`.

    `pretrained=True` loads the timm weights of `name` (`arch.tag`; the arch's default tag without one) from the
    Hugging Face hub, without torch (vitjax/hub.py; `revision` pins a hub commit, `in_chans` adapts the first
    conv as timm does). `pretrained=DIR` loads a directory written by `porting.convert` or `train.py`. Either
    way the head is new (zeros, as init makes it) when `num_classes` differs and position embeddings are resampled when
    `img_size` differs. Otherwise the variables are a fresh initialisation from `rng`.
    """
    if pretrained is True:  # a timm name, never a path (a file of that name in the cwd changes nothing)
        from vitjax import hub
        return hub.load(str(name), num_classes=num_classes, img_size=img_size, revision=revision, **overrides)
    if pretrained:
        from vitjax import loader
        cfg = loader.read_config(pretrained, revision)
        stored = (cfg.get('hub') or {}).get('architecture') or split_tag(cfg.get('model_name') or '')[0]
        if stored and split_tag(name)[0] != stored:
            raise ValueError(f'{pretrained} holds a {stored}, not a {split_tag(name)[0]}: name its own '
                             f'architecture, create_model({stored!r}, pretrained={str(pretrained)!r})')
        return loader.load(pretrained, num_classes=num_classes, img_size=img_size, revision=revision,
                           **overrides)
    model = build_model(name, num_classes, img_size, **overrides)
    return model, init_variables(model, jax.random.PRNGKey(0) if rng is None else rng)
