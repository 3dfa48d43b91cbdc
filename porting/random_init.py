"""Build a timm model with random, perturbed weights and save it as safetensors.

Offline stand-in for hub weights (tests, `make convert`). Every tensor gets N(0, 0.02) added and norm /
LayerScale scales are drawn far from 1, so a wrong mapping (a transposed kernel, a swapped norm, a missed
LayerScale) cannot pass parity by accident.

    python -m porting.random_init --model deit_tiny_patch16_224 --out deit_tiny.safetensors

An existing --out is replaced only if random_init wrote it (a mark in the safetensors metadata).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

MARK = {'written_by': 'vitjax random_init'}  # in the safetensors metadata: a file we may replace


def ours(path) -> bool:
    from porting import export
    return export.ours(path, MARK)


def perturb_(model, seed: int = 0) -> None:
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(('gamma', 'gamma_1', 'gamma_2')) or ('norm' in name and name.endswith('weight')):
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5, generator=g))
            else:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        # Buffers that are weights (Gemma 4's clamp bounds, its soft-token standardization): timm inits them to
        # no-ops (+-inf, 0 and 1), which a table that drops them would pass. Bounds of 0.5 .. 2 cut normed inputs.
        for name, b in model.named_buffers():
            if name.endswith(('_min', '_max')) and b.ndim == 0 and b.is_floating_point():
                b.fill_(float(torch.empty(()).uniform_(0.5, 2., generator=g)) * (-1 if name.endswith('_min') else 1))
            elif name.endswith('std_bias'):
                b.copy_(torch.randn(b.shape, generator=g) * 0.5)
            elif name.endswith('std_scale'):
                b.copy_(torch.empty_like(b).uniform_(0.5, 1.5, generator=g))
        # Gemma 4 attends at scale 1 on RMS-normed q and k: with scales near 1 the logits reach head_dim, a softmax
        # so sharp that float32 rounding grows 1.5x a block (in timm itself against float64 too). These get the
        # logits of a 1/sqrt(head_dim) attention, their spread kept.
        for m in model.modules():
            if type(m).__name__ == 'Gemma4Attention':
                m.q_norm.weight.mul_(m.head_dim ** -0.25)
                m.k_norm.weight.mul_(m.head_dim ** -0.25)


def create(name: str, seed: int = 0, **kwargs):
    import timm
    import torch
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, **kwargs)
    perturb_(model, seed)
    return model.eval()


def save(model, path) -> Path:
    """Atomically; refuses (ValueError) a `path` that is not new or a file random_init wrote."""
    from safetensors.torch import save_file
    from vitjax.io import write_file
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    return write_file(path, lambda tmp: save_file(state, tmp, metadata={'format': 'pt', **MARK}), ours)


def main(argv=None) -> int:
    from porting import parity
    ap = argparse.ArgumentParser(prog='python -m porting.random_init', description=__doc__.split('\n')[0])
    ap.add_argument('--model', required=True, help='timm model name')
    ap.add_argument('--out', required=True, help='output .safetensors file')
    ap.add_argument('--seed', type=parity.seed, default=0)
    args = ap.parse_args(argv)
    if not args.out.endswith('.safetensors'):
        ap.error('--out must end in .safetensors')
    from vitjax.io import check_output_file
    try:
        check_output_file(args.out, ours)  # before building the model: a user's file is never replaced
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    try:
        model = create(args.model, args.seed)
    except RuntimeError as e:  # timm's unknown-model error
        print(f'error: {e}', file=sys.stderr)
        return 2
    try:
        save(model, args.out)
    except (ValueError, OSError) as e:  # the disk filled up, or --out changed while we built the model
        print(f'error: {e}; nothing written to {args.out}', file=sys.stderr)
        return 1
    print(f'wrote {args.out} ({sum(p.numel() for p in model.parameters()):,} params)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
