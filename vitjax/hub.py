"""timm's pretrained weights from the Hugging Face hub, without torch or timm.

A timm hub repo (`timm/<arch>.<tag>`) holds `config.json` (architecture, model_args, num_classes,
pretrained_cfg) and `model.safetensors` (timm's state dict). The architecture's vitjax config comes from the
zoo table (`vitjax/zoo.json`, read off timm's own models by porting's config readers), the tensors go
through the same declarative name tables as `porting.convert`, in numpy. Downloads, the cache, revisions,
`HF_HUB_OFFLINE` and tokens are huggingface_hub's own; config and weights come from one commit, and every
weights file is checked against the sha256 the hub names it by before this process first uses it.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
from collections.abc import MutableMapping
from typing import Any, Optional

import numpy as np

PREFIX = 'hf-hub:'
WEIGHTS, PICKLE, CONFIG = 'model.safetensors', 'pytorch_model.bin', 'config.json'
WIDTHS = {'F64': 8, 'F32': 4, 'F16': 2, 'BF16': 2, 'I64': 8, 'I32': 4, 'I16': 2, 'I8': 1, 'U64': 8, 'U32': 4,
          'U16': 2, 'U8': 1, 'BOOL': 1, 'F8_E4M3': 1, 'F8_E5M2': 1}  # safetensors' dtypes, bytes per element
# integer buffers timm recomputes at build time (Swin, Swin V2, BEiT, relpos ViT): older files hold them,
# timm's checkpoint filters drop them
INDEX_BUFFERS = ('relative_position_index',)
PRETRAINED_FIELDS = ('input_size', 'mean', 'std', 'crop_pct', 'crop_mode', 'interpolation')
_VERIFIED: dict[str, tuple] = {}  # blob -> (size, mtime, inode) when this process found its sha256 right


class HubError(ValueError):
    pass


@functools.lru_cache(maxsize=None)
def zoo() -> dict[str, Any]:
    from importlib import resources
    return json.loads(resources.files('vitjax').joinpath('zoo.json').read_text())


def is_hub_name(name: Any, local: bool = True) -> bool:
    """`hf-hub:org/repo`, or a timm name of the zoo (`arch`, `arch.tag`, `arch.tag@rev`); with `local`, an
    existing path of that name is a path (what `vitjax.load` takes), never a hub name."""
    name = str(name)
    if name.startswith(PREFIX):
        return True
    if (local and os.path.exists(name)) or '://' in name:
        return False
    arch = name.partition('@')[0].partition('.')[0]
    return arch in zoo()['architectures'] or arch in zoo()['left_out']  # the latter for the reason it is


def repo_of(name: str) -> tuple[str, str]:
    """(hub repo id, `arch.tag` or '' when the repo is named directly)."""
    if name.startswith(PREFIX):
        return name[len(PREFIX):].strip('/'), ''
    arch, _, tag = name.partition('.')
    z = zoo()
    if arch not in z['architectures']:
        why = z['left_out'].get(arch)
        import difflib
        close = difflib.get_close_matches(arch, z['architectures'], n=5, cutoff=0.6)
        raise HubError(f'{arch!r}: ' + (f'vitjax does not convert it ({why})' if why else 'not a timm pretrained '
                       'architecture vitjax knows') + (f'; did you mean {", ".join(close)}?' if close else ''))
    tags = z['architectures'][arch]['tags']
    tag = tag or tags[0]
    full = f'{arch}.{tag}'
    if full not in z['tags']:
        raise HubError(f'unknown tag {tag!r} for {arch} (timm has: {", ".join(tags)})')
    entry = z['tags'][full]
    if not entry.get('hf_hub_id'):  # timm has these from a url only (a pickled .pth.tar)
        raise HubError(f'{full} has no Hugging Face hub copy (timm downloads it from {entry.get("url")}, a '
                       f'pickle): python -m porting.convert --model {full} --out DIR, then load DIR')
    return entry['hf_hub_id'], full


def _download(repo: str, filename: str, revision: Optional[str]) -> str:
    """A file of the repo through huggingface_hub's cache, checked (`_check`) whether downloaded now or before:
    a cached file may be another process's download that nobody checked."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    from huggingface_hub.errors import RevisionNotFoundError
    try:
        path = hf_hub_download(repo, filename, revision=revision)
    except LocalEntryNotFoundError as e:  # (a subclass of EntryNotFoundError: first)
        if filename == WEIGHTS and isinstance(try_to_load_from_cache(repo, PICKLE, revision=revision), str):
            raise FileNotFoundError(filename) from None  # the cached snapshot has the pickle only
        raise HubError(f'{repo}: {filename} is not in the huggingface_hub cache and cannot be downloaded now '
                       f'({"HF_HUB_OFFLINE is set" if _offline() else "no connection"}): '
                       f'{str(e).splitlines()[0]}') from None
    except EntryNotFoundError:
        raise FileNotFoundError(filename) from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise HubError(f'{repo}{"@" + revision if revision else ""}: {type(e).__name__}: '
                       f'{str(e).splitlines()[0]}') from None
    _check(path, repo)
    return path


