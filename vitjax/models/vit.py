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

from vitjax.models.cfgs import AttnCfg, MlpCfg, NormCfg, view
from vitjax.models.family import MAX_DEPTH, MAX_DIM, MAX_PIXELS, MAX_TOKENS, Family, check, register
from vitjax.models.layers import (NORM_LAYERS, AttentionPoolLatent, Block, check_images,
                                  feature_take_indices, layer_norm, resample_abs_pos_embed)
from vitjax.models.relpos import REL_POS_TYPES, rel_pos_module
from vitjax.models.rope import ROPE_TYPES, RotaryEmbedding

Size = Union[int, Sequence[int]]
POOLS = ('', 'token', 'avg', 'avgmax', 'max', 'map')
MLP_LAYERS = ('mlp', 'swiglu', 'swiglu_packed')


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
    norm_layer: str = ''  # a norm on each patch's embedding ('' none; AIMv2: 'rmsnorm')
    norm_eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.embed_dim, self.patch_size, strides=self.patch_size, padding='VALID',
                    use_bias=self.bias, dtype=self.dtype, name='proj')(x)
        return layer_norm(self.norm_eps, jnp.float32, 'norm', self.norm_layer)(x) if self.norm_layer else x


class PatchGrid:
    """The patch grid of a model with `img_size` and `patch_size` fields (a mixin of the model classes)."""

    def token_grid(self, h: int, w: int) -> tuple[int, int]:
        """The patch grid of an h x w input (each axis its own stride)."""
        ph, pw = to_2tuple(self.patch_size)
        return h // ph, w // pw

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.token_grid(*to_2tuple(self.img_size))


