"""timm model names -> VisionTransformer / SwinTransformer configs, decoded from the name's parts (no name table),
and the names that do not decode (timm's Eva family: EVA-02, DINOv3, PE, RoPE-ViT; AIMv2; NaFlexViT) from a short table.

`vit_base_patch16_384.augreg_in21k_ft_in1k` reads as: family `vit`, size `base`, patch 16, input 384, and
the weights' tag, which decides the class count and preprocessing the weights expect.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import re
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp

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
FAMILIES = ('vit', 'deit', 'deit3', 'swin')
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
INCEPTION_MEAN, INCEPTION_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
CLIP_EMBED = {'base': 512, 'large': 768, 'huge': 1024}  # the image-text projection, timm's head for CLIP towers

# Name parts that switch on a model option (timm's variant words).
VARIANTS: dict[str, dict[str, Any]] = {
    'dinov2': dict(init_values=1e-5),
    'clip': dict(pre_norm=True, norm_eps=1e-5),
    'quickgelu': dict(act_layer='quick_gelu'),
    'siglip': dict(class_token=False, global_pool='map'),
    'distilled': dict(distilled=True),
    'gap': dict(class_token=False, global_pool='avg', fc_norm=False, no_embed_class=False),  # timm's SBB ViTs
}
# The weights an untagged name means (timm's default tag), where the tag changes the head or preprocessing.
DEFAULT_TAGS = {'dinov2': 'lvd142m', 'clip': 'laion2b_ft_in12k_in1k', 'quickgelu': 'metaclip_2pt5b',
                'siglip': 'v2_webli', 'deit3': 'fb_in1k', 'swin': 'ms_in1k', 'gap': 'sbb_e250_in12k_ft_in1k'}

# Names that do not decode from their parts, written out: timm's Eva family (names that read alike differ in
# RoPE variant, MLP layout and biases; Eva's defaults elsewhere) and AIMv2 (a VisionTransformer with RMSNorm and
# SwiGLU). tests/test_registry.py checks every entry and tag against timm's own model.
_SWIGLU = dict(patch_size=14, mlp_ratio=4 * 2 / 3, rope_type='cat', rope_ref_feat_shape=(16, 16), fc_norm=True,
               act_layer='silu')
_DINOV3 = dict(img_size=256, init_values=1e-5, pos_embed='none', reg_tokens=4, rope_type='dinov3', fc_norm=False,
               rope_temperature=100., rope_rotate_half=True, dynamic_img_size=True, norm_eps=1e-5)
_PE = dict(global_pool='map', key_bias=True, rope_type='cat', rope_grid_indexing='xy', rope_grid_offset=1.,
           pre_norm=True, fc_norm=False, attn_pool_num_heads=8, attn_pool_mlp_ratio=4., norm_eps=1e-5)
_ROPE = dict(global_pool='token', key_bias=True, init_values=1e-5, pos_embed='none', rope_type='cat',
             rope_grid_indexing='xy', fc_norm=False)
EVA_ARCHS: dict[str, dict[str, Any]] = {
    'eva02_tiny_patch14_224': dict(_SWIGLU, embed_dim=192, num_heads=3, mlp_layer='swiglu_packed'),
    'eva02_base_patch14_224': dict(_SWIGLU, mlp_layer='swiglu', scale_mlp_norm=True),
    'eva02_large_patch14_448': dict(_SWIGLU, img_size=448, embed_dim=1024, depth=24, num_heads=16,
                                    mlp_ratio=2730 / 1024, mlp_layer='swiglu', scale_mlp_norm=True),
    'vit_base_patch16_dinov3': dict(_DINOV3, qkv_bias=False),
    'vit_base_patch16_dinov3_qkvb': _DINOV3,
    'vit_pe_core_tiny_patch16_384': dict(_PE, img_size=384, embed_dim=192, num_heads=3, rope_ref_feat_shape=(24, 24)),
    'vit_pe_core_base_patch16_224': dict(_PE, rope_ref_feat_shape=(14, 14)),
    'vit_base_patch16_rope_224': dict(_ROPE, rope_temperature=100.),
    'vit_base_patch16_rope_mixed_224': dict(_ROPE, rope_type='mixed', rope_temperature=10.),
    'vit_base_patch16_rope_reg1_gap_256': dict(img_size=256, init_values=1e-5, class_token=False, pos_embed='none',
                                               reg_tokens=1, rope_type='cat', rope_ref_feat_shape=(16, 16),
                                               fc_norm=True),
}
VIT_ARCHS: dict[str, dict[str, Any]] = {
    'aimv2_large_patch14_224': dict(patch_size=14, embed_dim=1024, depth=24, num_heads=8, mlp_ratio=2.75,
                                    global_pool='avg', class_token=False, fc_norm=False, qkv_bias=False,
                                    proj_bias=False, mlp_layer='swiglu', act_layer='silu', norm_layer='rmsnorm',
                                    embed_norm=True, norm_eps=1e-5),
}
NAFLEX_ARCHS: dict[str, dict[str, Any]] = {  # NaFlexVit's own defaults elsewhere (vitjax.models.NaFlexVit)
    'naflexvit_base_patch16_gap': dict(global_pool='avg', init_values=1e-5, reg_tokens=4, fc_norm=True),
    'naflexvit_base_patch16_siglip': dict(pos_embed_interp='bilinear', fc_norm=False, attn_pool_num_heads=12,
                                          attn_pool_mlp_ratio=4., act_layer='gelu_tanh'),
}
_CLIP_CFG = dict(mean=CLIP_MEAN, std=CLIP_STD)
# name: {tag: (num_classes, preprocessing)}, the first tag the default (timm's pretrained_cfg for each)
NAMED_TAGS: dict[str, dict[str, tuple[int, dict[str, Any]]]] = {
    'eva02_tiny_patch14_224': {'mim_in22k': (0, dict(_CLIP_CFG, crop_pct=0.9))},
    'eva02_base_patch14_224': {'mim_in22k': (0, dict(_CLIP_CFG, crop_pct=0.9))},
    'eva02_large_patch14_448': {
        f'mim_{data}_ft_{ft}': (21841 if ft == 'in22k' else 1000,
                                dict(_CLIP_CFG, crop_pct=1.0, crop_mode='center' if ft == 'in1k' else 'squash'))
        for data in ('in22k', 'm38m') for ft in ('in22k_in1k', 'in1k', 'in22k')},
    'vit_base_patch16_dinov3': {'lvd1689m': (0, dict(crop_pct=1.0))},
    'vit_base_patch16_dinov3_qkvb': {'lvd1689m': (0, dict(crop_pct=1.0)), 'eupe_lvd1689m': (0, dict(crop_pct=1.0))},
    'vit_pe_core_tiny_patch16_384': {'fb': (512, dict(mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=1.0))},
    'vit_pe_core_base_patch16_224': {'fb': (1024, dict(mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=1.0))},
    'vit_base_patch16_rope_224': {'naver_in1k': (1000, dict(crop_pct=0.9))},
    'vit_base_patch16_rope_mixed_224': {'naver_in1k': (1000, dict(crop_pct=0.9))},
    'vit_base_patch16_rope_reg1_gap_256': {'sbb_in1k': (1000, dict(mean=INCEPTION_MEAN, std=INCEPTION_STD,
                                                                   crop_pct=0.95))},
    'aimv2_large_patch14_224': {t: (0, dict(_CLIP_CFG, crop_pct=1.0)) for t in ('apple_pt', 'apple_pt_dist')},
    'naflexvit_base_patch16_gap': {'e300_s576_in1k': (1000, dict(mean=INCEPTION_MEAN, std=INCEPTION_STD,
                                                                 crop_pct=1.0))},
    'naflexvit_base_patch16_siglip': {'v2_webli': (0, dict(mean=INCEPTION_MEAN, std=INCEPTION_STD, crop_pct=1.0))},
}

# The architectures we advertise: every one is a timm name, decodes to timm's config (tests/test_registry.py)
# and converts with logit parity (README table).
_ARCHS = tuple(
    [f'vit_{s}_patch{p}_{r}' for s, p, r in [
        ('tiny', 16, 224), ('tiny', 16, 384), ('small', 16, 224), ('small', 16, 384), ('small', 32, 224),
        ('small', 32, 384), ('base', 8, 224), ('base', 16, 224), ('base', 16, 384), ('base', 32, 224),
        ('base', 32, 384), ('large', 16, 224), ('large', 16, 384), ('large', 32, 384)]]
    + [f'deit_{s}_patch16_224' for s in ('tiny', 'small', 'base')] + ['deit_base_patch16_384']
    + [f'deit_{s}_distilled_patch16_224' for s in ('tiny', 'small', 'base')] + ['deit_base_distilled_patch16_384']
    + [f'deit3_{s}_patch16_{r}' for s, r in [('small', 224), ('base', 224), ('base', 384), ('large', 224)]]
    + [f'vit_{s}_patch14_{reg}dinov2' for s in ('small', 'base', 'large') for reg in ('', 'reg4_')]
    + ['vit_base_patch16_clip_224', 'vit_base_patch16_clip_384',
       'vit_base_patch16_clip_quickgelu_224', 'vit_base_patch16_siglip_224', 'vit_base_patch16_siglip_384']
    + [f'vit_so150m_patch16_reg4_gap_{r}' for r in (256, 384)]
    + [f'swin_{s}_patch4_window7_224' for s in ('tiny', 'small', 'base', 'large')]
    + ['swin_base_patch4_window12_384', 'swin_large_patch4_window12_384'] + list(EVA_ARCHS) + list(VIT_ARCHS) + list(NAFLEX_ARCHS))


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


def _pretrained_cfg(family: str, variants: list[str], size: str, img: int, tag: str
                    ) -> tuple[PretrainedCfg, Optional[int]]:
    """Preprocessing and class count implied by the weights' tag (timm's pretrained_cfg for that tag)."""
    kind = next((v for v in ('quickgelu', 'clip', 'siglip', 'dinov2', 'gap') if v in variants), family)
    tag = tag or DEFAULT_TAGS.get(kind, '')
    if kind in ('clip', 'quickgelu'):
        mean, std = CLIP_MEAN, CLIP_STD
    elif kind in ('siglip', 'gap') or (family == 'vit' and kind == 'vit' and not tag.startswith(('mae', 'fb_', 'dino'))):
        mean, std = INCEPTION_MEAN, INCEPTION_STD  # the original JAX ViT, AugReg and SigLIP use [-1, 1]
    else:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    crop_pct = 1.0 if img >= 384 or kind == 'dinov2' or tag.startswith('metaclip') else 0.9
    if kind in ('clip', 'quickgelu') and tag.endswith('ft_in12k_in1k'):
        crop_pct = 0.95 if img < 384 else 1.0
    if family == 'deit3' and 'in22k' in tag:
        crop_pct = 1.0
    if kind == 'siglip':
        crop_pct = 0.9  # timm's SigLIP configs keep 0.9 at every size
    if tag.startswith('sbb') and img < 384:
        crop_pct = 0.95
    num_classes: Optional[int] = None
    if tag == 'mae' or tag.endswith('orig_in21k') or kind in ('dinov2', 'siglip'):
        num_classes = 0  # headless feature extractors
    elif tag.endswith('in1k'):
        num_classes = 1000
    elif family == 'swin' and tag.endswith('in22k'):
        num_classes = 21841
    elif tag.endswith('_in21k'):
        num_classes = 21843
    elif tag.endswith('in12k'):
        num_classes = 11821
    elif kind in ('clip', 'quickgelu'):
        num_classes = CLIP_EMBED[size]
    # timm squashes (resizes without cropping) for its fine-tuned CLIP towers above 224
    squash = kind in ('clip', 'quickgelu') and img > 224 and '_ft_in' in tag
    return PretrainedCfg((3, img, img), mean, std, crop_pct, 'squash' if squash else 'center', tag=tag), num_classes


def _table_args(arch: str, tag: str) -> tuple[str, dict[str, Any], PretrainedCfg]:
    tags = NAMED_TAGS[arch]
    tag = tag or next(iter(tags))
    if tag not in tags:
        raise ValueError(f'unknown tag {tag!r} for {arch} (timm has: {", ".join(tags)})')
    num_classes, pre = tags[tag]
    family = 'eva' if arch in EVA_ARCHS else 'naflexvit' if arch in NAFLEX_ARCHS else 'vit'
    kwargs = dict({'eva': EVA_ARCHS, 'naflexvit': NAFLEX_ARCHS, 'vit': VIT_ARCHS}[family][arch], num_classes=num_classes)
    img = kwargs.get('img_size', 384 if family == 'naflexvit' else 224)
    return family, kwargs, PretrainedCfg((3, img, img), **{'mean': IMAGENET_MEAN, 'std': IMAGENET_STD, **pre}, tag=tag)


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
    if arch in NAMED_TAGS:
        return _table_args(arch, tag)
    parts = arch.split('_')
    family = parts.pop(0) if parts else ''
    if family not in FAMILIES:
        if any(n.startswith(f'{family}_') for n in NAMED_TAGS):  # eva02, naflexvit, aimv2: written-out names only
            raise _unknown(name, f'{family} models are listed by name: vitjax.list_models({family + "*"!r})')
        raise _unknown(name, f'family {family!r} is not one of {FAMILIES}')
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
    cfg, num_classes = _pretrained_cfg(family, variants, size, img, tag)
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    return ('swin' if family == 'swin' else 'vit'), kwargs, cfg


def build_model(name: str, num_classes: Optional[int] = None, img_size: Union[None, int, tuple] = None,
                **overrides: Any) -> Model:
    """The module for a timm name with overrides applied (no parameters)."""
    arch, kwargs, cfg = model_args(name)
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    if img_size is not None:
        kwargs['img_size'] = img_size
        cfg = cfg.at_size(img_size)
    cls = ARCHITECTURES[arch]
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f'{name}: {cls.__name__} has no option {", ".join(unknown)}')
    kwargs.update(overrides)
    return cls(**kwargs, pretrained_cfg=cfg)


def create_model(name: str, pretrained: Union[bool, str, None] = None, num_classes: Optional[int] = None,
                 img_size: Union[None, int, tuple] = None, rng: Optional[jax.Array] = None,
                 revision: Optional[str] = None, **overrides: Any) -> tuple[Model, dict]:
    """timm's `create_model`, returning `(model, variables)`.

    `pretrained=True` loads the timm weights of `name` (`arch.tag`; the arch's default tag without one) from the
    Hugging Face hub, without torch (vitjax/hub.py; `revision` pins a hub commit, `in_chans` adapts the first
    conv as timm does). `pretrained=DIR` loads a directory written by `porting.convert` or `train.py`. Either
    way the head is re-initialised when `num_classes` differs and position embeddings are resampled when
    `img_size` differs. Otherwise the variables are a fresh initialisation from `rng`.
    """
    rng = jax.random.PRNGKey(0) if rng is None else rng
    if pretrained is True:
        from vitjax import hub
        if not hub.is_hub_name(name):
            hub.repo_of(name)  # the reason it has no hub weights, with close matches
        return hub.load(name if hub.is_hub_name(name) else f'{hub.PREFIX}{name}', num_classes=num_classes,
                        img_size=img_size, rng=rng, revision=revision, **overrides)
    if pretrained:
        from vitjax import loader
        stored = loader.read_config(pretrained, revision).get('model_name') or ''
        if stored and split_tag(name)[0] != split_tag(stored)[0]:
            raise ValueError(f'{pretrained} holds {stored!r}, not {name!r}')
        return loader.load(pretrained, num_classes=num_classes, img_size=img_size, rng=rng, revision=revision,
                           **overrides)
    model = build_model(name, num_classes, img_size, **overrides)
    return model, init_variables(model, rng)
