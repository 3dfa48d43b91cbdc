"""timm's pretrained weights from the Hugging Face hub, without torch or timm.

A timm hub repo (`timm/<arch>.<tag>`) holds `config.json` (architecture, model_args, num_classes,
pretrained_cfg) and `model.safetensors` (timm's state dict). The architecture's vitjax config comes from the
zoo table (`vitjax/zoo.json`, read off timm's own models by porting's config readers), the tensors go
through the same declarative name tables as `porting.convert`, in numpy. Downloads, the cache, revisions,
`HF_HUB_OFFLINE` and tokens are huggingface_hub's own.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import MutableMapping
from typing import Any, Optional

import numpy as np

PREFIX = 'hf-hub:'
WEIGHTS, PICKLE, CONFIG = 'model.safetensors', 'pytorch_model.bin', 'config.json'


class HubError(ValueError):
    pass


@functools.lru_cache(maxsize=None)
def zoo() -> dict[str, Any]:
    from importlib import resources
    return json.loads(resources.files('vitjax').joinpath('zoo.json').read_text())


def list_pretrained(pattern: str = '*') -> list[str]:
    """`arch.tag` names vitjax loads from the hub, as timm's `list_pretrained` (shell-style pattern)."""
    import fnmatch
    return sorted(n for n in zoo()['tags'] if fnmatch.fnmatch(n, pattern))


def is_hub_name(name: Any) -> bool:
    """`hf-hub:org/repo`, or a timm name of the zoo (`arch`, `arch.tag`, `arch.tag@rev`) that is not a local
    path."""
    name = str(name)
    if name.startswith(PREFIX):
        return True
    if os.path.exists(name) or '://' in name:
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
    """A file of the repo through huggingface_hub's cache; a file it downloads now is checked against the
    sha256 the hub gave it (its blob name) and evicted if damaged, so nothing bad is cached as good."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    from huggingface_hub.errors import RevisionNotFoundError
    cached = try_to_load_from_cache(repo, filename, revision=revision)
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
    if not isinstance(cached, str):
        _verify(path)
    return path


def _offline() -> bool:
    from huggingface_hub import constants
    return bool(constants.HF_HUB_OFFLINE)


def _verify(path: str) -> None:
    blob = os.path.realpath(path)
    digest = os.path.basename(blob)
    if not re.fullmatch(r'[0-9a-f]{64}', digest):  # a small git file: its blob name is a git hash
        return
    h = hashlib.sha256()
    with open(blob, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 24), b''):
            h.update(chunk)
    if h.hexdigest() != digest:
        _evict(path)
        raise HubError(f'the download of {path} is damaged (its sha256 is not the one the hub gave); removed it '
                       'from the cache: try again')


def _evict(path: str) -> None:
    blob = os.path.realpath(path)
    for p in {path, blob}:
        if os.path.lexists(p):
            os.unlink(p)


class _Tensors(MutableMapping):
    """A safetensors file as {name: float32 numpy}, each tensor read when asked for (bfloat16 via ml_dtypes:
    numpy has none). Read, not mapped: the tables copy one tensor at a time, so the file's tensors and the
    params are never all in memory together. The header is checked whole up front; a truncated or garbled
    file is one error, and is evicted from the cache."""

    def __init__(self, path: str, repo: str):
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
            self.header = {k: v for k, v in header.items() if k != '__metadata__'}
            for k, v in self.header.items():
                if v['dtype'] not in self.dtypes:
                    raise ValueError(f'{k} is {v["dtype"]}, not a float')
                lo, hi = v['data_offsets']
                width = np.dtype(self.dtypes[v['dtype']]).itemsize
                if not 0 <= lo <= hi <= size - self.start or hi - lo != width * int(np.prod(v['shape'])):
                    raise ValueError(f'{k} lies past the end of the file (truncated)')
        except (ValueError, KeyError, TypeError, OSError) as e:
            self._fail(e)

    def _fail(self, e):
        _evict(self.path)
        raise HubError(f'{self.repo}: {WEIGHTS} in the cache is not a readable safetensors file ({e}); removed it '
                       'from the cache: try again') from None

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self.changed:
            return self.changed[key]
        v = self.header[key]
        lo, hi = v['data_offsets']
        try:
            raw = np.fromfile(self.path, np.uint8, hi - lo, offset=self.start + lo)
            if raw.size != hi - lo:
                raise OSError(f'{key}: short read')
        except OSError as e:
            self._fail(e)
        return raw.view(self.dtypes[v['dtype']]).reshape(v['shape']).astype(np.float32, copy=False)

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


@functools.lru_cache(maxsize=64)
def read_config(name: str, revision: Optional[str] = None) -> dict[str, Any]:
    """A hub name -> the config of a vitjax model directory (what `vitjax.io.read_config` returns), from the
    repo's config.json alone: nothing else is downloaded."""
    from porting import sources
    name, revision = split_revision(name, revision)
    repo, full = repo_of(name)
    try:
        with open(_download(repo, CONFIG, revision)) as f:
            hub_cfg = json.load(f)
    except FileNotFoundError:
        raise HubError(f'{repo} has no {CONFIG}: not a timm model repo') from None
    except json.JSONDecodeError as e:
        raise HubError(f'{repo}: {CONFIG} is not valid JSON ({e})') from None
    if not isinstance(hub_cfg, dict):
        raise HubError(f'{repo}: {CONFIG} is not a JSON object')
    # a timm name's own architecture: some share a repo with another (the QuickGELU CLIP towers' weights are in
    # the plain CLIP repos, whose config.json names the plain architecture)
    arch = full.partition('.')[0] if full else hub_cfg.get('architecture')
    z = zoo()
    if arch not in z['architectures']:
        why = z['left_out'].get(arch)
        raise HubError(f'{repo}: architecture {arch!r} ' + (f'does not convert ({why})' if why else
                       'is not one of timm\'s ViT families that vitjax converts'))
    row = z['architectures'][arch]
    source = sources.get('timm', row['family'])
    config = dict(row['config'], **z['tags'].get(full, {}).get('config', {}))
    model_args = dict(hub_cfg.get('model_args') or {})
    if isinstance(model_args.get('img_size'), list) and len(set(model_args['img_size'])) == 1:
        model_args['img_size'] = model_args['img_size'][0]  # timm records (224, 224); the readers say 224
    same = lambda k: json.dumps(config.get(k)) == json.dumps(model_args[k])  # JSON's view: tuples are lists
    unknown = sorted(k for k in model_args if k not in source.create_kwargs and not same(k))
    if unknown:
        raise HubError(f'{repo}: model_args {unknown} have no torch-free mapping; convert it with torch: '
                       f'python -m porting.convert --model {full or arch} --out DIR')
    config.update({k: v for k, v in model_args.items() if k in source.create_kwargs},
                  num_classes=int(hub_cfg.get('num_classes', config.get('num_classes', 0))))
    pre = dict(hub_cfg.get('pretrained_cfg') or {})
    img = config.get('img_size', 224)
    size = pre.get('input_size') or [3, *((img, img) if isinstance(img, int) else img)]
    cfg = {'format': 'vitjax', 'architecture': row['family'], 'model_name': full or f'{PREFIX}{repo}',
           'model': config, 'source': f'{PREFIX}{repo}' + (f'@{revision}' if revision else ''),
           'pretrained_cfg': {k: v for k, v in {
               'input_size': [config.get('in_chans', 3), *size[1:]], 'mean': pre.get('mean'), 'std': pre.get('std'),
               'crop_pct': pre.get('crop_pct'), 'crop_mode': pre.get('crop_mode'),
               'interpolation': pre.get('interpolation'), 'tag': full.partition('.')[2]}.items() if v is not None},
           'hub': {'repo': repo, 'revision': revision, 'first_conv': pre.get('first_conv') or 'patch_embed.proj'}}
    labels = _label_names(hub_cfg, full, config['num_classes'])
    if labels:
        cfg['class_names'] = labels
    return cfg


