"""The run directory: one live run at a time (a lock), what it already holds, and whether a resume may go on.

Decided before anything is written, so a refused run leaves the workdir exactly as it found it.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from typing import Any, Optional

from etils import epath

from vitjax.train.config import RESUME_SAFE
from vitjax.storage import is_url, join

LOCK_FILE, CONFIG_FILE, CHANGES_FILE = 'train.lock', 'config.json', 'config_changes.jsonl'


# Everything a run writes into its workdir; a directory holding anything else is not ours to write into.
RUN_FILES = {CONFIG_FILE, CHANGES_FILE, LOCK_FILE, 'metrics.jsonl', 'summary.json', 'curves.png', 'tensorboard',
             'checkpoints', 'model'}
# the ones written in place (opened, truncated or appended to), which a symbolic link would redirect
IN_PLACE = {CHANGES_FILE, LOCK_FILE, 'metrics.jsonl', 'summary.json', 'curves.png'}


class WorkdirInUse(RuntimeError):
    pass


def check_ours(workdir: str) -> None:
    """A run writes config.json, metrics.jsonl, model/, ... into its workdir and replaces older copies of them:
    refuse a directory that holds anything else (`--workdir .` in a project with its own config.json)."""
    root = epath.Path(workdir)  # local or gs://: listing and reading work alike
    names = {p.name for p in root.iterdir()} if root.is_dir() else set()
    # also what a killed write leaves: our config.json's temporary, model/'s (vitjax.save clears them itself)
    ours = lambda n: n.startswith((f'{CONFIG_FILE}.tmp-', '.model.tmp-')) or n == '.model.old'
    foreign = sorted(n for n in names - RUN_FILES if not ours(n))
    if CONFIG_FILE not in names:  # a run writes config.json before the files it writes in place (its lock aside)
        foreign += sorted(f'{n} (with no config.json)' for n in names & IN_PLACE - {LOCK_FILE})
    elif not foreign:
        try:
            saved = json.loads((root / CONFIG_FILE).read_text())
            if not isinstance(saved, dict) or not {'model', 'dataset', 'batch_size', 'lr'} <= set(saved):
                foreign = [f'{CONFIG_FILE} (not a training config)']
        except (OSError, ValueError):
            foreign = [f'{CONFIG_FILE} (not a training config)']
    links = [] if is_url(workdir) else sorted(n for n in IN_PLACE & names if os.path.islink(os.path.join(workdir, n)))
    if links:  # vitjax never makes one: writing through it would overwrite the file it points to
        to, are = os.readlink(os.path.join(workdir, links[0])), 'are symbolic links' if len(links) > 1 else ''
        raise ValueError(f'{workdir}: {", ".join(links)} {are or "is a symbolic link"} (to {to}{", ..." if are else ""}'
                         '), which a run would write through; remove the link or pass a new or empty --workdir')
    if foreign:
        shown = ', '.join(foreign[:5]) + (f' and {len(foreign) - 5} more' if len(foreign) > 5 else '')
        raise ValueError(f'{workdir} is not a vitjax run directory (it holds {shown}); a run writes config.json, '
                         'metrics.jsonl, model/ and more there: pass a new or empty --workdir')


def check_init(workdir: str, init: str) -> None:
    """`--config.init` must not be the run's own output: the run replaces WORKDIR/model at its end (and a
    resume re-reads its init), so starting from it would overwrite the very weights it started from."""
    from vitjax import hub
    if not init or hub.is_hub_name(init):
        return
    if is_url(workdir) or is_url(init):
        a, b = str(workdir).rstrip('/'), str(init).rstrip('/')
        inside = b == a or b.startswith(a + '/') or a.startswith(b + '/')
    else:
        a, b = os.path.realpath(workdir), os.path.realpath(init)
        inside = os.path.commonpath([a, b]) in (a, b)
    if inside:
        raise ValueError(f'--config.init {init} is inside this run\'s workdir {workdir}, whose model/ the run '
                         'replaces when it ends: copy that model elsewhere and start from the copy, or pass another '
                         '--workdir')


def check_model_url(url: str) -> None:
    """The object-store twin of `vitjax.io.check_writable_model_dir`: WORKDIR/model may be replaced only when
    it is absent, empty, or a model directory holding just the files its config.json lists."""
    from vitjax.io import CONFIG_FILE as MODEL_CONFIG, FORMAT, LEGACY_FILES
    root = epath.Path(url)
    names = {p.name for p in root.iterdir()} if root.is_dir() else set()
    if not names:
        if root.exists():
            raise ValueError(f'{url} is a file, not a directory; vitjax replaces only a model directory it wrote')
        return
    try:
        cfg = json.loads((root / MODEL_CONFIG).read_text())
    except (OSError, ValueError):
        cfg = None
    if not isinstance(cfg, dict) or cfg.get('format') != FORMAT:
        extra = names
    else:
        listed = cfg.get('files')
        ours = set(listed if isinstance(listed, list) and all(isinstance(f, str) for f in listed) else LEGACY_FILES)
        extra = names - ours - {MODEL_CONFIG}
    if extra:
        shown = ', '.join(sorted(extra)[:5]) + (f' and {len(extra) - 5} more' if len(extra) > 5 else '')
        raise ValueError(f'{url} holds {shown}, which vitjax did not write; vitjax replaces only a model directory '
                         'it wrote: pass a new or empty --workdir')


class Lock:
    """An exclusive `flock` on WORKDIR/train.lock held while the run lives. The kernel drops it when the
    process dies however it dies (kill -9 included), so a lock file left behind is stale by construction and
    simply taken over; the pid, host and start time inside are for the error message only."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        while True:
            try:  # O_NOFOLLOW: truncating a link to a user's file would overwrite that file
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
                raise WorkdirInUse(f'{self.path} is a symbolic link (to {os.readlink(self.path)}), not a lock file '
                                   'vitjax wrote; remove the link or pass another --workdir') from None
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


