"""What the VLM vision towers share (Qwen3-VL's, DeepSeek V4's, Gemma 4's): `Tower`, an encoder whose trunk gives a
(B, H, W, D) patch map and whose projector turns that map into the tokens an LLM reads, and `TowerClassifier`,
timm's wrapper of such an encoder (params under `encoder/`) with mean pooling, a norm without affine params and a
head.

A family's encoder subclasses `Tower` with its fields and gives `embed` (images -> tokens, RoPE, grid), `blocks`,
`end` (its final norm, if any) and `projector`; its classifier subclasses `TowerClassifier` and the encoder, and
names the encoder class and its head norm."""
from __future__ import annotations

import dataclasses
from typing import ClassVar, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitjax.models.family import MAX_DEPTH, MAX_DIM, check
from vitjax.models.layers import feature_take_indices
from vitjax.models.vit import PatchGrid, to_2tuple

OUTPUT_FMTS = ('NCHW', 'NHWC', 'NLC')


class Tower(PatchGrid, nn.Module):
    """An encoder: `forward_features` is the trunk's map, the call its projector's tokens (`global_pool` the
    projector's name), their mean ('avg') or the map itself ('')."""
    projector_pool: ClassVar[str]  # the global_pool that runs the projector ('merge', 'align')

    @property
    def projects(self) -> bool:
        return self.global_pool == self.projector_pool

    def embed(self, x: jax.Array) -> tuple[jax.Array, Optional[jax.Array], tuple[int, int]]:
        """(B, H, W, C) images -> (B, N, D) f32 tokens, their RoPE and their (gh, gw) grid."""
        raise NotImplementedError

    def end(self, x: jax.Array) -> jax.Array:
        """The trunk's final norm (none by default)."""
        return x

    def _trunk(self, x: jax.Array, train: bool, stop: Optional[int] = None,
               norm: bool = False) -> tuple[jax.Array, list]:
        """The (B, gh, gw, D) map after `stop` blocks (all: None) and each block's (through `end` if `norm`)."""
        x, rope, (gh, gw) = self.embed(x)
        b, _, d = x.shape
        outs = []
        for blk in self.blocks[:stop]:
            x = blk(x, train, None, rope)
            outs.append(x)
        grid = lambda y: y.reshape(b, gh, gw, d)
        return grid(self.end(x)), [grid(self.end(y) if norm else y) for y in outs]

    def forward_features(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self._trunk(x, train)[0]

    def forward_head(self, x: jax.Array, pre_logits: bool = False, train: bool = False) -> jax.Array:
        if self.projector is not None:
            return self.projector(x, pre_logits)
        return x.reshape(x.shape[0], -1, x.shape[-1]).mean(axis=1) if self.global_pool == 'avg' else x

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.forward_head(self.forward_features(x, train), train=train)

    def forward_intermediates(self, x: jax.Array, indices: Union[None, int, Sequence[int]] = None,
                              norm: bool = False, output_fmt: str = 'NCHW', intermediates_only: bool = False,
                              stop_early: bool = False):
        """Block outputs as timm returns them: (final map NHWC, [maps]) or only the maps; maps NCHW (timm's
        default), NHWC or NLC; `norm`: through the trunk's final norm (a tower without one ignores it, as timm)."""
        if output_fmt not in OUTPUT_FMTS:
            raise ValueError(f'output_fmt must be one of {OUTPUT_FMTS}, got {output_fmt!r}')
        take = feature_take_indices(self.depth, indices)
        x, outs = self._trunk(x, False, max(take) + 1 if stop_early else None, norm)
        feats = [outs[i] for i in take]
        if output_fmt == 'NCHW':
            feats = [y.transpose(0, 3, 1, 2) for y in feats]
        elif output_fmt == 'NLC':
            feats = [y.reshape(y.shape[0], -1, y.shape[-1]) for y in feats]
        return feats if intermediates_only else (x, feats)


class TowerClassifier(nn.Module):
    """timm's classifier over a tower: the encoder (with its projector when `encoder_pool` names it) under
    `encoder/`, then mean pooling ('avg'), the head norm without affine params (`final_norm`) and the head.
    Mixed in before the encoder class, whose fields it passes on; the subclass declares `encoder_pool`,
    `final_norm` and `drop_rate`."""
    encoder_cls: ClassVar[type]
    head_norm: ClassVar[str]  # 'layernorm' | 'rmsnorm'
    # forward_intermediates' final features: through the encoder's projector (Qwen3, DeepSeek) or the trunk's (Gemma 4)
    final_through_projector: ClassVar[bool] = True

    @property
    def projects(self) -> bool:
        return self.encoder_pool == self.projector_pool

    def setup(self):
        check(self)
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(self.encoder_cls)
                  if f.init and f.name not in ('parent', 'name', 'num_classes', 'global_pool')}
        self.encoder = self.encoder_cls(**shared, global_pool=self.encoder_pool)
        norm = {'layernorm': lambda: nn.LayerNorm(self.norm_eps, use_bias=False, use_scale=False, dtype=jnp.float32),
                'rmsnorm': lambda: nn.RMSNorm(self.norm_eps, use_scale=False, dtype=jnp.float32)}[self.head_norm]
        self.norm = norm() if self.final_norm else None
        self.head_drop = nn.Dropout(self.drop_rate)
        self.head = (nn.Dense(self.num_classes, dtype=jnp.float32, kernel_init=nn.initializers.zeros)
                     if self.num_classes > 0 else None)

    def forward_features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """The encoder's output: the (B, H, W, D) map, or its projector's (B, N, out) tokens."""
        return self.encoder(x, train)

    def forward_head(self, x: jax.Array, pre_logits: bool = False, train: bool = False) -> jax.Array:
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        if self.global_pool == 'avg':
            x = x.mean(axis=1)
        if self.norm is not None:
            x = self.norm(x.astype(jnp.float32))
        x = self.head_drop(x, deterministic=not train)
        return x if pre_logits or self.head is None else self.head(x)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.forward_head(self.forward_features(x, train), train=train)

    def forward_intermediates(self, x: jax.Array, indices: Union[None, int, Sequence[int]] = None,
                              norm: bool = False, output_fmt: str = 'NCHW', intermediates_only: bool = False,
                              stop_early: bool = False):
        """The encoder's block outputs; the final features through its projector when it has one and the family's
        timm classifier returns them so."""
        out, feats = self.encoder.forward_intermediates(x, indices, norm, output_fmt, False, stop_early)
        final = self.encoder.forward_head(out) if self.final_through_projector else out
        return feats if intermediates_only else (final, feats)


