"""Side-by-side benchmarks on this machine: vitjax against timm, interleaved A/B (each side in its own process).

    python -m benchmarks.bench            # quick (make bench): every kind of row, < 10 min on 2 CPU cores
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
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ('name', 'model', 'batch', 'dtype', 'device', 'vitjax_img_s', 'baseline', 'baseline_img_s', 'ratio',
          'flops_per_img', 'achieved_gflops', 'peak_gflops', 'mfu')
# model: (inference batch, train batch, also against torch.compile). ViT-S at batch 32 is the target case.
QUICK = {'vit_tiny_patch16_224': (32, 16, False), 'vit_small_patch16_224': (32, 32, True),
         'vit_base_patch16_224': (8, 4, False)}
FULL = {'vit_tiny_patch16_224': (64, 32, True), 'vit_small_patch16_224': (32, 32, True),
        'vit_base_patch16_224': (16, 8, True)}
CONVERT = ['vit_base_patch16_224', 'vit_large_patch16_224']


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, settle: int = 1
                ) -> dict[str, float]:
    """Median seconds per call, contenders taking turns (A/B/A/B...) so that machine noise hits all alike.

    Each turn starts with `settle` untimed calls: on these machines the first XLA step after the other
    framework has run costs 1-2 s more (ViT-S train step: 4.8 s, then 2.9, 2.8 s; timm: 1.9-2.1 s throughout),
    a cost of alternating that neither side pays in a real training loop.
    """
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            for _ in range(settle):
                f()
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def record(**kw) -> dict[str, Any]:
    r = {k: kw.pop(k, None) for k in FIELDS}
    if r['vitjax_img_s'] and r['baseline_img_s']:
        r['ratio'] = round(r['vitjax_img_s'] / r['baseline_img_s'], 3)
    if r['flops_per_img'] and r['vitjax_img_s']:
        r['achieved_gflops'] = round(r['flops_per_img'] * r['vitjax_img_s'] / 1e9, 2)
        if r['peak_gflops']:
            r['mfu'] = round(r['achieved_gflops'] / r['peak_gflops'], 3)
    return {**r, **kw}


def device_name() -> str:
    import jax
    d = jax.devices()[0]
    return f'{d.platform}:{getattr(d, "device_kind", "")}'.rstrip(':') + (
        f' ({os.cpu_count()} cores)' if d.platform == 'cpu' else '')


def gemm_peak(n: int = 2048, repeats: int = 15) -> tuple[float, float]:
    """(median, best) GFLOP/s of an f32 n×n matmul under XLA on the default device. The median is the MFU
    roofline: the model timings are medians under the same noise; the best shows how far the noise reaches."""
    import jax
    import jax.numpy as jnp
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9, 2 * n ** 3 / min(times) / 1e9


def flops_of(fn, *args) -> float:
    cost = jax_cost(fn, *args)
    return float(cost.get('flops', 0.0))


def jax_cost(fn, *args) -> dict:
    import jax
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return cost[0] if isinstance(cost, (list, tuple)) else (cost or {})


class Contender:
    """One side of an A/B pair in its own process, driven one call at a time over a pipe.

    Separate processes keep the two frameworks' allocators and thread pools apart, while the parent still
    interleaves the calls so that machine noise hits both alike.
    """

    def __init__(self, setup: Callable, *args):
        import multiprocessing
        ctx = multiprocessing.get_context('spawn')
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, setup, args), daemon=True)
        self.proc.start()
        self.info = self._reply()

    def _reply(self):
        r = self.conn.recv()
        if isinstance(r, str) and r.startswith('error:'):
            raise RuntimeError(f'benchmark worker failed:\n{r[6:]}')
        return r

    def __call__(self, what: str) -> None:
        self.conn.send(what)
        self._reply()

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(timeout=60)


def _serve(conn, setup: Callable, args) -> None:
    import traceback
    try:
        calls, info = setup(*args)
        conn.send(info)
        while (what := conn.recv()) is not None:
            calls[what]()
            conn.send(True)
    except Exception:
        conn.send('error:' + traceback.format_exc())


def _vitjax_side(name: str, infer_batch: int, train_batch: int) -> tuple[dict, dict]:
    """vitjax's inference and train.py's own pmapped, donated train step; no torch in this process."""
    import jax
    import numpy as np

    import vitjax
    from vitjax import optim, train_step
    from vitjax.config import default_config
    jax.config.update('jax_default_matmul_precision', 'highest')
    model, variables = vitjax.create_model(name, num_classes=1000)
    params = variables['params']
    x = np.random.default_rng(0).standard_normal((infer_batch, 224, 224, 3)).astype(np.float32)
    fwd = jax.jit(lambda v, x: model.apply(v, x))
    t0 = time.perf_counter()
    fwd(variables, x).block_until_ready()
    info = {'compile_s': time.perf_counter() - t0,
            'flops': flops_of(lambda v, x: model.apply(v, x), variables, x[:1])}

    c = default_config()
    c.warmup_steps, c.lr = 1, 1e-4
    tx = optim.create_optimizer(c, params, 10 ** 6)
    p_train, _ = train_step.make_pmapped_steps(model, c, 1000, tx, 10 ** 6, params)
    xb = np.random.default_rng(1).standard_normal((train_batch, 224, 224, 3)).astype(np.float32)
    yb = np.random.default_rng(2).integers(0, 1000, train_batch).astype(np.int32)
    batch = train_step.shard({'image': xb, 'label': yb})
    holder = {'state': train_step.replicate(train_step.create_train_state(model, variables, tx,
                                                                          jax.random.PRNGKey(1)))}

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


def _timm_side(name: str, infer_batch: int, train_batch: int, compile_torch: bool) -> tuple[dict, dict]:
    """timm eager (and torch.compile where it works) inference; timm + AdamW + clip_grad_norm_ train step."""
    import numpy as np
    import timm
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    tm = timm.create_model(name, pretrained=False, num_classes=1000).eval()
    x = np.random.default_rng(0).standard_normal((infer_batch, 3, 224, 224)).astype(np.float32)
    xt = torch.from_numpy(x)

    def eager():
        with torch.no_grad():
            tm(xt)
    rng = np.random.default_rng(1)
    xtb = torch.from_numpy(rng.standard_normal((train_batch, 3, 224, 224)).astype(np.float32))
    ytb = torch.from_numpy(np.random.default_rng(2).integers(0, 1000, train_batch))

    def train_fn(compiled: bool):
        """timm's train loop: AdamW + clip_grad_norm_; with --torchcompile timm compiles the model only."""
        tt = timm.create_model(name, pretrained=False, num_classes=1000).train()
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


