"""Transformer building blocks shared by the ViT family (names follow timm: norm1, attn, ls1, mlp, ...)."""
from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


# timm's nn.GELU is the exact erf form; Flax's default is the tanh approximation (~1e-3 off on ViT-B logits).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'gelu': functools.partial(jax.nn.gelu, approximate=False),
    'gelu_tanh': functools.partial(jax.nn.gelu, approximate=True),
    'quick_gelu': quick_gelu,
}


def layer_norm(eps: float, dtype: Dtype, name: str) -> nn.LayerNorm:
    # Two-pass variance (as PyTorch computes it); the fast E[x²]-E[x]² form loses digits on large activations.
    return nn.LayerNorm(epsilon=eps, dtype=dtype, use_fast_variance=False, name=name)


dense_init = nn.initializers.xavier_uniform()


class Attention(nn.Module):
    """Multi-head self-attention with per-head query/key/value kernels of shape (D, heads, head_dim)."""
    num_heads: int
    qkv_bias: bool = True
    qk_norm: bool = False
    attn_drop: float = 0.
    proj_drop: float = 0.
    norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        dim = x.shape[-1]
        if dim % self.num_heads:
            raise ValueError(f'embed_dim {dim} is not divisible by num_heads {self.num_heads}')
        head_dim = dim // self.num_heads
        proj = functools.partial(nn.DenseGeneral, features=(self.num_heads, head_dim), use_bias=self.qkv_bias,
                                 dtype=self.dtype, kernel_init=dense_init)
        q, k, v = (proj(name=n)(x) for n in ('query', 'key', 'value'))  # (B, N, H, hd)
        if self.qk_norm:
            q = layer_norm(self.norm_eps, self.dtype, 'q_norm')(q)
            k = layer_norm(self.norm_eps, self.dtype, 'k_norm')(k)
        # The explicit form when the weights are needed: attention dropout, or `mutable=['intermediates']`
        # (attention maps: each block sows its (B, heads, N, N) softmax as 'attn').
        if (train and self.attn_drop > 0.) or self.is_mutable_collection('intermediates'):
            logits = jnp.einsum('bqhd,bkhd->bhqk', q * head_dim ** -0.5, k)
            weights = jax.nn.softmax(logits, axis=-1)
            self.sow('intermediates', 'attn', weights)
            weights = nn.Dropout(self.attn_drop)(weights, deterministic=not train)
            o = jnp.einsum('bhqk,bkhd->bqhd', weights, v)
        else:
            o = jax.nn.dot_product_attention(q, k, v)
        x = nn.DenseGeneral(dim, axis=(-2, -1), dtype=self.dtype, kernel_init=dense_init, name='out')(o)
        return nn.Dropout(self.proj_drop)(x, deterministic=not train)


class Mlp(nn.Module):
    hidden_features: int
    act_layer: str = 'gelu'
    drop: float = 0.
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        dim = x.shape[-1]
        x = nn.Dense(self.hidden_features, dtype=self.dtype, kernel_init=dense_init, name='fc1')(x)
        x = nn.Dropout(self.drop)(ACTIVATIONS[self.act_layer](x), deterministic=not train)
        x = nn.Dense(dim, dtype=self.dtype, kernel_init=dense_init, name='fc2')(x)
        return nn.Dropout(self.drop)(x, deterministic=not train)


class LayerScale(nn.Module):
    init_values: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gamma = self.param('gamma', nn.initializers.constant(self.init_values), (x.shape[-1],))
        return x * gamma.astype(x.dtype)