def merged_grid_problems(m, k: int, what: str, max_grid: int = 0) -> list[str]:
    """The model's own image size must be one it can run: whole patches, each side a multiple of k patches when
    its projector pools k x k of them, and (with a position table of `max_grid` rows) no more rows than that.
    Other sizes are checked per input at call time; this refuses a bad nominal size before any work."""
    if not (isinstance(k, int) and k >= 1):
        return []
    (h, w), (ph, pw) = to_2tuple(m.img_size), to_2tuple(m.patch_size)
    if not all(isinstance(v, int) and v > 0 for v in (h, w, ph, pw)) or h % ph or w % pw:
        return []  # common_problems names these
    p = []
    if m.projects and ((h // ph) % k or (w // pw) % k):
        p.append(f'img_size={(h, w)}: {what} takes {k}x{k} patches, so each side must be a multiple of '
                 f'{k * ph} x {k * pw} pixels')
    if max_grid and max(h // ph, w // pw) > max_grid:
        p.append(f'img_size={(h, w)}: a patch grid of {(h // ph, w // pw)}, over the position table\'s {max_grid} rows')
    return p


def axial_rope_problems(m) -> list[str]:
    """Qwen3's and DeepSeek's: heads of embed_dim / num_heads for their 2-D RoPE, the projector's width."""
    p = []
    if not (m.num_heads >= 1 and m.embed_dim % m.num_heads == 0 and (m.embed_dim // max(m.num_heads, 1)) % 4 == 0):
        p.append(f'num_heads={m.num_heads}: must divide embed_dim={m.embed_dim} into heads of a multiple of 4 (2-D '
                 'RoPE)')
    if not 0 <= m.out_features <= MAX_DIM:
        p.append(f'out_features={m.out_features}: must be in 0..{MAX_DIM}')
    if not m.rope_temperature > 0:
        p.append(f'rope_temperature={m.rope_temperature}: must be > 0')
    return p


def tower_problems(m, classifier_cls: type, encoder_pools: Sequence[str]) -> list[str]:
    """The range checks every tower shares (depth, pools, head)."""
    p = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            p.append(what)
    classifier = isinstance(m, classifier_cls)
    need(1 <= m.depth <= MAX_DEPTH, f'depth={m.depth}: must be in 1..{MAX_DEPTH}')
    pools = ('avg', '') if classifier else tuple(encoder_pools)
    need(m.global_pool in pools, f'global_pool={m.global_pool!r}: one of {pools}')
    if classifier:
        need(m.encoder_pool in ('', m.projector_pool), f"encoder_pool={m.encoder_pool!r}: '' or {m.projector_pool!r}")
    else:
        need(m.num_classes == 0, f'num_classes={m.num_classes}: the encoder has no head ({classifier_cls.__name__} '
             'has)')
    return p
