"""Export a vitjax model directory back to a timm state dict (safetensors), with a parity check.

    python -m porting.export --model out/deit_tiny --out deit_tiny.safetensors

The file loads with `timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))`, so a
model fine-tuned in JAX goes back to PyTorch. It is written only if the timm model built from it matches the
Flax model; timm -> vitjax -> timm is bit-exact. An existing --out is replaced only if export wrote it (a mark
in the safetensors metadata), and --out may not lie inside the model directory.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from porting import parity, sources

MARK = {'written_by': 'vitjax export'}  # in the safetensors metadata: a file we may replace


def ours(path: Path, mark: dict = MARK) -> bool:
    from safetensors import safe_open
    try:
        with safe_open(str(path), 'np') as f:
            return (f.metadata() or {}).get('written_by') == mark['written_by']
    except Exception:  # not a safetensors file at all: safetensors raises its own types
        return False


def _builds(name: str) -> str:
    """What the timm name builds, in words; on the meta device, so without allocating its weights."""
    import timm
    import torch
    try:
        with torch.device('meta'):
            model = timm.create_model(name, pretrained=False)
    except Exception:  # a model that cannot be built without real tensors: say what is certain
        return 'a model of another family'
    cls = type(model).__name__
    try:
        arch = f' (vitjax {sources.source_of(model, "timm").arch})'
    except sources.UnsupportedModel:
        arch = ', which vitjax does not convert'
    return f'{"an" if cls[0] in "AEIOU" else "a"} {cls}{arch}'


def timm_model_for(name: str, config: dict, source: sources.Source, what: str = 'the config'):
    """The timm model with this config: the name gives the class (distilled or not), the kwargs the rest.

    `what` says where the config comes from, for the error when the name builds another architecture."""
    import functools
    import timm
    from timm.layers import LayerNorm, RmsNorm
    from vitjax.io import as_tuples
    kwargs = as_tuples({k: v for k, v in config.items() if k in source.create_kwargs})
    norm = RmsNorm if config.get('norm_layer') == 'rmsnorm' else LayerNorm
    # NaFlexVitCfg names its layers by string (the model name decides them); Qwen3 takes norm_eps itself
    if source.arch != 'naflexvit' and 'norm_eps' not in source.create_kwargs:
        kwargs['norm_layer'] = functools.partial(norm, eps=config['norm_eps'])
    if source.arch == 'vit':
        kwargs['act_layer'] = config['act_layer']
    elif source.arch == 'swin' and config['act_layer'] != 'gelu':  # timm's Swin has no act_layer argument
        raise ValueError(f"timm {name} has exact GELU only, this model uses {config['act_layer']}")
    try:
        model = timm.create_model(name, pretrained=False, **kwargs).eval()
    except TypeError as e:  # another family's constructor takes other arguments
        model, error = None, e
    if model is None or not source.is_model(model):
        builds = _builds(name)
        if model is None and builds.endswith(f'(vitjax {source.arch})'):  # the right family after all
            raise ValueError(f'timm {name} does not take this config: {error}')
        raise ValueError(f'{what} is a vitjax {source.arch} model, but timm {name} builds '
                         f'{builds}: pass the --timm-name of a timm {source.arch} model')
    got = source.torch_config(model)
    plain = lambda v: json.loads(json.dumps(v))  # tuples and lists compare equal
    mismatched = {k: (v, config.get(k)) for k, v in got.items()
                  if k not in source.nominal and plain(config.get(k)) != plain(v)}
    if mismatched:
        raise ValueError(f'timm {name} cannot express this config: {mismatched} (timm value, vitjax value)')
    return model


def export(model_dir, out, name: str = '', tolerance: float = 1e-4) -> dict:
    import torch
    from safetensors.torch import save_file
    import vitjax
    from vitjax.io import check_output_file, read_dir_config, write_file
    from vitjax.models import architecture_of, model_config

    parity.check_settings(1, tolerance)
    check_output_file(out, ours, inputs=[model_dir])  # before the parity run, which takes a while
    model, variables = vitjax.load(model_dir)
    arch = architecture_of(model)
    source = sources.get('timm', arch)
    recorded = read_dir_config(model_dir).get('model_name') or ''
    name = name or recorded
    if not name:
        raise ValueError(f'{model_dir} records no timm model name; pass --timm-name')
    config = model_config(model)
    if arch in ('vit', 'eva'):
        config['fc_norm'] = bool(model.use_fc_norm and model.final_norm)  # timm takes the resolved flag
    what = f'{model_dir}' + (f' ({recorded})' if recorded else '')
    torch_model = timm_model_for(name.partition('.')[0], config, source, what)
    state = {k: torch.from_numpy(np.array(v))
             for k, v in source.to_state(variables['params'], config, torch_model.state_dict().keys()).items()}
    torch_model.load_state_dict(state, strict=True)
    report = parity.check(name, source.reference(torch_model), model, variables, tolerance=tolerance)
    if not report['passed']:
        raise ValueError('parity failed after export:\n' + parity.format_report(report))
    write_file(out, lambda tmp: save_file({k: v.contiguous() for k, v in state.items()}, tmp,
                                          metadata={'format': 'pt', **MARK}), ours)
    return report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='python -m porting.export', description=__doc__.split('\n')[0])
    ap.add_argument('--model', required=True, help='vitjax model directory')
    ap.add_argument('--out', required=True, help='output .safetensors file (a timm state dict)')
    ap.add_argument('--timm-name', default='', help='timm architecture (default: the one recorded in the directory)')
    ap.add_argument('--tolerance', type=parity.tolerance, default=1e-4,
                    help='parity passes when max|diff| <= tolerance * max(1, max|logit|)')
    args = ap.parse_args(argv)
    if not args.out.endswith('.safetensors'):
        ap.error('--out must end in .safetensors')
    try:
        report = export(args.model, args.out, args.timm_name, args.tolerance)
    except (ValueError, OSError, RuntimeError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(parity.format_report(report))
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