class VisionTransformer(PatchGrid, nn.Module):
    """timm's VisionTransformer; with the rope_* / mlp_layer / scale_* options also timm's Eva (see `Eva`)."""
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
    key_bias: bool = True  # False: query and value biases only (Eva, BEiT)
    qk_norm: bool = False
    scale_attn_norm: bool = False  # a LayerNorm on the attention output before its projection (Eva's scale_attn_inner)
    mlp_layer: str = 'mlp'  # 'mlp' | 'swiglu' | 'swiglu_packed' (act_layer-gated: timm's SwiGLU, SwiGLUPacked)
    proj_bias: bool = True  # biases of the attention output and MLP projections (AIMv2: none)
    norm_layer: str = 'layernorm'  # every norm: 'layernorm' | 'rmsnorm'
    embed_norm: bool = False  # a norm on the patch embeddings (AIMv2)
    scale_mlp_norm: bool = False  # a LayerNorm before fc2 (Eva's scale_mlp)
    init_values: Optional[float] = None  # LayerScale
    class_token: bool = True
    pos_embed: str = 'learn'  # 'learn' | 'none'
    # A learned relative-position bias in every block's attention: '' (none) | 'bias' (a table: BEiT) | 'mlp' (timm's
    # log-coordinate MLP: vision_transformer_relpos); rel_pos_dim the MLP's hidden width (None: 128); shared_rel_pos
    # one bias for all blocks (BEiT's shared table, the srelpos ViTs)
    rel_pos_type: str = ''
    rel_pos_dim: Optional[int] = None
    shared_rel_pos: bool = False
    res_post_norm: bool = False  # blocks x + norm(attn(x)), x + norm(mlp(x)), no LayerScale (the relpos 'rpn' ViTs)
    # Rotary position embeddings on the patch tokens' queries and keys (timm's Eva): '' (none) | 'cat' (axial,
    # EVA-02 / RoPE-ViT / PE) | 'mixed' (learned per-layer frequencies) | 'dinov3'; options under timm's names.
    rope_type: str = ''
    rope_temperature: float = 10000.
    rope_grid_indexing: str = 'ij'
    rope_grid_offset: float = 0.
    rope_ref_feat_shape: Optional[tuple[int, int]] = None
    rope_rotate_half: bool = False
    no_embed_class: bool = False  # position embeddings skip the prefix tokens (DeiT III, DINOv2)
    pos_embed_grid: Optional[tuple[int, int]] = None  # the learned grid when not img_size's (NaFlexViT: 16x16)
    pos_embed_interp: str = 'bicubic'  # how that grid is resized to the input's: 'bicubic' | 'bilinear'
    reg_tokens: int = 0
    pre_norm: bool = False  # norm_pre after the embedding, no patch-embed bias (CLIP)
    final_norm: bool = True
    fc_norm: Optional[bool] = None  # None: on for avg/avgmax/max pooling, replacing the final norm
    pool_include_prefix: bool = False  # the attention pool ('map') reads the prefix tokens too (Eva)
    attn_pool_num_heads: Optional[int] = None  # None: num_heads
    attn_pool_mlp_ratio: Optional[float] = None  # None: mlp_ratio
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
    def pos_grid(self) -> tuple[int, int]:
        return tuple(self.pos_embed_grid) if self.pos_embed_grid else self.grid_size

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.class_token) + self.reg_tokens + int(self.distilled)

    @property
    def use_fc_norm(self) -> bool:
        return self.global_pool in ('avg', 'avgmax', 'max') if self.fc_norm is None else self.fc_norm

    @property
    def drop_path_rates(self) -> list[float]:
        return [self.drop_path_rate * i / max(self.depth - 1, 1) for i in range(self.depth)]  # linear, as timm

    def make_patch_embed(self) -> nn.Module:
        """Images (B, H, W, C) -> (B, gh, gw, embed_dim); a family with another stem overrides this (hybrids)."""
        return PatchEmbed(to_2tuple(self.patch_size), self.embed_dim, bias=not self.pre_norm,
                          norm_layer=self.norm_layer if self.embed_norm else '', norm_eps=self.norm_eps,
                          dtype=self.dtype)

    def rel_pos_window(self, key: str) -> tuple[tuple[int, int], int]:
        """(window, extra rows) of a relative-position table: the patch grid, and three class-token entries when
        there is a class token (BEiT); for load-time resizes (vitjax.adapt)."""
        return self.grid_size, 3 * self.num_prefix_tokens

    def setup(self):
        check(self)
        d = self.embed_dim
        self.patch_embed = self.make_patch_embed()
        token_init = nn.initializers.normal(1e-6)
        self.cls_token = self.param('cls_token', token_init, (1, 1, d)) if self.class_token else None
        self.reg_token = self.param('reg_token', token_init, (1, self.reg_tokens, d)) if self.reg_tokens else None
        self.dist_token = self.param('dist_token', nn.initializers.normal(0.02), (1, 1, d)) if self.distilled else None
        if self.pos_embed == 'learn':
            gh, gw = self.pos_grid
            n = gh * gw + (0 if self.no_embed_class else self.num_prefix_tokens)
            self.pos_embed_param = self.param('pos_embed', nn.initializers.normal(0.02), (1, n, d))
        else:
            self.pos_embed_param = None
        self.pos_drop = nn.Dropout(self.pos_drop_rate)
        self.rope = RotaryEmbedding(
            kind=self.rope_type, dim=d, num_heads=self.num_heads, temperature=self.rope_temperature,
            grid_indexing=self.rope_grid_indexing, grid_offset=self.rope_grid_offset,
            ref_feat_shape=self.rope_ref_feat_shape, rotate_half=self.rope_rotate_half,
            depth=self.depth) if self.rope_type else None
        norm = lambda name: layer_norm(self.norm_eps, jnp.float32, name, self.norm_layer)
        self.norm_pre = norm('norm_pre') if self.pre_norm else None
        block = nn.remat(Block, static_argnums=(2,)) if self.grad_checkpointing else Block  # 2: `train`
        cfgs = dict(attn_cfg=view(AttnCfg, self), mlp_cfg=view(MlpCfg, self), norm_cfg=view(NormCfg, self),
                    init_values=self.init_values, res_post_norm=self.res_post_norm, dtype=self.dtype)
        self.rel_pos = rel_pos_module(self.rel_pos_type, self.grid_size, self.num_heads, self.num_prefix_tokens,
                                      self.rel_pos_dim, 'rel_pos') if self.shared_rel_pos else None
        # One module whose params nn.scan stacks along a leading depth axis; its rates come in as data.
        self.blocks = (block(**cfgs, name='blocks') if self.scan_blocks else
                       [block(**cfgs, drop_path=r, name=f'blocks_{i}') for i, r in enumerate(self.drop_path_rates)])
        final = self.final_norm and not self.use_fc_norm
        self.norm = norm('norm') if final else None
        self.fc_norm_layer = norm('fc_norm') if self.final_norm and self.use_fc_norm else None
        self.attn_pool = (AttentionPoolLatent(
            num_heads=self.attn_pool_num_heads or self.num_heads, qkv_bias=self.qkv_bias,
            mlp_cfg=MlpCfg(mlp_ratio=self.attn_pool_mlp_ratio or self.mlp_ratio, act_layer=self.act_layer),
            norm_cfg=view(NormCfg, self), dtype=self.dtype) if self.global_pool == 'map' else None)
        self.head_drop = nn.Dropout(self.drop_rate)
        # f32 logits: a bf16 classifier would round them to 3 significant digits (timm's autocast does)
        head = lambda name: nn.Dense(self.num_classes, dtype=jnp.float32, kernel_init=nn.initializers.zeros,
                                     name=name)
        self.head = head('head') if self.num_classes > 0 else None
        self.head_dist = head('head_dist') if self.num_classes > 0 and self.distilled else None

    # -- embedding -------------------------------------------------------------------------------------
    def _embed(self, x: jax.Array, train: bool) -> tuple[jax.Array, Optional[jax.Array]]:
        """(tokens, the rotary embedding of this input's patch grid or None)."""
        check_images(x, self.in_chans, to_2tuple(self.img_size), to_2tuple(self.patch_size), self.dynamic_img_size)
        x = self.patch_embed(x).astype(jnp.float32)  # the residual stream is f32 whatever the compute dtype
        b, gh, gw, d = x.shape
        x = x.reshape(b, gh * gw, d)
        prefix = [t for t in (self.cls_token, self.reg_token, self.dist_token) if t is not None]
        prefix = [jnp.broadcast_to(t, (b, *t.shape[1:])).astype(x.dtype) for t in prefix]
        rope = self.rope((gh, gw)) if self.rope is not None else None
        pos = self.pos_embed_param
        if pos is None:
            x = self.pos_drop(jnp.concatenate(prefix + [x], axis=1), deterministic=not train)
            return (self.norm_pre(x) if self.norm_pre is not None else x), rope
        if (gh, gw) != self.pos_grid:
            pos = resample_abs_pos_embed(pos, (gh, gw), self.pos_grid,
                                         0 if self.no_embed_class else self.num_prefix_tokens, self.pos_embed_interp)
        pos = pos.astype(x.dtype)
        if self.no_embed_class:
            x = jnp.concatenate(prefix + [x + pos], axis=1)
        else:
            x = jnp.concatenate(prefix + [x], axis=1) + pos
        x = self.pos_drop(x, deterministic=not train)
        return (self.norm_pre(x) if self.norm_pre is not None else x), rope

    def _final_norm(self, x: jax.Array) -> jax.Array:
        return self.norm(x) if self.norm is not None else x

    def _blocks(self, x: jax.Array, train: bool, stop: Optional[int] = None, rope: Optional[jax.Array] = None,
                mask: Optional[jax.Array] = None) -> tuple[jax.Array, list]:
        """x through blocks [0, stop) and every block's output."""
        stop = self.depth if stop is None else stop
        per_block = self.rope_type == 'mixed'  # one rotary embedding per block (learned frequencies)
        rel_pos = self.rel_pos(train) if self.rel_pos is not None else None
        if not self.scan_blocks:
            outs = []
            for i, blk in enumerate(self.blocks[:stop]):
                x = blk(x, train, None, rope[i] if per_block else rope, mask, rel_pos)
                outs.append(x)
            return x, outs

        def body(blk, x, xs):
            rate, r = xs
            x = blk(x, train, rate, r if per_block else rope, mask, rel_pos)
            return x, x
        scan = nn.scan(body, variable_axes={'params': 0}, split_rngs={'params': True, 'dropout': True},
                       length=self.depth)
        rates = jnp.asarray(self.drop_path_rates, jnp.float32) if self.drop_path_rate else None  # None: no rng
        x, ys = scan(self.blocks, x, (rates, rope if per_block else None))
        return x, [ys[i] for i in range(stop)]  # unused outputs are dead code to XLA

    # -- timm's forward API ----------------------------------------------------------------------------
    def forward_features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """All tokens after the final norm: (B, prefix + N, D)."""
        x, rope = self._embed(x, train)
        x, _ = self._blocks(x, train, rope=rope)
        return self._final_norm(x)

    def pool(self, x: jax.Array) -> jax.Array:
        if self.global_pool == 'token':
            return x[:, 0]
        if not self.global_pool:
            return x
        if self.attn_pool is not None:
            return self.attn_pool(x if self.pool_include_prefix else x[:, self.num_prefix_tokens:])
        x = x[:, self.num_prefix_tokens:]
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
        x, rope = self._embed(x, train=False)
        x, outs = self._blocks(x, False, max(take) + 1 if stop_early else None, rope)
        if stop_early:
            x = outs[-1]
        feats = [self._final_norm(outs[i]) if norm else outs[i] for i in take]
        npt = self.num_prefix_tokens
        prefix = [y[:, :npt] for y in feats]
        feats = [y[:, npt:] for y in feats]
        if output_fmt != 'NLC':
            feats = [y.reshape(b, *self.token_grid(h, w), -1) for y in feats]
            if output_fmt == 'NCHW':
                feats = [y.transpose(0, 3, 1, 2) for y in feats]
        if return_prefix_tokens and npt:
            feats = list(zip(feats, prefix))
        if intermediates_only:
            return feats
        return self._final_norm(x), feats


