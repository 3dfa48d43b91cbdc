"""The rows besides the model A/B: input pipeline, conversion, pmap overhead, scan_blocks (fresh processes)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from benchmarks.harness import ROOT, device_name, model_label, record


def bench_input(steps_img_s: Optional[float], repeats: int) -> list[dict]:
    """tf.data img/s for the digits default and a mock 224² dataset, next to the train step's img/s."""
    import tensorflow_datasets as tfds

    from vitjax.train import data
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [('input_digits', 'vitjax_digits', 16, 128, None),
                 ('input_mock_224', 'cifar10', 224, 64, tfds.testing.mock_data(num_examples=512))]
        for name, ds_name, size, batch, ctx in cases:
            if ctx is not None:
                ctx.__enter__()
            try:
                it = data.create_train_dataset(ds_name, 'train', global_batch_size=batch, image_size=size,
                                               data_dir=tmp)
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


def train_step_times(name: str, batch: int, repeats: int, devices: int = 1, mode: str = 'pmap',
                     **kwargs) -> tuple[float, float]:
    """(compile s, median step s) of train.py's step in a fresh process (benchmarks/step_timer.py)."""
    return tuple(step_timer(name, batch, repeats, devices, mode, **kwargs)[k] for k in ('compile_s', 'step_s'))


def _rss(pid: int) -> int:
    try:
        with open(f'/proc/{pid}/status') as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith('VmRSS:'))
    except (OSError, StopIteration):  # the process is gone, or not Linux
        return 0


def host_memory_available() -> Optional[int]:
    try:
        with open('/proc/meminfo') as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith('MemAvailable:'))
    except (OSError, StopIteration):
        return None


def step_timer(name: str, batch: int, repeats: int, devices: int = 1, mode: str = 'pmap',
               memory_limit: Optional[int] = None, fsdp_min_bytes: int = 4 << 20, **kwargs) -> dict:
    """benchmarks/step_timer.py in a fresh process. With `memory_limit` (bytes of RSS) a step that does not fit
    is killed by us, not by the kernel's OOM killer (which may pick another process), and the result says so:
    {'state_bytes_per_device', 'oom_rss_bytes'} (the state is measured before the first step)."""
    cmd = [sys.executable, '-m', 'benchmarks.step_timer', name, str(batch), str(repeats), str(devices), mode,
           json.dumps(kwargs), str(fsdp_min_bytes)]
    with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT)
        peak = 0
        while p.poll() is None:
            peak = max(peak, _rss(p.pid))
            if memory_limit and peak > memory_limit:
                p.kill()
                p.wait()
                break
            time.sleep(0.05)
        out.seek(0)
        lines = [json.loads(line) for line in out.read().splitlines() if line.startswith('{')]
        if memory_limit and peak > memory_limit:
            return {'state_bytes_per_device': lines[0]['state_bytes_per_device'] if lines else None,
                    'oom_rss_bytes': peak}
        if p.returncode != 0:
            err.seek(0)
            raise RuntimeError(f'{" ".join(cmd)} failed ({p.returncode}):\n{err.read()[-3000:]}')
    r = lines[-1]
    assert r['compilations'] == {'train': 1}, r
    return r


def bench_pmap(repeats: int) -> list[dict]:
    """The same global batch over 1, 2, 4 simulated CPU devices: pmap's overhead, not real scaling."""
    out, base = [], None
    for n in (1, 2, 4):
        img_s = 32 / train_step_times('vit_tiny_patch16_224', 32, repeats, n, img_size=64, depth=4)[1]
        base = base or img_s
        out.append(record(name=f'pmap_{n}_devices', model='vit_tiny_patch16_224@64 depth 4', batch=32,
                          dtype='float32', device=f'cpu x{n} (simulated)', vitjax_img_s=round(img_s, 1),
                          baseline='pmap_1_devices', baseline_img_s=round(base, 1)))
    return out


def bench_scan(name: str, batch: int, repeats: int) -> list[dict]:
    """train.py's step with the blocks unrolled vs scan_blocks: compile time against step time (fresh processes)."""
    (c0, s0), (c1, s1) = (train_step_times(name, batch, repeats, scan_blocks=scan) for scan in (False, True))
    return [record(name='scan_blocks', model=name, batch=batch, dtype='float32', device=device_name(),
                   vitjax_img_s=round(batch / s1, 2), baseline='unrolled blocks', baseline_img_s=round(batch / s0, 2),
                   compile_s=round(c1, 1), baseline_compile_s=round(c0, 1),
                   path='train.py pmap step; compile_s = first call minus a step')]


def bench_fsdp(name: str, batch: int, repeats: int, devices: int = 4, fsdp_min_bytes: int = 4 << 20,
               model_kwargs: Optional[dict] = None) -> list[dict]:
    """train.py's step under pmap and fsdp on the same simulated devices: state bytes per device and img/s.
    Simulated devices share the host's memory, so a mode whose replicas do not fit is reported, not run."""
    available = host_memory_available()
    limit = int(0.85 * available) if available else None
    pmap, fsdp = (step_timer(name, batch, repeats, devices, mode, memory_limit=limit, fsdp_min_bytes=fsdp_min_bytes,
                             **(model_kwargs or {})) for mode in ('pmap', 'fsdp'))
    img_s = lambda r: round(batch / r['step_s'], 3) if 'step_s' in r else None
    compile_s = lambda r: round(r['compile_s'], 1) if 'compile_s' in r else None
    mb = lambda r: round(r['state_bytes_per_device'] / 2**20, 1) if r['state_bytes_per_device'] else None
    oom = lambda r: f"out of host memory: killed at {r['oom_rss_bytes'] / 2**30:.1f} GiB RSS" if 'oom_rss_bytes' in r else ''
    return [record(name='fsdp', model=model_label(name, model_kwargs), batch=batch, dtype='float32',
                   device=f'cpu x{devices} (simulated)',
                   vitjax_img_s=img_s(fsdp), baseline='pmap', baseline_img_s=img_s(pmap),
                   compile_s=compile_s(fsdp), baseline_compile_s=compile_s(pmap),
                   state_mb_per_device=mb(fsdp), baseline_state_mb_per_device=mb(pmap),
                   note=oom(fsdp), baseline_note=oom(pmap), memory_limit_gib=round(limit / 2**30, 1) if limit else None,
                   path='train.py step, --config.parallelism=fsdp vs pmap; state bytes from addressable shards',
                   **({'model_kwargs': model_kwargs} if model_kwargs else {}))]
