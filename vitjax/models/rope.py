"""2-D rotary position embeddings (RoPE) of timm's Eva family (timm/layers/pos_embed_sincos.py).

Three kinds, as `Eva` builds them through `create_rope_embed`:
  'cat'    RotaryEmbeddingCat (EVA-02, RoPE-ViT axial, PE): fixed inverse-frequency bands over patch indices.
  'mixed'  RotaryEmbeddingMixed (RoPE-ViT mixed): learned (2, depth, num_heads, head_dim // 2) frequencies.
  'dinov3' RotaryEmbeddingDinoV3: fixed periods over 0.5-centred coordinates normalised to [-1, 1].

Every table is a function of the (H, W) patch grid alone: timm's cached `feat_shape` embedding, its
`update_feat_shape` rebuild and its `dynamic_img_size` rebuild all compute the same thing, and `ref_feat_shape`
(the pretraining grid) stays fixed. The tables that do not depend on params are built in numpy, replaying timm's
float32 operations step by step, so that the rounding of the angles matches (an angle of ~24 has a float32 ulp
of ~2e-6, which a float64 computation would not reproduce).
"""
from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ('cat', 'mixed', 'dinov3')
f32 = np.float32


def _build_grid(feat_shape: tuple[int, int], grid_type: str = 'index',
                ref_feat_shape: Optional[tuple[int, int]] = None, grid_offset: float = 0.,
                grid_indexing: str = 'ij') -> np.ndarray:
    """(H, W, 2) float32 coordinates; the channels are (h, w) for 'ij' and (w, h) for 'xy', as in timm."""
    if grid_indexing == 'xy':
        feat_shape = feat_shape[::-1]
        ref_feat_shape = ref_feat_shape[::-1] if ref_feat_shape is not None else None
    if grid_type == 'centered':  # DINOv3, normalize_coords='separate' (the only one Eva uses)
        t = [(np.arange(0.5, s, dtype=f32) + f32(grid_offset)) / f32(s) for s in feat_shape]
    else:
        t = [np.arange(s, dtype=f32) + f32(grid_offset) for s in feat_shape]
    if ref_feat_shape is not None:
        # EVA's resize rule: positions of the new grid are rescaled onto the pretraining grid.
        t = [x / f32(f) * f32(r) for x, f, r in zip(t, feat_shape, ref_feat_shape)]
    grid = np.stack(np.meshgrid(*t, indexing=grid_indexing), axis=-1)
    return f32(2.) * grid - f32(1.) if grid_type == 'centered' else grid


def _rope_layout(x: np.ndarray, rotate_half: bool) -> np.ndarray:
    # half: [f0, f1, .., f0, f1, ..] for rope_rotate_half(); interleaved: [f0, f0, f1, f1, ..] for rot().
    return np.concatenate([x, x], -1) if rotate_half else np.repeat(x, 2, -1)


def sin_cos_cat(angles: np.ndarray, rotate_half: bool) -> np.ndarray:
    # sin / cos of the float32 angles in float64, rounded once: within an ulp of torch's float32 sin / cos.
    a = angles.astype(np.float64)
    return np.concatenate([_rope_layout(np.sin(a), rotate_half), _rope_layout(np.cos(a), rotate_half)],
                          -1).astype(f32)


def pow_f32(base: float, exp: np.ndarray) -> np.ndarray:
    # torch's float32 pow (SLEEF on x86, 1-ulp bound, CPU dependent) cannot be replayed bit for bit; the
    # correctly rounded power is within an ulp of it, where numpy's float32 pow is off by an ulp 20x as often.
    return np.power(np.float64(f32(base)), exp.astype(np.float64)).astype(f32)


def freq_bands(num_bands: int, temperature: float) -> np.ndarray:
    """timm's `freq_bands(step=1)`, the bands of `_build_bands(in_pixels=False)`."""
    return f32(1.) / pow_f32(temperature, np.arange(num_bands, dtype=f32) / f32(num_bands))


def init_random_2d_freqs(key: jax.Array, head_dim: int, depth: int, num_heads: int,
                         temperature: float = 10.) -> jax.Array:
    """(2, depth, num_heads, head_dim // 2): one random rotation of the axial bands per block and head."""
    mag = 1. / (temperature ** (jnp.arange(0, head_dim, 4, dtype=jnp.float32) / head_dim))
    angles = jax.random.uniform(key, (depth, num_heads, 1), jnp.float32) * 2 * jnp.pi
    fx = jnp.concatenate([mag * jnp.cos(angles), mag * jnp.cos(angles + jnp.pi / 2)], -1)
    fy = jnp.concatenate([mag * jnp.sin(angles), mag * jnp.sin(angles + jnp.pi / 2)], -1)
    return jnp.stack([fx, fy], 0)