class Eva(VisionTransformer):
    """timm's Eva family (EVA-02, DINOv3, Perception Encoder, RoPE-ViT) is this same module with its options set
    (RoPE, SwiGLU, inner norms, no key bias); a class of its own only so that a model directory records which
    timm class it converts from and exports to. Defaults are timm Eva's where they differ."""
    global_pool: str = 'avg'
    key_bias: bool = False
    pool_include_prefix: bool = True


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


def vit_problems(m: VisionTransformer) -> list[str]:
    """VisionTransformer's (and Eva's, NaFlexVit's) field ranges and combinations."""
    p = []

    def need(ok: bool, what: str) -> None:
        if not ok:
            p.append(what)
    need(1 <= m.depth <= MAX_DEPTH, f'depth={m.depth}: must be in 1..{MAX_DEPTH}')
    need(m.num_heads >= 1 and m.embed_dim % m.num_heads == 0,
         f'num_heads={m.num_heads}: must be >= 1 and divide embed_dim={m.embed_dim}')
    need(0 <= m.reg_tokens <= MAX_TOKENS, f'reg_tokens={m.reg_tokens}: must be in 0..{MAX_TOKENS}')
    need(m.global_pool in POOLS, f'global_pool={m.global_pool!r}: one of {POOLS}')
    need(m.global_pool != 'token' or m.class_token, "global_pool='token' needs the class token")
    need(not m.distilled or (m.global_pool == 'token' and not m.reg_tokens),
         'the distilled head reads the class and distillation tokens (token pool, no registers)')
    need(m.pos_embed in ('learn', '', 'none'), f"pos_embed={m.pos_embed!r}: 'learn' or 'none'")
    need(m.norm_layer in NORM_LAYERS, f'norm_layer={m.norm_layer!r}: one of {sorted(NORM_LAYERS)}')
    need(m.mlp_layer in MLP_LAYERS, f'mlp_layer={m.mlp_layer!r}: one of {MLP_LAYERS}')
    need(m.rope_type in ('',) + ROPE_TYPES, f"rope_type={m.rope_type!r}: '' or one of {ROPE_TYPES}")
    need(m.rope_grid_indexing in ('ij', 'xy'), f"rope_grid_indexing={m.rope_grid_indexing!r}: 'ij' or 'xy'")
    need(not m.rope_type or m.num_heads < 1 or (m.embed_dim // m.num_heads) % 4 == 0,
         f'rope_type={m.rope_type!r} needs a head dim divisible by 4, got {m.embed_dim // max(m.num_heads, 1)}')
    need(m.pos_embed_interp in ('bicubic', 'bilinear'),
         f"pos_embed_interp={m.pos_embed_interp!r}: 'bicubic' or 'bilinear'")
    need(m.pos_embed_grid is None or (len(m.pos_embed_grid) == 2 and all(1 <= g <= MAX_PIXELS for g in m.pos_embed_grid)),
         f'pos_embed_grid={m.pos_embed_grid}: two sizes in 1..{MAX_PIXELS} (or null)')
    need(m.rope_temperature > 0, f'rope_temperature={m.rope_temperature}: must be > 0')
    need(m.rel_pos_type in ('',) + tuple(REL_POS_TYPES), f"rel_pos_type={m.rel_pos_type!r}: '' or one of "
         f'{tuple(REL_POS_TYPES)}')
    need(not m.rel_pos_type or m.num_prefix_tokens <= 1,
         f'rel_pos_type={m.rel_pos_type!r} covers the patch grid and at most a class token: no reg_tokens, not distilled')
    need(not m.rel_pos_type or not m.dynamic_img_size,
         'relative position biases are sized to img_size: dynamic_img_size is not supported with them (as timm)')
    need(m.rel_pos_dim is None or 1 <= m.rel_pos_dim <= MAX_DIM, f'rel_pos_dim={m.rel_pos_dim}: in 1..{MAX_DIM}')
    need(m.rel_pos_type or not m.shared_rel_pos, 'shared_rel_pos needs a rel_pos_type')
    need(not m.res_post_norm or m.init_values is None, 'res_post_norm blocks have no LayerScale (init_values=None)')
    need(m.attn_pool_num_heads is None or (m.attn_pool_num_heads >= 1 and m.embed_dim % m.attn_pool_num_heads == 0),
         f'attn_pool_num_heads={m.attn_pool_num_heads}: must divide embed_dim={m.embed_dim}')
    return p


register(Family('vit', VisionTransformer, vit_problems))
register(Family('eva', Eva, vit_problems))
