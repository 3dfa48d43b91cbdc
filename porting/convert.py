"""Convert a timm ViT or Swin (or a torchvision / Hugging Face ViT) to vitjax, verify logit parity, and write a model directory.

    python -m porting.convert --model vit_base_patch16_224.augreg_in21k_ft_in1k --out out/vitb
    python -m porting.convert --model deit_tiny_patch16_224 --checkpoint deit_tiny.safetensors --out out/deit_tiny
    python -m porting.convert --model vit_b_16 --checkpoint vit_b_16.pth --out out/tv_vitb   # torchvision

Without --checkpoint the weights come from the Hugging Face hub through timm (needs network). The output
directory is written only if parity passes: params.safetensors, config.json, parity.json. --out must be new,
empty or a model directory vitjax wrote (checked before converting); it is never the input or around it.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np

from porting import parity, sources


def _size(text: str):
    parts = text.lower().split('x')
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f'{text!r} is not N or HxW (positive integers)')
    return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))


def _kv(text: str) -> tuple[str, Any]:
    key, eq, value = text.partition('=')
    if not eq:
        raise argparse.ArgumentTypeError(f'{text!r} is not key=value')
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def convert(source: sources.Source, torch_model, name: str = '', img_size=None, num_classes: Optional[int] = None,
            window_size=None, create_kwargs: Optional[dict] = None):
    """PyTorch model -> (vitjax model, variables, parity reference with the same size/head changes).

    `create_kwargs` are the extra constructor arguments the source was built with (timm resizes rebuild it;
    a `window_size` among them is the built one, `window_size` the change).
    """
    from vitjax.models import PretrainedCfg

    config = source.torch_config(torch_model)
    state = source.state_of(torch_model)
    # Device arrays now, one tensor at a time, so the numpy copies are freed before the parity run needs them.
    params = jax.tree.map(jax.device_put, source.from_state(state, config))
    model = source.module(config).clone(pretrained_cfg=PretrainedCfg.from_dict(source.pretrained_cfg(torch_model)))
    changes = {}
    if img_size is not None and img_size != model.img_size:
        changes.update(img_size=img_size, pretrained_cfg=model.pretrained_cfg.at_size(img_size, crop_pct=1.0))
    if num_classes is not None and num_classes != model.num_classes:
        changes['num_classes'] = num_classes
    if window_size is not None:
        if not hasattr(model, 'stage_window_sizes'):
            raise ValueError('--window-size applies to Swin models')
        changes['window_size'] = window_size
    if not changes:
        return model, {'params': params}, source.reference(torch_model)
    if source.resize_state is None:
        raise ValueError(f'--img-size / --num-classes / --window-size apply to timm sources, not {source.name}; '
                         'convert as is, then use vitjax.load(DIR, img_size=..., num_classes=...)')
    from vitjax.adapt import adapt_params
    new = model.clone(**changes)
    params = adapt_params(params, model, new)
    return new, {'params': params}, _resized_reference(source, name, state, model, new, config, params,
                                                        window_size, create_kwargs or {})


def _resized_reference(source, name, state, model, new, config, params, window_size, create_kwargs):
    """timm's own model at the new size with the weights adapted by timm, and the same new head as ours."""
    import timm
    import torch
    # only what the library's constructor takes by name (NaFlexViT takes no img_size: any input goes as it is)
    new_kwargs = {k: getattr(new, k) for k in ('img_size', 'num_classes') if k in source.create_kwargs}
    if window_size is not None:
        new_kwargs['window_size'] = window_size
    ref = timm.create_model(name, pretrained=False, **{**create_kwargs, **new_kwargs}).eval()
    ref_state = source.resize_state(state, model, new, ref)
    heads = {k: torch.from_numpy(np.array(v))
             for k, v in source.to_state(params, dict(config, **new_kwargs), ref.state_dict().keys()).items()
             if k.startswith('head')}
    ref_state = {k: v for k, v in ref_state.items() if not k.startswith('head')} | heads
    ref.load_state_dict(ref_state, strict=True)
    return source.reference(ref)


