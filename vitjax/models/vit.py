"""One configurable Vision Transformer covering timm's VisionTransformer family (ViT, DeiT, MAE, ...).

Attributes carry timm's argument names and defaults, so a timm model's config maps onto this module one to
one. Input is NHWC; parameter names follow timm (patch_embed, cls_token, pos_embed, blocks_i, norm, head).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.models.layers import (AttentionPoolLatent, Block, check_images, feature_take_indices, layer_norm,
                                  resample_abs_pos_embed)

Size = Union[int, Sequence[int]]
POOLS = ('', 'token', 'avg', 'avgmax', 'max', 'map')


def to_2tuple(x: Size) -> tuple[int, int]:
    return (int(x), int(x)) if isinstance(x, (int, float)) else tuple(int(v) for v in x)


@dataclasses.dataclass(frozen=True)
class PretrainedCfg:
    """Preprocessing the weights expect (timm's pretrained_cfg / data config). Images are (H, W, C)."""
    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop_pct: float = 0.875
    crop_mode: str = 'center'
    interpolation: str = 'bicubic'
    tag: str = ''

    def at_size(self, img_size: Union[int, tuple[int, int]], **changes: Any) -> 'PretrainedCfg':
        """The same preprocessing for another input size (and any other field changed by name)."""
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        return dataclasses.replace(self, input_size=(self.input_size[0], h, w), **changes)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> 'PretrainedCfg':
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})


class PatchEmbed(nn.Module):
    patch_size: tuple[int, int]
    embed_dim: int
    bias: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return nn.Conv(self.embed_dim, self.patch_size, strides=self.patch_size, padding='VALID',
                       use_bias=self.bias, dtype=self.dtype, name='proj')(x)


