"""Transformer building blocks shared by the ViT family (names follow timm: norm1, attn, ls1, mlp, ...).

Mixed precision, as timm under torch.autocast and big_vision's `dtype_mm` do it: a module's `dtype` is the
compute dtype of its matmuls (inputs and kernels cast to it, outputs in it). Params stay float32, and so do the
residual stream, LayerNorm statistics, attention logits and softmax; each branch's output is cast back to the
stream's dtype before it is added.
"""
from __future__ import annotations

import functools
import re
from typing import Any, Callable, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vitjax.models.cfgs import AttnCfg, MlpCfg, NormCfg
from vitjax.models.relpos import DecomposedRelPos, rel_pos_module
from vitjax.models.rope import apply_rot_embed_cat

Dtype = Any
# cuDNN's fused attention takes only half-precision operands (jax/_src/cudnn/fused_attention_stablehlo.py).
CUDNN_DTYPES = (jnp.dtype(jnp.float16), jnp.dtype(jnp.bfloat16))


def gelu(x: jax.Array) -> jax.Array:
    # PyTorch's formula, 0.5·x·(1 + erf(x/√2)); jax.nn.gelu's erfc form costs 2.3x more on XLA:CPU.
    return 0.5 * x * (1. + jax.lax.erf(x * 0.7071067811865476))


def quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


# timm's nn.GELU is the exact erf form; Flax's default is the tanh approximation (~1e-3 off on ViT-B logits).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'gelu': gelu,
    'gelu_tanh': functools.partial(jax.nn.gelu, approximate=True),
    'quick_gelu': quick_gelu,
    'silu': jax.nn.silu,  # SwiGLU's gate (AIMv2, Eva)
}


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
    # Two-pass variance, statistics in f32 (as PyTorch computes them); E[x²]-E[x]² loses digits.
    x32 = x.astype(jnp.float32)
    xc = x32 - x32.mean(-1, keepdims=True)
    rstd = jax.lax.rsqrt((xc * xc).mean(-1, keepdims=True) + eps)
    xhat = xc * rstd
    y = xhat * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y.astype(x.dtype), (xhat, rstd, scale)


def _layer_norm_bwd(eps, res, ct):
    # The closed-form gradient. Differentiating the two-pass forward instead gives XLA:CPU a long elementwise
    # graph that it fuses across the whole residual stream and recomputes in every consumer: the ViT-S
    # gradient (batch 16) took 5.85 s instead of 2.91 s (benchmarks/notes.md).
    xhat, rstd, scale = res
    dtype, ct = ct.dtype, ct.astype(jnp.float32)  # the output's dtype is the input's
    reduce_axes = tuple(range(ct.ndim - 1))
    g = ct * scale.astype(jnp.float32)
    dx = rstd * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    dscale = (ct * xhat).sum(reduce_axes).astype(scale.dtype)
    dbias = ct.sum(reduce_axes).astype(scale.dtype)
    return dx.astype(dtype), dscale, dbias


_layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis with PyTorch's numerics; params `scale`, `bias` as Flax's nn.LayerNorm.

    Statistics are always f32; `dtype` is the output's: the compute dtype where a matmul reads it, float32 where
    the residual stream or the head does. A bf16 input is widened first when the output is f32, so its one
    rounding is the output's."""
    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        scale = self.param('scale', nn.initializers.ones, (d,))
        bias = self.param('bias', nn.initializers.zeros, (d,))
        x = x.astype(jnp.promote_types(x.dtype, self.dtype))
        return _layer_norm(x, scale, bias, self.epsilon).astype(self.dtype)


class RMSNorm(nn.Module):
    """x · rsqrt(mean(x²) + eps) · scale, in f32 (timm's RmsNorm; AIMv2); `dtype` is the output's, as LayerNorm's."""
    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param('scale', nn.initializers.ones, (x.shape[-1],))
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt((x32 * x32).mean(-1, keepdims=True) + self.epsilon) * scale.astype(jnp.float32)
        return y.astype(self.dtype)


NORM_LAYERS = {'layernorm': LayerNorm, 'rmsnorm': RMSNorm}


def layer_norm(eps: float, dtype: Dtype, name: str, kind: str = 'layernorm') -> nn.Module:
    return NORM_LAYERS[kind](epsilon=eps, dtype=dtype, name=name)


dense_init = nn.initializers.xavier_uniform()