def size_problems(name: str, img_size, model_args: dict) -> None:
    """An input size the architecture refuses (SAM's whole patches, a hybrid's ResNet map), told from vitjax's
    own table of the name before any weights are read; a name the table does not decode is checked later."""
    import dataclasses
    from vitjax import registry
    from vitjax.models import ARCHITECTURES
    from vitjax.models.family import problems
    if img_size is None:
        return
    try:
        arch, fields, cfg = registry.model_args(name)
    except ValueError:  # torchvision / HF names, random-init name parts: the conversion finds out
        return
    known = {f.name for f in dataclasses.fields(ARCHITECTURES[arch])}
    fields.update({k: v for k, v in model_args.items() if k in known}, img_size=img_size)
    try:
        found = [p for p in problems(ARCHITECTURES[arch](**fields, pretrained_cfg=cfg)) if 'img_size' in p]
    except (TypeError, ValueError):  # --model-arg values of other types: timm's constructor says
        return
    if found:
        raise ValueError(f'{name} at input size {img_size}: {"; ".join(found)}')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='python -m porting.convert', description=__doc__.split('\n')[0])
    ap.add_argument('--model', required=True, help='timm model name, optionally with .tag')
    ap.add_argument('--checkpoint', help='.safetensors (preferred), .pth, .pt or .bin; default: hub weights')
    ap.add_argument('--source', choices=('auto', *sources.LIBRARIES), default='auto',
                    help='the library the weights come from (auto: an HF model directory is hf, otherwise from '
                    'the checkpoint keys; timm for hub weights)')
    ap.add_argument('--out', required=True, help='output model directory')
    ap.add_argument('--img-size', type=_size, help='convert to another input size (N or HxW): position '
                    'embeddings are resampled bicubically on the patch grid')
    ap.add_argument('--num-classes', type=parity.integer(0),
                    help='re-initialise the head for this many classes (0: no head)')
    ap.add_argument('--window-size', type=parity.integer(1), help='Swin: another attention window; '
                    'relative-position-bias tables are resized as timm does')
    ap.add_argument('--model-arg', type=_kv, action='append', default=[], metavar='KEY=VALUE',
                    help='extra timm.create_model argument, e.g. depth=2 (repeatable)')
    ap.add_argument('--tolerance', type=parity.tolerance, default=1e-4,
                    help='parity passes when max|diff| <= tolerance * max(1, max|logit|)')
    ap.add_argument('--batch', type=parity.integer(1), default=2, help='parity input batch size')
    ap.add_argument('--seed', type=parity.seed, default=0)
    args = ap.parse_args(argv)

    import vitjax
    from vitjax.io import check_writable_model_dir  # (the package loads its submodules lazily)
    try:
        # Before any work: a conversion can take minutes, and --out must never be a user's files or the input.
        check_writable_model_dir(args.out, inputs=[args.checkpoint])
        kwargs = dict(args.model_arg)
        size_problems(args.model, args.img_size or kwargs.get('img_size'), kwargs)
        state = None
        if args.checkpoint and Path(args.checkpoint).is_file():  # a directory is its library's own layout (HF)
            state = sources.read_state_dict(args.checkpoint)
        library = sources.detect(args.checkpoint, state) if args.source == 'auto' else args.source
        try:
            torch_model = sources.loader(library)(args.model, args.checkpoint, state, **kwargs)
        except (TypeError, AssertionError, ArithmeticError) as e:  # how timm's constructors refuse arguments
            if not kwargs:
                raise
            given = ' '.join(f'{k}={v!r}' for k, v in kwargs.items())
            raise ValueError(f'{library} cannot build {args.model} with --model-arg {given}: '
                             f'{type(e).__name__}: {e}') from None
        state = None  # the model holds its own copy; keep one set of source weights in memory
        for built in ('num_classes', 'img_size'):  # what the model was built with, read back off it; --img-size and
            kwargs.pop(built, None)  # --num-classes change them
        model, variables, ref = convert(sources.source_of(torch_model, library), torch_model, args.model,
                                        args.img_size, args.num_classes, args.window_size, kwargs)
        report = parity.check(args.model, ref, model, variables, batch=args.batch, seed=args.seed,
                              tolerance=args.tolerance)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # RuntimeError: timm's unknown model / hub errors
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(parity.format_report(report))
    if not report['passed']:
        print(f'error: parity failed; nothing written to {args.out}', file=sys.stderr)
        return 1
    source = {'library': library, 'model': args.model, 'checkpoint': args.checkpoint or 'hub'}
    try:
        vitjax.save(args.out, model, variables, name=args.model, extra_json={'parity.json': report},
                    meta={'source': source})
    except (ValueError, OSError) as e:  # the disk filled up, or --out changed while we converted
        print(f'error: {e}; nothing written to {args.out}', file=sys.stderr)
        return 1
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