class VisionTransformer(nn.Module):
    img_size: Size = 224
    patch_size: Size = 16
    in_chans: int = 3
    num_classes: int = 1000
    global_pool: str = 'token'
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.
    qkv_bias: bool = True
    qk_norm: bool = False
    init_values: Optional[float] = None  # LayerScale
    class_token: bool = True
    pos_embed: str = 'learn'  # 'learn' | 'none'
    no_embed_class: bool = False  # position embeddings skip the prefix tokens (DeiT III, DINOv2)
    reg_tokens: int = 0
    pre_norm: bool = False  # norm_pre after the embedding, no patch-embed bias (CLIP)
    final_norm: bool = True
    fc_norm: Optional[bool] = None  # None: on for avg/avgmax/max pooling, replacing the final norm
    dynamic_img_size: bool = False  # resample position embeddings in the forward for any input size
    grad_checkpointing: bool = False  # remat each block: activations recomputed in the backward (timm's name)
    scan_blocks: bool = False  # one block traced and compiled, applied depth times (params stacked: 'blocks')
    distilled: bool = False  # DeiT distillation token + head_dist; logits are the mean of both heads
    drop_rate: float = 0.
    pos_drop_rate: float = 0.
    proj_drop_rate: float = 0.
    attn_drop_rate: float = 0.
    drop_path_rate: float = 0.
    norm_eps: float = 1e-6
    act_layer: str = 'gelu'
    # The matmuls' compute dtype (bfloat16: mixed precision). Params, the residual stream, position embeddings,
    # norms, softmax and the head (final norm, pooling, classifier) stay float32, as under timm's autocast.
    dtype: Any = jnp.float32
    pretrained_cfg: PretrainedCfg = PretrainedCfg()

    @property
    def grid_size(self) -> tuple[int, int]:
        (h, w), (ph, pw) = to_2tuple(self.img_size), to_2tuple(self.patch_size)
        return h // ph, w // pw

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens + int(self.distilled)

    @property
    def use_fc_norm(self) -> bool:
        return self.global_pool in ('avg', 'avgmax', 'max') if self.fc_norm is None else self.fc_norm

    @property
    def drop_path_rates(self) -> list[float]:
        return [self.drop_path_rate * i / max(self.depth - 1, 1) for i in range(self.depth)]  # linear, as timm

    def setup(self):
        if self.global_pool not in POOLS:
            raise ValueError(f'global_pool={self.global_pool!r} is not one of {POOLS}')
        if self.global_pool == 'token' and not self.class_token:
            raise ValueError("global_pool='token' needs the class token")
        if self.distilled and (self.global_pool != 'token' or self.reg_tokens):
            raise ValueError('the distilled head reads the class and distillation tokens (token pool, no registers)')
        d = self.embed_dim
        self.patch_embed = PatchEmbed(to_2tuple(self.patch_size), d, bias=not self.pre_norm, dtype=self.dtype)
        token_init = nn.initializers.normal(1e-6)
        self.cls_token = self.param('cls_token', token_init, (1, 1, d)) if self.class_token else None
        self.reg_token = self.param('reg_token', token_init, (1, self.reg_tokens, d)) if self.reg_tokens else None
        self.dist_token = self.param('dist_token', nn.initializers.normal(0.02), (1, 1, d)) if self.distilled else None
        if self.pos_embed == 'learn':
            gh, gw = self.grid_size
            n = gh * gw + (0 if self.no_embed_class else self.num_prefix_tokens)
            self.pos_embed_param = self.param('pos_embed', nn.initializers.normal(0.02), (1, n, d))
        elif self.pos_embed in ('', 'none'):
            self.pos_embed_param = None
        else:
            raise ValueError(f"pos_embed={self.pos_embed!r} is not 'learn' or 'none'")
        self.pos_drop = nn.Dropout(self.pos_drop_rate)
        self.norm_pre = layer_norm(self.norm_eps, jnp.float32, 'norm_pre') if self.pre_norm else None
        block = nn.remat(Block, static_argnums=(2,)) if self.grad_checkpointing else Block  # 2: `train`
        make = lambda rate, name: block(
            num_heads=self.num_heads, mlp_hidden=int(d * self.mlp_ratio), qkv_bias=self.qkv_bias,
            qk_norm=self.qk_norm, init_values=self.init_values, proj_drop=self.proj_drop_rate,
            attn_drop=self.attn_drop_rate, drop_path=rate, norm_eps=self.norm_eps, act_layer=self.act_layer,
            dtype=self.dtype, name=name)
        # One module whose params nn.scan stacks along a leading depth axis; its rates come in as data.
        self.blocks = (make(0., 'blocks') if self.scan_blocks else
                       [make(r, f'blocks_{i}') for i, r in enumerate(self.drop_path_rates)])
        final = self.final_norm and not self.use_fc_norm
        self.norm = layer_norm(self.norm_eps, jnp.float32, 'norm') if final else None
        self.fc_norm_layer = (layer_norm(self.norm_eps, jnp.float32, 'fc_norm')
                              if self.final_norm and self.use_fc_norm else None)
        self.attn_pool = (AttentionPoolLatent(self.num_heads, int(d * self.mlp_ratio), self.qkv_bias, self.norm_eps,
                                              self.act_layer, self.dtype) if self.global_pool == 'map' else None)
        self.head_drop = nn.Dropout(self.drop_rate)
        # f32 logits: a bf16 classifier would round them to 3 significant digits (timm's autocast does)
        head = lambda name: nn.Dense(self.num_classes, dtype=jnp.float32, kernel_init=nn.initializers.zeros,
                                     name=name)
        self.head = head('head') if self.num_classes > 0 else None
        self.head_dist = head('head_dist') if self.num_classes > 0 and self.distilled else None

    # -- embedding -------------------------------------------------------------------------------------
    def _embed(self, x: jax.Array, train: bool) -> jax.Array:
        check_images(x, self.in_chans, to_2tuple(self.img_size), to_2tuple(self.patch_size), self.dynamic_img_size)
        x = self.patch_embed(x).astype(jnp.float32)  # the residual stream is f32 whatever the compute dtype
        b, gh, gw, d = x.shape
        x = x.reshape(b, gh * gw, d)
        prefix = [t for t in (self.cls_token, self.reg_token, self.dist_token) if t is not None]
        prefix = [jnp.broadcast_to(t, (b, *t.shape[1:])).astype(x.dtype) for t in prefix]
        pos = self.pos_embed_param
        if pos is None:
            return self.pos_drop(jnp.concatenate(prefix + [x], axis=1), deterministic=not train)
        if (gh, gw) != self.grid_size:
            pos = resample_abs_pos_embed(pos, (gh, gw), self.grid_size,
                                         0 if self.no_embed_class else self.num_prefix_tokens)
        pos = pos.astype(x.dtype)
        if self.no_embed_class:
            x = jnp.concatenate(prefix + [x + pos], axis=1)
        else:
            x = jnp.concatenate(prefix + [x], axis=1) + pos
        x = self.pos_drop(x, deterministic=not train)
        return self.norm_pre(x) if self.norm_pre is not None else x

    def _final_norm(self, x: jax.Array) -> jax.Array:
        return self.norm(x) if self.norm is not None else x

    def _blocks(self, x: jax.Array, train: bool, stop: Optional[int] = None) -> tuple[jax.Array, list]:
        """x through blocks [0, stop) and every block's output."""
        stop = self.depth if stop is None else stop
        if not self.scan_blocks:
            outs = []
            for blk in self.blocks[:stop]:
                x = blk(x, train)
                outs.append(x)
            return x, outs

        def body(blk, x, rate):
            x = blk(x, train, rate)
            return x, x
        scan = nn.scan(body, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                       length=self.depth)
        rates = jnp.asarray(self.drop_path_rates, jnp.float32) if self.drop_path_rate else None  # None: no rng
        x, ys = scan(self.blocks, x, rates)
        return x, [ys[i] for i in range(stop)]  # unused outputs are dead code to XLA

    # -- timm's forward API ----------------------------------------------------------------------------
    def forward_features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """All tokens after the final norm: (B, prefix + N, D)."""
        x, _ = self._blocks(self._embed(x, train), train)
        return self._final_norm(x)

    def pool(self, x: jax.Array) -> jax.Array:
        if self.global_pool == 'token':
            return x[:, 0]
        if not self.global_pool:
            return x
        x = x[:, self.num_prefix_tokens:]
        if self.attn_pool is not None:
            return self.attn_pool(x)
        if self.global_pool == 'avg':
            return x.mean(axis=1)
        if self.global_pool == 'max':
            return x.max(axis=1)
        return 0.5 * (x.max(axis=1) + x.mean(axis=1))  # avgmax

    def forward_head(self, x: jax.Array, pre_logits: bool = False, train: bool = False) -> jax.Array:
        if self.distilled:
            x, x_dist = (self.head_drop(x[:, i], deterministic=not train) for i in (0, 1))
            if pre_logits or self.head is None:
                return (x + x_dist) / 2
            return (self.head(x) + self.head_dist(x_dist)) / 2
        x = self.pool(x)
        if self.fc_norm_layer is not None:
            x = self.fc_norm_layer(x)
        x = self.head_drop(x, deterministic=not train)
        return x if pre_logits or self.head is None else self.head(x)

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return self.forward_head(self.forward_features(x, train), train=train)

    def forward_intermediates(self, x: jax.Array, indices: Union[None, int, Sequence[int]] = None,
                              norm: bool = False, output_fmt: str = 'NCHW', intermediates_only: bool = False,
                              return_prefix_tokens: bool = False, stop_early: bool = False):
        """Block outputs as timm returns them: (final_features, [maps]) or only the maps.

        Maps are (B, D, H, W) for NCHW, (B, H, W, D) for NHWC, (B, N, D) for NLC, prefix tokens split off.
        """
        if output_fmt not in ('NCHW', 'NHWC', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW', 'NHWC' or 'NLC', got {output_fmt!r}")
        take = feature_take_indices(self.depth, indices)
        b, h, w = x.shape[:3]
        x, outs = self._blocks(self._embed(x, train=False), False, max(take) + 1 if stop_early else None)
        if stop_early:
            x = outs[-1]
        feats = [self._final_norm(outs[i]) if norm else outs[i] for i in take]
        npt = self.num_prefix_tokens
        prefix = [y[:, :npt] for y in feats]
        feats = [y[:, npt:] for y in feats]
        if output_fmt != 'NLC':
            (ph, pw) = to_2tuple(self.patch_size)
            feats = [y.reshape(b, h // ph, w // pw, -1) for y in feats]
            if output_fmt == 'NCHW':
                feats = [y.transpose(0, 3, 1, 2) for y in feats]
        if return_prefix_tokens and npt:
            feats = list(zip(feats, prefix))
        if intermediates_only:
            return feats
        return self._final_norm(x), feats


def stack_blocks(params: dict, depth: int) -> dict:
    """Per-block params (blocks_0 .. blocks_{depth-1}, timm's layout, the one on disk) -> scan_blocks' layout."""
    blocks = [params[f'blocks_{i}'] for i in range(depth)]
    out = {k: v for k, v in params.items() if not k.startswith('blocks_')}
    out['blocks'] = jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *blocks)
    return out


def unstack_blocks(params: dict) -> dict:
    """scan_blocks' stacked 'blocks' -> blocks_0 .. blocks_{depth-1}."""
    out = {k: v for k, v in params.items() if k != 'blocks'}
    depth = jax.tree.leaves(params['blocks'])[0].shape[0]
    out.update({f'blocks_{i}': jax.tree.map(lambda x: np.asarray(x[i]), params['blocks']) for i in range(depth)})
    return out


def model_config(model: nn.Module) -> dict[str, Any]:
    """The module's constructor arguments as plain JSON-able values."""
    skip = {'parent', 'name', 'dtype', 'pretrained_cfg'}
    cfg = {f.name: getattr(model, f.name) for f in dataclasses.fields(model) if f.init and f.name not in skip}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
