"""The vision tower of Gemma 4 (timm's gemma4_vit): `Gemma4VitEncoder` and `Gemma4VitClassifier`.

A ViT of four-norm "sandwich" blocks (x + norm2(attn(norm1 x)), x + norm4(mlp(norm3 x)), RMSNorm f32 everywhere)
with separate bias-free q/k/v/o projections, per-head RMSNorm on q and k (with a scale) and v (without), attention
at scale 1 with grouped key/value heads, a gated GELU-tanh MLP (down(gelu_tanh(gate x) * up x)) and no final norm.
Pixels go in as [0, 1] (mean 0, std 1) and the patch embedding maps them to 2 (x - 0.5) before a bias-free Linear
on channel-major (C, ph, pw) patches; positions are a learned (2, size, D) table, row 0 indexed by the patch
column and row 1 by its row, plus axial 2-D RoPE (theta 100, the head's first half by column, its second by row,
each half in the 'half' layout). Any image of whole patches goes in as it is.

The 167M tower (Gemma 4 E2B / E4B) clamps every projection's input and output to learned bounds
(`use_clipped_linears`); the 570M (26B / 31B) standardizes the pooled tokens (`standardize`). Those bounds and the
standardization are timm buffers: here params that load, save and export with the rest and that training leaves
as they are (vitjax.models.BUFFERS). An unbounded clamp (timm's init, +-inf) is kept as +-float32 max, which clamps
nothing a finite activation reaches, so that a model directory holds only finite numbers.

The encoder's 'soft' output is the VLM's soft tokens: the mean of each k x k cell of the patch map (row-major
cells), times sqrt(D), then the standardization. As every vitjax tower, `forward_features` gives the (B, H, W, D)
patch map (timm's encoder the same tokens as (B, H * W, D)).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.models.family import MAX_DIM, MAX_TOKENS, Family, check, register
from vitjax.models.layers import (RMSNorm, backend_info, check_images, dense_init, fused_attention,
                                  stochastic_depth)
from vitjax.models.rope import pow_f32, sin_cos_cat, rope_rotate_half
from vitjax.models.tower import Tower, TowerClassifier, merged_grid_problems, tower_problems
from vitjax.models.vit import PretrainedCfg, Size, to_2tuple

ENCODER_POOLS = ('soft', 'avg', '')
f32 = np.float32


def rms(x: jax.Array, eps: float) -> jax.Array:
    """RMSNorm without a scale, in f32 (timm's RmsNorm(affine=False))."""
    x = x.astype(jnp.float32)
    return x * jax.lax.rsqrt((x * x).mean(-1, keepdims=True) + eps)


def rope_table(grid: tuple[int, int], head_dim: int, theta: float) -> np.ndarray:
    """(H * W, 2 * head_dim) [sin, cos] of Gemma4RotaryEmbedding2D over a row-major (H, W) patch grid: per axis
    head_dim // 4 bands 1 / theta^(2j / (head_dim / 2)) over the integer column (first half) and row (second half),
    each half laid [f0, f1, .., f0, f1, ..]; replays timm's float32 arithmetic."""
    half = head_dim // 2
    inv_freq = f32(1.) / pow_f32(theta, np.arange(0, half, 2, dtype=f32) / f32(half))
    rows, cols = np.meshgrid(np.arange(grid[0], dtype=f32), np.arange(grid[1], dtype=f32), indexing='ij')
    angles = [p.reshape(-1, 1) * inv_freq for p in (cols, rows)]  # (N, head_dim // 4) each, exact f32 products
    sc = [sin_cos_cat(a, rotate_half=True) for a in angles]  # (N, 2 * half) each: [sin, cos] of one axis
    sin = np.concatenate([s[:, :half] for s in sc], -1)
    cos = np.concatenate([s[:, half:] for s in sc], -1)
    return np.concatenate([sin, cos], -1)


def apply_rope(x: jax.Array, emb: jax.Array) -> jax.Array:
    """Rotate x (B, N, heads, head_dim) by `rope_table`'s emb, each half of the head on its own (timm's
    apply_multidimensional_rope, ndim=2); the products in f32, cast back to x's dtype."""
    sin, cos = (t[:, None] for t in jnp.split(emb, 2, -1))
    xs, ss, cs = (jnp.split(t, 2, -1) for t in (x.astype(jnp.float32), sin, cos))
    return jnp.concatenate([p * c + rope_rotate_half(p) * s for p, s, c in zip(xs, ss, cs)], -1).astype(x.dtype)


def buffer(module: nn.Module, name: str, value: float, shape: tuple = ()) -> jax.Array:
    """A timm buffer as a param (its init: `value`; see vitjax.models.BUFFERS)."""
    return module.param(name, lambda _, s: jnp.full(s, value, jnp.float32), shape)


class ClippableLinear(nn.Module):
    """Gemma4ClippableLinear: a bias-free Dense (`linear`), its input and output clamped to the buffers
    input_min / input_max / output_min / output_max when `clip` (init: unbounded)."""
    features: int
    clip: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        big = float(np.finfo(np.float32).max)

        def clamp(t: jax.Array, lo: str, hi: str) -> jax.Array:
            return jnp.clip(t, buffer(self, lo, -big).astype(t.dtype), buffer(self, hi, big).astype(t.dtype))
        if self.clip:
            x = clamp(x, 'input_min', 'input_max')
        y = nn.Dense(self.features, use_bias=False, dtype=self.dtype, kernel_init=dense_init, name='linear')(x)
        return clamp(y, 'output_min', 'output_max') if self.clip else y


class Gemma4Attention(nn.Module):
    num_heads: int
    head_dim: int
    num_kv_heads: int
    norm_eps: float = 1e-6
    clip: bool = False
    attn_drop_rate: float = 0.
    proj_drop_rate: float = 0.
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, rope: jax.Array, train: bool = False) -> jax.Array:
        b, n, d = x.shape
        h, kv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        proj = lambda f, name: ClippableLinear(f, self.clip, self.dtype, name=name)
        q = proj(h * hd, 'q_proj')(x).reshape(b, n, h, hd)
        k = proj(kv * hd, 'k_proj')(x).reshape(b, n, kv, hd)
        v = proj(kv * hd, 'v_proj')(x).reshape(b, n, kv, hd)
        q = apply_rope(RMSNorm(self.norm_eps, self.dtype, name='q_norm')(q), rope)
        k = apply_rope(RMSNorm(self.norm_eps, self.dtype, name='k_norm')(k), rope)
        v = rms(v, self.norm_eps).astype(self.dtype)
        k, v = (jnp.repeat(t, h // kv, axis=2) for t in (k, v))  # kv head j serves query heads j*g .. j*g+g-1
        weights_needed = (train and self.attn_drop_rate > 0.) or self.is_mutable_collection('intermediates')
        if weights_needed or backend_info()[0] == 'cpu':
            # scale 1: q and k are normed; f32 logits and softmax from compute-dtype operands, as timm's sdpa
            logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, preferred_element_type=jnp.float32)
            weights = jax.nn.softmax(logits, axis=-1)
            if weights_needed:  # attention maps under `mutable=['intermediates']`: (B, heads, N, N) as 'attn'
                self.sow('intermediates', 'attn', weights)
                weights = nn.Dropout(self.attn_drop_rate)(weights, deterministic=not train)
            o = jnp.einsum('bhqk,bkhd->bqhd', weights.astype(v.dtype), v)
        else:
            o = fused_attention(q, k, v, scale=1.)
        o = proj(d, 'o_proj')(o.reshape(b, n, h * hd))
        return nn.Dropout(self.proj_drop_rate)(o, deterministic=not train)


class Gemma4Mlp(nn.Module):
    hidden: int
    clip: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        proj = lambda f, name: ClippableLinear(f, self.clip, self.dtype, name=name)
        g = jax.nn.gelu(proj(self.hidden, 'gate_proj')(x).astype(jnp.float32), approximate=True)
        y = (g * proj(self.hidden, 'up_proj')(x).astype(jnp.float32)).astype(self.dtype)
        return proj(x.shape[-1], 'down_proj')(y)


class Gemma4Block(nn.Module):
    """x + drop_path(norm2(attn(norm1 x))), then x + drop_path(norm4(mlp(norm3 x))); the norms' outputs into the
    matmuls in the compute dtype, the post-norms' into the f32 residual stream."""
    num_heads: int
    head_dim: int
    num_kv_heads: int
    hidden: int
    norm_eps: float = 1e-6
    clip: bool = False
    attn_drop_rate: float = 0.
    proj_drop_rate: float = 0.
    drop_path: float = 0.
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, drop_path: Optional[jax.Array] = None,
                 rope: Optional[jax.Array] = None) -> jax.Array:
        rate = self.drop_path if drop_path is None else drop_path
        norm = lambda name, dtype: RMSNorm(self.norm_eps, dtype, name=name)
        y = Gemma4Attention(self.num_heads, self.head_dim, self.num_kv_heads, self.norm_eps, self.clip,
                            self.attn_drop_rate, self.proj_drop_rate, self.dtype, name='attn')(
            norm('norm1', self.dtype)(x), rope, train)
        x = x + stochastic_depth(self, norm('norm2', jnp.float32)(y), rate, train)
        y = Gemma4Mlp(self.hidden, self.clip, self.dtype, name='mlp')(norm('norm3', self.dtype)(x))
        return x + stochastic_depth(self, norm('norm4', jnp.float32)(y), rate, train)


