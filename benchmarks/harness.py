"""The measuring side of `make bench`: A/B turns, records, the GEMM roofline, one contender per process."""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ('name', 'model', 'batch', 'dtype', 'device', 'vitjax_img_s', 'baseline', 'baseline_img_s', 'ratio',
          'flops_per_img', 'achieved_gflops', 'peak_gflops', 'mfu')


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


def model_label(name: str, model_kwargs: Optional[dict] = None) -> str:
    """The row's model: the name, then any architecture overrides (a row of another model than the name's)."""
    return ' '.join([name, *(f'{k}={v}' for k, v in sorted((model_kwargs or {}).items()))])


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