def read_params(cfg: dict[str, Any], in_chans: Optional[int] = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The weights of a `read_config` config: (the config, in_chans adapted as timm does, flat float32 params)."""
    import copy

    from porting import sources
    from vitjax.io import as_tuples, flatten
    repo, revision = cfg['hub']['repo'], cfg['hub']['revision']
    try:
        path = _download(repo, WEIGHTS, revision)
    except FileNotFoundError:
        raise HubError(f'{repo} has no {WEIGHTS} (only a pickled {PICKLE}?), which vitjax reads only through '
                       f'torch: python -m porting.convert --model {cfg["model_name"]} --out DIR, then load DIR'
                       ) from None
    state = _Tensors(path, repo)
    cfg = copy.deepcopy(cfg)
    config = cfg['model']
    if in_chans is not None and in_chans != config.get('in_chans', 3):
        key = f'{cfg["hub"]["first_conv"]}.weight'
        state[key] = adapt_in_chans(state[key], in_chans)
        config['in_chans'] = cfg['pretrained_cfg']['input_size'][0] = in_chans
    source = sources.get('timm', cfg['architecture'])
    try:
        params = source.from_state(state, as_tuples(config))
    except HubError:
        raise
    except ValueError as e:
        raise HubError(f'{repo}: {WEIGHTS} does not fit {cfg["model_name"]}: {e}') from None
    return cfg, flatten(params)


def _label_names(hub_cfg: dict, full: str, num_classes: int) -> Optional[list[str]]:
    """Readable class names: the repo's own (timm stores synsets with descriptions), else the tag's label set."""
    names, desc = hub_cfg.get('label_names'), hub_cfg.get('label_descriptions')
    if isinstance(names, list) and len(names) == num_classes:
        return [str(desc.get(n, n)) if isinstance(desc, dict) else str(n) for n in names]
    label_set = zoo()['tags'].get(full, {}).get('label_set')
    if label_set:
        from vitjax import labels
        names = labels.names(label_set)
        if len(names) == num_classes:
            return list(names)
    return None


def load(name: str, num_classes: Optional[int] = None, img_size: Any = None,
         in_chans: Optional[int] = None, revision: Optional[str] = None, **overrides: Any):
    """`(model, variables)` from hub weights, with timm's load-time changes (`vitjax.adapt`)."""
    from vitjax import io
    cfg, flat = read_params(read_config(str(name), revision), in_chans)
    try:
        model = io.model_from_config(cfg)
    except (ValueError, TypeError) as e:
        raise HubError(f'{name}: {e}') from None
    io.check_params(flat, io.param_shapes(model), str(name))
    params = io.unflatten(io.float32_params(flat, str(name)))
    from vitjax.adapt import adapted
    return adapted(model, params, num_classes, img_size, overrides)
