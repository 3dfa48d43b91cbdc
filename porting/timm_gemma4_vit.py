"""timm gemma4_vit (the vision tower of Gemma 4), the torch side: the config readers of the encoder and the
classifier (two rows of porting.sources; the name tables are vitjax/weights/timm_gemma4_vit.py)."""
from __future__ import annotations

from typing import Any

from porting.source import Source, load_timm, timm_class
from porting.timm_qwen3_vit import reference_state
from porting.timm_vit import activation, patch_fields, pretrained_cfg
from vitjax import weights
from vitjax.weights.engine import require


def _pool(p: str) -> str:
    return '' if p == 'none' else p  # timm's two names of "no pool"


def encoder_config(enc, pretrained: dict) -> dict[str, Any]:
    """Gemma4VitEncoder kwargs (vitjax's under timm's names) off a built timm Gemma4VitEncoder. timm's encoder
    takes any input and keeps no img_size: the nominal one is the weights' input size in whole patches
    (`pretrained`: the pretrained_cfg; --img-size changes it)."""
    from timm.layers import RmsNorm
    blocks = list(enc.blocks)
    require(all(type(b).__name__ == 'Gemma4Block' and type(b.attn).__name__ == 'Gemma4Attention'
                and type(b.mlp).__name__ == 'Gemma4GatedMlp' for b in blocks),
            'a block other than Gemma4Block with Gemma4Attention and Gemma4GatedMlp')
    a0, m0 = blocks[0].attn, blocks[0].mlp
    require(all(activation(b.mlp.act) == 'gelu_tanh' for b in blocks), 'an MLP activation other than GELU-tanh')
    clipped = {p.use_clipped for b in blocks for p in (b.attn.q_proj, b.attn.k_proj, b.attn.v_proj, b.attn.o_proj,
                                                        b.mlp.gate_proj, b.mlp.up_proj, b.mlp.down_proj)}
    require(len(clipped) == 1, 'clamped and unclamped projections mixed (set_clamp_enabled on part of the model)')
    norms = [m for m in enc.modules() if isinstance(m, RmsNorm)]
    eps = {m.eps for m in norms}
    require(len(eps) == 1, f'mixed RMSNorm eps {eps}')
    require(all((m.weight is None) == (name.endswith('v_norm')) for name, m in enc.named_modules()
                if isinstance(m, RmsNorm)), 'an RMSNorm with or without a scale where Gemma 4 has the other')
    require(a0.num_heads * a0.head_dim == a0.q_proj.linear.out_features, 'q_proj width != num_heads x head_dim')
    return dict(
        **patch_fields(_nominal_size(pretrained, enc.patch_size, enc.patch_embed.position_embedding_size),
                       enc.patch_size, enc.in_chans),
        num_classes=0,  # the encoder's: the classifier reads its own
        global_pool=_pool(enc.global_pool),
        embed_dim=enc.embed_dim,
        depth=len(blocks),
        num_heads=a0.num_heads,
        head_dim=a0.head_dim,
        num_kv_heads=None if a0.num_kv_heads == a0.num_heads else a0.num_kv_heads,
        intermediate_size=m0.gate_proj.linear.out_features,
        norm_eps=eps.pop(),
        rope_theta=float(enc.rotary_emb.rope_theta),
        position_embedding_size=enc.patch_embed.position_embedding_size,
        pooling_kernel_size=enc.pooling_kernel_size,
        standardize=enc.std_bias is not None,
        use_clipped_linears=clipped.pop(),
    )


def _nominal_size(pretrained: dict, patch, rows: int) -> tuple[int, int]:
    """The weights' input size (timm's default 768 without one), down to whole patches and to the `rows` of the
    position table."""
    size = (pretrained or {}).get('input_size', (3, 768, 768))[1:]
    return tuple(min(max(p, s - s % p), rows * p) for s, p in zip(size, patch))


def classifier_config(model) -> dict[str, Any]:
    import torch.nn as tnn
    c = encoder_config(model.encoder, model.pretrained_cfg)
    require(isinstance(model.norm, tnn.Identity) or model.norm.weight is None, 'an affine head norm')
    return dict(c, num_classes=model.num_classes, global_pool=_pool(model.global_pool),
                encoder_pool=_pool(model.encoder_pool), final_norm=not isinstance(model.norm, tnn.Identity))


def encoder_reference(model):
    """timm's encoder as vitjax's: forward_features the (B, H, W, D) map of its (B, N, D) tokens, forward_head the
    call's pool of that map (timm's refuses one), for the parity check."""
    import torch
    import torch.nn as tnn

    class Reference(tnn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward_features(self, x):
            (ph, pw), (h, w) = self.encoder.patch_size, x.shape[-2:]
            t = self.encoder.forward_features(x)
            return t.reshape(t.shape[0], h // ph, w // pw, t.shape[-1])

        def forward_head(self, x, pre_logits: bool = False):
            enc = self.encoder
            b, gh, gw, d = x.shape
            if enc.global_pool == 'soft':
                rows, cols = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing='ij')
                pos = torch.stack([cols.flatten(), rows.flatten()], -1)[None].expand(b, -1, -1)  # (x, y)
                y, _ = enc.pooler(x.reshape(b, -1, d), pos, None)
                return y if pre_logits or enc.std_bias is None else (y - enc.std_bias) * enc.std_scale
            return x.mean(dim=(1, 2)) if enc.global_pool == 'avg' else x

        def forward(self, x):
            return self.encoder(x)

    return Reference(model).eval()


def _timm_encoder(model) -> dict[str, Any]:
    from timm.models.gemma4_vit import Gemma4VitEncoder
    require(type(model) is Gemma4VitEncoder, f'architecture {type(model).__name__}')
    return encoder_config(model, model.pretrained_cfg)


def _timm_classifier(model) -> dict[str, Any]:
    from timm.models.gemma4_vit import Gemma4VitClassifier
    require(type(model) is Gemma4VitClassifier, f'architecture {type(model).__name__}')
    return classifier_config(model)


SOURCES = (
    Source(weights.get('timm', 'gemma4_vit_enc'), timm_class('Gemma4VitEncoder'), _timm_encoder, pretrained_cfg,
           load_timm, lambda path, state: True, reference=encoder_reference, resize_state=reference_state),
    Source(weights.get('timm', 'gemma4_vit'), timm_class('Gemma4VitClassifier'), _timm_classifier, pretrained_cfg,
           load_timm, lambda path, state: True, resize_state=reference_state),
)
