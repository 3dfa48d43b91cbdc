"""timm's ViT hybrids (vision_transformer_hybrid: VisionTransformer with a ResNetV2 HybridEmbed), the torch side:
the config reader (a row of porting.sources; the name table is vitjax/weights/timm_hybrid_vit.py). The Flax side is
vitjax.models.hybrid.VisionTransformerHybrid."""
from __future__ import annotations

from typing import Any

from porting.source import Source, load_timm, timm_class
from porting.timm_vit import torch_config as vit_torch_config
from porting.timm_vit import pretrained_cfg, reference_state
from vitjax import weights
from vitjax.weights.engine import require


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


def torch_config(model) -> dict[str, Any]:
    """VisionTransformer's reading of the model plus the backbone's stages; what vitjax lacks is named."""
    from timm.layers import HybridEmbed
    pe = model.patch_embed
    require(type(pe) is HybridEmbed, f'patch embedding {type(pe).__name__}')
    require(type(pe.proj).__name__ == 'Conv2d' and pe.proj.bias is not None,
            'a hybrid embedding without its projection conv (MobileCLIP: vit_base_mci)')
    require(not pe.dynamic_img_pad, 'dynamic_img_pad')
    stem_conv = next(m for m in pe.backbone.modules() if type(m).__name__ == 'StdConv2dSame')
    # the ViT reader reads in_chans off the projection, which here takes the backbone's features
    return dict(vit_torch_config(model), in_chans=stem_conv.in_channels, backbone_layers=_layers(pe.backbone))


def _is_hybrid(m) -> bool:
    return timm_class('VisionTransformer')(m) and type(m.patch_embed).__name__ == 'HybridEmbed'


SOURCES = (Source(weights.get('timm', 'hybrid_vit'), _is_hybrid, torch_config, pretrained_cfg, load_timm,
                  lambda path, state: True, resize_state=reference_state),)
