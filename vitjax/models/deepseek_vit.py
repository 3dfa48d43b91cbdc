"""The vision tower of DeepSeek V4 / V4.1 (timm's deepseek_vit): `DeepseekVitEncoder` and `DeepseekVitClassifier`.

A plain pre-norm ViT with RMSNorm (f32) everywhere, fused qkv with bias, a bias-free packed SwiGLU and axial 2-D
RoPE (theta 10000, integer patch coordinates, the 'half' layout) as its only position encoding, so any patch
grid goes in as it is; `dynamic_img_pad` zero-pads an image's bottom/right to whole patches. The trunk ends in an
RMSNorm. The encoder's 'align' output is the DeepSeek aligner's: 3x3 pixel-unshuffle in channel-major (C, kh, kw)
order over a grid zero-padded bottom/right to a multiple of 3, fc1 -> GELU -> fc2 to the LLM width. The classifier
wraps the encoder (params under `encoder/`) with mean pooling, an RMSNorm without affine params and a head.
"""
from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.models.cfgs import AttnCfg, MlpCfg, NormCfg
from vitjax.models.family import Family, check, register
from vitjax.models.layers import Block, RMSNorm, check_images, dense_init
from vitjax.models.rope import RotaryEmbedding
from vitjax.models.tower import Tower, TowerClassifier, axial_rope_problems, tower_problems
from vitjax.models.vit import PatchEmbed, PretrainedCfg, Size, to_2tuple

ENCODER_POOLS = ('align', 'avg', '')


class Aligner(nn.Module):
    """DeepSeek's VLM projector: r x r pixel-unshuffle (channel-major, the grid zero-padded bottom/right to a
    multiple of r), fc1 -> GELU (exact) -> fc2; `pre_logits`: the activated fc1."""
    downsample_ratio: int = 3
    out_features: int = 4096
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, pre_logits: bool = False) -> jax.Array:
        b, h, w, c = x.shape
        r = self.downsample_ratio
        x = jnp.pad(x, ((0, 0), (0, -h % r), (0, -w % r), (0, 0)))
        gh, gw = x.shape[1] // r, x.shape[2] // r
        x = x.reshape(b, gh, r, gw, r, c).transpose(0, 1, 3, 5, 2, 4).reshape(b, gh * gw, c * r * r)
        x = nn.Dense(self.out_features, dtype=self.dtype, kernel_init=dense_init, name='fc1')(x)
        x = jax.nn.gelu(x.astype(jnp.float32), approximate=False).astype(x.dtype)
        if pre_logits:
            return x.astype(jnp.float32)
        return nn.Dense(self.out_features, dtype=self.dtype, kernel_init=dense_init, name='fc2')(x).astype(jnp.float32)