def _offline() -> bool:
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE)


def _intact(path: str) -> Optional[bool]:
    """Whether the blob behind `path` has the sha256 it is named by (None: not named by one, as a small git
    file); hashed once per process while its size, mtime and inode stay the same."""
    blob = os.path.realpath(path)
    if not re.fullmatch(r'[0-9a-f]{64}', os.path.basename(blob)):
        return None
    st = os.stat(blob)
    key = (st.st_size, st.st_mtime_ns, st.st_ino)
    if _VERIFIED.get(blob) != key:
        h = hashlib.sha256()
        with open(blob, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 24), b''):
                h.update(chunk)
        if h.hexdigest() != os.path.basename(blob):
            return False
        _VERIFIED[blob] = key
    return True


def _check(path: str, repo: str, why: str = '') -> Optional[bool]:
    """`_intact`, a damaged file evicted (where it is the cache's to evict) with one error."""
    try:
        ok = _intact(path)
    except OSError as e:
        raise HubError(f'{repo}: cannot read {path} ({e.strerror})') from None
    if ok is False:
        raise HubError(f'{repo}: the download of {path} is damaged ({why}its sha256 is not the one the hub '
                       f'named it by); {_evict(path, repo)}')
    return ok


def _evict(path: str, repo: str) -> str:
    """Remove a damaged blob and its snapshot link, never anything outside the repo's folder of the cache; what
    was done, for the error."""
    from huggingface_hub import constants
    root = os.path.realpath(os.path.join(constants.HF_HUB_CACHE, 'models--' + repo.replace('/', '--')))
    blob = os.path.realpath(path)
    if any(os.path.commonpath([root, p]) != root for p in (blob, os.path.realpath(os.path.dirname(path)))):
        return f'it lies outside the huggingface_hub cache ({root}), so vitjax left it as it is'
    try:
        for p in (blob, path):  # the blob first: a link to nothing is downloaded again, as a missing file is
            if os.path.lexists(p):
                os.unlink(p)
    except OSError as e:
        return f'it could not be removed from the cache ({e.strerror}): delete {blob} and try again'
    _VERIFIED.pop(blob, None)
    return 'removed it from the cache: try again'


def _header(header: Any, room: int, skip: tuple[str, ...]) -> dict[str, tuple[str, tuple, int, int]]:
    """A safetensors header's float tensors {name: (dtype, shape, start, end)}, every field's type and extent
    checked (a ValueError naming the tensor and field); integer buffers timm drops are dropped."""
    if not isinstance(header, dict):
        raise ValueError(f'the header is a JSON {type(header).__name__}, not an object')
    out = {}
    for k, v in header.items():
        if k == '__metadata__':
            continue
        dtype, shape, span = (v.get(f) if isinstance(v, dict) else None for f in ('dtype', 'shape', 'data_offsets'))
        if not isinstance(dtype, str) or dtype not in WIDTHS:
            raise ValueError(f'{k}: dtype={dtype!r}: not a safetensors dtype')
        if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
            raise ValueError(f'{k}: shape={shape!r}: must be a list of integers >= 0')
        if not isinstance(span, list) or len(span) != 2 or not all(type(s) is int for s in span):
            raise ValueError(f'{k}: data_offsets={span!r}: must be a list of 2 integers')
        lo, hi = span
        if hi > room:
            raise ValueError(f'{k} lies past the end of the file (truncated)')
        if not 0 <= lo <= hi or hi - lo != WIDTHS[dtype] * math.prod(shape):
            raise ValueError(f'{k}: data_offsets={span} do not hold a {dtype} tensor of shape {shape}')
        if dtype not in ('F64', 'F32', 'F16', 'BF16'):
            if k.endswith(skip + INDEX_BUFFERS):
                continue
            raise ValueError(f'{k} is {dtype}, not a float, and not a buffer timm drops')
        out[k] = dtype, tuple(shape), lo, hi
    return out


