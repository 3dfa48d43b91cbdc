"""Swin Transformer V2 (Liu et al. 2022), mirroring timm's `SwinTransformerV2`: Swin's stages and windows
(vitjax/models/swin.py) with three changes that let it scale in size and resolution:

- scaled cosine attention: cos(q, k) times a learned per-head temperature exp(min(logit_scale, log 100));
- a continuous position bias: a 2 -> 512 -> heads MLP on log-spaced relative offsets, 16 * sigmoid of it,
  so the bias of any window comes from the same weights (no table to resize; the `windowXtoY` tags
  fine-tuned at window Y keep the offsets normalised by their pre-training window X);
- residual post-norm: x + norm(attn(x)), x + norm(mlp(x)); patch merging reduces, then normalises.

Parameter names follow timm (layers_i/blocks_j/attn/{q_bias, v_bias, logit_scale, cpb_mlp_0, cpb_mlp_2}).
"""
from __future__ import annotations

import math
from typing import ClassVar, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.models.cfgs import MlpCfg
from vitjax.models.family import MAX_WINDOW, Family, register
from vitjax.models.layers import Mlp, dense_init, layer_norm
from vitjax.models.relpos import relative_position_index
from vitjax.models.swin import (PatchMerging, SwinBlock, SwinTransformer, WindowAttention, merge_2x2,
                                swin_problems, window_attention_out)
from vitjax.models.vit import to_2tuple


def log_spaced_coords(window: tuple[int, int], pretrained_window: tuple[int, int]) -> np.ndarray:
    """((2Wh-1) * (2Ww-1), 2) relative offsets, normalised by the pre-training window (else this one) - 1 to
    [-8, 8], then sign(x) log2(1 + |x|) / 3: timm's relative_coords_table, the CPB MLP's input."""
    norm = pretrained_window if pretrained_window[0] > 0 else window
    axes = [np.arange(-(w - 1), w, dtype=np.float32) / max(n - 1, 1) for w, n in zip(window, norm)]
    c = np.stack(np.meshgrid(*axes, indexing='ij'), axis=-1) * 8
    return (np.sign(c) * np.log2(np.abs(c) + 1.0) / np.log2(8)).reshape(-1, 2).astype(np.float32)


class CosineWindowAttention(WindowAttention):
    """Window attention with cosine similarity, a learned logit scale and the CPB-MLP position bias (V1's fields;
    head_dim stays None)."""
    pretrained_window_size: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[np.ndarray] = None, train: bool = False) -> jax.Array:
        bw, n, dim = x.shape
        qkv = nn.Dense(3 * dim, use_bias=False, dtype=self.dtype, kernel_init=dense_init, name='qkv')(x)
        if self.qkv_bias:  # timm's q_bias, a zero k bias (a buffer), v_bias
            q_bias = self.param('q_bias', nn.initializers.zeros, (dim,))
            v_bias = self.param('v_bias', nn.initializers.zeros, (dim,))
            qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
        q, k, v = qkv.reshape(bw, n, 3, self.num_heads, -1).transpose(2, 0, 3, 1, 4)  # each (B*nW, h, N, hd)
        # unit vectors in f32 (torch's normalize, eps 1e-12), their products in the compute dtype into f32 logits,
        # as timm's autocast; the CPB MLP's few rows stay f32
        q, k = (t.astype(jnp.float32) for t in (q, k))
        q, k = ((t / jnp.maximum(jnp.linalg.norm(t, axis=-1, keepdims=True), 1e-12)).astype(self.dtype)
                for t in (q, k))
        logit_scale = self.param('logit_scale', nn.initializers.constant(math.log(10)), (self.num_heads, 1, 1))
        attn = jnp.matmul(q, k.swapaxes(-2, -1), preferred_element_type=jnp.float32)
        attn = attn * jnp.exp(jnp.minimum(logit_scale, math.log(100)))
        attn = attn + 16 * jax.nn.sigmoid(self.position_bias())
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.reshape(-1, nw, self.num_heads, n, n) + jnp.asarray(mask, attn.dtype)[None, :, None]
            attn = attn.reshape(-1, self.num_heads, n, n)
        return window_attention_out(self, jax.nn.softmax(attn, axis=-1), v, dim, train)

    def position_bias(self) -> jax.Array:
        """(heads, N, N) before the sigmoid: the CPB MLP on every relative offset, gathered per token pair."""
        wh, ww = self.window_size
        coords = jnp.asarray(log_spaced_coords(self.window_size, self.pretrained_window_size))
        hidden = nn.relu(nn.Dense(512, dtype=jnp.float32, name='cpb_mlp_0')(coords))
        table = nn.Dense(self.num_heads, use_bias=False, dtype=jnp.float32, name='cpb_mlp_2')(hidden)
        n = wh * ww
        return table[relative_position_index(wh, ww).reshape(-1)].reshape(n, n, -1).transpose(2, 0, 1)


class SwinV2Block(SwinBlock):
    """Swin's (shifted-)window block with cosine attention and residual post-norm."""
    pretrained_window_size: Union[int, tuple[int, int]] = 0

    def window_attention(self) -> nn.Module:
        return CosineWindowAttention(self.num_heads, self.window_size, qkv_bias=self.qkv_bias,
                                     attn_drop=self.attn_drop, proj_drop=self.proj_drop, dtype=self.dtype,
                                     pretrained_window_size=to_2tuple(self.pretrained_window_size), name='attn')

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        # the post-norms write into the f32 residual stream, so they run in f32
        drop_path = nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3))
        y = layer_norm(self.norm_eps, jnp.float32, 'norm1')(self._attn(x, train))
        x = x + drop_path(y, deterministic=not train)
        y = Mlp(MlpCfg(mlp_ratio=self.mlp_ratio, act_layer=self.act_layer, proj_drop_rate=self.proj_drop),
                dtype=self.dtype, name='mlp')(x, train)
        return x + drop_path(layer_norm(self.norm_eps, jnp.float32, 'norm2')(y), deterministic=not train)


class PatchMergingV2(PatchMerging):
    """2x2 neighbourhood -> channels, linear, then the norm (V1 normalises first)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype, kernel_init=dense_init,
                     name='reduction')(merge_2x2(x))
        return layer_norm(self.norm_eps, jnp.float32, 'norm')(y)


class SwinTransformerV2(SwinTransformer):
    """timm's SwinTransformerV2: SwinTransformer's fields (head_dim stays None: V2 heads split the width) and
    the window each stage was pre-trained at, which normalises its CPB offsets (0: the stage's own window)."""
    pretrained_window_sizes: Sequence[Union[int, Sequence[int]]] = (0, 0, 0, 0)
    block_cls: ClassVar[type] = SwinV2Block
    merge_cls: ClassVar[type] = PatchMergingV2

    def block_args(self, stage: int) -> tuple:
        return (('pretrained_window_size', to_2tuple(self.pretrained_window_sizes[stage])),)


def swin_v2_problems(m: SwinTransformerV2) -> list[str]:
    p = swin_problems(m)
    pws = m.pretrained_window_sizes
    flat = [x for w in pws for x in ((w,) if isinstance(w, int) else w)]
    if len(pws) < len(m.depths) or not all(0 <= w <= MAX_WINDOW for w in flat):
        p.append(f'pretrained_window_sizes={tuple(pws)}: one per stage ({len(m.depths)}), each in 0..{MAX_WINDOW} '
                 '(0: the stage\'s own window)')
    if m.head_dim is not None:
        p.append(f'head_dim={m.head_dim}: Swin V2 splits the width over its heads (null)')
    return p


register(Family('swinv2', SwinTransformerV2, swin_v2_problems))
