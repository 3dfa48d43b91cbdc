"""Model directories: `params.safetensors` (flat '/'-joined Flax names) + `config.json`. No pickle anywhere.

Writes are atomic and never destroy what a user had: everything goes into a temporary sibling directory that
replaces the target only when complete, and only if the target is absent, empty or a model directory vitjax
wrote (its config.json lists every file in it). A `kill -9` at any point leaves the target complete (old or
new copy); what it leaves beside it is cleared, or restored, by the next save or load of that path.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Union

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from vitjax import storage
from vitjax.models import ARCHITECTURES, Model, PretrainedCfg, architecture_of, checked_model, img_size_of, model_config
from vitjax.models.vit import unstack_blocks

FORMAT, VERSION = 'vitjax', 1
PARAMS_FILE, CONFIG_FILE = 'params.safetensors', 'config.json'
LEGACY_FILES = (PARAMS_FILE, CONFIG_FILE, 'parity.json')  # what a directory written before `files` was recorded holds


def flatten(params: Mapping) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep='/').items()}


def unflatten(flat: Mapping[str, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep='/')


def param_shapes(model: Model) -> dict[str, tuple[int, ...]]:
    h, w = img_size_of(model)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct((1, h, w, model.in_chans),
                                                                                    np.float32))
    return {k: tuple(v.shape) for k, v in flatten_shapes(shapes['params']).items()}


def flatten_shapes(tree: Mapping) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep='/')


def check_params(flat: Mapping[str, np.ndarray], expected: Mapping[str, tuple], what: str) -> None:
    """Strict match of names and shapes; the error lists every mismatch."""
    missing = sorted(set(expected) - set(flat))
    unexpected = sorted(set(flat) - set(expected))
    wrong = sorted(f'{k}: {tuple(flat[k].shape)} != expected {expected[k]}'
                   for k in set(flat) & set(expected) if tuple(flat[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        lines = [f'{what} does not match the model:']
        lines += [f'  missing: {k}' for k in missing] + [f'  unexpected: {k}' for k in unexpected]
        lines += [f'  wrong shape: {k}' for k in wrong]
        raise ValueError('\n'.join(lines))


FLOAT_DTYPES = ('float32', 'bfloat16', 'float16', 'float64')  # what params may be stored as


def float32_params(flat: Mapping[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
    """The params as float32, refused (one error naming the keys) unless of a float dtype and finite as float32:
    an int8 or bool file would predict garbage, a NaN would surface only as a NaN loss."""
    bad = sorted(f'{v.dtype.name}: {k}' for k, v in flat.items() if v.dtype.name not in FLOAT_DTYPES)
    if bad:
        raise ValueError(f"{what}: params must be floats ({', '.join(FLOAT_DTYPES)}); got {_show(bad)}")
    out, nonfinite = {}, []
    for k, v in flat.items():
        out[k] = v = v.astype(np.float32, copy=False)
        if not np.isfinite(v).all():
            nan, inf = int(np.isnan(v).sum()), int(np.isinf(v).sum())
            nonfinite.append(f"{k} ({', '.join(f'{n} {w}' for n, w in ((nan, 'NaN'), (inf, 'Inf')) if n)})")
    if nonfinite:
        raise ValueError(f'{what}: non-finite values in {_show(nonfinite)}')
    return out


def as_tuples(v: Any) -> Any:
    """JSON lists back to tuples (nested, dict values too): module attributes stay hashable."""
    if isinstance(v, dict):
        return {k: as_tuples(x) for k, x in v.items()}
    return tuple(as_tuples(x) for x in v) if isinstance(v, list) else v


def model_from_config(cfg: Mapping[str, Any], **overrides: Any) -> Model:
    """The module a config describes, its field types and ranges checked (one error listing every problem)."""
    arch = cfg.get('architecture', 'vit')
    if arch not in ARCHITECTURES:
        raise ValueError(f'unknown architecture {arch!r} (known: {sorted(ARCHITECTURES)})')
    fields, pre = cfg.get('model'), cfg.get('pretrained_cfg', {})
    if not isinstance(fields, dict) or not isinstance(pre, dict):
        raise ValueError("'model' and 'pretrained_cfg' must be JSON objects")
    return checked_model(ARCHITECTURES[arch], {**as_tuples(fields), **overrides}, as_tuples(pre))


def save(path: Union[str, os.PathLike], model: Model, variables: Mapping, *,
         name: str = '', extra_json: Optional[Mapping[str, Any]] = None, meta: Optional[Mapping] = None) -> Path:
    """Write a model directory atomically. `extra_json` maps file names to JSON objects written beside it.

    Refuses (ValueError, before any work) a `path` that is not absent, empty or a model directory vitjax wrote."""
    path = _local(path)
    check_writable_model_dir(path)
    if getattr(model, 'scan_blocks', False):  # on disk, blocks are always stored one by one (timm's layout)
        model, variables = model.clone(scan_blocks=False), {'params': unstack_blocks(variables['params'])}
    flat = flatten(variables['params'])
    check_params(flat, param_shapes(model), 'params to save')
    float32_params(flat, 'params to save')  # nothing load would refuse
    files = {CONFIG_FILE: None, **(extra_json or {})}
    bad = [f for f in files if not f.endswith('.json') or os.sep in f or f.startswith('.')]
    if bad:
        raise ValueError(f'extra_json names must be plain *.json file names, got {bad}')
    config = {'format': FORMAT, 'version': VERSION, 'architecture': architecture_of(model), 'model_name': name,
              'model': model_config(model), 'pretrained_cfg': _cfg_dict(model.pretrained_cfg), **(meta or {}),
              'files': sorted({PARAMS_FILE, *files})}  # what a later save may replace: nothing else is ours
    path.parent.mkdir(parents=True, exist_ok=True)
    _recover(path)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{path.name}.tmp-', dir=path.parent))
    lock = os.open(tmp, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a live save: another process's _recover leaves it alone
        save_file({k: np.asarray(v, order='C') for k, v in flat.items()}, str(tmp / PARAMS_FILE),
                  metadata={'format': FORMAT})
        config['params_sha256'] = sha256(tmp / PARAMS_FILE)  # safetensors has no checksum of its own
        for fname, obj in {**files, CONFIG_FILE: config}.items():
            (tmp / fname).write_text(json.dumps(obj, indent=2) + '\n')
        mask = umask()  # mkdtemp makes 0700 and safetensors 0600: a colleague could not read the model
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        _install(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        os.close(lock)
    return path


# -- where we write: never over what a user had, replaced atomically, leftovers of a kill cleared --------------
def umask() -> int:
    try:  # read it without setting it: os.umask's set-and-restore races with threads creating files (orbax)
        with open('/proc/self/status') as f:
            return int(next(line for line in f if line.startswith('Umask:')).split()[1], 8)
    except (OSError, StopIteration, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def _local(path: Union[str, os.PathLike]) -> Path:
    if storage.is_url(path):  # Path('gs://b/m') is the local 'gs:/b/m': it would be written under the cwd
        raise ValueError(f'cannot write {path}: vitjax writes model directories and output files locally (an '
                         'object store has no atomic rename); write it locally and copy it')
    return Path(path)


def _is_config(path: Path) -> bool:
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and cfg.get('format') == FORMAT


def _show(names: Iterable[str]) -> str:
    names = sorted(names)
    return ', '.join(names[:5]) + (f' and {len(names) - 5} more' if len(names) > 5 else '')


def _foreign(path: Path) -> Optional[str]:
    """What is at `path` if `save` must not replace it; None for absent, empty, or a model directory holding
    only the files its config.json lists (a directory written before that list: the files we always wrote)."""
    if path.is_symlink():
        return 'a symbolic link'
    if not path.exists():
        return None
    if not path.is_dir():
        return 'a file, not a directory'
    names = set(os.listdir(path))
    if not names:
        return None
    if not _is_config(path / CONFIG_FILE):
        return f'a directory holding {_show(names)}, not a vitjax model directory'
    listed = json.loads((path / CONFIG_FILE).read_text()).get('files')
    ours = set(listed if isinstance(listed, list) and all(isinstance(f, str) for f in listed) else LEGACY_FILES)
    extra = names - ours - {CONFIG_FILE}
    return f'a model directory that also holds {_show(extra)}, which vitjax did not write' if extra else None


def check_place(path: Union[str, os.PathLike], inputs: Iterable[Union[None, str, os.PathLike]] = ()) -> None:
    """`path` is not an input, inside one or around one, and its nearest existing parent takes new entries."""
    path = _local(path)
    real = Path(os.path.realpath(path))
    for inp in inputs:
        if inp is None or not os.path.lexists(inp):
            continue
        r = Path(os.path.realpath(inp))
        if r == real or real in r.parents or r in real.parents:
            rel = 'is' if r == real else 'is inside' if r in real.parents else 'contains'
            raise ValueError(f'the output {path} {rel} the input {inp}')
    parent = path.parent
    while not parent.exists() and not parent.is_symlink() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f'cannot write {path}: {parent} is not a directory')
    try:  # os.access says yes to root on a read-only mount and cannot see quotas: try it
        os.rmdir(tempfile.mkdtemp(prefix='.vitjax-probe-', dir=parent))
    except OSError as e:
        raise ValueError(f'cannot write {path}: {parent} is not writable ({e.strerror})') from None


def check_writable_model_dir(path: Union[str, os.PathLike],
                             inputs: Iterable[Union[None, str, os.PathLike]] = ()) -> Path:
    """Raise ValueError unless `save(path, ...)` may write there; call it before expensive work."""
    path = _local(path)
    if path.name in ('', '..'):  # '.' or '..': a rename cannot replace them
        raise ValueError(f'{path}: name the model directory itself')
    check_place(path, inputs)
    what = _foreign(path)
    if what:
        raise ValueError(f'{path} is {what}; vitjax replaces only a model directory it wrote: pass a new or '
                         'empty directory')
    return path


def _locked(path: Union[str, os.PathLike]) -> bool:
    """Whether a live writer holds it: the kernel drops a dead process's flock."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _clear_leftovers(path: Path) -> None:
    """Delete the `.NAME.tmp-*` beside `path` that killed writers left (unlocked; directories holding only what
    save writes)."""
    prefix = f'.{path.name}.tmp-'
    with contextlib.suppress(OSError):
        for e in os.scandir(path.parent):
            if not e.name.startswith(prefix) or e.is_symlink() or _locked(e.path):
                continue
            if e.is_file():
                os.unlink(e.path)
            elif e.is_dir() and all(n == PARAMS_FILE or n.endswith('.json') for n in os.listdir(e.path)):
                shutil.rmtree(e.path, ignore_errors=True)


