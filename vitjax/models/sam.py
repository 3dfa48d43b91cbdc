"""SAM's image encoder (timm's VisionTransformerSAM, vision_transformer_sam; ViTDet's backbone): a plain ViT on
the (H, W) patch map, no class token, an absolute position map, blocks that attend within 14x14 windows (the map
zero-padded to whole windows) except the few global ones, each with SAM's decomposed relative position (per-axis
tables read by the queries), then a convolutional neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d) to
`neck_chans` and a pooled head. NHWC throughout; parameter names follow timm (blocks_i/attn/rel_pos/rel_pos_h,
neck/conv1, ...)."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.models.family import MAX_DEPTH, MAX_DIM, MAX_WINDOW, Family, check, multiple_of, register
from vitjax.models.cfgs import AttnCfg, MlpCfg, NormCfg
from vitjax.models.layers import (Attention, LayerScale, Mlp, check_images,
                                  feature_take_indices, layer_norm)
from vitjax.models.swin import windows_on_map
from vitjax.models.vit import PatchEmbed, PatchGrid, PretrainedCfg, Size, to_2tuple

SAM_POOLS = ('avg', 'max', 'avgmax')


class SamBlock(nn.Module):
    """Pre-norm block on a (B, H, W, C) map: attention within `window` x `window` windows of the zero-padded map
    (0: over the whole map), then the MLP over the tokens, each branch with optional LayerScale."""
    attn_cfg: AttnCfg
    mlp_cfg: MlpCfg
    norm_cfg: NormCfg
    window: int = 0
    init_values: Optional[float] = None
    drop_path: float = 0.
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        b, h, w, c = x.shape
        nc, ws = self.norm_cfg, self.window
        drop = nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3))
        ls = (lambda n: LayerScale(self.init_values, name=n)) if self.init_values is not None else (
            lambda n: (lambda y: y))
        y = layer_norm(nc.norm_eps, self.dtype, 'norm1', nc.norm_layer)(x)
        if ws:  # timm pads after the norm: the padding tokens are zeros, not normalised zeros
            ph, pw = (-h) % ws, (-w) % ws
            y = jnp.pad(y, ((0, 0), (0, ph), (0, pw), (0, 0)))
            hp, wp = h + ph, w + pw
            y = y.reshape(b, hp // ws, ws, wp // ws, ws, c).transpose(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        y = Attention(self.attn_cfg, nc, self.dtype, name='attn')(y.reshape(y.shape[0], -1, c), train)
        if ws:
            y = y.reshape(b, hp // ws, wp // ws, ws, ws, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)[:, :h, :w]
        x = x + drop(ls('ls1')(y.reshape(b, h, w, c)).astype(x.dtype), deterministic=not train)
        y = layer_norm(nc.norm_eps, self.dtype, 'norm2', nc.norm_layer)(x)
        y = Mlp(self.mlp_cfg, nc, self.dtype, name='mlp')(y, train)
        return x + drop(ls('ls2')(y).astype(x.dtype), deterministic=not train)


class Neck(nn.Module):
    """timm's SAM neck: 1x1 conv -> LayerNorm2d -> 3x3 conv (padding 1) -> LayerNorm2d, no biases; without
    `chans` the one LayerNorm2d (samvit_base_patch16_224)."""
    chans: Optional[int]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if not self.chans:
            return layer_norm(1e-6, jnp.float32, 'norm')(x)
        conv = lambda k, name: nn.Conv(self.chans, (k, k), padding=k // 2, use_bias=False, dtype=self.dtype, name=name)
        x = layer_norm(1e-6, self.dtype, 'norm1')(conv(1, 'conv1')(x))
        return layer_norm(1e-6, jnp.float32, 'norm2')(conv(3, 'conv2')(x))


class VisionTransformerSAM(PatchGrid, nn.Module):
    """timm's VisionTransformerSAM with the options its pretrained models use; timm's field names."""
    img_size: Size = 1024
    patch_size: Size = 16
    in_chans: int = 3
    num_classes: int = 768
    global_pool: str = 'avg'
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.
    qkv_bias: bool = True
    init_values: Optional[float] = None  # LayerScale
    use_abs_pos: bool = True
    use_rel_pos: bool = False
    window_size: int = 14
    global_attn_indexes: Sequence[int] = ()
    neck_chans: Optional[int] = 256  # None: a LayerNorm2d of embed_dim instead of the conv neck
    grad_checkpointing: bool = False  # remat each block (timm's name)
    drop_rate: float = 0.
    proj_drop_rate: float = 0.
    attn_drop_rate: float = 0.
    drop_path_rate: float = 0.
    norm_eps: float = 1e-5  # the blocks' nn.LayerNorm; the neck's LayerNorm2d is timm's fixed 1e-6
    act_layer: str = 'gelu'
    dtype: Any = jnp.float32  # the matmuls' compute dtype; params, residual stream, norms and head stay float32
    pretrained_cfg: PretrainedCfg = PretrainedCfg()

    @property
    def num_features(self) -> int:
        return self.neck_chans or self.embed_dim

    # what vitjax.adapt reads to resample the position map for another size
    pos_grid = PatchGrid.grid_size
    num_prefix_tokens, no_embed_class, pos_embed_interp = 0, True, 'bicubic'

    def block_window(self, i: int) -> int:
        return 0 if i in self.global_attn_indexes else self.window_size

    def setup(self):
        check(self)
        norm_cfg = NormCfg('layernorm', self.norm_eps)
        mlp_cfg = MlpCfg(self.mlp_ratio, act_layer=self.act_layer, proj_drop_rate=self.proj_drop_rate)
        block = nn.remat(SamBlock, static_argnums=(2,)) if self.grad_checkpointing else SamBlock  # 2: `train`
        rates = np.linspace(0, self.drop_path_rate, self.depth).tolist()
        blocks = []
        for i in range(self.depth):
            ws = self.block_window(i)
            attn = AttnCfg(self.num_heads, self.qkv_bias, rel_pos_type='decomposed' if self.use_rel_pos else '',
                           grid_size=(ws, ws) if ws else self.grid_size, attn_drop_rate=self.attn_drop_rate,
                           proj_drop_rate=self.proj_drop_rate)
            blocks.append(block(attn, mlp_cfg, norm_cfg, ws, self.init_values, rates[i], self.dtype,
                                name=f'blocks_{i}'))
        self.blocks = blocks
        self.patch_embed = PatchEmbed(to_2tuple(self.patch_size), self.embed_dim, dtype=self.dtype)
        if self.use_abs_pos:
            self.pos_embed = self.param('pos_embed', nn.initializers.normal(0.02), (1, *self.grid_size, self.embed_dim))
        self.neck = Neck(self.neck_chans, self.dtype)
        self.head_drop = nn.Dropout(self.drop_rate)
        self.head = (nn.Dense(self.num_classes, dtype=jnp.float32, kernel_init=nn.initializers.zeros, name='head')
                     if self.num_classes > 0 else None)

    def _embed(self, x: jax.Array) -> jax.Array:
        check_images(x, self.in_chans, to_2tuple(self.img_size), to_2tuple(self.patch_size), False)
        x = self.patch_embed(x).astype(jnp.float32)  # (B, H, W, D): the residual stream starts here, f32
        return x + self.pos_embed if self.use_abs_pos else x

    def forward_features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The neck's map, (B, H/16, W/16, num_features), NHWC (timm returns it NCHW)."""
        x = self._embed(x)
        for blk in self.blocks:
            x = blk(x, train)
        return self.neck(x)

    def forward_head(self, x: jax.Array, pre_logits: bool = False, train: bool = False) -> jax.Array:
        avg, mx = lambda: x.mean(axis=(1, 2)), lambda: x.max(axis=(1, 2))
        x = {'avg': avg, 'max': mx, 'avgmax': lambda: 0.5 * (avg() + mx())}[self.global_pool]()
        x = self.head_drop(x, deterministic=not train)
        return x if pre_logits or self.head is None else self.head(x)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.forward_head(self.forward_features(x, train), train=train)

    def forward_intermediates(self, x: jax.Array, indices: Union[None, int, Sequence[int]] = None,
                              norm: bool = False, output_fmt: str = 'NCHW', intermediates_only: bool = False,
                              stop_early: bool = False):
        """Block outputs as timm returns them: (neck features, [maps]) or the maps alone; `norm` runs each map
        through the neck, as timm does (its width is then num_features)."""
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        take = feature_take_indices(self.depth, indices)
        x = self._embed(x)
        feats = []
        for i, blk in enumerate(self.blocks[:max(take) + 1] if stop_early else self.blocks):
            x = blk(x, False)
            if i in take:
                y = self.neck(x) if norm else x
                feats.append(y.transpose(0, 3, 1, 2) if output_fmt == 'NCHW' else y)
        return feats if intermediates_only else (self.neck(x), feats)

    def grid_attention(self, weights: jax.Array, i: int, h: int, w: int) -> jax.Array:
        """Block i's head-fused attention (B * windows, n, n) for a window block, as (B, N, N) over the map's
        tokens: zero between tokens of different windows, padding dropped (inference.attention_maps' rollout)."""
        ws = self.block_window(i)
        return windows_on_map(weights, self.token_grid(h, w), (ws, ws)) if ws else weights