class _Tensors(MutableMapping):
    """A safetensors file as {name: float32 numpy}, each tensor read when asked for (bfloat16 via ml_dtypes:
    numpy has none). Read, not mapped: the tables copy one tensor at a time, so the file's tensors and the
    params are never all in memory together. The header is checked whole up front; a truncated or garbled
    file is one error (evicted from the cache when it is not the file the hub named)."""

    def __init__(self, path: str, repo: str, skip: tuple[str, ...] = ()):
        import ml_dtypes
        self.path, self.repo, self.changed = path, repo, {}
        self.dtypes = {'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16, 'F64': np.float64}
        try:
            size = os.path.getsize(path)
            with open(path, 'rb') as f:
                n = int.from_bytes(f.read(8), 'little')
                if not 2 <= n <= min(100 << 20, size - 8):
                    raise ValueError(f'header length {n}')
                header = json.loads(f.read(n))
            self.start = 8 + n
            self.header = _header(header, size - self.start, tuple(skip))
        except (ValueError, OSError) as e:  # JSON and UTF-8 errors are ValueErrors
            self._fail(e)

    def _fail(self, e):
        intact = _check(self.path, self.repo, f'{e}; ')  # raises, evicting it, when damaged
        raise HubError(f'{self.repo}: {self.path} is not a safetensors file vitjax reads ({e})' + (
            "; it is the file the hub published (its sha256 matches), so it stays in the cache" if intact else ''))

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self.changed:
            return self.changed[key]
        dtype, shape, lo, hi = self.header[key]
        try:
            raw = np.fromfile(self.path, np.uint8, hi - lo, offset=self.start + lo)
            if raw.size != hi - lo:
                raise OSError(f'{key}: short read')
        except OSError as e:
            self._fail(e)
        return raw.view(self.dtypes[dtype]).reshape(shape).astype(np.float32, copy=False)

    def __setitem__(self, key: str, value: np.ndarray) -> None:
        self.changed[key] = value

    def __delitem__(self, key: str) -> None:
        raise TypeError('read-only')

    def __iter__(self):
        return iter(self.header)

    def __len__(self) -> int:
        return len(self.header)


def adapt_in_chans(w: np.ndarray, in_chans: int) -> np.ndarray:
    """timm's `adapt_input_conv` on an OIHW kernel: 1 channel sums the RGB filters; N > 3 repeats them and
    scales by 3 / N."""
    o, i, kh, kw = w.shape
    if in_chans == i:
        return w
    if in_chans == 1:
        return w.reshape(o, i // 3, 3, kh, kw).sum(2) if i > 3 else w.sum(1, keepdims=True)
    if i != 3:
        raise HubError(f'cannot adapt a {i}-channel input conv to {in_chans} channels (timm cannot either)')
    return np.tile(w, (1, -(-in_chans // 3), 1, 1))[:, :in_chans] * (3 / in_chans)


def split_revision(name: str, revision: Optional[str] = None) -> tuple[str, Optional[str]]:
    """`name@rev` (timm's spelling of a pinned hub revision) -> (name, rev); a `revision` argument wins."""
    base, at, rev = str(name).partition('@')
    return base, revision or (rev if at else None)


def read_hub_config(name: str, revision: Optional[str] = None) -> dict[str, Any]:
    """A hub name -> the config of a vitjax model directory (what `vitjax.io.read_dir_config` returns), from the
    repo's config.json alone: nothing else is downloaded. `hub.commit` is the commit it came from (the revision
    resolved now: a moved `main` is seen), at which `read_params` reads the weights."""
    name, revision = split_revision(name, revision)
    if revision is not None and not isinstance(revision, str):
        raise HubError(f'{name}: revision={revision!r}: must be a string (a commit, branch or tag)')
    repo, full = repo_of(name)
    try:
        path = _download(repo, CONFIG, revision)
    except FileNotFoundError:
        raise HubError(f'{repo} has no {CONFIG}: not a timm model repo') from None
    where = f'{repo}: {CONFIG} ({path})'
    try:
        with open(path, 'rb') as f:
            hub_cfg = json.load(f)
    except ValueError as e:  # JSON and UTF-8 errors
        raise HubError(f'{where} is not valid JSON ({e})') from None
    if not isinstance(hub_cfg, dict):
        raise HubError(f'{where} is not a JSON object')
    snap, commit = os.path.split(os.path.dirname(os.path.normpath(path)))  # huggingface_hub's snapshots/<commit>/
    commit = commit if os.path.basename(snap) == 'snapshots' and re.fullmatch(r'[0-9a-f]{40}', commit) else revision
    cfg = _config(hub_cfg, repo, full, where)
    cfg['source'] = f'{PREFIX}{repo}' + (f'@{revision}' if revision else '')
    cfg['hub'].update(revision=revision, commit=commit)
    return cfg


def _config(hub_cfg: dict, repo: str, full: str, where: str) -> dict[str, Any]:
    """A hub config.json as a vitjax config, every field it takes checked (the model directory's checks, with
    the hub file's field names): one HubError naming the file and every problem."""
    from vitjax import io, weights
    from vitjax.models import ARCHITECTURES, PretrainedCfg, type_problems
    z, arch = zoo(), hub_cfg.get('architecture')
    if full:  # a timm name's own architecture: some share a repo with another (the QuickGELU CLIP towers'
        arch = full.partition('.')[0]  # weights are in the plain CLIP repos, whose config.json names the plain one)
    elif isinstance(arch, str):  # a zoo tag's repo named directly: the tag's own config (a projector's width)
        tags = [t for t, e in z['tags'].items()
                if t.partition('.')[0] == arch and (e.get('hf_hub_id') or f'timm/{t}') == repo]
        full = tags[0] if len(tags) == 1 else ''
    if not isinstance(arch, str) or arch not in z['architectures']:
        why = z['left_out'].get(arch) if isinstance(arch, str) else None
        raise HubError(f'{where}: architecture {arch!r} ' + (f'does not convert ({why})' if why else
                       'is not one of timm\'s ViT families that vitjax converts'))
    row = z['architectures'][arch]
    table, cls = weights.get('timm', row['family']), ARCHITECTURES[row['family']]
    config = dict(row['config'], **z['tags'].get(full, {}).get('config', {}))
    model_args, pre = hub_cfg.get('model_args') or {}, hub_cfg.get('pretrained_cfg') or {}
    for k, v in (('model_args', model_args), ('pretrained_cfg', pre)):
        if not isinstance(v, dict):
            raise HubError(f'{where}: {k}={v!r}: must be a JSON object')
    model_args, img = dict(model_args), model_args.get('img_size')
    if isinstance(img, list) and img and all(type(s) is int for s in img) and len(set(img)) == 1:
        model_args['img_size'] = img[0]  # timm records (224, 224); the readers say 224
    same = lambda k: json.dumps(config.get(k)) == json.dumps(model_args[k])  # JSON's view: tuples are lists
    unknown = sorted(k for k in model_args if k not in table.create_kwargs and not same(k))
    if unknown:
        raise HubError(f'{repo}: model_args {unknown} have no torch-free mapping; convert it with torch: '
                       f'python -m porting.convert --model {full or arch} --out DIR')
    args = {k: v for k, v in model_args.items() if k in table.create_kwargs}
    num_classes = hub_cfg.get('num_classes', config.get('num_classes', 0))
    shown = {k: v for k, v in pre.items() if k in PRETRAINED_FIELDS and v is not None}
    names, desc = hub_cfg.get('label_names'), hub_cfg.get('label_descriptions')
    problems = (type_problems(cls, io.as_tuples(args), 'model_args.') + type_problems(cls, {'num_classes': num_classes})
                + type_problems(PretrainedCfg, io.as_tuples(shown), 'pretrained_cfg.'))
    for k, v, t, what in (('pretrained_cfg.first_conv', pre.get('first_conv'), str, 'a string'),
                          ('label_names', names, list, 'a list'), ('label_descriptions', desc, dict, 'an object')):
        if v is not None and not isinstance(v, t):
            problems.append(f'{k}={repr(v)[:60]}: must be {what}')
    if problems:
        raise HubError(f'{where}: ' + '; '.join(problems))
    config.update(args, num_classes=num_classes)
    img = config.get('img_size', 224)
    size = shown.get('input_size') or [3, *((img, img) if isinstance(img, int) else img)]
    cfg = {'format': 'vitjax', 'architecture': row['family'], 'model_name': full or f'{PREFIX}{repo}',
           'model': config, 'pretrained_cfg': dict(shown, input_size=[config.get('in_chans', 3), *size[1:]],
                                                   **({'tag': full.partition('.')[2]} if full else {})),
           'hub': {'repo': repo, 'architecture': arch, 'first_conv': pre.get('first_conv') or 'patch_embed.proj'}}
    try:  # ranges, before anything is read or traced
        io.model_from_config(cfg)
    except (ValueError, TypeError) as e:
        raise HubError(f'{where}: {e}') from None
    labels = _label_names(names, desc, full, num_classes)
    if labels:
        cfg['class_names'] = labels
    return cfg


def read_params(cfg: dict[str, Any], in_chans: Optional[int] = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The weights of a `read_hub_config` config, from its commit: (the config, in_chans adapted as timm does, flat
    float32 params)."""
    import copy

    from vitjax import weights
    from vitjax.io import as_tuples, flatten
    repo = cfg['hub']['repo']
    table = weights.get('timm', cfg['architecture'])
    try:
        path = _download(repo, WEIGHTS, cfg['hub'].get('commit') or cfg['hub']['revision'])
    except FileNotFoundError:
        raise HubError(f'{repo} has no {WEIGHTS} (only a pickled {PICKLE}?), which vitjax reads only through '
                       f'torch: python -m porting.convert --model {cfg["model_name"]} --out DIR, then load DIR'
                       ) from None
    state = _Tensors(path, repo, table.buffers)
    cfg = copy.deepcopy(cfg)
    config = cfg['model']
    if in_chans is not None and in_chans != config.get('in_chans', 3):
        key = f'{cfg["hub"]["first_conv"]}.weight'
        state[key] = adapt_in_chans(state[key], in_chans)
        config['in_chans'] = cfg['pretrained_cfg']['input_size'][0] = in_chans
    try:
        params = table.from_state(state, as_tuples(config))
    except HubError:
        raise
    except ValueError as e:
        raise HubError(f'{repo}: {WEIGHTS} does not fit {cfg["model_name"]}: {e}') from None
    return cfg, flatten(params)


def _label_names(names: Any, desc: Any, full: str, num_classes: int) -> Optional[list[str]]:
    """Readable class names: the repo's own (timm stores synsets with descriptions), else the tag's label set."""
    if isinstance(names, list) and len(names) == num_classes:
        return [str(desc.get(n, n)) if isinstance(desc, dict) and isinstance(n, str) else str(n) for n in names]
    label_set = zoo()['tags'].get(full, {}).get('label_set')
    if label_set:
        from vitjax import labels
        names = labels.names(label_set)
        if len(names) == num_classes:
            return list(names)
    return None


def load(name: str, num_classes: Optional[int] = None, img_size: Any = None,
         in_chans: Optional[int] = None, revision: Optional[str] = None, **overrides: Any):
    """`(model, variables)` from hub weights, with timm's load-time changes (`vitjax.adapt`), every change
    checked before the weights are read."""
    from vitjax import io
    from vitjax.adapt import adapted, changes
    cfg = read_hub_config(str(name), revision)
    try:
        changes(io.model_from_config(cfg, **({} if in_chans is None else {'in_chans': in_chans})),
                num_classes, img_size, overrides)
    except (ValueError, TypeError) as e:
        raise HubError(f'{name}: {e}') from None
    cfg, flat = read_params(cfg, in_chans)
    try:
        model = io.model_from_config(cfg)
    except (ValueError, TypeError) as e:
        raise HubError(f'{name}: {e}') from None
    io.check_params(flat, io.param_shapes(model), str(name))
    params = io.unflatten(io.float32_params(flat, str(name)))
    return adapted(model, params, num_classes, img_size, overrides)