def bench_model(name: str, infer_batch: int, train_batch: int, repeats: int, peak: float, compile_torch: bool
                ) -> list[dict]:
    jx = Contender(_vitjax_side, name, infer_batch, train_batch)
    tm = Contender(_timm_side, name, infer_batch, train_batch, compile_torch)
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
            out.append(record(name=name_, model=name, batch=batch, dtype='float32', device=dev,
                              vitjax_img_s=round(batch / t['vitjax'], 2), baseline=base,
                              baseline_img_s=round(batch / t[base], 2), flops_per_img=flops, peak_gflops=peak,
                              compile_s=round(compile_s, 1),
                              baseline_compile_s=tm.info['compile_s'].get(f'{kind}:{base}'),
                              path=None if kind == 'infer' else
                              'train.py pmap step, donated; each side in its own process'))
    return out


def bench_input(steps_img_s: Optional[float], repeats: int) -> list[dict]:
    """tf.data img/s for the digits default and a mock 224² dataset, next to the train step's img/s."""
    import tensorflow_datasets as tfds

    from vitjax import data
    out = []
    norm = dict(mean=(0.5,) * 3, std=(0.5,) * 3)
    with tempfile.TemporaryDirectory() as tmp:
        cases = [('input_digits', 'vitjax_digits', 16, 128, None),
                 ('input_mock_224', 'cifar10', 224, 64, tfds.testing.mock_data(num_examples=512))]
        for name, ds_name, size, batch, ctx in cases:
            if ctx is not None:
                ctx.__enter__()
            try:
                it = data.create_train_dataset(ds_name, 'train', global_batch_size=batch, image_size=size,
                                               data_dir=tmp, **norm)
                next(it)
                n = 3 * repeats
                t0 = time.perf_counter()
                for _ in range(n):
                    next(it)
                img_s = n * batch / (time.perf_counter() - t0)
            finally:
                if ctx is not None:
                    ctx.__exit__(None, None, None)
            out.append(record(name=name, model='-', batch=batch, dtype='float32', device='host', vitjax_img_s=round(
                img_s, 1), baseline='train_step vit_small' if steps_img_s else None, baseline_img_s=steps_img_s,
                image_size=size))
    return out