def _recover(path: Path) -> None:
    """After a kill: bring back the previous copy if `path` went missing between the fallback's two renames
    (`.NAME.old` is complete by construction), drop a superseded one, and clear unfinished writes."""
    old = path.parent / f'.{path.name}.old'
    if old.is_dir() and not old.is_symlink() and _is_config(old / CONFIG_FILE):
        if not os.path.lexists(path):
            os.replace(old, path)
        elif _foreign(old) is None and _foreign(path) is None:
            shutil.rmtree(old, ignore_errors=True)
    _clear_leftovers(path)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE), so `b` is never missing; False where the
    OS or file system cannot."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _install(tmp: Path, path: Path) -> None:
    check_writable_model_dir(path)  # again: the directory may have changed during the work
    if not path.exists() or not any(path.iterdir()):
        os.replace(tmp, path)  # rename(2) replaces an empty directory
    elif _exchange(tmp, path):
        shutil.rmtree(tmp, ignore_errors=True)  # it now holds the previous copy
    else:
        old = path.parent / f'.{path.name}.old'
        os.replace(path, old)  # a kill before the next rename leaves `path` missing: _recover restores `old`
        try:
            os.replace(tmp, path)
        except BaseException:
            os.replace(old, path)
            raise
        shutil.rmtree(old, ignore_errors=True)


