"""Loading pretrained ViT-B/16 from a hub cache in a fresh process: vitjax's torch-free path against timm's
`create_model(pretrained=True)`, the same cache (tests/hubcache.py), taking turns; wall time (imports
included, what a user waits for) and peak RSS."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from benchmarks.harness import ROOT, device_name, record

NAME = 'vit_base_patch16_224.augreg2_in21k_ft_in1k'
SIDES = {
    'vitjax': 'import vitjax, jax; m, v = vitjax.create_model(NAME, pretrained=True); jax.block_until_ready(v)',
    'timm': 'import timm; m = timm.create_model(NAME, pretrained=True)',
}


def _once(side: str, env: dict) -> tuple[float, float]:
    # VmHWM, not ru_maxrss: Linux carries the parent's peak RSS into a child's ru_maxrss across exec
    code = (f'import time; t = time.perf_counter(); NAME = {NAME!r}; {SIDES[side]}; w = time.perf_counter() - t; '
            'print(w, next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM:")))')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    wall, rss_kb = out.stdout.split()[-2:]
    return float(wall), int(rss_kb) * 1024


def bench_hub_load(repeats: int = 3) -> list[dict]:
    sys.path.insert(0, os.path.join(ROOT, 'tests'))  # the tests' offline hub cache (tests/hubcache.py)
    import hubcache
    with tempfile.TemporaryDirectory() as cache:
        paths = hubcache.add(cache, NAME)
        weights = os.path.getsize(os.path.realpath(paths['model.safetensors']))
        env = {k: v for k, v in hubcache.offline_env(cache).items() if k != 'GLIBC_TUNABLES'}
        runs = {s: [] for s in SIDES}
        for _ in range(repeats):
            for side in SIDES:
                runs[side].append(_once(side, env))
    med = lambda xs: sorted(xs)[len(xs) // 2]
    (vw, vr), (tw, tr) = ((med([w for w, _ in runs[s]]), max(r for _, r in runs[s])) for s in SIDES)
    return [record(name='hub_load', model=NAME, batch=0, dtype='float32', device=device_name(), wall_s=round(vw, 2),
                   baseline='timm_pretrained', baseline_wall_s=round(tw, 2), wall_ratio=round(vw / tw, 2),
                   peak_rss_mb=round(vr / 2**20, 1), baseline_peak_rss_mb=round(tr / 2**20, 1),
                   weights_mb=round(weights / 2**20, 1), rss_over_weights=round(vr / weights, 2))]
