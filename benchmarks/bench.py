"""Side-by-side benchmarks on this machine: vitjax against timm, interleaved A/B (each side in its own process).

    python -m benchmarks.bench            # quick (make bench): every kind of row (input_scale alone ~7 min here)
    python -m benchmarks.bench --full     # make bench-full: larger batches, torch.compile for every model

Writes benchmarks/results/<host>-<date>.json and regenerates BENCHMARKS.md from it. Timings are medians over
repeats after warm-up; compilation is timed separately. Only ratios from the same run are compared.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from benchmarks.harness import (FIELDS, ROOT, Contender, device_name, flops_of, gemm_peak, interleaved, model_label,
                                record)
from benchmarks.system import bench_conversion, bench_fsdp, bench_input, bench_pmap, bench_scan

# model: (inference batch, train batch, also against torch.compile). ViT-S at batch 32 is the target case.
QUICK = {'vit_tiny_patch16_224': (32, 16, False), 'vit_small_patch16_224': (32, 32, True),
         'vit_base_patch16_224': (8, 4, False)}
FULL = {'vit_tiny_patch16_224': (64, 32, True), 'vit_small_patch16_224': (32, 32, True),
        'vit_base_patch16_224': (16, 8, True)}
CONVERT = ['vit_base_patch16_224', 'vit_large_patch16_224']
SECTIONS = ('models', 'input', 'convert', 'hub', 'pmap', 'scan', 'fsdp', 'input_scale')
__all__ = ['FIELDS', 'main', 'run']


def _accelerator() -> bool:
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')  # see run()
    import jax
    return jax.devices()[0].platform != 'cpu'


def _vitjax_side(name: str, infer_batch: int, train_batch: int, model_kwargs: Optional[dict] = None
                 ) -> tuple[dict, dict]:
    """vitjax's inference and train.py's own pmapped, donated train step; no torch in this process."""
    import jax
    import numpy as np

    import vitjax
    from vitjax.train import optim, parallel, train_step
    from vitjax.train.config import default_config
    jax.config.update('jax_default_matmul_precision', 'highest')
    model, variables = vitjax.create_model(name, num_classes=1000, **(model_kwargs or {}))
    params = variables['params']
    s = (model_kwargs or {}).get('img_size', 224)
    x = np.random.default_rng(0).standard_normal((infer_batch, s, s, 3)).astype(np.float32)
    fwd = jax.jit(lambda v, x: model.apply(v, x))
    t0 = time.perf_counter()
    fwd(variables, x).block_until_ready()
    info = {'compile_s': time.perf_counter() - t0,
            'flops': flops_of(lambda v, x: model.apply(v, x), variables, x[:1])}

    c = default_config()
    c.warmup_steps, c.lr = 1, 1e-4
    tx = optim.create_optimizer(c, params, 10 ** 6)
    par = parallel.create('pmap')  # train.py's default
    holder = {'state': par.create_state(
        lambda p: train_step.create_train_state(model, {'params': p}, tx, jax.random.PRNGKey(1)), params)}
    p_train, _ = par.compile(*train_step.step_functions(model, tx, optim.create_schedule(c, 10 ** 6), 1000),
                             holder['state'])
    xb = np.random.default_rng(1).standard_normal((train_batch, s, s, 3)).astype(np.float32)
    yb = np.random.default_rng(2).integers(0, 1000, train_batch).astype(np.int32)
    batch = par.put_batch({'image': xb, 'label': yb})

    def train():
        holder['state'], m = p_train(holder['state'], batch)
        jax.block_until_ready(m['loss'])
    t0 = time.perf_counter()
    train()
    info['train_compile_s'] = time.perf_counter() - t0

    def step_fn(p, x, y):
        def loss(p):
            return optim.cross_entropy(model.apply({'params': p}, x, train=True), y, 1000).mean()
        return tx.update(jax.grad(loss)(p), tx.init(p), p)
    info['train_flops'] = flops_of(step_fn, params, xb[:1], yb[:1])
    info['device'] = device_name()
    return {'infer': lambda: fwd(variables, x).block_until_ready(), 'train': train}, info


def _timm_side(name: str, infer_batch: int, train_batch: int, compile_torch: bool,
               model_kwargs: Optional[dict] = None) -> tuple[dict, dict]:
    """timm eager (and torch.compile where it works) inference; timm + AdamW + clip_grad_norm_ train step."""
    import numpy as np
    import timm
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    kw = model_kwargs or {}
    s = kw.get('img_size', 224)
    tm = timm.create_model(name, pretrained=False, num_classes=1000, **kw).eval()
    x = np.random.default_rng(0).standard_normal((infer_batch, 3, s, s)).astype(np.float32)
    xt = torch.from_numpy(x)

    def eager():
        with torch.no_grad():
            tm(xt)
    rng = np.random.default_rng(1)
    xtb = torch.from_numpy(rng.standard_normal((train_batch, 3, s, s)).astype(np.float32))
    ytb = torch.from_numpy(np.random.default_rng(2).integers(0, 1000, train_batch))

    def train_fn(compiled: bool):
        """timm's train loop: AdamW + clip_grad_norm_; with --torchcompile timm compiles the model only."""
        tt = timm.create_model(name, pretrained=False, num_classes=1000, **kw).train()
        opt = torch.optim.AdamW(tt.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)
        fwd = torch.compile(tt) if compiled else tt

        def train():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(fwd(xtb), ytb)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(tt.parameters(), 1.0)
            opt.step()
        return train

    def timed_first_call(f):
        t0 = time.perf_counter()
        f()
        return round(time.perf_counter() - t0, 1)

    calls = {'infer:timm_eager': eager, 'train:timm_eager': train_fn(False)}
    info = {'compile_s': {}}
    if compile_torch:
        try:
            ctm = torch.compile(tm)

            def compiled():
                with torch.no_grad():
                    ctm(xt)
            info['compile_s']['infer:timm_compile'] = timed_first_call(compiled)
            calls['infer:timm_compile'] = compiled
            calls['train:timm_compile'] = train_fn(True)
            info['compile_s']['train:timm_compile'] = timed_first_call(calls['train:timm_compile'])
        except Exception as e:  # torch.compile needs a C++ toolchain; report, do not fail
            print(f'  torch.compile unavailable: {type(e).__name__}: {e}'.splitlines()[0], flush=True)
            calls = {k: v for k, v in calls.items() if 'compile' not in k}
    info['baselines'] = list(calls)
    return calls, info