class LeaseLock:
    """The run lock of a URL workdir. Object stores have no flock and no process to outlive, so the lock is an
    object naming its holder with a heartbeat that a thread of the run refreshes every `every` seconds, whatever
    the run is doing (compiling, preparing a dataset, evaluating); a lock not refreshed for `lease` seconds
    belonged to a run that died (kill -9, a lost VM) and is taken over. Check-then-write is not atomic: two
    runs started within a second of each other on one workdir can both start; the re-read after writing
    narrows that window. A lock object this code cannot read (not JSON, no numeric heartbeat) is dated by the
    store's own time of writing instead, and refused or taken over like any other."""

    def __init__(self, workdir: str, lease: float = 300.0, every: float = 60.0):
        self.path = epath.Path(join(workdir, LOCK_FILE))
        held = self._read()
        if held is not None:
            now = time.time()
            problem = _lease_problem(held, now, lease)
            age = now - (self._written() if problem else held['heartbeat'])
            holder = (f'its lock {self.path} {problem}, last written {age:.0f} s ago' if problem else
                      f"pid {held.get('pid')} on {held.get('host')} since {held.get('since')}, alive {age:.0f} s ago")
            if age < lease:
                raise WorkdirInUse(
                    f'{workdir} is in use by another run ({holder}); wait for it to finish or stop it, or pass '
                    f'another --workdir. A run that died without releasing it gives it up {lease - age:.0f} s from '
                    f'now (or delete {self.path})')
            print(f'warning: {workdir}: took over the lock of a run that stopped ({holder}; the lease is '
                  f'{lease:.0f} s)', file=sys.stderr)
        self.token = f'{socket.gethostname()}:{os.getpid()}:{time.time_ns()}'
        self.since = time.strftime('%Y-%m-%d %H:%M:%S')
        self._beat()
        time.sleep(0.5)
        if _token(self._read()) != self.token:
            raise WorkdirInUse(f'{workdir}: another run took the lock at the same moment; pass another --workdir')
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, args=(every,), daemon=True, name='vitjax-lease')
        self._thread.start()

    def _read(self) -> Any:
        """None where there is no lock; what it holds, or _NOT_JSON."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (ValueError, RecursionError):  # UnicodeDecodeError included; RecursionError: nesting
            return _NOT_JSON

    def _written(self) -> float:
        try:
            return float(self.path.stat().mtime)
        except Exception:  # a store that does not say: as old as can be
            return 0.0

    def _beat(self) -> None:
        self.path.write_text(json.dumps({'token': self.token, 'pid': os.getpid(), 'host': socket.gethostname(),
                                         'since': self.since, 'heartbeat': time.time()}))

    def _heartbeat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self._beat()
            except Exception as e:  # a store briefly unreachable: the next beat may get through
                print(f'warning: could not refresh the workdir lock {self.path}: {e}', file=sys.stderr)

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if _token(self._read()) == self.token:
            self.path.unlink()


_NOT_JSON = object()


def _token(held: Any) -> Any:
    return held.get('token') if isinstance(held, dict) else None


def _lease_problem(held: Any, now: float, lease: float) -> Optional[str]:
    """What makes a lock object unusable as one (None: nothing)."""
    if held is _NOT_JSON:
        return 'is not JSON'
    if not isinstance(held, dict):
        return f'holds {json.dumps(held)[:40]}, not a JSON object'
    if 'heartbeat' not in held:
        return 'has no heartbeat'
    beat = held['heartbeat']
    shown = json.dumps(beat)[:40]
    if isinstance(beat, bool) or not isinstance(beat, (int, float)) or not beat >= 0:  # NaN fails >= too
        return f'has heartbeat {shown}, not a time'
    if beat > now + lease:  # infinity included: it would hold the lock for ever
        return f'has heartbeat {shown}, a time in the future'
    return None


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
        with open(path, errors='replace') as f:  # what another tool left there is shown, not decoded
            return f.read(200).strip() or 'pid unknown'
    except OSError:
        return 'pid unknown'


def complete_steps(workdir: str) -> list[int]:
    """Steps with a finished checkpoint, as orbax judges them: on a local disk it writes into
    `<step>.orbax-checkpoint-tmp*` and renames when complete, on an object store it writes
    `<step>/commit_success.txt` last, so a write cut off by kill -9 never counts (it is cleaned at the next
    save); `<step>.corrupt` is a checkpoint a resume found damaged and set aside."""
    from orbax.checkpoint.path import step as ocp_step
    root = epath.Path(join(workdir, 'checkpoints'))
    return sorted(ocp_step.checkpoint_steps(root)) if root.is_dir() else []


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
    try:
        saved = json.loads(epath.Path(join(workdir, CONFIG_FILE)).read_text())
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
    config_changes.jsonl so the record shows every setting a run was trained with. On an object store each
    write replaces a whole object (atomic there); the append is a read and a rewrite."""
    if is_url(workdir):
        epath.Path(join(workdir, CONFIG_FILE)).write_text(json.dumps(config, indent=2) + '\n')
        if changes:
            log = epath.Path(join(workdir, CHANGES_FILE))
            log.write_text((log.read_text() if log.exists() else '') + _changes_line(changes))
        return
    path = os.path.join(workdir, CONFIG_FILE)
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(json.dumps(config, indent=2) + '\n')
    os.replace(tmp, path)
    if changes:
        with open(os.path.join(workdir, CHANGES_FILE), 'a') as f:
            f.write(_changes_line(changes))


def _changes_line(changes: dict) -> str:
    return json.dumps({'time': time.strftime('%Y-%m-%dT%H:%M:%S'),
                       'changes': {k: {'from': a, 'to': b} for k, (a, b) in changes.items()}}) + '\n'
