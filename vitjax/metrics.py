"""Run outputs: metrics.jsonl (one object per logged step / eval), TensorBoard events, curves.png."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Optional


def strict_json(obj: Any, **kwargs: Any) -> str:
    """JSON that every parser reads: NaN/Inf (which `json.dumps` writes as bare NaN/Infinity) become null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return [clean(x) for x in v] if isinstance(v, (list, tuple)) else v
    return json.dumps(clean(obj), allow_nan=False, **kwargs)


class MetricWriter:
    """Appends JSON lines and TensorBoard scalars. On resume, lines past the restored step are dropped so the
    file reads as one uninterrupted run."""

    def __init__(self, workdir: str, resume_step: Optional[int] = None):
        self.path = os.path.join(workdir, 'metrics.jsonl')
        if resume_step is not None and os.path.exists(self.path):
            with open(self.path) as f:  # a run killed mid-write may have left a partial last line
                keep = [line for line in f if _step(line) is not None and _step(line) <= resume_step]
            with open(self.path, 'w') as f:
                f.writelines(keep)
        elif os.path.exists(self.path):
            os.remove(self.path)
        self._file = open(self.path, 'a')
        # TensorFlow's own event writer: TF is loaded for the input pipeline anyway, where tensorboardX would
        # import torch (2.4 s per run) and tf.summary.scalar needs the tensorboard package.
        import tensorflow as tf
        self._tb = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))

    def write(self, step: int, split: str, **scalars: Any) -> None:
        record = {'step': int(step), 'split': split, **{k: float(v) for k, v in scalars.items()}}
        self._file.write(strict_json(record) + '\n')
        self._file.flush()
        import tensorflow as tf
        with self._tb.as_default(step=int(step)):
            for k, v in scalars.items():
                tf.summary.write(f'{split}/{k}', tf.constant(float(v), tf.float32), metadata=_scalar_metadata())

    def flush(self) -> None:
        self._tb.flush()

    def close(self) -> None:
        self._file.close()
        self._tb.close()


class NoWriter:
    """What the processes other than process 0 log to: one copy of metrics.jsonl and the events per run."""

    def write(self, step: int, split: str, **scalars: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _scalar_metadata():
    """What TensorBoard's scalars plugin looks for (tensorboard.plugins.scalar.metadata writes the same)."""
    from tensorflow.core.framework import summary_pb2
    return summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name='scalars'),
                                       data_class=summary_pb2.DATA_CLASS_SCALAR)


def _step(line: str) -> Optional[int]:
    try:
        return int(json.loads(line)['step'])
    except (ValueError, KeyError, TypeError):
        return None


def read_metrics(path: str) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_curves(metrics_path: str, out_png: str) -> str:
    """Train loss, eval loss, eval accuracy and learning rate against step."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    records = read_metrics(metrics_path)
    series = lambda split, key: [(r['step'], r[key]) for r in records if r['split'] == split and r.get(key) is not None]
    panels = [('train loss', series('train', 'loss')), ('eval loss', series('eval', 'loss')),
              ('eval accuracy', series('eval', 'accuracy')), ('learning rate', series('train', 'lr'))]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4))
    for ax, (title, pts) in zip(axes, panels):
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker='o' if len(xs) < 30 else None, ms=3)
        ax.set_title(title)
        ax.set_xlabel('step')
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
