"""The run directory: one live run at a time (a lock), what it already holds, and whether a resume may go on.

Decided before anything is written, so a refused run leaves the workdir exactly as it found it.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from typing import Any, Optional

from vitjax.config import RESUME_SAFE

LOCK_FILE, CONFIG_FILE, CHANGES_FILE = 'train.lock', 'config.json', 'config_changes.jsonl'


# Everything a run writes into its workdir; a directory holding anything else is not ours to write into.
RUN_FILES = {CONFIG_FILE, CHANGES_FILE, LOCK_FILE, 'metrics.jsonl', 'summary.json', 'curves.png', 'tensorboard',
             'checkpoints', 'model'}


class WorkdirInUse(RuntimeError):
    pass


def check_ours(workdir: str) -> None:
    """A run writes config.json, metrics.jsonl, model/, ... into its workdir and replaces older copies of them:
    refuse a directory that holds anything else (`--workdir .` in a project with its own config.json)."""
    names = set(os.listdir(workdir)) if os.path.isdir(workdir) else set()
    # also what a killed write leaves: our config.json's temporary, model/'s (vitjax.save clears them itself)
    ours = lambda n: n.startswith((f'{CONFIG_FILE}.tmp-', '.model.tmp-')) or n == '.model.old'
    foreign = sorted(n for n in names - RUN_FILES if not ours(n))
    if not foreign and CONFIG_FILE in names:
        try:
            with open(os.path.join(workdir, CONFIG_FILE)) as f:
                saved = json.load(f)
            if not isinstance(saved, dict) or not {'model', 'dataset', 'batch_size', 'lr'} <= set(saved):
                foreign = [f'{CONFIG_FILE} (not a training config)']
        except (OSError, ValueError):
            foreign = [f'{CONFIG_FILE} (not a training config)']
    if foreign:
        shown = ', '.join(foreign[:5]) + (f' and {len(foreign) - 5} more' if len(foreign) > 5 else '')
        raise ValueError(f'{workdir} is not a vitjax run directory (it holds {shown}); a run writes config.json, '
                         'metrics.jsonl, model/ and more there: pass a new or empty --workdir')


class Lock:
    """An exclusive `flock` on WORKDIR/train.lock held while the run lives. The kernel drops it when the
    process dies however it dies (kill -9 included), so a lock file left behind is stale by construction and
    simply taken over; the pid, host and start time inside are for the error message only."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise WorkdirInUse(f'{workdir} is in use by another run ({_holder(self.path)}); wait for it '
                                   'to finish or stop it, or pass another --workdir') from None
            # The holder we waited for may have unlinked the file after we opened it: lock the file on disk.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f'pid {os.getpid()} on {socket.gethostname()} since {time.strftime("%Y-%m-%d %H:%M:%S")}\n'
                 .encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.unlink(self.path)  # while still locked: no one can take a lock on the file being removed
            os.close(self.fd)
            self.fd = None


class NoLock:
    def release(self) -> None:
        pass


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip() or 'pid unknown'
    except OSError:
        return 'pid unknown'


def complete_steps(workdir: str) -> list[int]:
    """Steps with a finished checkpoint. Orbax writes into `<step>.orbax-checkpoint-tmp*` and renames when
    complete, so a write cut off by kill -9 never counts (it is cleaned at the next save); `<step>.corrupt`
    is a checkpoint a resume found damaged and set aside."""
    root = os.path.join(workdir, 'checkpoints')
    names = os.listdir(root) if os.path.isdir(root) else []
    return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(root, n)))


def flat(tree: Any, prefix: str = '') -> dict[str, Any]:
    """A config as {'a.b': value}, tuples as lists (JSON's view), so a saved and a new config compare."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            out.update(flat(v, f'{prefix}{k}.') if isinstance(v, dict) and v else {f'{prefix}{k}': v})
        return out
    return {prefix.rstrip('.'): tree}


def config_changes(saved: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    a, b = flat(json.loads(json.dumps(saved))), flat(json.loads(json.dumps(new)))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume(workdir: str, config: dict, allow: str) -> dict[str, tuple[Any, Any]]:
    """The differences between the run's saved config and `config`; raises if any of them changes what the
    run computes and `allow` ('a,b' or 'all') does not name it."""
    path = os.path.join(workdir, CONFIG_FILE)
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        if allow.strip() == 'all':
            return {}
        raise ValueError(f'--resume: cannot read the run\'s config ({e}), so cannot check that this config '
                         "continues it; restore it, or pass --config.allow_changes=all") from None
    changes = config_changes(saved, config)
    allowed = {a.strip() for a in allow.split(',') if a.strip()}
    named = lambda k: 'all' in allowed or any(k == a or k.startswith(a + '.') for a in allowed)
    refused = {k: v for k, v in changes.items() if k.split('.')[0] not in RESUME_SAFE and not named(k)}
    if refused:
        lines = [f'  {k}: {old!r} -> {new!r}' for k, (old, new) in refused.items()]
        raise ValueError(f'--resume: this config changes what the run in {workdir} computes:\n' + '\n'.join(lines)
                         + f"\nresume with the run's own settings, or name the intended changes: "
                         f"--config.allow_changes={','.join(refused)}")
    return changes


def write_config(workdir: str, config: dict, changes: Optional[dict] = None) -> None:
    """config.json (atomically: a killed run never leaves half of it), and the resume's changes appended to
    config_changes.jsonl so the record shows every setting a run was trained with."""
    path = os.path.join(workdir, CONFIG_FILE)
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(json.dumps(config, indent=2) + '\n')
    os.replace(tmp, path)
    if changes:
        with open(os.path.join(workdir, CHANGES_FILE), 'a') as f:
            f.write(json.dumps({'time': time.strftime('%Y-%m-%dT%H:%M:%S'),
                                'changes': {k: {'from': a, 'to': b} for k, (a, b) in changes.items()}}) + '\n')
