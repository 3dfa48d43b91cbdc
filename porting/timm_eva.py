"""timm Eva (EVA-02, DINOv3, Perception Encoder, RoPE-ViT), the torch side: the config reader (a row of
porting.sources; the name table is vitjax/weights/timm_eva.py). The Flax side is vitjax's VisionTransformer with
Eva's options (vitjax.models.Eva)."""
from __future__ import annotations

from typing import Any

from porting.source import Source, load_timm, timm_class
from porting.timm_vit import pretrained_cfg
from porting.timm_vit import reference_state as vit_reference_state
from vitjax import weights
from vitjax.weights.engine import require


ROPE_CLASSES = {'RotaryEmbeddingCat': 'cat', 'RotaryEmbeddingMixed': 'mixed', 'RotaryEmbeddingDinoV3': 'dinov3'}


def _rope(model) -> dict[str, Any]:
    rope = model.rope
    if rope is None:
        return dict(rope_type='')
    kind = ROPE_CLASSES.get(type(rope).__name__)
    require(kind is not None, f'rotary embedding {type(rope).__name__}')
    require(not getattr(rope, 'aug_active', False), 'train-time RoPE coordinate augmentation')
    out = dict(rope_type=kind, rope_temperature=float(rope.temperature),
               rope_grid_indexing=getattr(rope, 'grid_indexing', 'ij'),
               rope_grid_offset=float(getattr(rope, 'grid_offset', 0.) or 0.),
               rope_rotate_half=bool(getattr(rope, 'rotate_half', False)))
    if kind == 'cat':
        require(not rope.in_pixels and not rope.linear_bands, 'pixel-frequency RoPE bands')
        ref = rope.ref_feat_shape
        out['rope_ref_feat_shape'] = tuple(int(v) for v in ref) if ref is not None else None
    if kind == 'dinov3':
        require(rope.min_period is None and rope.max_period is None, 'DINOv3 RoPE with min/max periods')
        require(rope.normalize_coords == 'separate', f'DINOv3 RoPE normalize_coords={rope.normalize_coords!r}')
    return out


def torch_config(model) -> dict[str, Any]:
    """Read vitjax Eva kwargs off an instantiated timm Eva; every option vitjax lacks is named in the error."""
    import torch.nn as tnn
    from timm.models.eva import Eva as TimmEva
    from porting.timm_vit import activation, is_identity, mlp_layer, norm_layer, patch_fields, require_map_pool

    require(isinstance(model, TimmEva), f'architecture {type(model).__name__}')
    blk = model.blocks[0]
    require(type(blk).__name__ == 'EvaBlock', f'block type {type(blk).__name__} (post-norm)')
    require(model.patch_drop is None, 'patch dropout')
    require(not getattr(model.patch_embed, 'dynamic_img_pad', False), 'dynamic_img_pad')
    require(is_identity(model.patch_embed.norm), 'a norm in the patch embedding')
    attn = blk.attn
    require(getattr(attn, 'gate', None) is None, 'gated attention')
    require(getattr(attn, 'num_kv_groups', 1) == 1, 'grouped-query attention (num_kv_heads)')
    require(attn.proj.bias is not None and blk.mlp.fc2.bias is not None, 'proj_bias=False')
    fused = attn.qkv is not None
    if type(attn).__name__ == 'EvaAttention':
        qkv_bias = attn.q_bias is not None if fused else attn.q_proj.bias is not None
        key_bias = False
    else:
        require(type(attn).__name__ == 'AttentionRope', f'attention {type(attn).__name__}')
        qkv_bias = (attn.qkv.bias if fused else attn.q_proj.bias) is not None
        key_bias = qkv_bias
    mlp, mlp_ratio = mlp_layer(blk.mlp, model.embed_dim)
    act = activation(blk.mlp.act)
    norm_kind, eps = norm_layer(model)
    require((blk.gamma_1 is None) == (blk.gamma_2 is None), 'LayerScale on the attention branch only')
    require(is_identity(model.norm) or is_identity(model.fc_norm), 'both a final norm and an fc_norm')
    pool = model.attn_pool
    require(pool is None or act == 'gelu', f'an attention pool (GELU) after {act} blocks')
    require_map_pool(model)
    return dict(
        **patch_fields(model.patch_embed.img_size, model.patch_embed.patch_size, model.patch_embed.proj.in_channels),
        num_classes=model.num_classes,
        global_pool=model.global_pool,
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=attn.num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=qkv_bias,
        key_bias=key_bias,
        qk_norm=not is_identity(attn.q_norm),
        scale_attn_norm=not is_identity(attn.norm),
        mlp_layer=mlp,
        scale_mlp_norm=not is_identity(blk.mlp.norm),
        init_values=float(blk.init_values) if blk.gamma_1 is not None else None,
        class_token=model.cls_token is not None,
        pos_embed='learn' if model.pos_embed is not None else 'none',
        no_embed_class=bool(model.no_embed_class),
        reg_tokens=int(model.reg_token.shape[1]) if model.reg_token is not None else 0,
        **_rope(model),
        pre_norm=not is_identity(model.norm_pre),
        final_norm=not (is_identity(model.norm) and is_identity(model.fc_norm)),
        fc_norm=not is_identity(model.fc_norm),
        pool_include_prefix=True,  # Eva's attention pool reads every token
        attn_pool_num_heads=pool.num_heads if pool is not None else None,
        attn_pool_mlp_ratio=pool.mlp.fc1.out_features / model.embed_dim if pool is not None else None,
        dynamic_img_size=bool(model.dynamic_img_size),
        norm_layer=norm_kind,
        norm_eps=eps,
        act_layer=act,
    )


SOURCES = (Source(weights.get('timm', 'eva'), timm_class('Eva'), torch_config, pretrained_cfg, load_timm,
                  lambda path, state: True, resize_state=vit_reference_state),)
