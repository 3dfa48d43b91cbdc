"""timm qwen3_vit (the vision towers of Qwen3-VL / Qwen3.5 / Qwen3.8), the torch side: the config readers of the
encoder and the classifier (two rows of porting.sources; the name tables are vitjax/weights/timm_qwen3_vit.py)."""
from __future__ import annotations

from typing import Any

from porting.source import Source, load_timm, timm_class
from porting.timm_vit import activation, patch_fields, pretrained_cfg
from vitjax import weights
from vitjax.weights.engine import require


def encoder_config(enc) -> dict[str, Any]:
    """Qwen3VitEncoder kwargs (vitjax's under timm's names) off a built timm Qwen3VitEncoder."""
    import torch.nn as tnn
    blocks = list(enc.blocks)
    require(all(type(b).__name__ == 'EvaBlock' and type(b.attn).__name__ == 'AttentionRope' for b in blocks),
            'a block other than EvaBlock with AttentionRope')
    b0 = blocks[0]
    require(all(b.gamma_1 is None and b.gamma_2 is None for b in blocks), 'LayerScale')
    require(all(b.attn.qkv is not None and b.attn.qkv.bias is not None for b in blocks), 'separate or biasless q/k/v')
    require(all(isinstance(b.attn.q_norm, tnn.Identity) and isinstance(b.attn.norm, tnn.Identity) for b in blocks),
            'q/k norms or an inner attention norm')
    require(all(type(b.mlp).__name__ == 'Mlp' and isinstance(b.mlp.norm, tnn.Identity) for b in blocks),
            'a gated or normed MLP')
    require(len({activation(b.mlp.act) for b in blocks}) == 1, 'mixed activations')
    rope = enc.rope
    require(type(rope).__name__ == 'RotaryEmbeddingCat' and not rope.in_pixels and rope.ref_feat_shape is None
            and rope.rotate_half and not getattr(rope, 'grid_offset', 0.), 'another RoPE layout')
    eps = {m.eps for m in enc.modules() if isinstance(m, tnn.LayerNorm)}
    require(len(eps) == 1, f'mixed LayerNorm eps {eps}')
    merger = enc.merger
    require(merger is None or isinstance(merger.act, tnn.GELU) and merger.act.approximate == 'none',
            'a projector activation other than exact GELU')
    return dict(
        **patch_fields(enc.patch_embed.img_size, enc.patch_embed.patch_size, enc.in_chans),
        num_classes=0,  # the encoder's: the classifier reads its own
        out_features=int(enc.out_features),
        global_pool=enc.global_pool,
        embed_dim=enc.embed_dim,
        depth=len(blocks),
        num_heads=b0.attn.num_heads,
        mlp_ratio=b0.mlp.fc1.out_features / enc.embed_dim,
        merge_size=enc.merge_size,
        pos_embed_grid_size=enc.pos_embed_grid_size,
        rope_temperature=float(rope.temperature),
        norm_eps=eps.pop(),
        act_layer=activation(b0.mlp.act),
    )


def classifier_config(model) -> dict[str, Any]:
    import torch.nn as tnn
    enc = model.encoder
    c = encoder_config(enc)
    require(isinstance(model.norm, tnn.Identity) or not model.norm.elementwise_affine, 'an affine head norm')
    return dict(c, num_classes=model.num_classes, global_pool=model.global_pool, encoder_pool=model.encoder_pool,
                final_norm=not isinstance(model.norm, tnn.Identity))


def _timm_encoder(model) -> dict[str, Any]:
    from timm.models.qwen3_vit import Qwen3VitEncoder
    require(type(model) is Qwen3VitEncoder, f'architecture {type(model).__name__}')
    return encoder_config(model)


def _timm_classifier(model) -> dict[str, Any]:
    from timm.models.qwen3_vit import Qwen3VitClassifier
    require(type(model) is Qwen3VitClassifier, f'architecture {type(model).__name__}')
    return classifier_config(model)


def encoder_reference(model, projector: str = 'merger'):
    """timm's tower encoder with the forward_head it refuses: its call's projector (`projector`, its pre-logits:
    fc1 and the GELU), mean or map, as vitjax's encoder's forward_head, for the parity check."""
    import torch.nn as tnn

    class Reference(tnn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward_features(self, x):
            return self.encoder.forward_features(x)

        def forward_head(self, x, pre_logits: bool = False):
            if getattr(self.encoder, projector) is not None:
                return getattr(self.encoder, projector)(x, pre_logits=pre_logits)
            return x.mean(dim=(1, 2)) if self.encoder.global_pool == 'avg' else x

        def forward(self, x):
            return self.encoder(x)

    return Reference(model).eval()


def reference_state(state: dict, src, dst, ref) -> dict:
    """timm's tower takes any size as it is and has no tables to resize: the state as it is."""
    return dict(state)


SOURCES = (
    Source(weights.get('timm', 'qwen3_vit_enc'), timm_class('Qwen3VitEncoder'), _timm_encoder, pretrained_cfg,
           load_timm, lambda path, state: True, reference=encoder_reference, resize_state=reference_state),
    Source(weights.get('timm', 'qwen3_vit'), timm_class('Qwen3VitClassifier'), _timm_classifier, pretrained_cfg,
           load_timm, lambda path, state: True, resize_state=reference_state),
)