class DeepseekVitEncoder(Tower):
    """timm's DeepseekVitEncoder under its argument names. `forward_features` gives the normed patch tokens as a
    (B, H, W, embed_dim) map; the call gives, by `global_pool`, the aligner's tokens (B, ceil(H/3) * ceil(W/3),
    out_features) ('align'), their mean ('avg') or the map ('')."""
    img_size: Size = 546  # nominal: any whole-patch input (any input with dynamic_img_pad)
    patch_size: Size = 14
    in_chans: int = 3
    num_classes: int = 0  # no head: the tower's output is its tokens
    out_features: int = 0  # the LLM width the aligner projects to (required by 'align')
    global_pool: str = 'align'
    embed_dim: int = 1024
    depth: int = 32
    num_heads: int = 16
    mlp_ratio: float = 2816 / 1024
    downsample_ratio: int = 3
    rope_temperature: float = 10000.
    norm_eps: float = 1e-6
    dynamic_img_pad: bool = False
    grad_checkpointing: bool = False  # remat each block (timm's name)
    proj_drop_rate: float = 0.
    attn_drop_rate: float = 0.
    drop_path_rate: float = 0.
    dtype: Any = jnp.float32  # the matmuls' compute dtype; params, residual stream, norms and outputs stay float32
    pretrained_cfg: PretrainedCfg = PretrainedCfg((3, 546, 546), (0.5,) * 3, (0.5,) * 3, 1.0, 'border')

    class_token, num_prefix_tokens, no_embed_class, dynamic_img_size = False, 0, True, True
    act_layer = 'silu'
    projector_pool = 'align'

    @property
    def num_features(self) -> int:
        return self.out_features if self.projects else self.embed_dim

    def token_grid(self, h: int, w: int) -> tuple[int, int]:
        """The patch grid of an h x w input: padded up to whole patches with dynamic_img_pad."""
        (ph, pw), rnd = to_2tuple(self.patch_size), (math.ceil if self.dynamic_img_pad else math.floor)
        return rnd(h / ph), rnd(w / pw)

    def feature_grid(self, h: int, w: int) -> tuple[int, int]:
        """The grid of the call's tokens: the aligner's (ceil of the patch grid / 3) for 'align'."""
        gh, gw = self.token_grid(h, w)
        r = self.downsample_ratio
        return (-(-gh // r), -(-gw // r)) if self.projects else (gh, gw)

    def setup(self):
        check(self)
        d = self.embed_dim
        self.patch_embed = PatchEmbed(to_2tuple(self.patch_size), d, dtype=self.dtype)
        self.rope = RotaryEmbedding(kind='cat', dim=d, num_heads=self.num_heads, temperature=self.rope_temperature,
                                    rotate_half=True)
        block = nn.remat(Block, static_argnums=(2,)) if self.grad_checkpointing else Block  # 2: `train`
        cfgs = dict(attn_cfg=AttnCfg(self.num_heads, rope_rotate_half=True,
                                     attn_drop_rate=self.attn_drop_rate, proj_drop_rate=self.proj_drop_rate),
                    mlp_cfg=MlpCfg(self.mlp_ratio, 'swiglu_packed', 'silu', proj_bias=False,
                                   proj_drop_rate=self.proj_drop_rate),
                    norm_cfg=NormCfg('rmsnorm', self.norm_eps), dtype=self.dtype)
        rates = np.linspace(0, self.drop_path_rate, self.depth).tolist()
        self.blocks = [block(**cfgs, drop_path=r, name=f'blocks_{i}') for i, r in enumerate(rates)]
        self.norm = RMSNorm(self.norm_eps)
        self.aligner = Aligner(self.downsample_ratio, self.out_features, self.dtype) if self.projects else None

    @property
    def projector(self) -> Optional[nn.Module]:
        return self.aligner

    def embed(self, x: jax.Array) -> tuple[jax.Array, jax.Array, tuple[int, int]]:
        ph, pw = to_2tuple(self.patch_size)
        if self.dynamic_img_pad and x.ndim == 4:
            x = jnp.pad(x, ((0, 0), (0, -x.shape[1] % ph), (0, -x.shape[2] % pw), (0, 0)))
        check_images(x, self.in_chans, to_2tuple(self.img_size), (ph, pw), True)
        x = self.patch_embed(x).astype(jnp.float32)  # the residual stream starts here, f32
        b, gh, gw, d = x.shape
        return x.reshape(b, gh * gw, d), self.rope((gh, gw)), (gh, gw)

    def end(self, x: jax.Array) -> jax.Array:
        return self.norm(x)


class DeepseekVitClassifier(TowerClassifier, DeepseekVitEncoder):
    """timm's DeepseekVitClassifier: the encoder (with its aligner when `encoder_pool='align'`) under `encoder/`,
    then mean pooling ('avg'), an RMSNorm without affine params (`final_norm`) and the head."""
    num_classes: int = 1000
    global_pool: str = 'avg'
    encoder_pool: str = ''
    final_norm: bool = True
    drop_rate: float = 0.

    encoder_cls, head_norm = DeepseekVitEncoder, 'rmsnorm'


def deepseek_problems(m: DeepseekVitEncoder) -> list[str]:
    p = tower_problems(m, DeepseekVitClassifier, ENCODER_POOLS) + axial_rope_problems(m)
    if not 1 <= m.downsample_ratio <= 16:
        p.append(f'downsample_ratio={m.downsample_ratio}: must be in 1..16')
    if m.projects and m.out_features < 1:
        p.append(f'out_features={m.out_features}: the aligner projects to the LLM width, which must be >= 1')
    return p


register(Family('deepseek_vit_enc', DeepseekVitEncoder, deepseek_problems))
register(Family('deepseek_vit', DeepseekVitClassifier, deepseek_problems))
