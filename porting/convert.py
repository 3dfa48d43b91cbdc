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
from typing import Any, Optional

import jax
import numpy as np

from porting import parity, sources, timm_vit
from porting.engine import ConversionError


def _size(text: str):
    parts = text.lower().split('x')
    if len(parts) not in (1, 2) or not all(p.isdigit() for p in parts):
        raise argparse.ArgumentTypeError(f'{text!r} is not N or HxW')
    return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))


def _kv(text: str) -> tuple[str, Any]:
    key, eq, value = text.partition('=')
    if not eq:
        raise argparse.ArgumentTypeError(f'{text!r} is not key=value')
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def load_timm(name: str, checkpoint: Optional[str], state: Optional[dict] = None, **kwargs):
    """The source timm model, with hub weights or a checkpoint file loaded strictly."""
    import timm
    if checkpoint is None:
        return timm.create_model(name, pretrained=True, **kwargs).eval()
    state = sources.read_state_dict(checkpoint) if state is None else state
    kwargs.setdefault('num_classes', sources.infer_num_classes(state))
    return load_strict(timm.create_model(name, pretrained=False, **kwargs), state, name, checkpoint)


def load_torchvision(name: str, checkpoint: Optional[str], state: Optional[dict] = None, **kwargs):
    """A torchvision ViT (vit_b_16, vit_l_16, ...): DEFAULT hub weights, or a checkpoint loaded strictly."""
    import torchvision
    if checkpoint is None:
        return torchvision.models.get_model(name, weights='DEFAULT', **kwargs).eval()
    state = sources.read_state_dict(checkpoint) if state is None else state
    if 'heads.head.weight' in state:
        kwargs.setdefault('num_classes', int(state['heads.head.weight'].shape[0]))
    return load_strict(torchvision.models.get_model(name, weights=None, **kwargs), state, name, checkpoint)


def detect_source(state: dict) -> str:
    return 'torchvision' if any(k.startswith('encoder.layers.encoder_layer_') for k in state) else 'timm'


def load_strict(model, state: dict, name: str, checkpoint: str):
    want = model.state_dict()
    problems = [f'  missing: {k}' for k in want if k not in state]
    problems += [f'  unexpected: {k}' for k in state if k not in want]
    problems += [f'  wrong shape: {k}: {tuple(v.shape)} != {tuple(want[k].shape)}'
                 for k, v in state.items() if k in want and v.shape != want[k].shape]
    # torch would silently cast integer or bool tensors into float parameters
    problems += [f'  wrong dtype: {k}: {v.dtype} (expected {want[k].dtype})'
                 for k, v in state.items() if k in want and v.is_floating_point() != want[k].is_floating_point()]
    if problems:
        raise ConversionError(f'{checkpoint} is not a {name} state dict:\n' + '\n'.join(problems))
    model.load_state_dict(state, strict=True)
    return model.eval()


def timm_family(torch_model):
    """The porting module (name table, config reader, `ARCH`) for a timm model."""
    from porting import timm_swin
    kind = type(torch_model).__name__
    if kind in ('VisionTransformer', 'VisionTransformerDistilled'):
        return timm_vit
    if kind == 'SwinTransformer':
        return timm_swin
    raise timm_vit.UnsupportedModel(f'timm architecture {kind} (supported: VisionTransformer, SwinTransformer)')


def convert(name: str, torch_model, img_size=None, num_classes: Optional[int] = None, seed: int = 0,
            window_size=None, **timm_kwargs):
    """timm model -> (vitjax model, variables, reference torch model with the same size/head changes).

    `timm_kwargs` are the extra `timm.create_model` arguments the source was built with.
    """
    import torch
    from vitjax.io import adapt_params, as_tuples
    from vitjax.models import ARCHITECTURES, PretrainedCfg

    family = timm_family(torch_model)
    cls = ARCHITECTURES[family.ARCH]
    config = family.model_config(torch_model)
    state = torch_model.state_dict()
    # Device arrays now, one tensor at a time, so the numpy copies are freed before the parity run needs them.
    params = jax.tree.map(jax.device_put, family.from_timm(state, config))
    model = cls(**as_tuples(config),
                pretrained_cfg=PretrainedCfg.from_dict(timm_vit.pretrained_cfg(torch_model)))
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
        return model, {'params': params}, torch_model
    new = model.clone(**changes)
    params = adapt_params(params, model, new, jax.random.PRNGKey(seed))
    # The reference: timm's own model at the new size with the weights adapted by timm, and the same new head.
    import timm
    new_kwargs = {'img_size': new.img_size, 'num_classes': new.num_classes}
    if window_size is not None:
        new_kwargs['window_size'] = window_size
    ref = timm.create_model(name, pretrained=False, **{**timm_kwargs, **new_kwargs}).eval()
    ref_state = family.reference_state(state, model, new, ref)
    new_cfg = dict(config, **new_kwargs)
    heads = {k: torch.from_numpy(np.array(v)) for k, v in family.to_timm(params, new_cfg).items()
             if k.startswith('head')}
    ref_state = {k: v for k, v in ref_state.items() if not k.startswith('head')} | heads
    ref.load_state_dict(ref_state, strict=True)
    return new, {'params': params}, ref


