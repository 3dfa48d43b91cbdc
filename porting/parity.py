"""Logit parity: the source PyTorch model and the Flax model on the same fixed input, in f32."""
from __future__ import annotations

import argparse
import math
import numbers
from typing import Any, Optional

import jax
import numpy as np

MAX_SEED = 2 ** 32 - 1  # numpy, torch and jax all take it


def check_settings(batch: int, tolerance: float) -> None:
    """Refuse a run that would pass vacuously: no input, or a tolerance that everything meets (or none can)."""
    if not isinstance(batch, numbers.Integral) or batch < 1:
        raise ValueError(f'parity needs at least one example, got batch={batch!r}')
    if not isinstance(tolerance, numbers.Real) or not math.isfinite(tolerance) or tolerance <= 0:
        raise ValueError(f'the parity tolerance must be a finite number > 0, got {tolerance!r}')


# argparse types for the CLIs' numbers: a usage error naming the argument (exit 2), before any work
def integer(lo: int, hi: Optional[int] = None):
    want = f'an integer >= {lo}' if hi is None else f'an integer in [{lo}, {hi}]'

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f'must be {want}, got {text!r}')
        return value
    return parse


def tolerance(text: str) -> float:
    try:
        value = float(text)
        check_settings(1, value)
    except ValueError:
        raise argparse.ArgumentTypeError(f'must be a finite number > 0, got {text!r}') from None
    return value


seed = integer(0, MAX_SEED)


def _stats(name: str, ref: np.ndarray, out: np.ndarray, scale: float) -> dict[str, Any]:
    if ref.shape != out.shape:
        raise ValueError(f'{name}: PyTorch output {ref.shape} vs Flax output {out.shape}')
    max_abs = float(np.abs(ref).max()) if ref.size else 0.0
    diff = float(np.abs(ref.astype(np.float64) - out.astype(np.float64)).max()) if ref.size else 0.0
    tol = scale * max(1.0, max_abs)
    return {'max_abs_diff': diff, 'max_abs_logit': max_abs, 'tolerance': tol, 'passed': bool(diff <= tol)}


def check(name: str, torch_model, model, variables, *, batch: int = 2, seed: int = 0,
          tolerance: float = 1e-4) -> dict[str, Any]:
    """Run both models; report logits (top level) and pre-logit features (`pre_logits`).

    Tolerance per output is `tolerance * max(1, max|output|)`.
    """
    check_settings(batch, tolerance)
    import torch

    from vitjax.registry import img_size_of
    h, w = img_size_of(model)
    x = np.random.default_rng(seed).standard_normal((batch, h, w, model.in_chans)).astype(np.float32)
    torch_model.eval()
    with torch.no_grad():
        t_in = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        t_feats = torch_model.forward_features(t_in)
        t_logits = torch_model.forward_head(t_feats).numpy()
        t_pre = torch_model.forward_head(t_feats, pre_logits=True).numpy()

    def both(m, x):
        f = m.forward_features(x)
        return m.forward_head(f), m.forward_head(f, pre_logits=True)

    with jax.default_matmul_precision('highest'):
        logits, pre = jax.jit(lambda v, x: model.apply(v, x, method=both))(variables, x)
    report = {'model': name, **_stats('logits', t_logits, np.asarray(logits), tolerance)}
    report['pre_logits'] = _stats('pre_logits', t_pre, np.asarray(pre), tolerance)
    report['passed'] = report['passed'] and report['pre_logits']['passed']
    report['input'] = {'shape': [batch, h, w, model.in_chans], 'seed': seed, 'dtype': 'float32'}
    return report


def format_report(r: dict[str, Any]) -> str:
    p = r['pre_logits']
    verdict = 'PASSED' if r['passed'] else 'FAILED'
    return (f"parity {verdict}: {r['model']}\n"
            f"  logits     max|diff| {r['max_abs_diff']:.3e}  (max|logit| {r['max_abs_logit']:.3g}, "
            f"tolerance {r['tolerance']:.1e})\n"
            f"  pre-logits max|diff| {p['max_abs_diff']:.3e}  (max|value| {p['max_abs_logit']:.3g}, "
            f"tolerance {p['tolerance']:.1e})")
