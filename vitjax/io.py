"""Model directories: `params.safetensors` (flat '/'-joined Flax names) + `config.json`. No pickle anywhere.

Writes are atomic: everything goes into a temporary sibling directory that is renamed into place at the end,
so a failed write never leaves a half-written model behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import jax
import numpy as np
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from vitjax.models import ARCHITECTURES, Model, PretrainedCfg, architecture_of, model_config
from vitjax.models.layers import resample_abs_pos_embed
from vitjax.models.swin import resize_rel_pos_bias_table
from vitjax.models.vit import stack_blocks, unstack_blocks

FORMAT, VERSION = 'vitjax', 1
PARAMS_FILE, CONFIG_FILE = 'params.safetensors', 'config.json'


def flatten(params: Mapping) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep='/').items()}


def unflatten(flat: Mapping[str, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep='/')


def param_shapes(model: Model) -> dict[str, tuple[int, ...]]:
    from vitjax.registry import img_size_of
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


def as_tuples(v: Any) -> Any:
    """JSON lists back to tuples (nested, dict values too): module attributes stay hashable."""
    if isinstance(v, dict):
        return {k: as_tuples(x) for k, x in v.items()}
    return tuple(as_tuples(x) for x in v) if isinstance(v, list) else v


def model_from_config(cfg: Mapping[str, Any], **overrides: Any) -> Model:
    arch = cfg.get('architecture', 'vit')
    if arch not in ARCHITECTURES:
        raise ValueError(f'unknown architecture {arch!r} (known: {sorted(ARCHITECTURES)})')
    kwargs = as_tuples(dict(cfg['model']))
    kwargs.update(overrides)
    return ARCHITECTURES[arch](**kwargs, pretrained_cfg=PretrainedCfg.from_dict(cfg.get('pretrained_cfg', {})))


def save(path: Union[str, os.PathLike], model: Model, variables: Mapping, *,
         name: str = '', extra_json: Optional[Mapping[str, Any]] = None, meta: Optional[Mapping] = None) -> Path:
    """Write a model directory atomically. `extra_json` maps file names to JSON objects written beside it."""
    path = Path(path)
    if getattr(model, 'scan_blocks', False):  # on disk, blocks are always stored one by one (timm's layout)
        model, variables = model.clone(scan_blocks=False), {'params': unstack_blocks(variables['params'])}
    flat = flatten(variables['params'])
    check_params(flat, param_shapes(model), 'params to save')
    config = {'format': FORMAT, 'version': VERSION, 'architecture': architecture_of(model), 'model_name': name,
              'model': model_config(model), 'pretrained_cfg': _cfg_dict(model.pretrained_cfg), **(meta or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f'.{path.name}.tmp-', dir=path.parent))
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, str(tmp / PARAMS_FILE),
                  metadata={'format': FORMAT})
        config['params_sha256'] = sha256(tmp / PARAMS_FILE)  # safetensors has no checksum of its own
        for fname, obj in {CONFIG_FILE: config, **(extra_json or {})}.items():
            (tmp / fname).write_text(json.dumps(obj, indent=2) + '\n')
        if path.exists():  # replace an older directory only once the new one is complete
            old = Path(tempfile.mkdtemp(prefix=f'.{path.name}.old-', dir=path.parent))
            os.replace(path, old / 'x')
            os.replace(tmp, path)
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def sha256(path: Union[str, os.PathLike]) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 22), b''):
            h.update(chunk)
    return h.hexdigest()


def _cfg_dict(cfg: PretrainedCfg) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.__dict__.items()}


def read_config(path: Union[str, os.PathLike]) -> dict[str, Any]:
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise FileNotFoundError(f'{cfg_file} not found: {path} is not a vitjax model directory')
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f'{cfg_file} is not valid JSON: {e}') from None
    if cfg.get('format') != FORMAT or 'model' not in cfg:
        raise ValueError(f'{cfg_file} is not a vitjax config (format={cfg.get("format")!r})')
    return cfg


def load(path: Union[str, os.PathLike], num_classes: Optional[int] = None, img_size: Union[None, int, tuple] = None,
         rng: Optional[jax.Array] = None, expect_name: Optional[str] = None,
         **overrides: Any) -> tuple[Model, dict]:
    """Load `(model, variables)` from a model directory, optionally with another head size or image size."""
    from vitjax.registry import split_tag
    path = Path(path)
    cfg = read_config(path)
    stored = cfg.get('model_name') or ''
    if expect_name and stored and split_tag(expect_name)[0] != split_tag(stored)[0]:
        raise ValueError(f'{path} holds {stored!r}, not {expect_name!r}')
    model = model_from_config(cfg)
    expected_sha = cfg.get('params_sha256')
    if expected_sha and (path / PARAMS_FILE).is_file() and sha256(path / PARAMS_FILE) != expected_sha:
        raise ValueError(f'{path / PARAMS_FILE} does not match the checksum in {path / CONFIG_FILE}: the file '
                         'is corrupt or was changed after it was written')
    try:
        flat = load_file(str(path / PARAMS_FILE))
    except Exception as e:  # safetensors raises several types for truncated or corrupt files
        raise ValueError(f'cannot read {path / PARAMS_FILE}: {e}') from None
    check_params(flat, param_shapes(model), str(path / PARAMS_FILE))
    params = unflatten(flat)
    changes = dict(overrides)
    scan = changes.pop('scan_blocks', False)
    if scan and not hasattr(model, 'scan_blocks'):
        raise ValueError(f'scan_blocks is an option of VisionTransformer, not of {type(model).__name__}')
    if num_classes is not None and num_classes != model.num_classes:
        changes['num_classes'] = num_classes
    if img_size is not None:
        changes['img_size'] = img_size
        h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
        p = model.pretrained_cfg
        changes['pretrained_cfg'] = PretrainedCfg((3, h, w), p.mean, p.std, p.crop_pct, p.crop_mode,
                                                  p.interpolation, p.tag)
    if changes:
        new_model = model.clone(**changes)
        params = adapt_params(params, model, new_model, jax.random.PRNGKey(0) if rng is None else rng)
        model = new_model
    if scan:
        model, params = model.clone(scan_blocks=True), stack_blocks(params, model.depth)
    return model, {'params': params}


def _window_of(model, key: str) -> tuple[int, int]:
    """The (possibly clipped) window of the Swin block that owns `key` (layers_i/blocks_j/...)."""
    from vitjax.models.swin import stage_resolutions, window_and_shift
    stage = int(key.split('/')[0].split('_')[1])
    res = stage_resolutions(model.grid_size, len(model.depths))[stage]
    win = model.stage_window_sizes[stage]
    return window_and_shift(res, win, (0, 0), model.always_partition)[0]


def adapt_params(params: Mapping, src: Model, dst: Model, rng: jax.Array) -> dict:
    """Carry params from `src` to `dst`: same shapes copied, position embeddings resampled to the new grid,
    a head of another class count freshly initialised. Any other mismatch is an error."""
    from vitjax.registry import img_size_of, init_variables
    flat_src, dst_shapes = flatten(params), param_shapes(dst)
    fresh = None
    out = {}
    for key, shape in dst_shapes.items():
        value = flat_src.get(key)
        if value is not None and tuple(value.shape) == shape:
            out[key] = value
        elif key == 'pos_embed' and value is not None:
            out[key] = np.asarray(resample_abs_pos_embed(
                value, dst.grid_size, src.grid_size, 0 if src.no_embed_class else src.num_prefix_tokens))
        elif key.endswith('relative_position_bias_table') and value is not None:
            # a new window size (Swin): timm's resize on the relative-offset grid, per head
            out[key] = resize_rel_pos_bias_table(value, _window_of(dst, key), _window_of(src, key))
        elif key.split('/')[0] in ('head', 'head_dist'):
            fresh = flatten(init_variables(dst, rng)['params']) if fresh is None else fresh
            out[key] = fresh[key]
        else:
            have = 'absent' if value is None else f'shape {tuple(value.shape)}'
            raise ValueError(f'cannot carry {key!r} ({have}) into a model expecting {shape} '
                             f'(img_size {img_size_of(src)} -> {img_size_of(dst)})')
    dropped = sorted(k for k in set(flat_src) - set(out) if k.split('/')[0] not in ('head', 'head_dist'))
    if dropped:
        raise ValueError(f'params with no place in the new model: {dropped}')
    check_params(out, dst_shapes, 'adapted params')
    return unflatten(out)