def bench_conversion(names: list[str]) -> list[dict]:
    """Wall time and peak RSS of `porting.convert` (conversion + parity check) in a fresh process."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            ckpt = Path(tmp) / f'{name}.safetensors'
            subprocess.run([sys.executable, '-m', 'porting.random_init', '--model', name, '--out', str(ckpt)],
                           check=True, capture_output=True, cwd=ROOT)
            code = ('import resource, subprocess, sys, time; t = time.perf_counter(); '
                    f'p = subprocess.run([sys.executable, "-m", "porting.convert", "--model", "{name}", "--checkpoint", '
                    f'"{ckpt}", "--out", "{tmp}/{name}"], capture_output=True); '
                    'print(p.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)')
            env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}  # conversion runs as users run it
            rc, wall, rss_kb = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                                              cwd=ROOT, check=True, env=env).stdout.split()
            weights = ckpt.stat().st_size
            out.append(record(name='convert_verify', model=name, batch=2, dtype='float32', device=device_name(),
                              wall_s=round(float(wall), 1), peak_rss_mb=round(int(rss_kb) / 1024, 1),
                              weights_mb=round(weights / 2 ** 20, 1),
                              rss_over_weights=round(int(rss_kb) * 1024 / weights, 2), passed=rc == '0'))
    return out


PMAP_CODE = '''
import os, sys, time, statistics
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=%d"
sys.path.insert(0, %r)
import jax, numpy as np
import vitjax
from vitjax import optim, train_step
from vitjax.config import default_config
c = default_config(); c.warmup_steps = 1
model, v = vitjax.create_model("vit_tiny_patch16_224", img_size=64, depth=4)
tx = optim.create_optimizer(c, v["params"], 1000)
state = train_step.replicate(train_step.create_train_state(model, v, tx, jax.random.PRNGKey(0)))
p, _ = train_step.make_pmapped_steps(model, c, 1000, tx, 1000, v["params"])
b = train_step.shard({"image": np.zeros((32, 64, 64, 3), np.float32), "label": np.zeros(32, np.int32)})
state, m = p(state, b); jax.block_until_ready(m["loss"])
ts = []
for _ in range(%d):
    t = time.perf_counter(); state, m = p(state, b); jax.block_until_ready(m["loss"]); ts.append(time.perf_counter() - t)
print(32 / statistics.median(ts))
'''


def bench_pmap(repeats: int) -> list[dict]:
    """The same global batch over 1, 2, 4 simulated CPU devices: pmap's overhead, not real scaling."""
    out, base = [], None
    for n in (1, 2, 4):
        img_s = float(subprocess.run([sys.executable, '-c', PMAP_CODE % (n, str(ROOT), max(repeats, 3))],
                                     capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()[-1])
        base = base or img_s
        out.append(record(name=f'pmap_{n}_devices', model='vit_tiny_patch16_224@64 depth 4', batch=32,
                          dtype='float32', device=f'cpu x{n} (simulated)', vitjax_img_s=round(img_s, 1),
                          baseline='pmap_1_devices', baseline_img_s=round(base, 1)))
    return out


SCAN_CODE = '''
import sys, time, statistics
sys.path.insert(0, %r)
import jax, numpy as np
import vitjax
from vitjax import optim, train_step
from vitjax.config import default_config
jax.config.update("jax_default_matmul_precision", "highest")
c = default_config(); c.warmup_steps = 1
model, v = vitjax.create_model(%r, scan_blocks=%r)
tx = optim.create_optimizer(c, v["params"], 1000)
state = train_step.replicate(train_step.create_train_state(model, v, tx, jax.random.PRNGKey(0)))
traces = {}
p, _ = train_step.make_pmapped_steps(model, c, 1000, tx, 1000, v["params"], traces)
b = train_step.shard({"image": np.zeros((%d, 224, 224, 3), np.float32), "label": np.zeros(%d, np.int32)})
t = time.perf_counter(); state, m = p(state, b); jax.block_until_ready(m["loss"]); first = time.perf_counter() - t
ts = []
for _ in range(%d):
    t = time.perf_counter(); state, m = p(state, b); jax.block_until_ready(m["loss"]); ts.append(time.perf_counter() - t)
assert traces == {"train": 1}, traces
print(first - statistics.median(ts), statistics.median(ts))
'''


def bench_scan(name: str, batch: int, repeats: int) -> list[dict]:
    """train.py's step with the blocks unrolled vs scan_blocks: compile time against step time (fresh processes)."""
    out = {}
    for scan in (False, True):
        code = SCAN_CODE % (str(ROOT), name, scan, batch, batch, max(repeats, 3))
        compile_s, step_s = map(float, subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                                                      check=True, cwd=ROOT).stdout.split()[-2:])
        out[scan] = compile_s, step_s
    (c0, s0), (c1, s1) = out[False], out[True]
    return [record(name='scan_blocks', model=name, batch=batch, dtype='float32', device=device_name(),
                   vitjax_img_s=round(batch / s1, 2), baseline='unrolled blocks', baseline_img_s=round(batch / s0, 2),
                   compile_s=round(c1, 1), baseline_compile_s=round(c0, 1),
                   path='train.py pmap step; compile_s = first call minus a step')]


