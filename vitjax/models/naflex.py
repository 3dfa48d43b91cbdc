"""timm's NaFlexViT (SigLIP 2's NaFlex): any resolution and aspect ratio, as padded sequences of patches.

A NaFlexViT is a VisionTransformer whose learned position embeddings live on a fixed grid (16x16) that is
resized to each input's patch grid, with the prefix tokens outside it. On images it is the plain ViT forward
(`dynamic_img_size`). `forward_naflex` takes what timm's NaFlex collator yields: `patches` (B, N, ph*pw*C) in
(ph, pw, C) order, `patch_coord` (B, N, 2) = (row, col), `patch_valid` (B, N); each sample's grid is its largest
coordinate + 1, its first rows*cols tokens are its patches in row-major order and the rest is padding, which
attention, pooling and the position embeddings leave out exactly as timm does.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from vitjax.models.family import Family, register
from vitjax.models.vit import Size, VisionTransformer, to_2tuple, vit_problems


def _cubic(x: jax.Array, a: float = -0.5) -> jax.Array:
    # PyTorch's antialiased bicubic uses Keys' kernel with a = -0.5 (PIL's), not the -0.75 of its plain bicubic.
    x = jnp.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return jnp.where(x < 1, near, jnp.where(x < 2, far, 0.))


def _triangle(x: jax.Array) -> jax.Array:
    return jnp.maximum(0., 1. - jnp.abs(x))


def resize_weights(index: jax.Array, out_size: jax.Array, in_size: int, interpolation: str) -> jax.Array:
    """Row `index` of the (out_size, in_size) matrix of F.interpolate(antialias=True, align_corners=False), for
    traced sizes: (..., in_size). The kernel widens by the scale when downsampling and is renormalised at the
    borders (PyTorch's _compute_weights_aa); at out_size == in_size it is the identity."""
    scale = in_size / out_size.astype(jnp.float32)
    center = scale * (index.astype(jnp.float32) + 0.5)
    inv = jnp.where(scale >= 1., 1. / scale, 1.)
    src = jnp.arange(in_size, dtype=jnp.float32)
    kernel = _cubic if interpolation == 'bicubic' else _triangle
    w = kernel((src - center[..., None] + 0.5) * inv[..., None])
    return w / jnp.maximum(w.sum(-1, keepdims=True), 1e-12)


class NaFlexVit(VisionTransformer):
    """timm's NaFlexVit: defaults are its NaFlexVitCfg's where they differ from VisionTransformer's."""
    img_size: Size = 384
    global_pool: str = 'map'
    class_token: bool = False
    no_embed_class: bool = True
    dynamic_img_size: bool = True
    pos_embed_grid: Optional[tuple[int, int]] = (16, 16)

    def _naflex_embed(self, patches: jax.Array, patch_coord: jax.Array, patch_valid: jax.Array,
                      train: bool) -> tuple[jax.Array, jax.Array]:
        """(tokens with prefix, validity of every token)."""
        b, n, flat = patches.shape
        ph, pw = to_2tuple(self.patch_size)
        if flat != ph * pw * self.in_chans:
            raise ValueError(f'patches of {flat} values, expected {ph}x{pw}x{self.in_chans} = '
                             f'{ph * pw * self.in_chans} (patch_size x in_chans, (ph, pw, C) order)')
        # The patch embedding's conv, applied to each patch as a one-patch image: the same params, the same sums.
        x = self.patch_embed(patches.reshape(b * n, ph, pw, self.in_chans)).reshape(b, n, -1).astype(jnp.float32)
        if self.pos_embed_param is not None:
            gh, gw = self.pos_grid
            grid = self.pos_embed_param.reshape(gh, gw, -1).astype(jnp.float32)
            rows, cols = patch_coord[..., 0].max(1) + 1, patch_coord[..., 1].max(1) + 1  # each sample's grid
            # timm adds the sample's resized grid, flattened, to its first rows*cols tokens in order
            t = jnp.arange(n)[None, :]
            wy = resize_weights(t // cols[:, None], rows[:, None], gh, self.pos_embed_interp)  # (B, N, gh)
            wx = resize_weights(t % cols[:, None], cols[:, None], gw, self.pos_embed_interp)  # (B, N, gw)
            pos = jnp.einsum('bti,btj,ijd->btd', wy, wx, grid, precision='highest')
            x = x + pos * (t < (rows * cols)[:, None])[..., None]
        prefix = [jnp.broadcast_to(p, (b, *p.shape[1:])).astype(x.dtype) for p in (self.cls_token, self.reg_token)
                  if p is not None]
        x = self.pos_drop(jnp.concatenate(prefix + [x], axis=1), deterministic=not train)
        valid = jnp.concatenate([jnp.ones((b, self.num_prefix_tokens), bool), patch_valid.astype(bool)], axis=1)
        return (self.norm_pre(x) if self.norm_pre is not None else x), valid

    def forward_features_naflex(self, patches: jax.Array, patch_coord: jax.Array, patch_valid: jax.Array,
                                train: bool = False) -> jax.Array:
        """All tokens after the final norm, (B, prefix + N, D); padding tokens' values are meaningless."""
        if self.rope is not None:
            raise ValueError('NaFlex batches with RoPE are not supported yet')
        x, valid = self._naflex_embed(patches, patch_coord, patch_valid, train)
        x, _ = self._blocks(x, train, mask=valid[:, None, :, None] & valid[:, None, None, :])
        return self._final_norm(x)

    def pool_naflex(self, x: jax.Array, patch_valid: jax.Array) -> jax.Array:
        """timm's global_pool_naflex: padding never enters the pool."""
        npt = self.num_prefix_tokens
        valid = patch_valid.astype(bool)
        if self.pool_include_prefix:
            valid = jnp.concatenate([jnp.ones((x.shape[0], npt), bool), valid], axis=1)
        else:
            x = x[:, npt:]
        if self.attn_pool is not None:
            return self.attn_pool(x, valid)
        if self.global_pool in ('', 'token'):
            return self.pool(x)
        w = valid[..., None].astype(x.dtype)
        avg = (x * w).sum(1) / jnp.maximum(w.sum(1), 1.)
        top = jnp.where(valid[..., None], x, jnp.finfo(x.dtype).min).max(1)
        return {'avg': avg, 'max': top, 'avgmax': 0.5 * (avg + top)}[self.global_pool]

    def forward_naflex(self, patches: jax.Array, patch_coord: jax.Array, patch_valid: jax.Array,
                       pre_logits: bool = False, train: bool = False) -> jax.Array:
        """Logits (or pooled features) of a NaFlex batch: timm's `model({'patches', 'patch_coord',
        'patch_valid'})`."""
        x = self.forward_features_naflex(patches, patch_coord, patch_valid, train)
        if self.global_pool == 'token':
            x = x[:, 0]
        else:
            x = self.pool_naflex(x, patch_valid)
        if self.fc_norm_layer is not None:
            x = self.fc_norm_layer(x)
        x = self.head_drop(x, deterministic=not train)
        return x if pre_logits or self.head is None else self.head(x)


def patchify(images, patch_size: Size, max_patches: Optional[int] = None):
    """NHWC images of any sizes (a list) -> a NaFlex batch as timm's Patchify and collator lay it out: each image
    zero-padded on the bottom and right to whole patches, `patches` (B, N, ph*pw*C) in (ph, pw, C) order,
    row-major over each image's grid, zero-padded to the longest (or `max_patches`); `patch_coord` (B, N, 2);
    `patch_valid` (B, N). timm's collator would drop the patches past `max_patches`: an error here."""
    import numpy as np
    ph, pw = to_2tuple(patch_size)
    if not len(images):
        raise ValueError('patchify: no images')
    out, chans = [], None
    for i, im in enumerate(images):
        im = np.asarray(im)
        if im.ndim != 3:
            raise ValueError(f'patchify: image {i}: expected (H, W, C), got shape {im.shape}')
        h, w, c = im.shape
        if not h or not w or not c:
            raise ValueError(f'patchify: image {i} ({h}x{w}) is empty')
        chans = c if chans is None else chans
        if c != chans:
            raise ValueError(f'patchify: image {i} has {c} channels, image 0 has {chans}')
        gh, gw = -(-h // ph), -(-w // pw)
        if max_patches is not None and gh * gw > max_patches:
            raise ValueError(f'patchify: image {i} ({h}x{w}) makes {gh * gw} patches of {ph}x{pw}, more than '
                             f'max_patches={max_patches}; resize it first (timm: ResizeToSequence)')
        p = np.pad(im, ((0, gh * ph - h), (0, gw * pw - w), (0, 0))).reshape(gh, ph, gw, pw, c)
        p = p.transpose(0, 2, 1, 3, 4).reshape(gh * gw, -1)
        coord = np.stack(np.meshgrid(np.arange(gh), np.arange(gw), indexing='ij'), -1).reshape(-1, 2)
        out.append((p, coord))
    n = max_patches or max(len(p) for p, _ in out)
    patches = np.zeros((len(out), n, out[0][0].shape[1]), np.float32)
    coords = np.zeros((len(out), n, 2), np.int32)
    valid = np.zeros((len(out), n), bool)
    for i, (p, c) in enumerate(out):
        patches[i, :len(p)], coords[i, :len(p)], valid[i, :len(p)] = p, c, True
    return patches, coords, valid


register(Family('naflexvit', NaFlexVit, vit_problems))