class ProjParams(nn.Module):
    """The kernel (in, *features) and bias of an nn.DenseGeneral, returned rather than applied, so that the
    query/key/value projections keep their own names while running as one fused matmul."""
    in_features: int
    features: tuple[int, ...]
    use_bias: bool = True

    @nn.compact
    def __call__(self) -> tuple[jax.Array, Optional[jax.Array]]:
        n_out = int(np.prod(self.features))
        # Initialised flat, as nn.DenseGeneral does, so the fan-in/fan-out are the matrix's.
        init = lambda key, shape: dense_init(key, (self.in_features, n_out)).reshape(shape)
        kernel = self.param('kernel', init, (self.in_features, *self.features))
        bias = self.param('bias', nn.initializers.zeros, self.features) if self.use_bias else None
        return kernel, bias


def attention_implementation(platform: str, dtype: Dtype, head_dim: int,
                             compute_capability: Optional[str] = None) -> str:
    """The `implementation` for jax.nn.dot_product_attention: 'cudnn' where cuDNN's fused (flash) kernel takes
    the case, else 'xla' (jax's default, None, is always 'xla'; asking for 'cudnn' where it does not apply
    raises). The rules are jax's checks (check_layout, check_is_flash_attention in
    jax/_src/cudnn/fused_attention_stablehlo.py): an NVIDIA GPU (a CUDA compute capability, 'major.minor'),
    fp16/bf16 operands, a head dim that is a multiple of 8 and at most 128, or 256 from Hopper (9.0) on; and
    cuDNN's own: flash attention from Ampere (8.0) on."""
    m = re.match(r'(\d+)\.(\d+)', compute_capability or '')
    if platform != 'gpu' or not m or jnp.dtype(dtype) not in CUDNN_DTYPES:
        return 'xla'
    cc = (int(m[1]), int(m[2]))
    max_head_dim = 256 if cc >= (9, 0) else 128
    ok = cc >= (8, 0) and head_dim % 8 == 0 and 0 < head_dim <= max_head_dim
    return 'cudnn' if ok else 'xla'


def backend_info() -> tuple[str, Optional[str]]:
    """(platform, CUDA compute capability or None) of the default backend, read when a model is traced."""
    return jax.default_backend(), getattr(jax.devices()[0], 'compute_capability', None)


def fused_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Optional[jax.Array] = None,
                    bias: Optional[jax.Array] = None, scale: Optional[float] = None) -> jax.Array:
    """jax.nn.dot_product_attention on (B, N, heads, hd) operands, with cuDNN's kernel where it takes the case
    (not with a mask or a bias: NaFlex's padding masks and BEiT's position bias go to XLA). Logits and softmax
    are f32 on either path. `mask`: boolean, True where a query may attend to a key, broadcastable to
    (B, heads, Nq, Nk); `bias`: added to the logits, the same shape; `scale`: of the logits (None: 1/sqrt(hd))."""
    platform, cc = backend_info()
    plain = mask is None and bias is None
    impl = attention_implementation(platform, q.dtype, q.shape[-1], cc) if plain else 'xla'
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, scale=scale, implementation=impl)


