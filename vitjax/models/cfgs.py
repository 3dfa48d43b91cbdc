"""The layers' sub-configs: what one attention, MLP or norm is, as small frozen dataclasses whose fields carry the
model's own names, so `view(AttnCfg, model)` builds one and an option keeps its name from config.json down to
the layer that reads it (vitjax/models/layers.py takes them whole)."""
from __future__ import annotations

import dataclasses
from typing import Any, Optional


@dataclasses.dataclass(frozen=True)
class NormCfg:
    """Every norm of a block: timm's norm_layer and its eps."""
    norm_layer: str = 'layernorm'  # 'layernorm' | 'rmsnorm'
    norm_eps: float = 1e-6


@dataclasses.dataclass(frozen=True)
class AttnCfg:
    """What one self-attention layer is. Field names are the model's own (`view` builds one from a model), so an
    option keeps its name from config.json down to the layer that reads it."""
    num_heads: int = 12
    qkv_bias: bool = True
    key_bias: bool = True  # False: query and value biases only (Eva, BEiT)
    qk_norm: bool = False
    scale_attn_norm: bool = False  # a norm on the attention output before its projection (Eva's scale_attn_inner)
    proj_bias: bool = True
    rope_rotate_half: bool = False  # the rotary layout: halves (DINOv3, PE) or interleaved pairs (EVA-02)
    num_prefix_tokens: int = 0  # tokens before the patches; RoPE leaves them as they are
    # A learned relative-position bias on the logits ('' none | 'bias' a table: BEiT | 'mlp' timm's log-coordinate
    # MLP: vision_transformer_relpos | 'decomposed' SAM's per-axis tables read by the queries), this layer's own
    # unless the model shares one (then passed in)
    rel_pos_type: str = ''
    rel_pos_dim: Optional[int] = None  # the MLP's hidden width (None: timm's 128)
    shared_rel_pos: bool = False
    grid_size: tuple[int, int] = (14, 14)  # the patch grid the bias covers
    attn_drop_rate: float = 0.
    proj_drop_rate: float = 0.


@dataclasses.dataclass(frozen=True)
class MlpCfg:
    """What one MLP is; field names are the model's own, as AttnCfg's."""
    mlp_ratio: float = 4.  # hidden width / input width
    mlp_layer: str = 'mlp'  # 'mlp' | 'swiglu' | 'swiglu_packed'
    act_layer: str = 'gelu'
    scale_mlp_norm: bool = False  # a norm before fc2 (Eva's scale_mlp, NormFormer's)
    proj_bias: bool = True
    proj_drop_rate: float = 0.


def view(cfg_cls: type, model: Any) -> Any:
    """The sub-config `cfg_cls` holding `model`'s fields (or properties) of the same names."""
    return cfg_cls(**{f.name: getattr(model, f.name) for f in dataclasses.fields(cfg_cls)})
