"""Workdirs on an object store (gs://): what a run does where there is no append, no rename and no lock.

A local workdir is written in place. For a URL workdir, orbax writes the checkpoints straight to the store
(it commits each step with a `commit_success.txt` where renames are not atomic), and the other run files
(metrics.jsonl, tensorboard/, summary.json, curves.png, model/) are written into a local staging directory
and copied whole to the workdir at each checkpoint and at the end: each copy replaces one object, which an
object store does atomically. Paths go through `etils.epath` (TensorFlow's GCS filesystem where TensorFlow is
installed, fsspec's gcsfs with EPATH_USE_TF=false), the same layer orbax uses.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Iterable, Optional, Union

from etils import epath


URL_SCHEMES = ('gs://',)  # TensorFlow's GCS filesystem (epath's default) and orbax's tensorstore both write there


def is_url(path: str) -> bool:
    return '://' in str(path)


def join(workdir: str, *names: str) -> str:
    """os.path.join for a local workdir, '/'-joined for a URL (os.path.abspath would mangle 'gs://b')."""
    return '/'.join([str(workdir).rstrip('/'), *names]) if is_url(workdir) else os.path.join(workdir, *names)


class RunFiles:
    """Where the run files of `workdir` are written (`path(name)`) and when they reach it (`sync`)."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.remote = is_url(workdir)
        self.local = tempfile.mkdtemp(prefix='vitjax-run-') if self.remote else workdir

    def path(self, name: str) -> str:
        return os.path.join(self.local, name)

    def fetch(self, name: str) -> None:
        """A file of the workdir into the staging directory (a resume appends to the run's metrics.jsonl)."""
        src = epath.Path(join(self.workdir, name))
        if self.remote and src.exists():
            src.copy(epath.Path(self.path(name)), overwrite=True)

    def sync(self, *names: str) -> None:
        """Copy these staged files or directories (recursively) whole to the workdir."""
        if self.remote:
            for name in names:
                _upload(self.path(name), join(self.workdir, name))

    def publish_model(self, name: str = 'model') -> None:
        """A model directory to the workdir: its config.json (what makes a directory a model for `vitjax.load`)
        is removed first and written last, so a copy cut off half-way is never read as a model."""
        if not self.remote:
            return
        dst, src = epath.Path(join(self.workdir, name)), self.path(name)
        if (dst / 'config.json').exists():
            (dst / 'config.json').unlink()
        files = sorted(os.listdir(src), key=lambda f: f == 'config.json')
        for f in files:
            _upload(os.path.join(src, f), join(self.workdir, name, f))

    def close(self) -> None:
        if self.remote:  # the staging directory is ours: everything in it has reached the workdir
            shutil.rmtree(self.local, ignore_errors=True)


def _upload(src: str, dst: str) -> None:
    if os.path.isdir(src):
        for f in sorted(os.listdir(src)):
            _upload(os.path.join(src, f), f'{dst}/{f}')
    elif os.path.exists(src):
        epath.Path(src).copy(epath.Path(dst), overwrite=True)


def exists(path: str) -> bool:
    return epath.Path(path).exists()


def fetch_dir(url: str, only: Union[None, str, Iterable[str]] = None) -> str:
    """The files of an object-store directory (a saved model), subfolders included, or just those named in
    `only` (absent ones skipped), copied into a new local temporary directory, for code that reads local files
    (safetensors' memory map)."""
    local = tempfile.mkdtemp(prefix='vitjax-fetch-')
    try:
        _download(epath.Path(url), local, [only] if isinstance(only, str) else only)
    except BaseException:
        shutil.rmtree(local, ignore_errors=True)
        raise
    return local


def _download(src: epath.Path, dst: str, only: Optional[Iterable[str]] = None) -> None:
    for f in ([src / n for n in only] if only is not None else src.iterdir() if src.is_dir() else []):
        if f.is_dir():  # a copy would raise IsADirectoryError: what a local directory holds, a fetch holds
            os.makedirs(os.path.join(dst, f.name), exist_ok=True)
            _download(f, os.path.join(dst, f.name))
        elif f.exists():
            f.copy(epath.Path(dst) / f.name, overwrite=True)
