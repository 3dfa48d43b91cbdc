"""timm's ViT hybrids (vision_transformer_hybrid: VisionTransformer with a ResNetV2 HybridEmbed): the name table and
the config reader (a row of porting.sources). The Flax side is vitjax.models.hybrid.VisionTransformerHybrid."""
from __future__ import annotations

from typing import Any

from porting.engine import CONV, Rule, norm, require
from porting.source import Source, load_timm, timm_class
from porting.timm_vit import CREATE_KWARGS as VIT_CREATE_KWARGS
from porting.timm_vit import RULES as VIT_RULES
from porting.timm_vit import model_config as vit_model_config
from porting.timm_vit import pretrained_cfg, reference_state

_B = 'patch_embed.backbone.stages.{i}.blocks.{j}'
_F = 'patch_embed/backbone/stages_{i}_blocks_{j}'

BACKBONE = (
    # the stem is the backbone itself when there are no stages (vit_tiny_r_s16_p8), else backbone.stem
    *(r for p in ('patch_embed.backbone.stem', 'patch_embed.backbone')
      for r in (Rule(f'{p}.conv.weight', 'patch_embed/backbone/stem/conv/kernel', CONV),
                *norm(f'{p}.norm', 'patch_embed/backbone/stem/norm'))),
    *(r for n in ('1', '2', '3')
      for r in (Rule(f'{_B}.conv{n}.weight', f'{_F}/conv{n}/kernel', CONV), *norm(f'{_B}.norm{n}', f'{_F}/norm{n}'))),
    Rule(f'{_B}.downsample.conv.weight', f'{_F}/downsample/conv/kernel', CONV),
    *norm(f'{_B}.downsample.norm', f'{_F}/downsample/norm'),
)
RULES = (*VIT_RULES, *BACKBONE)

# timm builds the backbone from the model name; the ViT fields go by name as for VisionTransformer
CREATE_KWARGS = tuple(k for k in VIT_CREATE_KWARGS if k not in ('pre_norm', 'dynamic_img_size'))


def _layers(backbone) -> tuple[int, ...]:
    """Blocks per stage of timm's ResNetV2 (non-pre-activation, 'same' stem, StdConv2dSame eps 1e-8, GroupNorm
    32), or () for its stem alone; anything else is named."""
    from timm.layers import StdConv2dSame
    from timm.models.resnetv2 import Bottleneck, ResNetV2
    import torch.nn as tnn
    convs = [m for m in backbone.modules() if isinstance(m, tnn.Conv2d)]
    require(all(isinstance(c, StdConv2dSame) and c.eps == 1e-8 and c.bias is None for c in convs),
            'a backbone conv other than StdConv2dSame(eps=1e-8, no bias)')
    norms = [m for m in backbone.modules() if 'GroupNorm' in type(m).__name__]
    require(all(n.num_groups == 32 and n.eps == 1e-5 for n in norms), 'GroupNorm other than 32 groups, eps 1e-5')
    stem = backbone.stem if isinstance(backbone, ResNetV2) else backbone
    require(tuple(type(m).__name__ for m in stem) == ('StdConv2dSame', 'GroupNormAct', 'MaxPool2dSame') and
            stem[0].out_channels == 64 and stem[0].kernel_size == (7, 7), "a stem other than timm's 'same' 7x7")
    if not isinstance(backbone, ResNetV2):
        return ()
    require(all(isinstance(b, Bottleneck) for s in backbone.stages for b in s.blocks), 'pre-activation blocks')
    widths = tuple(s.blocks[-1].conv3.out_channels for s in backbone.stages)
    require(widths == (256, 512, 1024, 2048)[:len(widths)], f'stage widths {widths} (width_factor)')
    require(all(b.conv2.dilation == (1, 1) for s in backbone.stages for b in s.blocks), 'a dilated backbone')
    return tuple(len(s.blocks) for s in backbone.stages)


def model_config(model) -> dict[str, Any]:
    """VisionTransformer's reading of the model plus the backbone's stages; what vitjax lacks is named."""
    from timm.layers import HybridEmbed
    pe = model.patch_embed
    require(type(pe) is HybridEmbed, f'patch embedding {type(pe).__name__}')
    require(type(pe.proj).__name__ == 'Conv2d' and pe.proj.bias is not None,
            'a hybrid embedding without its projection conv (MobileCLIP: vit_base_mci)')
    require(not pe.dynamic_img_pad, 'dynamic_img_pad')
    stem_conv = next(m for m in pe.backbone.modules() if type(m).__name__ == 'StdConv2dSame')
    # the ViT reader reads in_chans off the projection, which here takes the backbone's features
    return dict(vit_model_config(model), in_chans=stem_conv.in_channels, backbone_layers=_layers(pe.backbone))


def _is_hybrid(m) -> bool:
    return timm_class('VisionTransformer')(m) and type(m.patch_embed).__name__ == 'HybridEmbed'


SOURCES = (Source('timm', 'hybrid_vit', RULES, _is_hybrid, model_config, pretrained_cfg, load_timm,
                  lambda path, state: True, create_kwargs=CREATE_KWARGS, resize_state=reference_state,
                  timm_modules=('vision_transformer_hybrid',)),)
