"""torchvision VisionTransformer (vit_b_16, vit_l_16, ...), the torch side: the config reader and a parity adapter
(the name table is vitjax/weights/torchvision_vit.py)."""
from __future__ import annotations

from typing import Any, Optional

from porting.source import Source, head_classes, load_strict, read_state_dict
from vitjax import weights
from vitjax.weights.engine import UnsupportedModel


def is_model(model) -> bool:
    return type(model).__name__ == 'VisionTransformer' and type(model).__module__.startswith('torchvision.')


def is_state(path, state) -> bool:
    return bool(state) and any(k.startswith('encoder.layers.encoder_layer_') for k in state)


def torch_config(model) -> dict[str, Any]:
    if not is_model(model):
        raise UnsupportedModel(f'{type(model).__name__} is not a torchvision VisionTransformer')
    if hasattr(model.heads, 'pre_logits'):
        raise UnsupportedModel('torchvision representation_size (pre_logits head)')
    if not hasattr(model.heads, 'head'):
        raise UnsupportedModel('torchvision model without a classification head')
    return dict(img_size=model.image_size, patch_size=model.patch_size, num_classes=model.num_classes,
                global_pool='token', embed_dim=model.hidden_dim, depth=len(model.encoder.layers),
                num_heads=model.encoder.layers[0].num_heads, mlp_ratio=model.mlp_dim / model.hidden_dim,
                norm_eps=model.encoder.ln.eps, act_layer='gelu')


# torchvision's ImageNet transforms: resize 256, center crop 224, bilinear.
PRETRAINED_CFG = dict(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], crop_pct=0.875,
                      interpolation='bilinear', tag='torchvision')


def pretrained_cfg(model) -> dict[str, Any]:
    return dict(PRETRAINED_CFG, input_size=[3, model.image_size, model.image_size])


class ParityAdapter:
    """timm's forward_features / forward_head on a torchvision ViT, for `porting.parity.check`."""

    def __init__(self, model):
        self.model = model

    def eval(self):
        self.model.eval()
        return self

    def forward_features(self, x):
        m = self.model
        x = m._process_input(x)
        x = __import__('torch').cat([m.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return m.encoder(x)  # ends with encoder.ln, like timm's final norm

    def forward_head(self, x, pre_logits: bool = False):
        x = x[:, 0]
        return x if pre_logits else self.model.heads(x)


def load(name: str, checkpoint: Optional[str], state: Optional[dict] = None, **kwargs):
    """torchvision's model (vit_b_16, ...): DEFAULT hub weights, or a checkpoint loaded strictly."""
    import torchvision
    if checkpoint is None:
        return torchvision.models.get_model(name, weights='DEFAULT', **kwargs).eval()
    state = read_state_dict(checkpoint) if state is None else state
    classes = head_classes(state, 'heads.head.weight')
    if classes is not None:
        kwargs.setdefault('num_classes', classes)
    return load_strict(torchvision.models.get_model(name, weights=None, **kwargs), state, name, checkpoint)


SOURCES = (Source(weights.get('torchvision', 'vit'), is_model, torch_config, pretrained_cfg, load, is_state,
                  ParityAdapter),)