class Block(nn.Module):
    """Pre-norm transformer block: x + drop_path(ls1(attn(norm1(x)))), then the same with the MLP."""
    num_heads: int
    mlp_hidden: int
    qkv_bias: bool = True
    qk_norm: bool = False
    init_values: Optional[float] = None
    proj_drop: float = 0.
    attn_drop: float = 0.
    drop_path: float = 0.
    norm_eps: float = 1e-6
    act_layer: str = 'gelu'
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        # Stochastic depth: drop the whole residual branch per sample (dims 1, 2 broadcast), rescaled by 1/keep.
        drop_path = nn.Dropout(self.drop_path, broadcast_dims=(1, 2))
        ls = (lambda n: LayerScale(self.init_values, name=n)) if self.init_values is not None else (
            lambda n: (lambda y: y))
        y = layer_norm(self.norm_eps, self.dtype, 'norm1')(x)
        y = Attention(self.num_heads, self.qkv_bias, self.qk_norm, self.attn_drop, self.proj_drop, self.norm_eps,
                      self.dtype, name='attn')(y, train)
        x = x + drop_path(ls('ls1')(y), deterministic=not train)
        y = layer_norm(self.norm_eps, self.dtype, 'norm2')(x)
        y = Mlp(self.mlp_hidden, self.act_layer, self.proj_drop, self.dtype, name='mlp')(y, train)
        return x + drop_path(ls('ls2')(y), deterministic=not train)


class AttentionPoolLatent(nn.Module):
    """Multihead attention pooling (MAP, SigLIP's head): one learned latent query attends over the tokens,
    then a residual MLP; returns (B, D). Mirrors timm's AttentionPoolLatent with latent_len=1."""
    num_heads: int
    mlp_hidden: int
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    act_layer: str = 'gelu'
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, _, dim = x.shape
        head_dim = dim // self.num_heads
        latent = self.param('latent', nn.initializers.normal(dim ** -0.5), (1, 1, dim))
        proj = functools.partial(nn.DenseGeneral, features=(self.num_heads, head_dim), use_bias=self.qkv_bias,
                                 dtype=self.dtype, kernel_init=dense_init)
        q = proj(name='query')(jnp.broadcast_to(latent, (b, 1, dim)).astype(x.dtype))
        o = jax.nn.dot_product_attention(q, proj(name='key')(x), proj(name='value')(x))
        y = nn.DenseGeneral(dim, axis=(-2, -1), dtype=self.dtype, kernel_init=dense_init, name='out')(o)
        y = y + Mlp(self.mlp_hidden, self.act_layer, dtype=self.dtype, name='mlp')(
            layer_norm(self.norm_eps, self.dtype, 'norm')(y))
        return y[:, 0]


def resample_abs_pos_embed(posemb: jax.Array, new_size: Sequence[int], old_size: Optional[Sequence[int]] = None,
                           num_prefix_tokens: int = 1) -> jax.Array:
    """Resize a (1, prefix + H*W, D) position embedding to a new patch grid, prefix tokens untouched.

    Bicubic with antialiasing on the grid, matching timm's `resample_abs_pos_embed` (PyTorch's antialiased
    bicubic is the Keys kernel with a=-0.5, renormalised at the borders, which is what jax.image.resize does).
    """
    new_size = tuple(int(s) for s in new_size)
    num_pos = posemb.shape[1] - num_prefix_tokens
    if old_size is None:
        side = int(round(num_pos ** 0.5))
        if side * side != num_pos:
            raise ValueError(f'cannot infer a square grid from {num_pos} position embeddings; pass old_size')
        old_size = (side, side)
    old_size = tuple(int(s) for s in old_size)
    if old_size[0] * old_size[1] != num_pos:
        raise ValueError(f'position embedding has {num_pos} grid tokens, not {old_size[0]}x{old_size[1]}')
    if new_size == old_size:
        return posemb
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, *old_size, dim).astype(jnp.float32)
    grid = jax.image.resize(grid, (1, *new_size, dim), method='cubic', antialias=True)
    grid = grid.reshape(1, new_size[0] * new_size[1], dim).astype(posemb.dtype)
    return jnp.concatenate([prefix, grid], axis=1)


def feature_take_indices(num_features: int, indices: Union[None, int, Sequence[int]] = None) -> list[int]:
    """timm's convention: None -> all, int n -> the last n, sequence -> those (negative from the end)."""
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f'last-n ({indices}) is out of range (1 to {num_features})')
        return [num_features - indices + i for i in range(indices)]
    take = []
    for i in indices:
        idx = num_features + i if i < 0 else i
        if not 0 <= idx < num_features:
            raise ValueError(f'feature index {i} is out of range (0 to {num_features - 1})')
        take.append(idx)
    return take
