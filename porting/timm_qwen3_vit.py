"""timm qwen3_vit (the vision towers of Qwen3-VL / Qwen3.5 / Qwen3.8): the name tables and config readers of the
encoder and the classifier (two rows of porting.sources)."""
from __future__ import annotations

import dataclasses
from typing import Any

from porting.engine import CONV, Rule, linear, norm, require
from porting.source import Source, load_timm, timm_class
from porting.timm_eva import BLOCK
from porting.timm_vit import activation, patch_fields, pretrained_cfg

ENCODER_RULES = (
    Rule('patch_embed.proj.weight', 'patch_embed/proj/kernel', CONV),
    Rule('patch_embed.proj.bias', 'patch_embed/proj/bias'),
    Rule('pos_embed', 'pos_embed'),
    *BLOCK,
    *norm('merger.norm', 'merger/norm'),
    *linear('merger.fc1', 'merger/fc1'),
    *linear('merger.fc2', 'merger/fc2'),
)


def classifier_rules(encoder_rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
    """A tower classifier's table: timm's classifier holds the encoder as `encoder.` (vitjax's as `encoder/`),
    then the head; its norm has no params."""
    return (*(dataclasses.replace(r, source=f'encoder.{r.source}', target=tuple(f'encoder/{t}' for t in r.targets))
              for r in encoder_rules), *linear('head', 'head'))


CLASSIFIER_RULES = classifier_rules(ENCODER_RULES)

TRUNK_KWARGS = ('img_size', 'patch_size', 'in_chans', 'out_features', 'embed_dim', 'depth', 'num_heads', 'mlp_ratio',
                'merge_size', 'pos_embed_grid_size', 'rope_temperature', 'norm_eps')
ENCODER_KWARGS = TRUNK_KWARGS + ('global_pool',)
CLASSIFIER_KWARGS = TRUNK_KWARGS + ('num_classes', 'global_pool', 'encoder_pool', 'final_norm')


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
    Source('timm', 'qwen3_vit_enc', ENCODER_RULES, timm_class('Qwen3VitEncoder'), _timm_encoder, pretrained_cfg,
           load_timm, lambda path, state: True, reference=encoder_reference, create_kwargs=ENCODER_KWARGS,
           resize_state=reference_state, timm_modules=('qwen3_vit',)),
    Source('timm', 'qwen3_vit', CLASSIFIER_RULES, timm_class('Qwen3VitClassifier'), _timm_classifier,
           pretrained_cfg, load_timm, lambda path, state: True, create_kwargs=CLASSIFIER_KWARGS,
           resize_state=reference_state),
)
