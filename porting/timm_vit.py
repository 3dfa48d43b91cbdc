"""timm VisionTransformer (ViT, DeiT, DeiT distilled, MAE, CLIP, SigLIP, DINOv2, DeiT III), the torch side: the
config and preprocessing readers (a row of porting.sources; the name table is vitjax/weights/timm_vit.py)."""
from __future__ import annotations

from typing import Any

from porting.source import Source, load_timm, timm_class
from vitjax import weights
from vitjax.weights.engine import UnsupportedModel, require


def activation(mod) -> str:
    import torch.nn as tnn
    name = type(mod).__name__
    if isinstance(mod, tnn.SiLU):
        return 'silu'
    if isinstance(mod, tnn.GELU):
        return 'gelu' if mod.approximate == 'none' else 'gelu_tanh'
    if name == 'GELUTanh':
        return 'gelu_tanh'
    if name == 'QuickGELU':
        return 'quick_gelu'
    if name == 'GELU':  # timm.layers.activations.GELU is the exact form
        return 'gelu'
    raise UnsupportedModel(f'activation {name}')


def mlp_layer(mlp, dim: int) -> tuple[str, float]:
    """(vitjax mlp_layer, mlp_ratio) of a timm MLP: Mlp, SwiGLU (fc1_g / fc1_x) or SwiGLUPacked (one fc1)."""
    kind = type(mlp).__name__
    if kind == 'Mlp':
        return 'mlp', mlp.fc1.out_features / dim
    if kind == 'GluMlp':
        require(not mlp.gate_last and mlp.chunk_dim == -1, 'a GLU MLP other than SwiGLUPacked (gate first)')
        return 'swiglu_packed', mlp.fc1.out_features / 2 / dim
    if kind == 'SwiGLU':
        require(mlp.fc1_g.out_features == mlp.fc1_x.out_features, 'SwiGLU with unequal halves')
        return 'swiglu', mlp.fc1_g.out_features / dim
    raise UnsupportedModel(f'the source model uses MLP {kind}, which vitjax does not support yet')


def norm_layer(model) -> tuple[str, float]:
    """('layernorm' | 'rmsnorm', eps): one kind and one eps for every norm of the model."""
    import torch.nn as tnn
    # a hybrid's CNN backbone has its own (GroupNorm) norms, read by porting/timm_hybrid_vit.py
    mods = [m for n, m in model.named_modules() if not n.startswith('patch_embed.backbone')]
    kinds = {type(m).__name__ for m in mods if 'Norm' in type(m).__name__ and not isinstance(
        m, (tnn.Identity,)) and hasattr(m, 'eps')}
    norms = [m for m in mods if type(m).__name__ in kinds]
    require(kinds <= {'LayerNorm', 'RmsNorm'} and len(kinds) <= 1, f'norms {sorted(kinds)}')
    require(all(m.weight is not None and getattr(m, 'bias', 0) is not None for m in norms) if
            kinds == {'LayerNorm'} else all(m.weight is not None for m in norms), 'a norm without affine/bias')
    eps = {m.eps for m in norms}
    require(len(eps) <= 1, f'mixed norm eps {eps}')
    return ('rmsnorm' if kinds == {'RmsNorm'} else 'layernorm'), (eps.pop() if eps else 1e-6)


def torch_config(model) -> dict[str, Any]:
    """Read VisionTransformer kwargs off an instantiated timm ViT (any name composed of supported options)."""
    import torch.nn as tnn
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    require(isinstance(model, TimmViT), f'architecture {type(model).__name__}')
    distilled = getattr(model, 'dist_token', None) is not None
    require(type(model).__name__ in ('VisionTransformer', 'VisionTransformerDistilled'), type(model).__name__)
    require_map_pool(model)
    require(isinstance(model.patch_drop, tnn.Identity), 'patch dropout')
    require(not getattr(model, 'pool_include_prefix', False), 'pool_include_prefix')
    require(not getattr(model.patch_embed, 'dynamic_img_pad', False), 'dynamic_img_pad')
    return dict(
        **patch_fields(model.patch_embed.img_size, model.patch_embed.patch_size, model.patch_embed.proj.in_channels),
        num_classes=model.num_classes,
        global_pool=model.global_pool,
        embed_dim=model.embed_dim,
        **blocks_config(model),
        embed_norm=not is_identity(getattr(model.patch_embed, 'norm', None)),  # a HybridEmbed has none
        class_token=model.cls_token is not None,
        pos_embed='learn' if model.pos_embed is not None else 'none',
        no_embed_class=bool(model.no_embed_class),
        reg_tokens=int(getattr(model, 'num_reg_tokens', 0)),
        pre_norm=not isinstance(model.norm_pre, tnn.Identity),
        final_norm=not (isinstance(model.norm, tnn.Identity) and isinstance(model.fc_norm, tnn.Identity)),
        fc_norm=not isinstance(model.fc_norm, tnn.Identity),
        dynamic_img_size=bool(model.dynamic_img_size),
        distilled=distilled,
    )


