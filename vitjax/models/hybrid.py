"""The ViT paper's hybrids (timm's vision_transformer_hybrid): a ResNetV2 stem and stages -- weight-standardised
convs, GroupNorm, bottleneck blocks, TF 'SAME' padding -- whose feature map the patch embedding reads (a
`patch_size` conv over the map, 1 for the R50 hybrids), then VisionTransformer unchanged. Parameter names
follow timm (patch_embed/backbone/stem/conv, .../stages_i/blocks_j/conv1, ..., patch_embed/proj)."""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.models.family import Family, multiple_of, register
from vitjax.models.vit import VisionTransformer, to_2tuple, vit_problems

CHANNELS = (256, 512, 1024, 2048)  # ResNetV2's stage widths (bottleneck outputs)


class StdConv(nn.Module):
    """timm's StdConv2dSame: the kernel standardised per output channel (biased variance, `eps`), no bias,
    TF 'SAME' padding (extra pixel on the bottom / right), as jax's 'SAME'."""
    features: int
    kernel_size: int
    strides: int = 1
    eps: float = 1e-8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        w = self.param('kernel', nn.initializers.he_normal(), (k, k, x.shape[-1], self.features))
        mean = w.mean(axis=(0, 1, 2))
        w = (w - mean) * jax.lax.rsqrt(((w - mean) ** 2).mean(axis=(0, 1, 2)) + self.eps)
        return jax.lax.conv_general_dilated(x.astype(self.dtype), w.astype(self.dtype), (self.strides,) * 2, 'SAME',
                                            dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def group_norm(name: str, act: bool = True):
    """timm's GroupNormAct(32, eps 1e-5), ReLU after unless `act=False`; statistics two-pass in f32."""
    gn = nn.GroupNorm(num_groups=32, epsilon=1e-5, use_fast_variance=False, dtype=jnp.float32, name=name)
    return (lambda x: nn.relu(gn(x))) if act else gn


class Bottleneck(nn.Module):
    """ResNetV2's non-pre-activation bottleneck: 1x1 -> 3x3 (stride) -> 1x1 at a quarter width, GroupNorm after
    each, the projection shortcut (1x1 conv + GroupNorm) on a stage's first block, ReLU after the sum."""
    features: int
    strides: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        conv = lambda f, k, s, name: StdConv(f, k, s, dtype=self.dtype, name=name)
        shortcut = Downsample(self.features, self.strides, self.dtype, name='downsample')(x) if self.downsample else x
        y = group_norm('norm1')(conv(self.features // 4, 1, 1, 'conv1')(x))
        y = group_norm('norm2')(conv(self.features // 4, 3, self.strides, 'conv2')(y))
        y = group_norm('norm3', act=False)(conv(self.features, 1, 1, 'conv3')(y))
        return nn.relu(y + shortcut.astype(y.dtype))


class Downsample(nn.Module):
    features: int
    strides: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return group_norm('norm', act=False)(StdConv(self.features, 1, self.strides, dtype=self.dtype, name='conv')(x))


class Stem(nn.Module):
    """7x7 stride-2 conv, GroupNorm + ReLU, 3x3 stride-2 max pool, all 'SAME' (timm's stem_type='same')."""
    features: int = 64
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = group_norm('norm')(StdConv(self.features, 7, 2, dtype=self.dtype, name='conv')(x))
        return nn.max_pool(x, (3, 3), (2, 2), 'SAME')


class ResNetV2(nn.Module):
    """The stem, then len(layers) stages of bottlenecks (stride 1 for the first, 2 after); () is the stem alone."""
    layers: Sequence[int] = (3, 4, 9)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = Stem(dtype=self.dtype, name='stem')(x)
        for i, depth in enumerate(self.layers):
            for j in range(depth):
                x = Bottleneck(CHANNELS[i], (1 if i == 0 else 2) if j == 0 else 1, j == 0, self.dtype,
                               name=f'stages_{i}_blocks_{j}')(x)
        return x


class HybridEmbed(nn.Module):
    """timm's HybridEmbed: the backbone's feature map, then a `patch_size` conv to embed_dim."""
    layers: Sequence[int]
    patch_size: tuple[int, int]
    embed_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ResNetV2(tuple(self.layers), self.dtype, name='backbone')(x)
        return nn.Conv(self.embed_dim, self.patch_size, strides=self.patch_size, padding='VALID', dtype=self.dtype,
                       name='proj')(x)


class VisionTransformerHybrid(VisionTransformer):
    """VisionTransformer whose patch embedding reads a ResNetV2 feature map (`backbone_layers`: blocks per stage;
    () for the stem alone, as vit_tiny_r_s16_p8)."""
    patch_size: Any = 1
    backbone_layers: tuple[int, ...] = (3, 4, 9)

    @property
    def backbone_stride(self) -> int:
        """2 for each stride-2 step: the stem's conv and pool, then every stage after the first."""
        return 2 ** (2 + max(len(self.backbone_layers) - 1, 0))

    def feature_map(self, h: int, w: int) -> tuple[int, int]:
        # every stride-2 step ('SAME') takes ceil(n / 2), so the steps together take ceil(n / stride)
        return math.ceil(h / self.backbone_stride), math.ceil(w / self.backbone_stride)

    def token_grid(self, h: int, w: int) -> tuple[int, int]:
        ph, pw = to_2tuple(self.patch_size)
        (h, w) = self.feature_map(h, w)
        return h // ph, w // pw

    def make_patch_embed(self) -> nn.Module:
        return HybridEmbed(self.backbone_layers, to_2tuple(self.patch_size), self.embed_dim, self.dtype)


def hybrid_problems(m: VisionTransformerHybrid) -> list[str]:
    p = vit_problems(m)
    if len(m.backbone_layers) > len(CHANNELS) or any(d < 1 for d in m.backbone_layers):
        p.append(f'backbone_layers={m.backbone_layers}: at most {len(CHANNELS)} stages of >= 1 blocks')
    if m.dynamic_img_size:
        p.append('dynamic_img_size: the hybrids take the size they are built for (as timm)')
    img, q, stride = to_2tuple(m.img_size), to_2tuple(m.patch_size), m.backbone_stride
    if not p and len(img) == len(q) == 2 and min(q) >= 1 and not multiple_of(m.feature_map(*img), q):
        # timm's HybridEmbed asserts it when built: the patches tile the ResNet's feature map exactly
        fit = 'x'.join(str(-(-s // (k * stride)) * k * stride) for s, k in zip(img, q))
        p.append(f'img_size={m.img_size}: the ResNet (stride {stride}) gives a '
                 f'{"x".join(map(str, m.feature_map(*img)))} feature map, which patch_size={m.patch_size} must '
                 f'tile (as timm): each side / {stride}, rounded up, a multiple of the patch, e.g. {fit}')
    return p


register(Family('hybrid_vit', VisionTransformerHybrid, hybrid_problems))
