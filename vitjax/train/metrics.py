"""Run outputs: metrics.jsonl (one object per logged step / eval), TensorBoard events, curves.png."""
from __future__ import annotations

import io
import json
import math
import os
import stat
import sys
from typing import Any, BinaryIO, Iterator, Optional

# What a run writes into its workdir in place ('dir': a directory it adds files to).
OUTPUTS = {'metrics.jsonl': 'file', 'summary.json': 'file', 'curves.png': 'file', 'tensorboard': 'dir'}
_MAX_LINE = 1 << 20  # a vitjax line is a few hundred bytes: reading a longer one whole could exhaust memory
_MAX_INT = 2 ** 63  # steps are int64 in the checkpoints; matplotlib turns larger ints into an OverflowError


def strict_json(obj: Any, **kwargs: Any) -> str:
    """JSON that every parser reads: NaN/Inf (which `json.dumps` writes as bare NaN/Infinity) become null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return [clean(x) for x in v] if isinstance(v, (list, tuple)) else v
    return json.dumps(clean(obj), allow_nan=False, **kwargs)


def check_output(path: str, kind: str = 'file') -> None:
    """A run file about to be (over)written must be absent or one vitjax could have made: a symlink or a second
    hard link would carry the write to a user's file, and a directory or FIFO found after the training wastes it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    fix = 'remove it or pass a new or empty --workdir'
    if stat.S_ISLNK(st.st_mode):
        if kind == 'dir' and os.path.isdir(path):  # a shared TensorBoard logdir: event files are only added
            return
        raise ValueError(f'{path} is a symbolic link (to {os.readlink(path)}), which the run would write through; '
                         f'{fix}')
    if kind == 'dir':
        if not stat.S_ISDIR(st.st_mode):
            raise ValueError(f'{path} is a file, where the run writes a directory; {fix}')
        return
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f'{path} is a directory, where the run writes a file; {fix}')
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f'{path} is not a regular file (a FIFO, socket or device); {fix}')
    if st.st_nlink > 1:
        raise ValueError(f'{path} has {st.st_nlink} hard links: rewriting it would change the other names\' file '
                         f'too; {fix}')


def check_outputs(workdir: str) -> None:
    for name, kind in OUTPUTS.items():
        check_output(os.path.join(workdir, name), kind)


def _open_output(path: str, flags: int) -> int:
    """An fd of the run file `path`, never through a link made after `check_output` looked."""
    check_output(path)
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    except OSError as e:  # ELOOP: a link made since the check; EISDIR likewise
        raise ValueError(f'{path}: cannot write it ({e.strerror})') from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f'{path} is not a regular file; remove it or pass a new or empty --workdir')
    return fd


class MetricWriter:
    """Appends JSON lines and TensorBoard scalars. On resume, lines past the restored step are cut off so the
    file reads as one uninterrupted run (one truncation: a kill during it leaves the file before or after)."""

    def __init__(self, workdir: str, resume_step: Optional[int] = None):
        self.path = os.path.join(workdir, 'metrics.jsonl')
        check_outputs(workdir)  # found now, not when the run writes summary.json or curves.png at its end
        fd = _open_output(self.path, os.O_RDWR | os.O_APPEND | (0 if resume_step is not None else os.O_TRUNC))
        try:
            if resume_step is not None:
                _cut_after(fd, self.path, resume_step)
            self._file = os.fdopen(fd, 'a', encoding='utf-8')
        except BaseException:
            os.close(fd)
            raise
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


def _lines(f: BinaryIO) -> Iterator[tuple[int, int, bytes, bool]]:
    """(line number, byte offset, bytes, ends with a newline) per line; a line past _MAX_LINE is read in pieces
    and given as its first _MAX_LINE + 1 bytes."""
    number, offset = 0, 0
    while True:
        raw = f.readline(_MAX_LINE + 1)
        if not raw:
            return
        number, size, tail = number + 1, len(raw), raw
        while not tail.endswith(b'\n') and (tail := f.readline(_MAX_LINE)):
            size += len(tail)
        yield number, offset, raw, (tail or raw).endswith(b'\n')
        offset += size


def _parse(raw: bytes) -> tuple[Optional[dict], str]:
    """(the record, '') for a line vitjax wrote or could have written, else (None, why not)."""
    if len(raw) > _MAX_LINE:
        return None, f'longer than {_MAX_LINE} bytes'
    try:
        record = json.loads(raw.decode('utf-8'))
    except UnicodeDecodeError:
        return None, 'not UTF-8'
    except (ValueError, RecursionError):  # RecursionError: a deeply nested [[[...]]]
        return None, 'not valid JSON'
    if not isinstance(record, dict):
        return None, f'a JSON {type(record).__name__}, not an object'
    step = record.get('step')
    if type(step) is not int or not 0 <= step < _MAX_INT:  # bool is an int subclass; 1e400 a float
        return None, "no 'step'" if step is None else "'step' is not a non-negative integer"
    if not isinstance(record.get('split'), str):
        return None, "no 'split'" if record.get('split') is None else "'split' is not a string"
    for k, v in record.items():
        if k not in ('step', 'split') and not (v is None or type(v) is float or type(v) is int and abs(v) < _MAX_INT):
            return None, f'{k[:40]!r} is not a number'
    return record, ''


def _report(path: str, bad: list[tuple[int, str]], note: str = '') -> None:
    if bad:
        more = f' and {len(bad) - 3} more' if len(bad) > 3 else ''
        print(f'warning: {path}: skipping {len(bad)} line(s) that are not vitjax metrics{note}: '
              + ', '.join(f'line {n} ({why})' for n, why in bad[:3]) + more, file=sys.stderr)


def _cut_after(fd: int, path: str, step: int) -> None:
    """Truncate metrics.jsonl at its first line past `step` (and at a last line a kill cut short); lines that
    are not metrics are left in place for the readers to skip."""
    bad, cut, unended = [], None, False
    with os.fdopen(os.dup(fd), 'rb') as f:
        for number, offset, raw, whole in _lines(f):
            if not raw.strip():
                continue
            record, why = _parse(raw)
            if record is not None and record['step'] > step or record is None and not whole:
                cut = offset
                break
            if record is None:
                bad.append((number, why))
            unended = not whole
    _report(path, bad, ' (left in the file)')
    if cut is not None:
        os.ftruncate(fd, cut)
    elif unended:  # a whole record whose newline is missing: the next line must not run into it
        os.write(fd, b'\n')


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line that is not one (hand-edited, cut short) is skipped with a warning
    naming the file and line."""
    records, bad = [], []
    with open(path, 'rb') as f:
        for number, _, raw, _ in _lines(f):
            record, why = _parse(raw) if raw.strip() else ({}, '')
            if record is None:
                bad.append((number, why))
            elif record:
                records.append(record)
    _report(path, bad)
    return records


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
    png = io.BytesIO()
    fig.savefig(png, format='png', dpi=100)
    plt.close(fig)
    fd = _open_output(out_png, os.O_WRONLY | os.O_TRUNC)
    with os.fdopen(fd, 'wb') as f:
        f.write(png.getvalue())
    return out_png
