"""Swin Transformer (Liu et al. 2021) as one configurable Flax module, mirroring timm's `SwinTransformer`.

Parameter names follow timm (patch_embed, layers_i/downsample, layers_i/blocks_j/attn/qkv, norm, head/fc) so the
porting table is one line per tensor. Input is NHWC and stays NHWC through the stages, as in timm. Windows,
shifts and attention masks are static: they are computed in numpy from the shapes at trace time.
"""
from __future__ import annotations

from typing import Any, ClassVar, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.models.family import MAX_DEPTH, MAX_DIM, MAX_STAGES, MAX_WINDOW, Family, check, register
from vitjax.models.cfgs import MlpCfg
from vitjax.models.layers import Mlp, check_images, dense_init, feature_take_indices, layer_norm
from vitjax.models.relpos import relative_position_index, resize_rel_pos_bias_table  # noqa: F401 (adapt, tests)
from vitjax.models.vit import PretrainedCfg, Size, to_2tuple

SWIN_POOLS = ('', 'avg', 'max', 'avgmax')


def stage_resolutions(grid: tuple[int, int], num_stages: int) -> list[tuple[int, int]]:
    """Feature-map size inside each stage: stage 0 runs on the patch grid, each later stage halves it (ceil)."""
    out, (h, w) = [], grid
    for i in range(num_stages):
        if i > 0:
            h, w = (h + 1) // 2, (w + 1) // 2
        out.append((h, w))
    return out