def convert_torchvision(tv_model):
    """torchvision ViT -> (vitjax model, variables, parity reference)."""
    from porting import torchvision_vit
    from vitjax.models import PretrainedCfg, VisionTransformer
    config = torchvision_vit.model_config(tv_model)
    params = torchvision_vit.from_torchvision(tv_model.state_dict(), config)
    img = config['img_size']
    cfg = PretrainedCfg.from_dict(dict(torchvision_vit.PRETRAINED_CFG, input_size=[3, img, img]))
    return VisionTransformer(**config, pretrained_cfg=cfg), {'params': params}, torchvision_vit.ParityAdapter(tv_model)


def convert_hf(path):
    """A Hugging Face ViT model directory -> (vitjax model, variables, parity reference)."""
    from porting import hf_vit
    from vitjax.models import PretrainedCfg, VisionTransformer
    if not hf_vit.is_hf_dir(path):
        raise ValueError(f'{path} is not a Hugging Face model directory (config.json + weights)')
    hf_model = hf_vit.load(path)
    config = hf_vit.model_config(hf_model)
    params = hf_vit.from_hf(hf_vit.read_state(path), config)
    img = config['img_size']
    cfg = PretrainedCfg.from_dict(dict(hf_vit.PRETRAINED_CFG, input_size=[3, img, img]))
    return VisionTransformer(**config, pretrained_cfg=cfg), {'params': params}, hf_vit.ParityAdapter(hf_model)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog='python -m porting.convert', description=__doc__.split('\n')[0])
    ap.add_argument('--model', required=True, help='timm model name, optionally with .tag')
    ap.add_argument('--checkpoint', help='.safetensors (preferred), .pth, .pt or .bin; default: hub weights')
    ap.add_argument('--source', choices=('auto', 'timm', 'torchvision', 'hf'), default='auto',
                    help='the library the weights come from (auto: an HF model directory is hf, otherwise from '
                    'the checkpoint keys; timm for hub weights)')
    ap.add_argument('--out', required=True, help='output model directory')
    ap.add_argument('--img-size', type=_size, help='convert to another input size (N or HxW): position '
                    'embeddings are resampled bicubically on the patch grid')
    ap.add_argument('--num-classes', type=int, help='re-initialise the head for this many classes')
    ap.add_argument('--window-size', type=int, help='Swin: another attention window; relative-position-bias '
                    'tables are resized as timm does')
    ap.add_argument('--model-arg', type=_kv, action='append', default=[], metavar='KEY=VALUE',
                    help='extra timm.create_model argument, e.g. depth=2 (repeatable)')
    ap.add_argument('--tolerance', type=float, default=1e-4,
                    help='parity passes when max|diff| <= tolerance * max(1, max|logit|)')
    ap.add_argument('--batch', type=int, default=2, help='parity input batch size')
    ap.add_argument('--seed', type=int, default=0)
    args = ap.parse_args(argv)

    import vitjax
    try:
        # Before any work: a conversion can take minutes, and --out must never be a user's files or the input.
        vitjax.io.check_writable_model_dir(args.out, inputs=[args.checkpoint])
        kwargs = dict(args.model_arg)
        from porting import hf_vit
        hf = args.source == 'hf' or (args.source == 'auto' and hf_vit.is_hf_dir(args.checkpoint))
        state = sources.read_state_dict(args.checkpoint) if args.checkpoint and not hf else None
        source = 'hf' if hf else args.source if args.source != 'auto' else (
            detect_source(state) if state else 'timm')
        if source != 'timm' and (args.img_size or args.num_classes is not None or args.window_size):
            raise ValueError('--img-size / --num-classes / --window-size apply to timm sources; convert as is, then use '
                             'vitjax.load(DIR, img_size=..., num_classes=...)')
        if source == 'hf':
            model, variables, ref = convert_hf(args.checkpoint)
        elif source == 'timm':
            torch_model = load_timm(args.model, args.checkpoint, state, **kwargs)
            state = None  # the model holds its own copy; keep one set of source weights in memory
            kwargs.pop('num_classes', None)
            model, variables, ref = convert(args.model, torch_model, args.img_size, args.num_classes, args.seed,
                                            args.window_size, **kwargs)
        else:
            torch_model, state = load_torchvision(args.model, args.checkpoint, state, **kwargs), None
            model, variables, ref = convert_torchvision(torch_model)
        report = parity.check(args.model, ref, model, variables, batch=args.batch, seed=args.seed,
                              tolerance=args.tolerance)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # RuntimeError: timm's unknown model / hub errors
        print(f'error: {e}', file=sys.stderr)
        return 1
    print(parity.format_report(report))
    if not report['passed']:
        print(f'error: parity failed; nothing written to {args.out}', file=sys.stderr)
        return 1
    source = {'library': source, 'model': args.model, 'checkpoint': args.checkpoint or 'hub'}
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