def write_file(path: Union[str, os.PathLike], write: Callable[[str], None], ours: Callable[[Path], bool]) -> Path:
    """Write a file through a hidden temporary sibling renamed into place: never half-written under its name,
    nothing left behind on failure, modes from the umask. Replaces only a file that `ours` recognises."""
    path = _local(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.tmp-', suffix=path.suffix, dir=path.parent)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        check_output_file(path, ours)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
    return path


def check_output_file(path: Union[str, os.PathLike], ours: Callable[[Path], bool],
                      inputs: Iterable[Union[None, str, os.PathLike]] = ()) -> Path:
    """Raise ValueError unless `write_file(path, ..., ours)` may write there; call it before expensive work."""
    path = _local(path)
    check_place(path, inputs)
    what = ('a symbolic link' if path.is_symlink() else 'a directory' if path.is_dir() else
            'a file vitjax did not write' if path.exists() and not ours(path) else None)
    if what:
        raise ValueError(f'{path} is {what}; vitjax replaces only files it wrote: pass a new file name')
    return path


def sha256(path: Union[str, os.PathLike]) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 22), b''):
            h.update(chunk)
    return h.hexdigest()


def _cfg_dict(cfg: PretrainedCfg) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.__dict__.items()}


@contextlib.contextmanager
def _fetched(url: str, names: Iterable[str]):
    """A local copy of the files `names` of a model directory on an object store; errors name the store's files."""
    url = str(url).rstrip('/')
    if not storage.exists(f'{url}/{CONFIG_FILE}'):
        raise FileNotFoundError(f'{url}/{CONFIG_FILE} not found: {url} is not a vitjax model directory')
    local = storage.fetch_dir(url, names)
    try:
        yield local
    except (ValueError, OSError) as e:
        try:
            named = type(e)(str(e).replace(local, url)) if local in str(e) else None
        except TypeError:  # a type that takes more than a message
            named = None
        if named is None:
            raise
        raise named from None
    finally:
        shutil.rmtree(local, ignore_errors=True)