def masked_softmax_logits(logits: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
    # timm adds finfo.min where masked: a query with no valid key gets uniform weights, never NaN
    return logits if mask is None else jnp.where(mask, logits, jnp.finfo(logits.dtype).min)


class Attention(nn.Module):
    """Multi-head self-attention with per-head query/key/value kernels of shape (D, heads, head_dim).

    Eva's options: no key bias (`key_bias=False`; a key bias shifts every logit of a query alike, so Eva drops
    it), a norm on the attention output before the projection (`scale_attn_norm`), and rotary position
    embeddings applied to the patch tokens' queries and keys (`rope`, the prefix tokens left as they are).
    BEiT's and the relpos ViTs': a learned relative-position bias added to the logits (`rel_pos_type`)."""
    cfg: AttnCfg
    norm_cfg: NormCfg = NormCfg()
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, rope: Optional[jax.Array] = None,
                 mask: Optional[jax.Array] = None, rel_pos: Optional[jax.Array] = None) -> jax.Array:
        """`mask`: boolean (B, 1, N, N), True where query and key are both real tokens (NaFlex padding);
        `rel_pos`: the model's shared (heads, N, N) position bias."""
        c, nc = self.cfg, self.norm_cfg
        dim = x.shape[-1]
        if dim % c.num_heads:
            raise ValueError(f'embed_dim {dim} is not divisible by num_heads {c.num_heads}')
        head_dim = dim // c.num_heads
        # One (D, 3, H, hd) matmul instead of three (D, H, hd) ones, written heads-major: XLA:CPU runs the
        # per-head attention GEMMs 2.6x faster on (B, H, N, hd) operands than on (B, N, H, hd) ones.
        biases = (c.qkv_bias, c.qkv_bias and c.key_bias, c.qkv_bias)
        kb = [ProjParams(dim, (c.num_heads, head_dim), b, name=n)() for n, b in zip(('query', 'key', 'value'),
                                                                                    biases)]
        kernel = jnp.stack([k for k, _ in kb], axis=1).astype(self.dtype)
        q, k, v = jnp.einsum('bnd,dthk->tbhnk', x.astype(self.dtype), kernel)  # each (B, H, N, hd), compute dtype
        q, k, v = (t if b is None else t + b[:, None].astype(self.dtype) for t, (_, b) in zip((q, k, v), kb))
        if c.qk_norm:
            q = layer_norm(nc.norm_eps, self.dtype, 'q_norm', nc.norm_layer)(q)
            k = layer_norm(nc.norm_eps, self.dtype, 'k_norm', nc.norm_layer)(k)
        if rope is not None:
            npt = c.num_prefix_tokens
            q, k = (jnp.concatenate([t[:, :, :npt], apply_rot_embed_cat(t[:, :, npt:], rope, c.rope_rotate_half)],
                                    axis=2).astype(v.dtype) for t in (q, k))
        if c.rel_pos_type == 'decomposed':  # SAM's, from the queries
            bias = DecomposedRelPos(c.grid_size, name='rel_pos')(q)
        else:
            if c.rel_pos_type and not c.shared_rel_pos:
                rel_pos = rel_pos_module(c.rel_pos_type, c.grid_size, c.num_heads, c.num_prefix_tokens,
                                         c.rel_pos_dim, 'rel_pos')(train)
            bias = None if rel_pos is None else rel_pos[None]  # f32
        weights_needed = (train and c.attn_drop_rate > 0.) or self.is_mutable_collection('intermediates')
        if weights_needed or backend_info()[0] == 'cpu':
            # f32 logits and softmax from compute-dtype operands, as jax's 'xla' attention and timm's sdpa do
            logits = jnp.einsum('bhqd,bhkd->bhqk', q * head_dim ** -0.5, k, preferred_element_type=jnp.float32)
            logits = logits if bias is None else logits + bias
            weights = jax.nn.softmax(masked_softmax_logits(logits, mask), axis=-1)
            if weights_needed:  # attention maps under `mutable=['intermediates']`: (B, heads, N, N) as 'attn'
                self.sow('intermediates', 'attn', weights)
                weights = nn.Dropout(c.attn_drop_rate)(weights, deterministic=not train)
            o = jnp.einsum('bhqk,bhkd->bhqd', weights.astype(v.dtype), v)
        else:  # GPU/TPU: jax's attention, cuDNN's fused kernel where it takes the case (attention_implementation)
            o = fused_attention(*(t.swapaxes(1, 2) for t in (q, k, v)), mask, bias).swapaxes(1, 2)
        if c.scale_attn_norm:  # over all heads' outputs: (B, H, N, hd) -> (B, N, H*hd) and back to the projection
            b, h, n, hd = o.shape
            o = layer_norm(nc.norm_eps, self.dtype, 'norm', nc.norm_layer)(
                o.transpose(0, 2, 1, 3).reshape(b, n, h * hd))
            o = o.reshape(b, n, h, hd).transpose(0, 2, 1, 3)
        x = nn.DenseGeneral(dim, axis=(1, 3), use_bias=c.proj_bias, dtype=self.dtype, kernel_init=dense_init,
                            name='out')(o)
        return nn.Dropout(c.proj_drop_rate)(x, deterministic=not train)


class Mlp(nn.Module):
    """fc1 -> act -> fc2 ('mlp'), or SwiGLU: silu(gate) * x -> fc2 with the gate and x from fc1_g and fc1_x
    ('swiglu', timm's SwiGLU) or from the two halves of one fc1 ('swiglu_packed', timm's SwiGLUPacked / GluMlp);
    with an optional norm before fc2 (`scale_mlp_norm`)."""
    cfg: MlpCfg = MlpCfg()
    norm_cfg: NormCfg = NormCfg()
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c, nc = self.cfg, self.norm_cfg
        dim = x.shape[-1]
        hidden = int(dim * c.mlp_ratio)  # timm's int(embed_dim * mlp_ratio)
        # The activation in f32, rounded once on the way out (PyTorch's bf16 GELU computes in float too).
        f32 = lambda t: t.astype(jnp.promote_types(t.dtype, jnp.float32))
        dense = lambda n, name: nn.Dense(n, use_bias=c.proj_bias, dtype=self.dtype, kernel_init=dense_init, name=name)
        act = ACTIVATIONS[c.act_layer]
        if c.mlp_layer == 'swiglu':
            g = dense(hidden, 'fc1_g')(x)
            x = (act(f32(g)) * f32(dense(hidden, 'fc1_x')(x))).astype(g.dtype)
        elif c.mlp_layer == 'swiglu_packed':
            g, x = jnp.split(dense(2 * hidden, 'fc1')(x), 2, axis=-1)
            x = (act(f32(g)) * f32(x)).astype(g.dtype)
        else:
            x = dense(hidden, 'fc1')(x)
            x = act(f32(x)).astype(x.dtype)
        x = nn.Dropout(c.proj_drop_rate)(x, deterministic=not train)
        if c.scale_mlp_norm:
            x = layer_norm(nc.norm_eps, self.dtype, 'norm', nc.norm_layer)(x)
        x = dense(dim, 'fc2')(x)
        return nn.Dropout(c.proj_drop_rate)(x, deterministic=not train)


