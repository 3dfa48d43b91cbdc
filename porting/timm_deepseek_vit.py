"""timm deepseek_vit (the vision tower of DeepSeek V4 / V4.1), the torch side: the config readers of the encoder and
the classifier (two rows of porting.sources; the name tables are vitjax/weights/timm_deepseek_vit.py)."""
from __future__ import annotations

import functools
from typing import Any

from porting.source import Source, load_timm, timm_class
from porting.timm_qwen3_vit import encoder_reference, reference_state
from porting.timm_vit import activation, patch_fields, pretrained_cfg
from vitjax import weights
from vitjax.weights.engine import require


def encoder_config(enc) -> dict[str, Any]:
    """DeepseekVitEncoder kwargs (vitjax's under timm's names) off a built timm DeepseekVitEncoder."""
    import torch.nn as tnn
    from timm.layers import RmsNormFp32
    blocks = list(enc.blocks)
    require(all(type(b).__name__ == 'DeepseekVitBlock' and type(b.attn).__name__ == 'AttentionRope' for b in blocks),
            'a block other than DeepseekVitBlock with AttentionRope')
    b0 = blocks[0]
    require(all(b.attn.qkv is not None and b.attn.qkv.bias is not None and b.attn.proj.bias is not None
                for b in blocks), 'separate or biasless q/k/v or output projection')
    require(all(isinstance(b.attn.q_norm, tnn.Identity) and isinstance(b.attn.norm, tnn.Identity) for b in blocks),
            'q/k norms or an inner attention norm')
    require(all(type(b.mlp).__name__ == 'GluMlp' and not b.mlp.gate_last and b.mlp.fc1.bias is None
                and b.mlp.fc2.bias is None and isinstance(b.mlp.norm, tnn.Identity) and activation(b.mlp.act) == 'silu'
                for b in blocks),
            'an MLP other than the bias-free packed SwiGLU (gate first)')
    norms = [m for m in enc.modules() if isinstance(m, RmsNormFp32)]
    eps = {m.eps for m in norms}
    require(len(eps) == 1 and all(m.weight is not None for m in norms), f'mixed or non-affine RMSNorms (eps {eps})')
    require(not any(isinstance(m, tnn.LayerNorm) for m in enc.modules()), 'a LayerNorm')
    rope = enc.rope
    require(type(rope).__name__ == 'RotaryEmbeddingCat' and not rope.in_pixels and rope.ref_feat_shape is None
            and rope.rotate_half and not getattr(rope, 'grid_offset', 0.), 'another RoPE layout')
    aligner = enc.aligner
    require(aligner is None or isinstance(aligner.act, tnn.GELU) and aligner.act.approximate == 'none',
            'an aligner activation other than exact GELU')
    return dict(
        **patch_fields(enc.patch_embed.img_size, enc.patch_embed.patch_size, enc.in_chans),
        num_classes=0,  # the encoder's: the classifier reads its own
        out_features=int(enc.out_features),
        global_pool=enc.global_pool,
        embed_dim=enc.embed_dim,
        depth=len(blocks),
        num_heads=b0.attn.num_heads,
        mlp_ratio=b0.mlp.fc2.in_features / enc.embed_dim,
        downsample_ratio=enc.downsample_ratio,
        rope_temperature=float(rope.temperature),
        norm_eps=eps.pop(),
        dynamic_img_pad=bool(enc.patch_embed.dynamic_img_pad),
    )


def classifier_config(model) -> dict[str, Any]:
    import torch.nn as tnn
    c = encoder_config(model.encoder)
    require(isinstance(model.norm, tnn.Identity) or model.norm.weight is None, 'an affine head norm')
    return dict(c, num_classes=model.num_classes, global_pool=model.global_pool, encoder_pool=model.encoder_pool,
                final_norm=not isinstance(model.norm, tnn.Identity))


def _timm_encoder(model) -> dict[str, Any]:
    from timm.models.deepseek_vit import DeepseekVitEncoder
    require(type(model) is DeepseekVitEncoder, f'architecture {type(model).__name__}')
    return encoder_config(model)


def _timm_classifier(model) -> dict[str, Any]:
    from timm.models.deepseek_vit import DeepseekVitClassifier
    require(type(model) is DeepseekVitClassifier, f'architecture {type(model).__name__}')
    return classifier_config(model)


SOURCES = (
    Source(weights.get('timm', 'deepseek_vit_enc'), timm_class('DeepseekVitEncoder'), _timm_encoder, pretrained_cfg,
           load_timm, lambda path, state: True, reference=functools.partial(encoder_reference, projector='aligner'),
           resize_state=reference_state),
    Source(weights.get('timm', 'deepseek_vit'), timm_class('DeepseekVitClassifier'), _timm_classifier, pretrained_cfg,
           load_timm, lambda path, state: True, resize_state=reference_state),
)