def get_mixed_freqs(freqs: jax.Array, t_x: np.ndarray, t_y: np.ndarray) -> jax.Array:
    """(depth, num_heads, N, 2 * head_dim) [sin, cos] for freqs (2, depth, num_heads, head_dim // 2)."""
    dtype, freqs = freqs.dtype, freqs.astype(jnp.float32)  # angles in float32, output in the params' dtype
    combined = t_x[:, None] * freqs[0][..., None, :] + t_y[:, None] * freqs[1][..., None, :]
    sin, cos = jnp.repeat(jnp.sin(combined), 2, -1), jnp.repeat(jnp.cos(combined), 2, -1)
    return jnp.concatenate([sin, cos], -1).astype(dtype)


def rot(x: jax.Array) -> jax.Array:
    # [x0, x1, x2, x3] -> [-x1, x0, -x3, x2]
    return jnp.stack([-x[..., 1::2], x[..., ::2]], -1).reshape(x.shape)


def rope_rotate_half(x: jax.Array) -> jax.Array:
    # [x0, x1, x2, x3] -> [-x2, -x3, x0, x1]
    x1, x2 = jnp.split(x, 2, -1)
    return jnp.concatenate([-x2, x1], -1)


def apply_rot_embed_cat(x: jax.Array, emb: jax.Array, half: bool = False) -> jax.Array:
    """Rotate x (..., N, head_dim) by emb (..., N, 2 * head_dim) = [sin, cos], as timm's `apply_rot_embed_cat`.

    The products follow dtype promotion (a bf16 x meets float32 sin / cos in float32) and only the finished
    rotation is cast back to x's dtype, as timm does.
    """
    sin, cos = jnp.split(emb, 2, -1)
    out = x * cos + (rope_rotate_half(x) if half else rot(x)) * sin
    return out.astype(x.dtype)


class RotaryEmbedding(nn.Module):
    """The RoPE table of an Eva model, for any (H, W) patch grid (`get_embed(shape)` of timm's module).

    Returns (H * W, 2 * head_dim) for 'cat' and 'dinov3', and (depth, num_heads, H * W, 2 * head_dim) for
    'mixed' (index it by block), head_dim = dim // num_heads; the last axis is [sin, cos].
    `Eva.__init__` passes 'mixed' no grid_offset, and neither 'mixed' nor 'dinov3' a ref_feat_shape, so a model's
    value of those has no effect on these kinds here either. The train-time coordinate augmentations
    (shift / jitter / rescale_coords) are not implemented and raise ValueError.
    """
    kind: str = 'cat'
    dim: int = 768
    num_heads: int = 12
    temperature: float = 10000.
    grid_indexing: str = 'ij'
    grid_offset: float = 0.
    ref_feat_shape: Optional[tuple[int, int]] = None
    rotate_half: bool = False
    depth: int = 1
    shift_coords: Optional[float] = None
    jitter_coords: Optional[float] = None
    rescale_coords: Optional[float] = None

    def _check(self) -> int:
        if self.kind not in ROPE_TYPES:
            raise ValueError(f'kind={self.kind!r}: one of {ROPE_TYPES}')
        if self.grid_indexing not in ('ij', 'xy'):
            raise ValueError(f"grid_indexing={self.grid_indexing!r}: 'ij' or 'xy'")
        if self.num_heads < 1 or self.dim % self.num_heads or (self.dim // self.num_heads) % 4:
            raise ValueError(f'dim={self.dim}, num_heads={self.num_heads}: head_dim must be a multiple of 4')
        if any(v is not None for v in (self.shift_coords, self.jitter_coords, self.rescale_coords)):
            raise ValueError('RoPE coordinate augmentation (shift/jitter/rescale_coords) is not implemented')
        if self.kind == 'mixed' and self.rotate_half:
            raise ValueError("kind='mixed' requires rotate_half=False")  # as timm's create_rope_embed
        return self.dim // self.num_heads

    @nn.compact
    def __call__(self, grid: tuple[int, int]) -> jax.Array:
        head_dim = self._check()
        grid = tuple(int(s) for s in grid)
        if len(grid) != 2 or min(grid) < 1:
            raise ValueError(f'grid={grid}: two sizes >= 1')
        if self.kind == 'mixed':
            freqs = self.param('freqs', init_random_2d_freqs, head_dim, self.depth, self.num_heads,
                               self.temperature)
            t = _build_grid(grid, grid_indexing=self.grid_indexing).reshape(-1, 2)
            return get_mixed_freqs(freqs, t[:, 0], t[:, 1])
        if self.kind == 'cat':
            bands = freq_bands(head_dim // 4, self.temperature)
            ref = tuple(self.ref_feat_shape) if self.ref_feat_shape is not None else None
            coords = _build_grid(grid, 'index', ref, self.grid_offset, self.grid_indexing)
            angles = coords[..., None] * bands  # (H, W, 2, head_dim // 4)
        else:
            n = head_dim // 4
            periods = pow_f32(self.temperature, f32(2.) * np.arange(n, dtype=f32) / f32(head_dim // 2))
            coords = _build_grid(grid, 'centered', None, self.grid_offset, self.grid_indexing)
            angles = f32(2 * math.pi) * coords[..., None] / periods
        return jnp.asarray(sin_cos_cat(angles.reshape(grid[0] * grid[1], -1), self.rotate_half))