def run(full: bool, models: Optional[list[str]], repeats: int, out_dir: Path, sections: set[str],
        batch: Optional[int] = None) -> dict:
    import torch  # noqa: F401  (torch before tensorflow: the other order crashes torchvision)
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
            new = bench_model(m, ib, tb, repeats, peak, compile_torch)
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
    if 'pmap' in sections:
        records += bench_pmap(repeats)
    if 'scan' in sections:
        records += bench_scan('vit_large_patch16_224' if full else 'vit_base_patch16_224', 2 if full else 4, repeats)
    result = {'host': socket.gethostname(), 'date': datetime.datetime.now().isoformat(timespec='seconds'),
              'mode': 'full' if full else 'quick', 'platform': platform.platform(), 'python': sys.version.split()[0],
              'jax': jax.__version__, 'torch': torch.__version__, 'peak_gflops': round(peak, 2), 'peak_gflops_best': round(best, 2),
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
    ap.add_argument('--sections', default='models,input,convert,pmap,scan')
    ap.add_argument('--out-dir', default=str(ROOT / 'benchmarks' / 'results'))
    ap.add_argument('--markdown', default=str(ROOT / 'BENCHMARKS.md'), help="'' to skip")
    args = ap.parse_args(argv)
    if argv is None:  # the command line, not a test: both sides get train.py's malloc settings (vitjax/hostmem.py)
        from vitjax.hostmem import reexec_with_tuned_malloc
        reexec_with_tuned_malloc()
    result = run(args.full, args.models, args.repeats, Path(args.out_dir), set(args.sections.split(',')),
                 args.batch)
    if args.markdown:
        from benchmarks.report import write_markdown
        write_markdown(result, Path(args.markdown))
        print(f'wrote {args.markdown}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
