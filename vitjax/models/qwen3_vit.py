"""The vision tower of Qwen3-VL / Qwen3.5 / Qwen3.8 (timm's qwen3_vit): `Qwen3VitEncoder` and `Qwen3VitClassifier`.

A pre-norm ViT of Eva blocks (fused qkv with q/v biases, GELU-tanh MLP) with two position encodings at once: a
learned 48x48 absolute grid, resampled bilinearly with align_corners to each input's patch grid, and axial 2-D
RoPE (theta 10000, integer patch coordinates, the 'half' layout). No class token and no final norm: any image
whose patch grid the merger's 2x2 divides is taken as it is (`dynamic_img_size` always). The encoder's 'merge'
output is the VLM projector's: per-token norm, 2x2 pixel-unshuffle, fc1 -> GELU -> fc2 to the LLM width
(`out_features`), the tokens the LLM reads. The classifier wraps the encoder (params under `encoder/`, as timm's
`encoder.`) with mean pooling, a LayerNorm without affine params and a head.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.models.cfgs import AttnCfg, MlpCfg, NormCfg
from vitjax.models.family import MAX_PIXELS, Family, check, register
from vitjax.models.layers import Block, check_images, dense_init, layer_norm
from vitjax.models.rope import RotaryEmbedding
from vitjax.models.tower import Tower, TowerClassifier, axial_rope_problems, merged_grid_problems, tower_problems
from vitjax.models.vit import PatchEmbed, PretrainedCfg, Size, to_2tuple

ENCODER_POOLS = ('merge', 'avg', '')


def resample_align_corners(pos: jax.Array, grid: int, new: tuple[int, int]) -> jax.Array:
    """(1, G*G, D) -> (1, H*W, D): torch's bilinear interpolate with align_corners=True (no antialias), as
    separable interpolation matrices in f32, the source coordinates computed as torch computes them."""
    if tuple(new) == (grid, grid):
        return pos

    def weights(n: int) -> np.ndarray:
        scale = np.float32((grid - 1) / (n - 1)) if n > 1 else np.float32(0)
        src = scale * np.arange(n, dtype=np.float32)
        lo = np.minimum(np.floor(src).astype(int), grid - 1)
        hi = np.minimum(lo + 1, grid - 1)
        frac = src - lo.astype(np.float32)
        w = np.zeros((n, grid), np.float32)
        np.add.at(w, (np.arange(n), lo), 1 - frac)
        np.add.at(w, (np.arange(n), hi), frac)
        return w

    x = pos.reshape(grid, grid, -1).astype(jnp.float32)
    x = jnp.einsum('ih,jw,hwd->ijd', weights(new[0]), weights(new[1]), x, precision=jax.lax.Precision.HIGHEST)
    return x.reshape(1, new[0] * new[1], -1).astype(pos.dtype)


class PatchMerger(nn.Module):
    """Qwen's VLM projector: norm, k x k pixel-unshuffle (row-major blocks), fc1 -> GELU (exact) -> fc2."""
    merge_size: int = 2
    out_features: int = 0  # the LLM width; 0: no fc2 (the 4C-wide merged tokens)
    norm_eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, pre_logits: bool = False) -> jax.Array:
        b, h, w, c = x.shape
        k = self.merge_size
        x = layer_norm(self.norm_eps, self.dtype, 'norm')(x)
        x = x.reshape(b, h // k, k, w // k, k, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // k) * (w // k), k * k * c)
        x = nn.Dense(k * k * c, dtype=self.dtype, kernel_init=dense_init, name='fc1')(x)
        x = jax.nn.gelu(x.astype(jnp.float32), approximate=False).astype(x.dtype)
        if pre_logits or not self.out_features:
            return x.astype(jnp.float32)
        return nn.Dense(self.out_features, dtype=self.dtype, kernel_init=dense_init, name='fc2')(x).astype(jnp.float32)


class Qwen3VitEncoder(Tower):
    """timm's Qwen3VitEncoder under its argument names. `forward_features` gives the patch tokens as a (B, H, W,
    embed_dim) map; the call gives, by `global_pool`, the projector's tokens (B, H*W/4, out_features) ('merge'),
    their mean (B, embed_dim) ('avg') or the map itself ('')."""
    img_size: Size = 768  # nominal: any input whose patch grid merge_size divides
    patch_size: Size = 16
    in_chans: int = 3
    num_classes: int = 0  # no head: the tower's output is its tokens
    out_features: int = 0  # the LLM width; 0: no fc2 (the 4C-wide merged tokens)
    global_pool: str = 'merge'
    embed_dim: int = 1152
    depth: int = 27
    num_heads: int = 16
    mlp_ratio: float = 4304 / 1152
    merge_size: int = 2
    pos_embed_grid_size: int = 48
    rope_temperature: float = 10000.
    norm_eps: float = 1e-6
    act_layer: str = 'gelu_tanh'
    grad_checkpointing: bool = False  # remat each block (timm's name)
    proj_drop_rate: float = 0.
    attn_drop_rate: float = 0.
    drop_path_rate: float = 0.
    dtype: Any = jnp.float32  # the matmuls' compute dtype; params, residual stream, norms and outputs stay float32
    pretrained_cfg: PretrainedCfg = PretrainedCfg((3, 768, 768), (0.5,) * 3, (0.5,) * 3, 1.0, 'squash')

    class_token, num_prefix_tokens, no_embed_class, dynamic_img_size = False, 0, True, True
    projector_pool = 'merge'

    @property
    def pos_grid(self) -> tuple[int, int]:  # fixed: resampled per input at run time, never on load
        return self.pos_embed_grid_size, self.pos_embed_grid_size

    @property
    def num_features(self) -> int:
        return (self.out_features or self.merge_size ** 2 * self.embed_dim) if self.projects else self.embed_dim

    def feature_grid(self, h: int, w: int) -> tuple[int, int]:
        """The grid of the call's tokens: the merged one for 'merge'."""
        gh, gw = self.token_grid(h, w)
        return (gh // self.merge_size, gw // self.merge_size) if self.projects else (gh, gw)

    def setup(self):
        check(self)
        d = self.embed_dim
        self.patch_embed = PatchEmbed(to_2tuple(self.patch_size), d, dtype=self.dtype)
        self.pos_embed = self.param('pos_embed', nn.initializers.normal(0.02), (1, self.pos_embed_grid_size ** 2, d))
        self.rope = RotaryEmbedding(kind='cat', dim=d, num_heads=self.num_heads, temperature=self.rope_temperature,
                                    rotate_half=True)
        block = nn.remat(Block, static_argnums=(2,)) if self.grad_checkpointing else Block  # 2: `train`
        cfgs = dict(attn_cfg=AttnCfg(self.num_heads, rope_rotate_half=True,
                                     attn_drop_rate=self.attn_drop_rate, proj_drop_rate=self.proj_drop_rate),
                    mlp_cfg=MlpCfg(self.mlp_ratio, act_layer=self.act_layer, proj_drop_rate=self.proj_drop_rate),
                    norm_cfg=NormCfg(norm_eps=self.norm_eps), dtype=self.dtype)
        rates = np.linspace(0, self.drop_path_rate, self.depth).tolist()
        self.blocks = [block(**cfgs, drop_path=r, name=f'blocks_{i}') for i, r in enumerate(rates)]
        self.merger = (PatchMerger(self.merge_size, self.out_features, self.norm_eps, self.dtype)
                       if self.projects else None)

    @property
    def projector(self) -> Optional[nn.Module]:
        return self.merger

    def embed(self, x: jax.Array) -> tuple[jax.Array, jax.Array, tuple[int, int]]:
        check_images(x, self.in_chans, to_2tuple(self.img_size), to_2tuple(self.patch_size), True)
        (ph, pw), k = to_2tuple(self.patch_size), self.merge_size
        if self.projects and ((x.shape[1] // ph) % k or (x.shape[2] // pw) % k):
            raise ValueError(f'input size {x.shape[1:3]}: the merger takes {k}x{k} patches, so each side must be a '
                             f'multiple of {k} patches ({k * ph} x {k * pw} pixels)')
        x = self.patch_embed(x).astype(jnp.float32)  # the residual stream starts here, f32
        b, gh, gw, d = x.shape
        x = x.reshape(b, gh * gw, d) + resample_align_corners(self.pos_embed, self.pos_embed_grid_size, (gh, gw))
        return x, self.rope((gh, gw)), (gh, gw)


class Qwen3VitClassifier(TowerClassifier, Qwen3VitEncoder):
    """timm's Qwen3VitClassifier: the encoder (with its projector when `encoder_pool='merge'`) under `encoder/`,
    then mean pooling ('avg'), a LayerNorm without affine params (`final_norm`) and the head."""
    num_classes: int = 1000
    global_pool: str = 'avg'
    encoder_pool: str = ''
    final_norm: bool = True
    drop_rate: float = 0.

    encoder_cls, head_norm = Qwen3VitEncoder, 'layernorm'


def qwen3_problems(m: Qwen3VitEncoder) -> list[str]:
    p = tower_problems(m, Qwen3VitClassifier, ENCODER_POOLS) + axial_rope_problems(m)
    if not 1 <= m.merge_size <= 16:
        p.append(f'merge_size={m.merge_size}: must be in 1..16')
    if not 1 <= m.pos_embed_grid_size <= MAX_PIXELS:
        p.append(f'pos_embed_grid_size={m.pos_embed_grid_size}: 1..{MAX_PIXELS}')
    p += merged_grid_problems(m, m.merge_size, 'the merger')
    return p


register(Family('qwen3_vit_enc', Qwen3VitEncoder, qwen3_problems))
register(Family('qwen3_vit', Qwen3VitClassifier, qwen3_problems))