class LayerScale(nn.Module):
    init_values: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gamma = self.param('gamma', nn.initializers.constant(self.init_values), (x.shape[-1],))
        return x * gamma  # f32 (promoted) for a bf16 branch: the scale is applied before the rounding to the stream


def stochastic_depth(module: nn.Module, y: jax.Array, rate, train: bool) -> jax.Array:
    """The whole residual branch `y` dropped per sample at `rate` (a float or a traced one), the rest rescaled
    by 1/keep; `module`'s 'dropout' rng."""
    if not train or (isinstance(rate, (int, float)) and rate == 0):
        return y
    keep = 1. - jnp.asarray(rate, jnp.float32)
    mask = jax.random.bernoulli(module.make_rng('dropout'), keep, (y.shape[0],) + (1,) * (y.ndim - 1))
    return y * (mask / jnp.maximum(keep, 1e-12)).astype(y.dtype)  # keep = 0 drops all, no 0/0


class Block(nn.Module):
    """Pre-norm transformer block: x + drop_path(ls1(attn(norm1(x)))), then the same with the MLP."""
    attn_cfg: AttnCfg = AttnCfg()
    mlp_cfg: MlpCfg = MlpCfg()
    norm_cfg: NormCfg = NormCfg()
    init_values: Optional[float] = None  # LayerScale
    res_post_norm: bool = False  # x + norm1(attn(x)), x + norm2(mlp(x)) (timm's ResPostRelPosBlock)
    drop_path: float = 0.
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, drop_path: Optional[jax.Array] = None,
                 rope: Optional[jax.Array] = None, mask: Optional[jax.Array] = None,
                 rel_pos: Optional[jax.Array] = None) -> jax.Array:
        """`drop_path` overrides the attribute with a traced rate (a scanned stack passes each block's rate);
        `rope` is the rotary embedding of the patch grid (None: no RoPE); `rel_pos` the model's shared bias."""
        rate = self.drop_path if drop_path is None else drop_path
        drop = lambda y: stochastic_depth(self, y, rate, train)
        ls = (lambda n: LayerScale(self.init_values, name=n)) if self.init_values is not None else (
            lambda n: (lambda y: y))
        nc = self.norm_cfg
        attn = Attention(self.attn_cfg, nc, self.dtype, name='attn')
        if self.res_post_norm:  # the norms on the branch outputs, into the f32 stream
            post = lambda name: layer_norm(nc.norm_eps, jnp.float32, name, nc.norm_layer)
            x = x + drop(post('norm1')(attn(x, train, rope, mask, rel_pos)))
            return x + drop(post('norm2')(Mlp(self.mlp_cfg, nc, self.dtype, name='mlp')(x, train)))
        # x is the residual stream (f32); the norms hand the matmuls their input in the compute dtype.
        y = layer_norm(nc.norm_eps, self.dtype, 'norm1', nc.norm_layer)(x)
        y = attn(y, train, rope, mask, rel_pos)
        x = x + drop(ls('ls1')(y).astype(x.dtype))
        y = layer_norm(nc.norm_eps, self.dtype, 'norm2', nc.norm_layer)(x)
        y = Mlp(self.mlp_cfg, nc, self.dtype, name='mlp')(y, train)
        return x + drop(ls('ls2')(y).astype(x.dtype))