def bench_model(name: str, infer_batch: int, train_batch: int, repeats: int, peak: float, compile_torch: bool,
                model_kwargs: Optional[dict] = None) -> list[dict]:
    jx = Contender(_vitjax_side, name, infer_batch, train_batch, model_kwargs)
    tm = Contender(_timm_side, name, infer_batch, train_batch, compile_torch, model_kwargs)
    timed = {}
    try:
        for kind in ('infer', 'train'):
            fns = {'vitjax': lambda k=kind: jx(k), **{b.split(':')[1]: (lambda b=b: tm(b))
                                                       for b in tm.info['baselines'] if b.startswith(kind)}}
            timed[kind] = interleaved(fns, repeats)
    finally:
        jx.close()
        tm.close()
    dev, out = jx.info['device'], []
    for kind, name_, batch, flops, compile_s in (
            ('infer', 'inference', infer_batch, jx.info['flops'], jx.info['compile_s']),
            ('train', 'train_step', train_batch, jx.info['train_flops'], jx.info['train_compile_s'])):
        t = timed[kind]
        for base in [k for k in t if k != 'vitjax']:
            out.append(record(name=name_, model=model_label(name, model_kwargs), batch=batch, dtype='float32',
                              device=dev,
                              vitjax_img_s=round(batch / t['vitjax'], 2), baseline=base,
                              baseline_img_s=round(batch / t[base], 2), flops_per_img=flops, peak_gflops=peak,
                              compile_s=round(compile_s, 1),
                              baseline_compile_s=tm.info['compile_s'].get(f'{kind}:{base}'),
                              path=None if kind == 'infer' else
                              'train.py pmap step, donated; each side in its own process',
                              **({'model_kwargs': model_kwargs} if model_kwargs else {})))
    return out


