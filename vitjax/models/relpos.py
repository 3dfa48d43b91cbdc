"""Learned relative-position biases: tables (Swin's windows, BEiT's whole patch grid) and timm's log-coordinate
MLP (vision_transformer_relpos); the static index that gathers them into an (N, N) bias per head, and timm's
resize of a table to another window."""
from __future__ import annotations

from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def relative_position_index(win_h: int, win_w: int) -> np.ndarray:
    """(N, N) rows of a ((2h-1)(2w-1), heads) table for every pair of an h x w window's positions."""
    coords = np.stack(np.meshgrid(np.arange(win_h), np.arange(win_w), indexing='ij')).reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0)
    return (rel[..., 0] + win_h - 1) * (2 * win_w - 1) + (rel[..., 1] + win_w - 1)


def cls_relative_position_index(win_h: int, win_w: int) -> np.ndarray:
    """The (N+1, N+1) index with a class token first: the table's last three rows are class -> patch,
    patch -> class and class -> class (timm's gen_relative_position_index(class_token=True), BEiT's)."""
    n = (2 * win_h - 1) * (2 * win_w - 1)
    index = np.zeros((win_h * win_w + 1,) * 2, np.int64)
    index[1:, 1:] = relative_position_index(win_h, win_w)
    index[0, :], index[:, 0], index[0, 0] = n, n + 1, n + 2
    return index


def relative_log_coords(win_h: int, win_w: int) -> np.ndarray:
    """(2h-1, 2w-1, 2) signed log offsets, sign(d) * log(1 + |d|) (timm's gen_relative_log_coords, mode 'cr')."""
    d = np.stack(np.meshgrid(np.arange(1 - win_h, win_h, dtype=np.float32),
                             np.arange(1 - win_w, win_w, dtype=np.float32), indexing='ij'), -1)
    return np.sign(d) * np.log1p(np.abs(d))


class RelPosBias(nn.Module):
    """A learned table ((2h-1)(2w-1) + 3 * prefix_tokens, heads) over an h x w patch grid and at most one
    prefix (class) token -> the (heads, N, N) bias (BEiT; timm's RelPosBias)."""
    grid_size: tuple[int, int]
    num_heads: int
    prefix_tokens: int = 1

    @nn.compact
    def __call__(self, train: bool = False) -> jax.Array:
        h, w = self.grid_size
        table = self.param('relative_position_bias_table', nn.initializers.truncated_normal(0.02),
                           ((2 * h - 1) * (2 * w - 1) + 3 * self.prefix_tokens, self.num_heads))
        index = cls_relative_position_index(h, w) if self.prefix_tokens else relative_position_index(h, w)
        n = index.shape[0]
        return table[index.reshape(-1)].reshape(n, n, -1).transpose(2, 0, 1)


class RelPosMlp(nn.Module):
    """The bias from a 2 -> hidden -> heads ReLU MLP on the log-spaced relative offsets, the prefix tokens' rows
    and columns zero (timm's RelPosMlp, mode 'cr': vision_transformer_relpos)."""
    grid_size: tuple[int, int]
    num_heads: int
    hidden_dim: int = 128
    prefix_tokens: int = 0

    @nn.compact
    def __call__(self, train: bool = False) -> jax.Array:
        h, w = self.grid_size
        x = nn.relu(nn.Dense(self.hidden_dim, name='fc1')(jnp.asarray(relative_log_coords(h, w))))
        x = nn.Dropout(0.125)(x, deterministic=not train)  # timm's Mlp(drop=(0.125, 0.))
        x = nn.Dense(self.num_heads, name='fc2')(x).reshape(-1, self.num_heads)
        n, p = h * w, self.prefix_tokens
        bias = x[relative_position_index(h, w).reshape(-1)].reshape(n, n, -1).transpose(2, 0, 1)
        return jnp.pad(bias, ((0, 0), (p, 0), (p, 0)))


class DecomposedRelPos(nn.Module):
    """SAM's (MViTv2's) decomposed relative position: a learned (2s - 1, head_dim) table per axis, and the bias of
    query (y, x) to key (y', x') is q . Rh[y - y'] + q . Rw[x - x'] -- it depends on the query, so it is computed
    from q in the attention (timm's get_decomposed_rel_pos_bias). q: (B, heads, N, hd) -> (B, heads, N, N), f32."""
    grid_size: tuple[int, int]

    @nn.compact
    def __call__(self, q: jax.Array) -> jax.Array:
        (gh, gw), hd = self.grid_size, q.shape[-1]
        offsets = lambda s: np.arange(s)[:, None] - np.arange(s)[None, :] + s - 1  # (s, s) rows of the table
        rh = self.param('rel_pos_h', nn.initializers.zeros, (2 * gh - 1, hd))[offsets(gh)].astype(q.dtype)
        rw = self.param('rel_pos_w', nn.initializers.zeros, (2 * gw - 1, hd))[offsets(gw)].astype(q.dtype)
        r = q.reshape(*q.shape[:2], gh, gw, hd)
        bh = jnp.einsum('bnyxc,ykc->bnyxk', r, rh, preferred_element_type=jnp.float32)
        bw = jnp.einsum('bnyxc,xkc->bnyxk', r, rw, preferred_element_type=jnp.float32)
        return (bh[..., :, None] + bw[..., None, :]).reshape(*q.shape[:2], gh * gw, gh * gw)