def read_dir_config(path: Union[str, os.PathLike]) -> dict[str, Any]:
    if storage.is_url(path):  # a model on an object store (a run's gs://.../model): its config alone
        with _fetched(path, [CONFIG_FILE]) as local:
            return read_dir_config(local)
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not os.path.lexists(path):  # a save killed between the fallback's two renames: bring the old copy back
        with contextlib.suppress(OSError):
            _recover(path)
    if not cfg_file.is_file():
        raise FileNotFoundError(f'{cfg_file} not found: {path} is not a vitjax model directory')
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f'{cfg_file} is not valid JSON: {e}') from None
    if not isinstance(cfg, dict) or cfg.get('format') != FORMAT or 'model' not in cfg:
        raise ValueError(f'{cfg_file} is not a vitjax config (format='
                         f'{cfg.get("format") if isinstance(cfg, dict) else None!r})')
    return cfg


def read_model(path: Union[str, os.PathLike]) -> tuple[Model, dict]:
    """`(model, params)` from a model directory (a local path or gs://), checked against each other. Load-time
    changes (another head or image size) are `vitjax.load`'s (vitjax/loader.py, vitjax/adapt.py)."""
    if storage.is_url(path):  # safetensors reads local files: the two files read here are fetched first
        with _fetched(path, [CONFIG_FILE, PARAMS_FILE]) as local:
            return read_model(local)
    path = Path(path)
    cfg = read_dir_config(path)
    try:  # everything the config says is checked before the model is traced or the params read
        model = model_from_config(cfg)
        shapes = param_shapes(model)
    except (ValueError, TypeError) as e:
        raise ValueError(f'{path / CONFIG_FILE}: {e}') from None
    expected_sha = cfg.get('params_sha256')
    if expected_sha and (path / PARAMS_FILE).is_file() and sha256(path / PARAMS_FILE) != expected_sha:
        raise ValueError(f'{path / PARAMS_FILE} does not match the checksum in {path / CONFIG_FILE}: the file '
                         'is corrupt or was changed after it was written')
    try:
        flat = load_file(str(path / PARAMS_FILE))
    except Exception as e:  # safetensors raises several types for truncated or corrupt files
        raise ValueError(f'cannot read {path / PARAMS_FILE}: {e}') from None
    check_params(flat, shapes, str(path / PARAMS_FILE))
    cast = sorted({v.dtype.name for v in flat.values()} - {'float32'})
    flat = float32_params(flat, str(path / PARAMS_FILE))
    if cast:  # the model computes in float32, and training from float16 params would overflow to NaN
        print(f"note: {path / PARAMS_FILE}: {', '.join(cast)} params cast to float32", file=sys.stderr)
    return model, unflatten(flat)
