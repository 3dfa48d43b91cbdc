"""timm's load-time changes on vitjax params: a new head for another class count, the position grid
resampled for another image size, relative-position tables resized for another window (Swin) or grid (BEiT,
SAM). Used by `vitjax.load` (directories and hub weights) and `porting.convert`."""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Union

import numpy as np

from vitjax.io import as_tuples, check_params, flatten, param_shapes, unflatten
from vitjax.models import NOT_STORED, Model, checked_model, img_size_of, model_config
from vitjax.models.layers import resample_abs_pos_embed
from vitjax.models.relpos import resize_decomposed_table, resize_rel_pos_bias_table
from vitjax.models.vit import stack_blocks


def changes(model: Model, num_classes: Optional[int], img_size: Union[None, int, tuple],
            overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The field changes a load asks for, their types and ranges checked as a config.json's are: one ValueError
    listing every problem, before anything is built or resampled."""
    out = {k: as_tuples(v) for k, v in overrides.items() if k != 'scan_blocks'}
    if num_classes is not None and num_classes != model.num_classes:
        out['num_classes'] = num_classes
    if img_size is not None:
        out['img_size'] = as_tuples(img_size)
    if out:
        check_fields(type(model), {**as_tuples(model_config(model)), **out}, model.pretrained_cfg, 'invalid options')
    if img_size is not None:
        out['pretrained_cfg'] = model.pretrained_cfg.at_size(out['img_size'])
    return out


def check_fields(cls: type, fields: Mapping[str, Any], pretrained_cfg: Any, what: str = 'invalid model config') -> None:
    """`checked_model`'s checks on constructor arguments that may hold fields config.json does not store."""
    checked_model(cls, {k: v for k, v in fields.items() if k not in NOT_STORED}, dataclasses.asdict(pretrained_cfg),
                  what)


def adapted(model: Model, params: dict, num_classes: Optional[int], img_size: Union[None, int, tuple],
            overrides: Mapping[str, Any]) -> tuple[Model, dict]:
    """What timm does at load time when asked for a change: a new head, a resampled position grid."""
    scan = overrides.get('scan_blocks', False)
    if scan and not hasattr(model, 'scan_blocks'):
        raise ValueError(f'scan_blocks is an option of VisionTransformer, not of {type(model).__name__}')
    new = changes(model, num_classes, img_size, overrides)
    if new:
        new_model = model.clone(**new)
        params = adapt_params(params, model, new_model)
        model = new_model
    if scan:
        model, params = model.clone(scan_blocks=True), stack_blocks(params, model.depth)
    return model, {'params': params}


def adapt_params(params: Mapping, src: Model, dst: Model) -> dict:
    """Carry params from `src` to `dst`: same shapes copied, position embeddings resampled to the new grid,
    a head of another class count new. Any other mismatch is an error."""
    flat_src, dst_shapes = flatten(params), param_shapes(dst)
    out = {}
    for key, shape in dst_shapes.items():
        value = flat_src.get(key)
        # by grid, not by shape: 14x16 and 16x14 grids hold the same number of embeddings
        if key == 'pos_embed' and value is not None and tuple(src.pos_grid) != tuple(dst.pos_grid):
            flat = value.reshape(1, -1, value.shape[-1])  # SAM keeps its embedding as a (1, H, W, D) map
            out[key] = np.asarray(resample_abs_pos_embed(
                flat, dst.pos_grid, src.pos_grid, 0 if src.no_embed_class else src.num_prefix_tokens,
                src.pos_embed_interp)).reshape(shape)
        elif value is not None and tuple(value.shape) == shape:
            out[key] = value
        elif key.endswith('relative_position_bias_table') and value is not None:
            # a new window (Swin) or patch grid (BEiT): timm's resize on the relative-offset grid, per head
            (new, extra), (old, _) = dst.rel_pos_window(key), src.rel_pos_window(key)
            out[key] = resize_rel_pos_bias_table(value, new, old, extra)
        elif key.endswith(('rel_pos/rel_pos_h', 'rel_pos/rel_pos_w')) and value is not None:
            # SAM's per-axis tables for another map: resampled as timm's get_rel_pos does at run time
            out[key] = resize_decomposed_table(value, shape[0])
        elif key.split('/')[0] in ('head', 'head_dist'):
            # what init gives: every vitjax head starts at zero (big_vision's head_zeroinit; tests/test_io.py
            # holds each architecture to it), so no model-wide init is traced and compiled for it
            out[key] = np.zeros(shape, np.float32)
        else:
            have = 'absent' if value is None else f'shape {tuple(value.shape)}'
            raise ValueError(f'cannot carry {key!r} ({have}) into a model expecting {shape} '
                             f'(img_size {img_size_of(src)} -> {img_size_of(dst)})')
    dropped = sorted(k for k in set(flat_src) - set(out) if k.split('/')[0] not in ('head', 'head_dist'))
    if dropped:
        raise ValueError(f'params with no place in the new model: {dropped}')
    check_params(out, dst_shapes, 'adapted params')
    return unflatten(out)
