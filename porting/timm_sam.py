"""timm's VisionTransformerSAM (vision_transformer_sam: SAM's image encoder), the torch side: the config reader (a
row of porting.sources; the name table is vitjax/weights/timm_sam.py). The Flax side is
vitjax.models.sam.VisionTransformerSAM."""
from __future__ import annotations

from typing import Any

from porting.source import Source, load_timm, timm_class
from porting.timm_vit import activation, pretrained_cfg
from vitjax import weights
from vitjax.weights.engine import require


def torch_config(model) -> dict[str, Any]:
    """Read VisionTransformerSAM kwargs off an instantiated timm one; every option vitjax lacks is named."""
    import torch.nn as tnn
    from timm.layers import ClassifierHead, LayerNorm2d, Mlp
    require(model.rope_global is None, 'RoPE (use_rope)')
    require(isinstance(model.norm_pre, tnn.Identity) and model.patch_embed.proj.bias is not None, 'pre_norm')
    require(type(model.head) is ClassifierHead, f'head {type(model.head).__name__} (head_hidden_size)')
    require(isinstance(model.patch_drop, tnn.Identity), 'patch_drop_rate')
    blocks = list(model.blocks)
    b0 = blocks[0]
    require(all(type(b.mlp) is Mlp and isinstance(b.attn.q_norm, tnn.Identity) for b in blocks),
            'a gated MLP or q/k norms')
    norms = [m for b in blocks for m in (b.norm1, b.norm2)]
    require(all(isinstance(m, tnn.LayerNorm) for m in norms) and len({m.eps for m in norms}) == 1,
            'mixed block norms')
    require(len({activation(b.mlp.act) for b in blocks}) == 1, 'mixed activations')
    windows = sorted({b.window_size for b in blocks} - {0})
    require(len(windows) <= 1, f'window sizes {windows}')
    necks = [m for m in model.neck.modules() if isinstance(m, LayerNorm2d)]
    require(all(m.eps == 1e-6 for m in necks), 'a neck LayerNorm2d eps other than 1e-6')
    pe, init = model.patch_embed, [b.ls1 for b in blocks if hasattr(b.ls1, 'gamma')]
    require(len(init) in (0, len(blocks)), 'LayerScale on some blocks only')
    conv_neck = isinstance(model.neck, tnn.Sequential)
    img, patch = tuple(pe.img_size), tuple(pe.patch_size)
    return dict(
        img_size=img[0] if img[0] == img[1] else list(img),
        patch_size=patch[0] if patch[0] == patch[1] else list(patch),
        in_chans=pe.proj.in_channels,
        num_classes=model.num_classes,
        global_pool=model.head.global_pool.pool_type,
        embed_dim=model.embed_dim,
        depth=len(blocks),
        num_heads=b0.attn.num_heads,
        mlp_ratio=b0.mlp.fc1.out_features / model.embed_dim,
        qkv_bias=b0.attn.qkv.bias is not None,
        init_values=1e-5 if init else None,  # nominal: the gammas are the weights
        use_abs_pos=model.pos_embed is not None,
        use_rel_pos=bool(b0.attn.use_rel_pos),
        window_size=windows[0] if windows else 0,
        global_attn_indexes=[i for i, b in enumerate(blocks) if b.window_size == 0] if windows else [],
        neck_chans=model.neck[0].out_channels if conv_neck else None,
        norm_eps=b0.norm1.eps,
        act_layer=activation(b0.mlp.act),
    )


def reference_state(state: dict, src, dst, ref) -> dict:
    """The state at `dst`'s size as timm uses it at run time there (timm loads SAM only at its own size): the
    position map resampled (resample_abs_pos_embed_nhwc), each decomposed table as get_rel_pos resamples it."""
    import torch.nn.functional as F
    from timm.layers import resample_abs_pos_embed_nhwc
    want, out = ref.state_dict(), dict(state)
    for k, v in state.items():
        if k == 'pos_embed' and v.shape != want[k].shape:
            out[k] = resample_abs_pos_embed_nhwc(v, list(want[k].shape[1:3]))
        elif k.endswith(('rel_pos_h', 'rel_pos_w')) and v.shape != want[k].shape:
            out[k] = F.interpolate(v.T[None], size=want[k].shape[0], mode='linear')[0].T
    return out


SOURCES = (Source(weights.get('timm', 'sam'), timm_class('VisionTransformerSAM'), torch_config, pretrained_cfg,
                  load_timm, lambda path, state: True, resize_state=reference_state),)