def run(full: bool, models: Optional[list[str]], repeats: int, out_dir: Path, sections: set[str],
        batch: Optional[int] = None, model_kwargs: Optional[dict] = None) -> dict:
    import torch  # noqa: F401  (torch before tensorflow: the other order crashes torchvision)
    # Each side runs in a process of its own next to this one: no process may take 75% of a GPU up front.
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
    import jax
    jax.config.update('jax_default_matmul_precision', 'highest')
    sizes = FULL if full else QUICK
    models = models or list(sizes)
    peak, best = gemm_peak()
    print(f'GEMM peak: {peak:.1f} GFLOP/s median, {best:.1f} best (f32, XLA, {device_name()})', flush=True)
    records = []
    if 'models' in sections:
        for m in models:
            ib, tb, compile_torch = sizes.get(m, (8, 4, full))
            ib, tb = (batch, batch) if batch else (ib, tb)
            print(f'{m}: inference batch {ib}, train batch {tb}', flush=True)
            new = bench_model(m, ib, tb, repeats, peak, compile_torch, model_kwargs)
            records += new
            for r in new:
                print(f"  {r['name']}: vitjax {r['vitjax_img_s']} img/s, {r['baseline']} {r['baseline_img_s']} img/s, "
                      f"ratio {r['ratio']}, MFU {r['mfu']}", flush=True)
    if 'input' in sections:
        step = next((r['vitjax_img_s'] for r in records if r['name'] == 'train_step' and 'small' in r['model']
                     and r['baseline'] == 'timm_eager'), None)
        records += bench_input(step, repeats)
    if 'convert' in sections:
        records += bench_conversion(CONVERT)
    if 'hub' in sections:
        from benchmarks.hub_load import bench_hub_load
        records += bench_hub_load(repeats)
    if 'pmap' in sections:
        records += bench_pmap(repeats)
    if 'scan' in sections:
        records += bench_scan('vit_large_patch16_224' if full else 'vit_base_patch16_224', 2 if full else 4, repeats)
    if 'fsdp' in sections:
        records += bench_fsdp('vit_large_patch16_224', 4, repeats)
    if 'accel' in sections:
        from benchmarks.accel import bench_accel
        records += bench_accel(batch=batch, repeats=repeats)
    if 'input_scale' in sections:
        from benchmarks.input_scale import bench_input_scale
        records += bench_input_scale(Path(os.environ.get('VITJAX_BENCH_DATA', ROOT / '.bench-data')))
    result = {'host': socket.gethostname(), 'date': datetime.datetime.now().isoformat(timespec='seconds'),
              'mode': 'full' if full else 'quick', 'platform': platform.platform(), 'python': sys.version.split()[0],
              'jax': jax.__version__, 'torch': torch.__version__, 'peak_gflops': round(peak, 2),
              'peak_gflops_best': round(best, 2),
              'host_malloc': os.environ.get('GLIBC_TUNABLES') or 'glibc defaults',
              'gpu': 'none: this machine has no GPU' if jax.devices()[0].platform == 'cpu' else device_name(),
              'records': records}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result['host']}-{result['date'][:10]}.json"
    path.write_text(json.dumps(result, indent=2) + '\n')
    print(f'wrote {path}')
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='python -m benchmarks.bench', description=__doc__.split('\n')[0])
    ap.add_argument('--full', action='store_true')
    ap.add_argument('--models', nargs='*')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--batch', type=int, help='one batch size for inference and training (default: per model)')
    ap.add_argument('--model-kwargs', type=json.loads, help='architecture overrides for both sides of the models '
                    'section, as JSON (e.g. \'{"depth": 1}\'); the rows name them')
    ap.add_argument('--sections', help="comma-separated, of: models,input,convert,hub,pmap,scan,fsdp,input_scale,accel "
                    "(default: all; accel only where jax sees a GPU or TPU)")
    ap.add_argument('--out-dir', default=str(ROOT / 'benchmarks' / 'results'))
    ap.add_argument('--markdown', default=str(ROOT / 'BENCHMARKS.md'), help="'' to skip")
    args = ap.parse_args(argv)
    # the command line, not a test: both sides get train.py's malloc settings (vitjax/train/hostmem.py)
    if argv is None:
        from vitjax.train.hostmem import reexec_with_tuned_malloc
        reexec_with_tuned_malloc()
    sections = args.sections or ','.join(SECTIONS + (('accel',) if _accelerator() else ()))
    result = run(args.full, args.models, args.repeats, Path(args.out_dir), set(sections.split(',')),
                 args.batch, args.model_kwargs)
    if args.markdown:
        from benchmarks.report import write_markdown
        write_markdown(result, Path(args.markdown))
        print(f'wrote {args.markdown}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
