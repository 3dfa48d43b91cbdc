"""The parity proof for hub weights that vitjax loaded without torch: the same repo through timm's own
`create_model(pretrained=True)` and through `vitjax.load`, on one fixed input (f32, 'highest').

    python -m porting.verify vit_base_patch16_224.augreg2_in21k_ft_in1k      # or hf-hub:timm/<arch>.<tag>

Both read the one huggingface_hub cache (HF_HUB_OFFLINE, revisions and tokens as huggingface_hub reads them);
exit 0 when logits and pre-logit features agree within `--tolerance` x max(1, max|output|), 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys


def verify(name: str, revision=None, batch: int = 2, seed: int = 0, tolerance: float = 1e-4) -> dict:
    import torch  # noqa: F401  (before tensorflow, which jax's stack may pull in)
    import timm
    import jax

    import vitjax
    from porting import parity
    from vitjax import hub
    jax.config.update('jax_default_matmul_precision', 'highest')
    cfg = hub.read_hub_config(name, revision)
    model, variables = vitjax.load(name, revision=revision)
    repo = cfg['hub']['repo']
    # timm reads the repo's config.json (architecture, model_args, num_classes) itself
    ref = timm.create_model(f'hf-hub:{repo}' + (f'@{revision}' if revision else ''), pretrained=True)
    from porting.sources import source_of
    ref = source_of(ref, 'timm').reference(ref)  # what forward_head means for a tower without one (Qwen3)
    return parity.check(cfg['model_name'], ref, model, variables, batch=batch, seed=seed, tolerance=tolerance)


def main(argv=None) -> int:
    from porting import parity
    ap = argparse.ArgumentParser(prog='python -m porting.verify', description=__doc__.split('\n')[0])
    ap.add_argument('name', help='arch.tag or hf-hub:org/repo (optionally @revision)')
    ap.add_argument('--revision', default=None)
    ap.add_argument('--batch', type=parity.integer(1), default=2)
    ap.add_argument('--seed', type=parity.seed, default=0)
    ap.add_argument('--tolerance', type=parity.tolerance, default=1e-4)
    ap.add_argument('--json', action='store_true', help='print the report as JSON')
    args = ap.parse_args(argv)
    try:
        report = verify(args.name, args.revision, args.batch, args.seed, args.tolerance)
    except (ValueError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(parity.format_report(report))
    return 0 if report['passed'] else 1


if __name__ == '__main__':
    sys.exit(main())