def sam_problems(m: VisionTransformerSAM) -> list[str]:
    p = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            p.append(what)
    need(1 <= m.depth <= MAX_DEPTH, f'depth={m.depth}: must be in 1..{MAX_DEPTH}')
    # timm's SAM embeds without a strict size, which asserts whole patches in the forward (windows are padded)
    need(multiple_of(m.img_size, m.patch_size),
         f'img_size={m.img_size}: must be a multiple of patch_size={m.patch_size} (SAM takes whole patches only)')
    need(m.num_heads >= 1 and m.embed_dim % m.num_heads == 0,
         f'num_heads={m.num_heads}: must be >= 1 and divide embed_dim={m.embed_dim}')
    need(0 <= m.window_size <= MAX_WINDOW, f'window_size={m.window_size}: must be in 0..{MAX_WINDOW} (0: global)')
    # indices past the last block apply to none, as in timm (a hub config's depth override keeps the name's list)
    need(all(i >= 0 for i in m.global_attn_indexes),
         f'global_attn_indexes={tuple(m.global_attn_indexes)}: block indices must be >= 0')
    need(m.neck_chans is None or 1 <= m.neck_chans <= MAX_DIM, f'neck_chans={m.neck_chans}: 1..{MAX_DIM} or null')
    need(m.global_pool in SAM_POOLS, f'global_pool={m.global_pool!r}: one of {SAM_POOLS}')
    need(m.init_values is None or m.init_values > 0, f'init_values={m.init_values}: must be > 0 (or null)')
    return p


register(Family('sam', VisionTransformerSAM, sam_problems))