def blocks_config(model) -> dict[str, Any]:
    """The vitjax fields of timm's `Block` stack (VisionTransformer, NaFlexVit) and of the model's norms."""
    import torch.nn as tnn
    blk = model.blocks[0]
    require(type(blk).__name__ == 'Block', f'block type {type(blk).__name__}')
    require(isinstance(getattr(blk.attn, 'norm', None), (tnn.Identity, type(None))), 'scale_attn_norm')
    mlp, mlp_ratio = mlp_layer(blk.mlp, model.embed_dim)
    proj_bias = blk.attn.proj.bias is not None
    require((blk.mlp.fc2.bias is not None) == proj_bias, 'attention and MLP projections that differ in biases')
    norm_kind, eps = norm_layer(model)
    ls = getattr(blk, 'ls1', None)
    return dict(depth=len(model.blocks), num_heads=blk.attn.num_heads, mlp_ratio=mlp_ratio,
                qkv_bias=blk.attn.qkv.bias is not None, qk_norm=not isinstance(blk.attn.q_norm, tnn.Identity),
                mlp_layer=mlp, scale_mlp_norm=not isinstance(blk.mlp.norm, tnn.Identity), proj_bias=proj_bias,
                init_values=_init_values(ls) if ls is not None and not isinstance(ls, tnn.Identity) else None,
                norm_layer=norm_kind, norm_eps=eps, act_layer=activation(blk.mlp.act))


def is_identity(m) -> bool:
    import torch.nn as tnn
    return m is None or isinstance(m, tnn.Identity)


def require_map_pool(model) -> None:
    """The attention pool vitjax has: timm's AttentionPoolLatent with one latent, its MLP, no q-norm."""
    pool = getattr(model, 'attn_pool', None)
    require(pool is None or (type(pool).__name__ == 'AttentionPoolLatent' and pool.latent_len == 1
                              and pool.pos_embed is None and pool.pool == 'token' and pool.mlp is not None
                              and is_identity(pool.q_norm) and not is_identity(pool.q)),
            f'global_pool={model.global_pool!r} with this attention pool')


def patch_fields(img, patch, in_chans: int) -> dict[str, Any]:
    """img_size / patch_size (an int when square, as timm's names give them) and in_chans."""
    img, patch = tuple(img), tuple(patch)
    return dict(img_size=img[0] if img[0] == img[1] else img, patch_size=patch[0] if patch[0] == patch[1] else patch,
                in_chans=in_chans)


def _init_values(ls) -> float:
    v = getattr(ls, 'init_values', None)  # timm's LayerScale keeps it; the gamma has trained away from it
    return float(v) if v is not None else float(ls.gamma.detach().reshape(-1)[0])


def pretrained_cfg(model) -> dict[str, Any]:
    c = model.pretrained_cfg or {}
    keys = ('input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation', 'tag')
    return {k: list(c[k]) if isinstance(c.get(k), tuple) else c[k] for k in keys if c.get(k) is not None}


def reference_state(state: dict, src, dst, ref) -> dict:
    """The source state dict as timm itself adapts it to `dst`'s grid (for the parity reference)."""
    from timm.layers import resample_abs_pos_embed
    state = dict(state)
    if 'pos_embed' in state:
        state['pos_embed'] = resample_abs_pos_embed(
            state['pos_embed'], new_size=dst.grid_size, old_size=src.grid_size,
            num_prefix_tokens=0 if src.no_embed_class else src.num_prefix_tokens)
    return state


def _is_vit(m) -> bool:
    # a HybridEmbed (CNN) patch embedding is the hybrids' row (porting/timm_hybrid_vit.py)
    return timm_class('VisionTransformer', 'VisionTransformerDistilled')(m) and (
        type(getattr(m, 'patch_embed', None)).__name__ != 'HybridEmbed')


SOURCES = (Source(weights.get('timm', 'vit'), _is_vit, torch_config, pretrained_cfg, load_timm,
                  lambda path, state: True, resize_state=reference_state),)