def soft_tokens(x: jax.Array, pre_logits: bool = False, *, kernel_size: int,
                std: Optional[tuple[jax.Array, jax.Array]]) -> jax.Array:
    """Gemma4VisionPooler: the mean of each k x k cell of the (B, H, W, D) map, row-major cells, times sqrt(D);
    then (x - std_bias) * std_scale when the encoder standardizes (`pre_logits`: before that)."""
    if x.ndim != 4:
        raise ValueError(f'the soft-token pool takes the (B, H, W, D) patch map, got shape {x.shape}')
    b, h, w, d = x.shape
    k = kernel_size
    if h % k or w % k:
        raise ValueError(f'patch grid {(h, w)}: the soft-token pool takes {k}x{k} cells, so each side must be a '
                         f'multiple of {k} patches')
    y = x.astype(jnp.float32).reshape(b, h // k, k, w // k, k, d).mean((2, 4)).reshape(b, -1, d) * f32(math.sqrt(d))
    return y if std is None or pre_logits else (y - std[0]) * std[1]


class Gemma4VitEncoder(Tower):
    """timm's Gemma4VitEncoder under its argument names. `forward_features` gives the patch tokens as a
    (B, H, W, embed_dim) map; the call gives, by `global_pool`, the soft tokens (B, H/k * W/k, embed_dim)
    ('soft'), the tokens' mean ('avg') or the map ('')."""
    img_size: Size = 768  # nominal: any whole-patch input
    patch_size: Size = 16
    in_chans: int = 3
    num_classes: int = 0  # no head: the tower's output is its tokens
    global_pool: str = 'soft'
    embed_dim: int = 768
    depth: int = 16
    num_heads: int = 12
    head_dim: int = 64
    num_kv_heads: Optional[int] = None  # None: num_heads
    intermediate_size: int = 3072
    norm_eps: float = 1e-6
    rope_theta: float = 100.
    position_embedding_size: int = 10240
    pooling_kernel_size: int = 3
    standardize: bool = False
    use_clipped_linears: bool = False
    grad_checkpointing: bool = False  # remat each block (timm's name)
    proj_drop_rate: float = 0.
    attn_drop_rate: float = 0.
    drop_path_rate: float = 0.
    dtype: Any = jnp.float32  # the matmuls' compute dtype; params, residual stream, norms and outputs stay float32
    pretrained_cfg: PretrainedCfg = PretrainedCfg((3, 768, 768), (0.,) * 3, (1.,) * 3, 1.0)

    class_token, num_prefix_tokens, no_embed_class, dynamic_img_size = False, 0, True, True
    act_layer = 'gelu_tanh'
    projector_pool = 'soft'

    @property
    def mlp_ratio(self) -> float:
        return self.intermediate_size / self.embed_dim

    @property
    def num_features(self) -> int:
        return self.embed_dim

    def feature_grid(self, h: int, w: int) -> tuple[int, int]:
        """The grid of the call's tokens: the soft pool's cells for 'soft'."""
        gh, gw = self.token_grid(h, w)
        k = self.pooling_kernel_size
        return (gh // k, gw // k) if self.projects else (gh, gw)

    def setup(self):
        check(self)
        block = nn.remat(Gemma4Block, static_argnums=(2,)) if self.grad_checkpointing else Gemma4Block  # 2: train
        rates = np.linspace(0, self.drop_path_rate, self.depth).tolist()
        self.blocks = [block(self.num_heads, self.head_dim, self.num_kv_heads or self.num_heads,
                             self.intermediate_size, self.norm_eps, self.use_clipped_linears, self.attn_drop_rate,
                             self.proj_drop_rate, r, self.dtype, name=f'blocks_{i}') for i, r in enumerate(rates)]
        self.input_proj = nn.Dense(self.embed_dim, use_bias=False, dtype=self.dtype, kernel_init=dense_init)
        self.position_embedding_table = self.param('position_embedding_table', nn.initializers.normal(0.02),
                                                   (2, self.position_embedding_size, self.embed_dim))
        # timm keeps the standardization whatever the pool (the classifier's too): so does the table
        self.std = ((buffer(self, 'std_bias', 0., (self.embed_dim,)), buffer(self, 'std_scale', 1., (self.embed_dim,)))
                    if self.standardize else None)

    @property
    def projector(self) -> Optional[Callable]:
        return functools.partial(soft_tokens, kernel_size=self.pooling_kernel_size, std=self.std) if self.projects \
            else None

    def embed(self, x: jax.Array) -> tuple[jax.Array, jax.Array, tuple[int, int]]:
        (ph, pw), k = to_2tuple(self.patch_size), self.pooling_kernel_size
        check_images(x, self.in_chans, to_2tuple(self.img_size), (ph, pw), True)
        b, h, w, c = x.shape
        gh, gw = h // ph, w // pw
        if self.projects and (gh % k or gw % k):
            raise ValueError(f'input size {(h, w)}: the soft-token pool takes {k}x{k} patches, so each side must be '
                             f'a multiple of {k * ph} x {k * pw} pixels')
        if max(gh, gw) > self.position_embedding_size:
            raise ValueError(f'patch grid {(gh, gw)}: the position table has {self.position_embedding_size} rows '
                             'per axis')
        # channel-major (C, ph, pw) patches, as timm's batch_patchify(channels_last=False)
        x = x.reshape(b, gh, ph, gw, pw, c).transpose(0, 1, 3, 5, 2, 4).reshape(b, gh * gw, c * ph * pw)
        x = self.input_proj(2 * (x.astype(jnp.float32) - 0.5)).astype(jnp.float32)  # the f32 residual stream
        table = self.position_embedding_table
        pos = (table[0, :gw][None] + table[1, :gh][:, None]).reshape(gh * gw, -1)  # column + row
        return x + pos, jnp.asarray(rope_table((gh, gw), self.head_dim, self.rope_theta)), (gh, gw)


class Gemma4VitClassifier(TowerClassifier, Gemma4VitEncoder):
    """timm's Gemma4VitClassifier: the encoder (with its soft-token pool when `encoder_pool='soft'`) under
    `encoder/`, then mean pooling ('avg'), an RMSNorm without affine params (`final_norm`) and the head."""
    num_classes: int = 1000
    global_pool: str = 'avg'
    encoder_pool: str = ''
    final_norm: bool = True
    drop_rate: float = 0.

    encoder_cls, head_norm, final_through_projector = Gemma4VitEncoder, 'rmsnorm', False


def gemma4_problems(m: Gemma4VitEncoder) -> list[str]:
    kv = m.num_kv_heads or m.num_heads
    return tower_problems(m, Gemma4VitClassifier, ENCODER_POOLS) + [what for ok, what in (
        (m.num_heads >= 1 and 4 <= m.head_dim and m.head_dim % 4 == 0 and m.num_heads * m.head_dim <= MAX_DIM,
         f'num_heads={m.num_heads}, head_dim={m.head_dim}: head_dim a multiple of 4 (2-D RoPE), num_heads x '
         f'head_dim in 1..{MAX_DIM}'),
        (m.num_kv_heads is None or (1 <= kv and m.num_heads % kv == 0),
         f'num_kv_heads={m.num_kv_heads}: must divide num_heads={m.num_heads}'),
        (1 <= m.intermediate_size <= MAX_DIM * 4, f'intermediate_size={m.intermediate_size}: 1..{MAX_DIM * 4}'),
        (m.rope_theta > 0, f'rope_theta={m.rope_theta}: must be > 0'),
        (1 <= m.position_embedding_size <= MAX_TOKENS,
         f'position_embedding_size={m.position_embedding_size}: must be in 1..{MAX_TOKENS}'),
        (1 <= m.pooling_kernel_size <= 16, f'pooling_kernel_size={m.pooling_kernel_size}: must be in 1..16'),
    ) if not ok] + merged_grid_problems(m, m.pooling_kernel_size, 'the soft-token pool', m.position_embedding_size)


register(Family('gemma4_vit_enc', Gemma4VitEncoder, gemma4_problems))
register(Family('gemma4_vit', Gemma4VitClassifier, gemma4_problems))