def window_and_shift(resolution: tuple[int, int], window: tuple[int, int], block: int,
                     always_partition: bool) -> tuple[tuple[int, int], tuple[int, int]]:
    """(window, shift) of a stage's block `block`: odd blocks shift by half a window; timm's rule, a window larger
    than the feature map shrinks to it, and then nothing is shifted."""
    shift = (0, 0) if block % 2 == 0 else tuple(w // 2 for w in window)
    if always_partition:
        return window, shift
    win = tuple(r if r <= w else w for r, w in zip(resolution, window))
    return win, tuple(0 if r <= w else s for r, w, s in zip(resolution, win, shift))


def window_partition(x: jax.Array, win: tuple[int, int], xp=jnp) -> jax.Array:
    """(B, H, W, C) -> (B * num_windows, Wh * Ww, C); `xp=np` for the static masks built at trace time."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // win[0], win[0], w // win[1], win[1], c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, win[0] * win[1], c)


def window_reverse(windows: jax.Array, win: tuple[int, int], h: int, w: int) -> jax.Array:
    c = windows.shape[-1]
    x = windows.reshape(-1, h // win[0], w // win[1], win[0], win[1], c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def window_layout(grid: tuple[int, int], win: tuple[int, int], shift: tuple[int, int] = (0, 0)
                  ) -> tuple[np.ndarray, np.ndarray]:
    """For each token of the (h, w) map, row-major: its window's index in the cyclically shifted, zero-padded
    map and its place in the window -- where a window block's (B * windows, n, n) attention sits in the map's."""
    (h, w), nw = grid, -(-grid[1] // win[1])
    y, x = np.divmod(np.arange(h * w), w)
    y, x = (y - shift[0]) % h, (x - shift[1]) % w  # where the roll by -shift moved the token
    return (y // win[0]) * nw + x // win[1], (y % win[0]) * win[1] + x % win[1]


def windows_on_map(weights: jax.Array, grid: tuple[int, int], win: tuple[int, int],
                   shift: tuple[int, int] = (0, 0)) -> jax.Array:
    """Head-fused window attention (B * windows, n, n) as (B, N, N) over the map's tokens: zero between tokens of
    different windows, padding dropped (inference.attention_maps' rollout)."""
    idx, pos = window_layout(grid, win, shift)
    nwin = (-(-grid[0] // win[0])) * (-(-grid[1] // win[1]))
    per_image = weights.reshape(-1, nwin, win[0] * win[1], win[0] * win[1])
    full = per_image[:, idx[:, None], pos[:, None], pos[None, :]]
    return jnp.where(jnp.asarray(idx[:, None] == idx[None, :]), full, 0.)


def shifted_window_mask(h: int, w: int, win: tuple[int, int], shift: tuple[int, int]) -> np.ndarray:
    """(num_windows, N, N) additive mask: -100 between tokens that the cyclic shift brought from different
    regions of the (padded) map, 0 elsewhere (timm's constant, not -inf)."""
    img = np.zeros((1, h, w, 1), np.float32)
    cnt = 0
    for hs in ((0, -win[0]), (-win[0], -shift[0]), (-shift[0], None)):
        for ws in ((0, -win[1]), (-win[1], -shift[1]), (-shift[1], None)):
            img[:, hs[0]:hs[1], ws[0]:ws[1], :] = cnt
            cnt += 1
    regions = window_partition(img, win, np)[..., 0]  # (nW, N)
    diff = regions[:, None, :] - regions[:, :, None]
    return np.where(diff != 0, -100.0, 0.0).astype(np.float32)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows with a learned relative position bias (fused qkv, as timm)."""
    num_heads: int
    window_size: tuple[int, int]
    head_dim: Optional[int] = None
    qkv_bias: bool = True
    attn_drop: float = 0.
    proj_drop: float = 0.
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[np.ndarray] = None, train: bool = False) -> jax.Array:
        bw, n, dim = x.shape
        hd = self.head_dim or dim // self.num_heads
        wh, ww = self.window_size
        table = self.param('relative_position_bias_table', nn.initializers.truncated_normal(0.02),
                           ((2 * wh - 1) * (2 * ww - 1), self.num_heads))
        bias = table[relative_position_index(wh, ww).reshape(-1)].reshape(n, n, -1).transpose(2, 0, 1)
        qkv = nn.Dense(3 * self.num_heads * hd, use_bias=self.qkv_bias, dtype=self.dtype, kernel_init=dense_init,
                       name='qkv')(x)
        q, k, v = qkv.reshape(bw, n, 3, self.num_heads, hd).transpose(2, 0, 3, 1, 4)  # each (B*nW, h, N, hd)
        # f32 logits, bias, mask and softmax from compute-dtype q, k (the table is an f32 param)
        attn = jnp.matmul(q * hd ** -0.5, k.swapaxes(-2, -1), preferred_element_type=jnp.float32) + bias
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.reshape(-1, nw, self.num_heads, n, n) + jnp.asarray(mask, attn.dtype)[None, :, None]
            attn = attn.reshape(-1, self.num_heads, n, n)
        return window_attention_out(self, jax.nn.softmax(attn, axis=-1), v, dim, train)


def window_attention_out(attn: nn.Module, weights: jax.Array, v: jax.Array, dim: int, train: bool) -> jax.Array:
    """Softmax weights (B*nW, h, N, N) -> the projected output; the weights are sown as 'attn' for attention
    maps (a no-op unless `intermediates` is mutable)."""
    attn.sow('intermediates', 'attn', weights)
    weights = nn.Dropout(attn.attn_drop)(weights, deterministic=not train)
    bw, _, n, _ = weights.shape
    x = (weights.astype(v.dtype) @ v).transpose(0, 2, 1, 3).reshape(bw, n, -1)
    x = nn.Dense(dim, dtype=attn.dtype, kernel_init=dense_init, name='proj')(x)
    return nn.Dropout(attn.proj_drop)(x, deterministic=not train)


class SwinBlock(nn.Module):
    """(Shifted-)window attention block on a (B, H, W, C) map."""
    num_heads: int
    window_size: tuple[int, int]
    shift_size: tuple[int, int]
    head_dim: Optional[int] = None
    mlp_ratio: float = 4.
    qkv_bias: bool = True
    proj_drop: float = 0.
    attn_drop: float = 0.
    drop_path: float = 0.
    norm_eps: float = 1e-5
    act_layer: str = 'gelu'
    dtype: Any = jnp.float32

    def window_attention(self) -> nn.Module:
        return WindowAttention(self.num_heads, self.window_size, self.head_dim, self.qkv_bias, self.attn_drop,
                               self.proj_drop, self.dtype, name='attn')

    def _attn(self, x: jax.Array, train: bool) -> jax.Array:
        b, h, w, c = x.shape
        win, shift = self.window_size, self.shift_size
        if any(shift):
            x = jnp.roll(x, (-shift[0], -shift[1]), axis=(1, 2))
        pad_h, pad_w = (-h) % win[0], (-w) % win[1]
        x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        hp, wp = h + pad_h, w + pad_w
        mask = shifted_window_mask(hp, wp, win, shift) if any(shift) else None
        y = self.window_attention()(window_partition(x, win), mask, train)
        x = window_reverse(y, win, hp, wp)[:, :h, :w]
        return jnp.roll(x, shift, axis=(1, 2)) if any(shift) else x

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        # x is the residual stream (f32); the norms hand the matmuls their input in the compute dtype.
        drop_path = nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3))
        y = self._attn(layer_norm(self.norm_eps, self.dtype, 'norm1')(x), train)
        x = x + drop_path(y.astype(x.dtype), deterministic=not train)
        y = layer_norm(self.norm_eps, self.dtype, 'norm2')(x)
        y = Mlp(MlpCfg(mlp_ratio=self.mlp_ratio, act_layer=self.act_layer, proj_drop_rate=self.proj_drop),
                dtype=self.dtype, name='mlp')(y, train)
        return x + drop_path(y.astype(x.dtype), deterministic=not train)


def merge_2x2(x: jax.Array) -> jax.Array:
    """(B, H, W, C) -> (B, H/2, W/2, 4C), odd sizes zero-padded, in timm's order (x0, x1, x2, x3 = (0,0), (1,0),
    (0,1), (1,1))."""
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    h, w = x.shape[1:3]
    return x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(b, h // 2, w // 2, 4 * c)


class PatchMerging(nn.Module):
    """2x2 neighbourhood -> channels, norm, linear."""
    out_dim: int
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = merge_2x2(x)
        y = layer_norm(self.norm_eps, self.dtype, 'norm')(x)
        y = nn.Dense(self.out_dim, use_bias=False, dtype=self.dtype, kernel_init=dense_init, name='reduction')(y)
        return y.astype(x.dtype)  # the next stage's residual stream: f32, where timm's autocast leaves it bf16


class SwinStage(nn.Module):
    out_dim: int
    depth: int
    downsample: bool
    num_heads: int
    window_size: tuple[int, int]
    resolution: tuple[int, int]  # the stage's feature map (after downsampling) at the model's img_size
    head_dim: Optional[int] = None
    always_partition: bool = False
    mlp_ratio: float = 4.
    qkv_bias: bool = True
    proj_drop: float = 0.
    attn_drop: float = 0.
    drop_path: Sequence[float] = ()
    norm_eps: float = 1e-5
    act_layer: str = 'gelu'
    dtype: Any = jnp.float32
    grad_checkpointing: bool = False
    block_cls: Any = SwinBlock  # the family's block and merge classes (SwinTransformer.block_cls / merge_cls)
    merge_cls: Any = PatchMerging
    block_args: tuple = ()  # (name, value) pairs every block of the stage takes on top (Swin V2's)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        block = self.block_cls
        block = nn.remat(block, static_argnums=(2,)) if self.grad_checkpointing else block  # 2: `train`
        if self.downsample:
            x = self.merge_cls(self.out_dim, self.norm_eps, self.dtype, name='downsample')(x)
        for j in range(self.depth):
            win, shift = window_and_shift(self.resolution, self.window_size, j, self.always_partition)
            x = block(num_heads=self.num_heads, window_size=win, shift_size=shift, head_dim=self.head_dim,
                      mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias, proj_drop=self.proj_drop,
                      attn_drop=self.attn_drop, drop_path=self.drop_path[j] if self.drop_path else 0.,
                      norm_eps=self.norm_eps, act_layer=self.act_layer, dtype=self.dtype, name=f'blocks_{j}',
                      **dict(self.block_args))(x, train)
        return x


class PatchEmbedNorm(nn.Module):
    patch_size: tuple[int, int]
    embed_dim: int
    norm_eps: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.embed_dim, self.patch_size, strides=self.patch_size, padding='VALID', dtype=self.dtype,
                    name='proj')(x)
        return layer_norm(self.norm_eps, jnp.float32, 'norm')(x)  # starts the residual stream: f32


class SwinTransformer(nn.Module):
    """timm's SwinTransformer: patch embed + norm, four stages of (shifted) window attention with patch
    merging between them, final norm, pooled head. `window_size` is one (h, w) for all stages or one per stage."""
    img_size: Size = 224
    patch_size: Size = 4
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = 'avg'
    embed_dim: int = 96
    depths: Sequence[int] = (2, 2, 6, 2)
    num_heads: Sequence[int] = (3, 6, 12, 24)
    head_dim: Optional[int] = None
    window_size: Union[int, Sequence[int], Sequence[Sequence[int]]] = 7
    always_partition: bool = False
    dynamic_img_size: bool = False  # any input size; windows and shifts still follow img_size, as in timm
    grad_checkpointing: bool = False  # remat each block: activations recomputed in the backward (timm's name)
    mlp_ratio: float = 4.
    qkv_bias: bool = True
    drop_rate: float = 0.
    proj_drop_rate: float = 0.
    attn_drop_rate: float = 0.
    drop_path_rate: float = 0.
    norm_eps: float = 1e-5
    act_layer: str = 'gelu'
    dtype: Any = jnp.float32  # the matmuls' compute dtype; params, residual stream, norms and head stay float32
    pretrained_cfg: PretrainedCfg = PretrainedCfg()
    block_cls: ClassVar[type] = SwinBlock  # a subclass family (Swin V2) swaps the block and the merge
    merge_cls: ClassVar[type] = PatchMerging

    def block_args(self, stage: int) -> tuple:
        return ()

    @property
    def grid_size(self) -> tuple[int, int]:
        (h, w), (ph, pw) = to_2tuple(self.img_size), to_2tuple(self.patch_size)
        return h // ph, w // pw

    @property
    def num_features(self) -> int:
        return int(self.embed_dim * 2 ** (len(self.depths) - 1))

    @property
    def stage_window_sizes(self) -> list[tuple[int, int]]:
        ws, n = self.window_size, len(self.depths)
        if isinstance(ws, int):
            return [(ws, ws)] * n
        if len(ws) == 2 and isinstance(ws[0], int):
            return [tuple(ws)] * n
        if len(ws) != n:
            raise ValueError(f'window_size needs one entry per stage ({n}), got {ws}')
        return [to_2tuple(w) for w in ws]

    def token_grid(self, h: int, w: int) -> tuple[int, int]:
        """The last stage's map for an (h, w) input: what forward_features returns."""
        ph, pw = to_2tuple(self.patch_size)
        return stage_resolutions((h // ph, w // pw), len(self.depths))[-1]

    def block_window(self, stage: int, block: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(window, shift) of a block at the model's img_size, as its stage builds it."""
        res = stage_resolutions(self.grid_size, len(self.depths))[stage]
        return window_and_shift(res, self.stage_window_sizes[stage], block, self.always_partition)

    def grid_attention(self, weights: jax.Array, block: int, h: int, w: int) -> jax.Array:
        """The last stage's block `block`: its head-fused (B * windows, n, n) attention as (B, N, N) over the
        stage's map for an (h, w) input (inference.attention_maps)."""
        return windows_on_map(weights, self.token_grid(h, w), *self.block_window(len(self.depths) - 1, block))

    def rel_pos_window(self, key: str) -> tuple[tuple[int, int], int]:
        """(window, extra rows) of the relative-position table at `key` (layers_i/blocks_j/...): the stage's
        window as clipped to its feature map; for load-time resizes (vitjax.adapt)."""
        return self.block_window(int(key.split('/')[0].split('_')[1]), 0)[0], 0

    def setup(self):
        check(self)
        dims = [int(self.embed_dim * 2 ** i) for i in range(len(self.depths))]
        self.patch_embed = PatchEmbedNorm(to_2tuple(self.patch_size), dims[0], self.norm_eps, self.dtype)
        rates = np.linspace(0, self.drop_path_rate, sum(self.depths)).tolist()
        starts = np.cumsum([0, *self.depths]).tolist()
        self.layers = [
            SwinStage(out_dim=dims[i], depth=d, downsample=i > 0, num_heads=self.num_heads[i],
                      window_size=self.stage_window_sizes[i], resolution=res, head_dim=self.head_dim,
                      always_partition=self.always_partition, mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias,
                      proj_drop=self.proj_drop_rate, attn_drop=self.attn_drop_rate,
                      drop_path=tuple(rates[starts[i]:starts[i + 1]]), norm_eps=self.norm_eps,
                      act_layer=self.act_layer, dtype=self.dtype, grad_checkpointing=self.grad_checkpointing,
                      block_cls=self.block_cls, merge_cls=self.merge_cls, block_args=self.block_args(i),
                      name=f'layers_{i}')
            for i, (d, res) in enumerate(zip(self.depths, stage_resolutions(self.grid_size, len(self.depths))))]
        self.norm = layer_norm(self.norm_eps, jnp.float32, 'norm')
        self.head_drop = nn.Dropout(self.drop_rate)
        self.head = (nn.Dense(self.num_classes, dtype=jnp.float32, kernel_init=nn.initializers.zeros, name='head')
                     if self.num_classes > 0 else None)

    def _embed(self, x: jax.Array) -> jax.Array:
        check_images(x, self.in_chans, to_2tuple(self.img_size), to_2tuple(self.patch_size), self.dynamic_img_size)
        return self.patch_embed(x)

    def forward_features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The last stage's map after the final norm: (B, H/32, W/32, num_features), NHWC as in timm."""
        x = self._embed(x)
        for stage in self.layers:
            x = stage(x, train)
        return self.norm(x)

    def forward_head(self, x: jax.Array, pre_logits: bool = False, train: bool = False) -> jax.Array:
        if self.global_pool == 'avg':
            x = x.mean(axis=(1, 2))
        elif self.global_pool == 'max':
            x = x.max(axis=(1, 2))
        elif self.global_pool == 'avgmax':
            x = 0.5 * (x.mean(axis=(1, 2)) + x.max(axis=(1, 2)))
        x = self.head_drop(x, deterministic=not train)
        return x if pre_logits or self.head is None else self.head(x)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.forward_head(self.forward_features(x, train), train=train)

    def forward_intermediates(self, x: jax.Array, indices: Union[None, int, Sequence[int]] = None,
                              norm: bool = False, output_fmt: str = 'NCHW', intermediates_only: bool = False,
                              stop_early: bool = False):
        """Stage outputs as timm returns them: (final_features, [maps]) or only the maps. Maps are
        (B, C, H, W) for NCHW (timm's only format) or (B, H, W, C) for NHWC; `norm` normalises the last stage."""
        if output_fmt not in ('NCHW', 'NHWC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        n = len(self.layers)
        take = feature_take_indices(n, indices)
        x = self._embed(x)
        feats, last = [], -1
        for i, stage in enumerate(self.layers[:max(take) + 1] if stop_early else self.layers):
            x, last = stage(x), i
            if i in take:
                y = self.norm(x) if norm and i == n - 1 else x
                feats.append(y.transpose(0, 3, 1, 2) if output_fmt == 'NCHW' else y)
        if intermediates_only:
            return feats
        return (self.norm(x) if last == n - 1 else x), feats


def swin_problems(m: SwinTransformer) -> list[str]:
    p = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            p.append(what)
    n = len(m.depths)
    need(1 <= n <= MAX_STAGES and all(d >= 1 for d in m.depths) and sum(m.depths) <= MAX_DEPTH,
         f'depths={m.depths}: 1..{MAX_STAGES} stages of >= 1 blocks, {MAX_DEPTH} blocks in all at most')
    need(len(m.num_heads) == n and all(h >= 1 for h in m.num_heads),
         f'num_heads={m.num_heads}: one count >= 1 per stage (depths has {n})')
    need(n > MAX_STAGES or m.embed_dim * 2 ** (n - 1) <= MAX_DIM,
         f'the last stage width embed_dim * 2**{n - 1} is over {MAX_DIM}')
    need(m.head_dim is None or m.head_dim >= 1, f'head_dim={m.head_dim}: must be >= 1 (or null)')
    ws = m.window_size
    flat = [ws] if isinstance(ws, int) else [x for w in ws for x in ((w,) if isinstance(w, int) else w)]
    need(all(1 <= w <= MAX_WINDOW for w in flat), f'window_size={ws}: sizes in 1..{MAX_WINDOW}')
    need(m.global_pool in SWIN_POOLS, f'global_pool={m.global_pool!r}: one of {SWIN_POOLS}')
    return p


register(Family('swin', SwinTransformer, swin_problems))