def resize_decomposed_table(table: np.ndarray, length: int) -> np.ndarray:
    """A (L, hd) decomposed table at another length, as timm's get_rel_pos resamples it when the map is not the
    size it was built for (F.interpolate, mode='linear', align_corners=False: half-pixel centres, no antialias)."""
    table = np.asarray(table)
    n = table.shape[0]
    if n == length:
        return table
    src = np.maximum((np.arange(length) + 0.5) * (n / length) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)
    i1, frac = np.minimum(i0 + 1, n - 1), (src - np.floor(src))[:, None]
    t = table.astype(np.float32)
    return (t[i0] * (1 - frac) + t[i1] * frac).astype(table.dtype)


REL_POS_TYPES = {'bias': RelPosBias, 'mlp': RelPosMlp}


def rel_pos_module(kind: str, grid_size: tuple[int, int], num_heads: int, prefix_tokens: int,
                   hidden_dim: Optional[int], name: str) -> nn.Module:
    """The bias module of a `rel_pos_type` ('bias' | 'mlp'); `hidden_dim` None is timm's 128."""
    if kind == 'mlp':
        return RelPosMlp(grid_size, num_heads, hidden_dim or 128, prefix_tokens, name=name)
    return RelPosBias(grid_size, num_heads, prefix_tokens, name=name)


def resize_rel_pos_bias_table(table: np.ndarray, new_window: Sequence[int],
                              old_window: Optional[Sequence[int]] = None, extra: int = 0) -> np.ndarray:
    """Resize a ((2Wh-1)(2Ww-1) + extra, heads) relative-position-bias table to another window, as timm does
    when loading Swin or BEiT weights at a new size: BEiT's geometric-progression source coordinates, then
    linear interpolation on that uneven grid (timm's RegularGridInterpolator, its default without scipy). The
    `extra` last rows (BEiT's class-token entries) are kept as they are."""
    table = np.asarray(table)
    tail = table[table.shape[0] - extra:]
    table = table[:table.shape[0] - extra]
    dst = (2 * new_window[0] - 1, 2 * new_window[1] - 1)
    if old_window is None:
        side = int(round(table.shape[0] ** 0.5))
        src = (side, side) if side * side == table.shape[0] else dst
    else:
        src = (2 * old_window[0] - 1, 2 * old_window[1] - 1)
    if src[0] * src[1] != table.shape[0]:
        raise ValueError(f'relative position table has {table.shape[0]} rows, not {src[0]}x{src[1]} + {extra}')
    if src == dst:
        return np.concatenate([table, tail])

    def source_coords(s: int, d: int) -> np.ndarray:
        lo, hi = 1.01, 1.5
        while hi - lo > 1e-6:  # ratio q whose progression 1 + q + ... reaches d // 2 at s // 2 terms
            q = (lo + hi) / 2.0
            if (1.0 - q ** (s // 2)) / (1.0 - q) > d // 2:
                hi = q
            else:
                lo = q
        dis, cur = [], 1.0
        for i in range(s // 2):
            dis.append(cur)
            cur += q ** (i + 1)
        return np.asarray([-v for v in reversed(dis)] + [0.0] + dis, np.float32)

    ys, xs = source_coords(src[0], dst[0]), source_coords(src[1], dst[1])
    ty, tx = dst[0] // 2, dst[1] // 2
    dy, dx = np.meshgrid(np.arange(-ty, ty + 0.1, 1.0, dtype=np.float32),
                         np.arange(-tx, tx + 0.1, 1.0, dtype=np.float32), indexing='ij')

    def bracket(p: np.ndarray, x: np.ndarray):
        right = np.minimum(np.searchsorted(p, x, side='left'), len(p) - 1)
        left = np.clip(right - 1, 0, len(p) - 1)
        d_left, d_right = np.maximum(x - p[left], 0.0), np.maximum(p[right] - x, 0.0)
        both = (d_left == 0) & (d_right == 0)
        d_left, d_right = np.where(both, 1.0, d_left), np.where(both, 1.0, d_right)
        return (left, right), (d_left, d_right)

    (yl, yr), (dyl, dyr) = bracket(ys, dy)
    (xl, xr), (dxl, dxr) = bracket(xs, dx)
    grid = table.astype(np.float32).T.reshape(-1, *src)  # (heads, sy, sx)
    out = (grid[:, yl, xl] * dyr * dxr + grid[:, yl, xr] * dyr * dxl
           + grid[:, yr, xl] * dyl * dxr + grid[:, yr, xr] * dyl * dxl) / ((dyl + dyr) * (dxl + dxr))
    return np.concatenate([out.reshape(out.shape[0], -1).T.astype(table.dtype), tail])
