"""Hugging Face `ViTForImageClassification` / `ViTModel` (the google/vit-base-patch16-224 layout on the hub), the
torch side: the config reader and a parity adapter (the name table is vitjax/weights/hf_vit.py). Checkpoints are HF
model directories."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from porting.source import Source
from vitjax import weights
from vitjax.weights.engine import UnsupportedModel


def is_hf_dir(path) -> bool:
    return path is not None and (Path(path) / 'config.json').is_file()


def load(path):
    """The HF model in its own class, from a local directory (config.json + weights)."""
    import json
    from transformers import ViTForImageClassification, ViTModel
    arch = (json.loads((Path(path) / 'config.json').read_text()).get('architectures') or ['ViTModel'])[0]
    if arch == 'ViTForImageClassification':
        return ViTForImageClassification.from_pretrained(str(path)).eval()
    pooler = any(k.startswith('pooler.') for k in read_state(path))
    return ViTModel.from_pretrained(str(path), add_pooling_layer=pooler).eval()


def read_state(path) -> dict:
    """The checkpoint's tensors in the hub layout, without the `vit.` prefix of the classification model."""
    from safetensors.torch import load_file
    files = sorted(Path(path).glob('*.safetensors'))
    if not files:
        raise ValueError(f'{path} has no .safetensors weights (save with safe_serialization, the default)')
    state = {}
    for f in files:
        state.update(load_file(str(f)))
    return {k.removeprefix('vit.'): v for k, v in state.items()}


def is_model(model) -> bool:
    return type(model).__name__ in ('ViTForImageClassification', 'ViTModel')


def state_of(model) -> dict:
    """The tensors of the directory `model` was loaded from: the files keep the hub layout, while the module
    names in memory change across transformers versions (v5 renames them on load)."""
    return read_state(model.name_or_path)


def torch_config(model) -> dict[str, Any]:
    c = model.config
    if c.hidden_act != 'gelu':
        raise UnsupportedModel(f'hidden_act={c.hidden_act!r}')
    if getattr(model, 'pooler', None) is not None:
        raise UnsupportedModel('the ViTModel pooler (dense + tanh); load with add_pooling_layer=False')
    head = getattr(model, 'classifier', None)
    return dict(img_size=c.image_size, patch_size=c.patch_size, in_chans=c.num_channels,
                num_classes=head.out_features if head is not None and hasattr(head, 'out_features') else 0,
                global_pool='token', embed_dim=c.hidden_size, depth=c.num_hidden_layers,
                num_heads=c.num_attention_heads, mlp_ratio=c.intermediate_size / c.hidden_size, qkv_bias=c.qkv_bias,
                norm_eps=c.layer_norm_eps, act_layer='gelu')


PRETRAINED_CFG = dict(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], crop_pct=1.0, interpolation='bilinear', tag='hf')


def pretrained_cfg(model) -> dict[str, Any]:
    return dict(PRETRAINED_CFG, input_size=[3, model.config.image_size, model.config.image_size])


class ParityAdapter:
    def __init__(self, model):
        self.model = model

    def eval(self):
        self.model.eval()
        return self

    def forward_features(self, x):
        vit = getattr(self.model, 'vit', self.model)
        return vit(pixel_values=x).last_hidden_state  # after the final layernorm

    def forward_head(self, x, pre_logits: bool = False):
        x = x[:, 0]
        head = getattr(self.model, 'classifier', None)
        return x if pre_logits or head is None else head(x)


def load_dir(name: str, checkpoint: Optional[str], state: Optional[dict] = None, **kwargs):
    if checkpoint is None:
        raise ValueError('a Hugging Face source is a local model directory: pass --checkpoint DIR')
    if not is_hf_dir(checkpoint):
        raise ValueError(f'{checkpoint} is not a Hugging Face model directory (config.json + weights)')
    if kwargs:
        raise ValueError(f'Hugging Face sources take no model arguments, got {sorted(kwargs)}')
    return load(checkpoint)


SOURCES = (Source(weights.get('hf', 'vit'), is_model, torch_config, pretrained_cfg, load_dir,
                  lambda path, state: is_hf_dir(path), ParityAdapter, state_of),)