class AttentionPoolLatent(nn.Module):
    """Multihead attention pooling (MAP, SigLIP's head): one learned latent query attends over the tokens,
    then a residual MLP; returns (B, D). Mirrors timm's AttentionPoolLatent with latent_len=1."""
    num_heads: int
    mlp_cfg: MlpCfg = MlpCfg()
    qkv_bias: bool = True
    norm_cfg: NormCfg = NormCfg()
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
        """`mask`: boolean (B, N), the tokens the latent may attend to (None: all)."""
        b, _, dim = x.shape
        head_dim = dim // self.num_heads
        latent = self.param('latent', nn.initializers.normal(dim ** -0.5), (1, 1, dim))
        proj = functools.partial(nn.DenseGeneral, features=(self.num_heads, head_dim), use_bias=self.qkv_bias,
                                 dtype=self.dtype, kernel_init=dense_init)
        q = proj(name='query')(jnp.broadcast_to(latent, (b, 1, dim)).astype(x.dtype))
        o = fused_attention(q, proj(name='key')(x), proj(name='value')(x),
                            None if mask is None else mask[:, None, None, :])
        # The pooled features are the head's input: kept in x's dtype (f32), as the residual stream is.
        y = nn.DenseGeneral(dim, axis=(-2, -1), dtype=self.dtype, kernel_init=dense_init, name='out')(o).astype(x.dtype)
        nc = self.norm_cfg
        y = y + Mlp(self.mlp_cfg, nc, self.dtype, name='mlp')(
            layer_norm(nc.norm_eps, self.dtype, 'norm', nc.norm_layer)(y)).astype(y.dtype)
        return y[:, 0]


def check_images(x: jax.Array, in_chans: int, img_size: tuple[int, int], patch_size: tuple[int, int],
                 dynamic_img_size: bool) -> None:
    """The input contract shared by every model: NHWC, and the model's size, or whole patches when dynamic. At
    the model's own size the patch grid floors, as timm's strict PatchEmbed does (SigLIP so400m/14 at 384)."""
    if x.ndim != 4 or x.shape[-1] != in_chans:
        raise ValueError(f'expected NHWC images with {in_chans} channels, got shape {x.shape}')
    (h, w), (ph, pw) = x.shape[1:3], patch_size
    if not dynamic_img_size and (h, w) != tuple(img_size):
        raise ValueError(f'input size {(h, w)} does not match img_size {tuple(img_size)}; '
                         'build the model with that img_size or dynamic_img_size=True')
    if dynamic_img_size and (h % ph or w % pw):
        raise ValueError(f'input size {(h, w)} is not divisible by patch size {(ph, pw)}')


def resample_abs_pos_embed(posemb: jax.Array, new_size: Sequence[int], old_size: Optional[Sequence[int]] = None,
                           num_prefix_tokens: int = 1, interpolation: str = 'bicubic') -> jax.Array:
    """Resize a (1, prefix + H*W, D) position embedding to a new patch grid, prefix tokens untouched.

    Bicubic (or bilinear) with antialiasing on the grid, matching timm's `resample_abs_pos_embed` (PyTorch's
    antialiased bicubic is the Keys kernel with a=-0.5, renormalised at the borders, which is what
    jax.image.resize does; its antialiased bilinear is the triangle kernel, jax's 'linear').
    """
    new_size = tuple(int(s) for s in new_size)
    num_pos = posemb.shape[1] - num_prefix_tokens
    if old_size is None:
        side = int(round(num_pos ** 0.5))
        if side * side != num_pos:
            raise ValueError(f'cannot infer a square grid from {num_pos} position embeddings; pass old_size')
        old_size = (side, side)
    old_size = tuple(int(s) for s in old_size)
    if old_size[0] * old_size[1] != num_pos:
        raise ValueError(f'position embedding has {num_pos} grid tokens, not {old_size[0]}x{old_size[1]}')
    if new_size == old_size:
        return posemb
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, *old_size, dim).astype(jnp.float32)
    method = {'bicubic': 'cubic', 'bilinear': 'linear'}[interpolation]
    grid = jax.image.resize(grid, (1, *new_size, dim), method=method, antialias=True)
    grid = grid.reshape(1, new_size[0] * new_size[1], dim).astype(posemb.dtype)
    return jnp.concatenate([prefix, grid], axis=1)


def feature_take_indices(num_features: int, indices: Union[None, int, Sequence[int]] = None) -> list[int]:
    """timm's convention: None -> all, int n -> the last n, sequence -> those (negative from the end)."""
    if indices is None:
        indices = num_features
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f'last-n ({indices}) is out of range (1 to {num_features})')
        return [num_features - indices + i for i in range(indices)]
    take = []
    for i in indices:
        idx = num_features + i if i < 0 else i
        if not 0 <= idx < num_features:
            raise ValueError(f'feature index {i} is out of range (0 to {num_features - 1})')
        take.append(idx)
    return take
