"""bf16 mixed precision next to f32 on the same weights and input: vitjax's `dtype=bfloat16` beside timm's
`torch.autocast('cpu', dtype=torch.bfloat16)`.

    python -m benchmarks.precision [--model vit_base_patch16_224] [--batch 8] [--seed 0]

The timm model is built with pretrained=False and perturbed (porting.random_init: N(0, 0.02) on every tensor,
norm scales drawn from [0.5, 1.5]), converted to vitjax, and both are run on one seeded N(0, 1) batch. Every
low-precision run is compared with its own library's f32 logits (the f32 vitjax run uses
jax_default_matmul_precision='highest', so no backend may lower its matmuls to bf16 passes):

    max relative error  = max |a - b| / max |b|     (the worst logit error, in units of the largest logit)
    mean relative error = mean |a - b| / mean |b|
    top-1 agreement     = fraction of images whose argmax is the same

Rows: vitjax bf16 (matmuls in bf16; residual stream, norms, softmax, position embedding and head in f32),
timm under autocast, and timm cast whole to bf16 (`model.bfloat16()`: params and every activation bf16), for
contrast with the all-bf16 end. Prints a markdown table and writes benchmarks/results/precision-<date>.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from pathlib import Path

import timm  # noqa: F401  (torch and timm before anything that may import tensorflow: the reverse segfaults)
import torch

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def errors(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """`a` (low precision) against the reference `b`, as defined in the module docstring."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = np.abs(a - b)
    return {'max_rel': float(d.max() / np.abs(b).max()), 'mean_rel': float(d.mean() / np.abs(b).mean()),
            'top1_agree': float(np.mean(a.argmax(-1) == b.argmax(-1)))}


def timm_logits(model, x_nhwc: np.ndarray, mode: str) -> np.ndarray:
    """mode: 'f32', 'autocast' (torch.autocast bf16 on the CPU) or 'bf16' (a bf16 copy of the whole model)."""
    x = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())
    with torch.no_grad():
        if mode == 'f32':
            return model(x).numpy()
        if mode == 'autocast':
            with torch.autocast('cpu', dtype=torch.bfloat16):
                return model(x).float().numpy()
        import copy
        return copy.deepcopy(model).bfloat16()(x.bfloat16()).float().numpy()


def vitjax_logits(model, variables, x: np.ndarray, dtype) -> np.ndarray:
    import jax
    return np.asarray(jax.jit(model.clone(dtype=dtype).apply)(variables, x), np.float32)


def compare(timm_model, x: np.ndarray, all_bf16: bool = True) -> dict[str, dict]:
    """{run: errors against its library's f32 logits} for one timm model and its vitjax conversion."""
    import jax
    import jax.numpy as jnp
    from porting.sources import source_of
    jax.config.update('jax_default_matmul_precision', 'highest')  # the f32 reference is true f32 everywhere
    source = source_of(timm_model, 'timm')
    cfg = source.torch_config(timm_model)
    model, variables = source.module(cfg), {'params': source.from_state(timm_model.state_dict(), cfg)}
    ours32 = vitjax_logits(model, variables, x, jnp.float32)
    ref = timm_logits(timm_model, x, 'f32')
    runs = {'vitjax_bf16': errors(vitjax_logits(model, variables, x, jnp.bfloat16), ours32),
            'timm_autocast_bf16': errors(timm_logits(timm_model, x, 'autocast'), ref)}
    if all_bf16:
        runs['timm_all_bf16'] = errors(timm_logits(timm_model, x, 'bf16'), ref)
    runs['vitjax_f32_vs_timm_f32'] = errors(ours32, ref)
    return runs


DESCRIPTIONS = {
    'vitjax_bf16': 'vitjax dtype=bfloat16 vs vitjax f32',
    'timm_autocast_bf16': "timm torch.autocast('cpu', bf16) vs timm f32",
    'timm_all_bf16': 'timm model.bfloat16() (everything bf16) vs timm f32',
    'vitjax_f32_vs_timm_f32': 'vitjax f32 vs timm f32 (the parity floor)',
}


def markdown(result: dict) -> str:
    lines = [f"{result['model']}, batch {result['batch']} (seed {result['seed']}), {result['device']}", '',
             '| run | max rel. error | mean rel. error | top-1 agreement |', '|---|---|---|---|']
    for k, r in result['runs'].items():
        lines.append(f"| {DESCRIPTIONS[k]} | {r['max_rel']:.2e} | {r['mean_rel']:.2e} | {r['top1_agree']:.2f} |")
    return '\n'.join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='python -m benchmarks.precision', description=__doc__.split('\n')[0])
    ap.add_argument('--model', default='vit_base_patch16_224', help='timm model name')
    ap.add_argument('--batch', type=int, default=8)
    ap.add_argument('--seed', type=int, default=0, help='weights and input')
    ap.add_argument('--out-dir', default=str(ROOT / 'benchmarks' / 'results'))
    args = ap.parse_args(argv)
    import jax
    from porting.random_init import create
    from benchmarks.harness import device_name
    tm = create(args.model, seed=args.seed)
    h, w = tm.default_cfg['input_size'][1:]
    x = np.random.default_rng(args.seed).standard_normal((args.batch, h, w, 3)).astype(np.float32)
    result = {'model': args.model, 'batch': args.batch, 'seed': args.seed, 'input': f'N(0, 1), {h}x{w}',
              'weights': 'timm pretrained=False + porting.random_init perturbation',
              'date': datetime.date.today().isoformat(), 'device': device_name(), 'python': platform.python_version(),
              'jax': jax.__version__, 'torch': torch.__version__, 'timm': timm.__version__,
              'reference': "f32 logits of the same library; vitjax's with jax_default_matmul_precision='highest'",
              'definitions': {'max_rel': 'max|a-b| / max|b|', 'mean_rel': 'mean|a-b| / mean|b|',
                              'top1_agree': 'fraction of images with argmax a == argmax b'},
              'runs': compare(tm, x)}
    print(markdown(result))
    out = Path(args.out_dir) / f"precision-{result['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + '\n')
    print(f'\nwrote {out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
