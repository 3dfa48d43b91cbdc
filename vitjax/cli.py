"""`vitjax`: the command-line front door (pyproject [project.scripts]).

    vitjax predict   --model DIR|NAME IMAGE_OR_FOLDER... [--top 5] [--json]
    vitjax features  --model DIR|NAME IMAGE_OR_FOLDER... --out feats.npz [--kind pooled|cls|tokens|map|intermediates]
    vitjax attention --model DIR|NAME IMAGE --out attn.png
    vitjax evaluate  --model DIR --dataset NAME|FOLDER [--split test] [--batch-size 64]
    vitjax convert ... | vitjax export ... | vitjax train ...   (the porting CLIs and train.py, same arguments)

DIR is a vitjax model directory (from `vitjax convert` or `train.py`); NAME is a timm name, converted from
the hub once (needs torch and network) into ~/.cache/vitjax/NAME with its parity check.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

from vitjax.images import IMAGE_EXTENSIONS

CACHE = Path(os.environ.get('VITJAX_CACHE', Path.home() / '.cache' / 'vitjax'))


def resolve_model(spec: str) -> Path:
    """A model directory as given, or a timm name converted (with parity) into the cache on first use."""
    path = Path(spec)
    if path.is_dir():
        return path
    from vitjax.registry import model_args
    model_args(spec)  # an unknown name fails here, with close matches, before anything is downloaded
    target = CACHE / spec
    if not target.is_dir():
        try:
            from porting import convert
        except ImportError as e:
            raise ValueError(f'{spec} is not a model directory; converting it from the hub needs the porting '
                             f'extra (torch, timm): {e}') from None
        try:
            status = convert.main(['--model', spec, '--out', str(target)])
        except Exception as e:  # hub clients raise their own types when offline
            status, why = 1, f': {type(e).__name__}: {e}'
        else:
            why = ''
        if status != 0:
            raise ValueError(f'could not convert {spec} from the hub (offline? pass a model directory){why}')
    return target


def expand_images(inputs: list[str]) -> list[str]:
    """Files as given; folders walked (sorted) for image files."""
    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(str(f) for f in p.rglob('*') if f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            files.append(str(p))
        else:
            raise FileNotFoundError(f'{item}: no such file or folder')
    if not files:
        raise ValueError(f'no images in {", ".join(inputs)}')
    return files


def _load(spec: str):
    import vitjax
    path = resolve_model(spec)
    model, variables = vitjax.load(path)
    return path, model, variables


def cmd_predict(args) -> int:
    from vitjax import inference
    path, model, variables = _load(args.model)
    files = expand_images(args.images)
    preds = inference.predict(model, variables, files, top=args.top,
                              class_names=inference.class_names_for(model, path))
    if args.json:
        print(json.dumps([{'file': f, 'top': p} for f, p in zip(files, preds)], indent=2))
        return 0
    for f, p in zip(files, preds):
        print(f)
        for r in p:
            print(f"  {r['probability']:7.2%}  {r['label']}  ({r['index']})")
    return 0


def cmd_features(args) -> int:
    import numpy as np
    from vitjax import inference
    _, model, variables = _load(args.model)
    files = expand_images(args.images)
    feats = inference.features(model, variables, inference.preprocess(files, model), args.kind)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f'.{out.stem}.tmp.npz')
    np.savez(tmp, files=np.asarray(files), **feats)
    os.replace(tmp, out)
    print(json.dumps({'out': str(out), 'files': len(files), **{k: list(v.shape) for k, v in feats.items()}}))
    return 0


def cmd_attention(args) -> int:
    from vitjax import inference
    _, model, variables = _load(args.model)
    x = inference.preprocess([args.image], model)
    maps = inference.attention_maps(model, variables, x, args.head_fusion)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    inference.render_attention(inference.denormalize(x[0], model), {k: v[0] for k, v in maps.items()}, out,
                               title=Path(args.image).name)
    print(json.dumps({'out': str(out), 'grid': list(maps['rollout'].shape[1:])}))
    return 0


def cmd_evaluate(args) -> int:
    from vitjax.evaluate import evaluate
    path, model, variables = _load(args.model)
    result = evaluate(model, variables, args.dataset, args.split, batch_size=args.batch_size,
                      data_dir=args.data_dir, class_names=_saved_names(path))
    print(json.dumps({'model': str(path), **result}, indent=2))
    return 0


def _saved_names(path) -> Optional[list]:
    from vitjax.io import read_config
    return read_config(path).get('class_names')


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='vitjax', description=__doc__.split('\n')[0])
    sub = ap.add_subparsers(dest='command', required=True)
    p = sub.add_parser('predict', help='top-k classes for images')
    p.add_argument('--model', required=True, help='model directory or timm name')
    p.add_argument('images', nargs='+', help='image files or folders')
    p.add_argument('--top', type=int, default=5)
    p.add_argument('--json', action='store_true', help='JSON on stdout')
    p.set_defaults(fn=cmd_predict)
    p = sub.add_parser('features', help='features of images into an .npz')
    p.add_argument('--model', required=True)
    p.add_argument('images', nargs='+')
    p.add_argument('--out', required=True, help='output .npz (arrays + files)')
    p.add_argument('--kind', default='pooled', choices=('pooled', 'cls', 'tokens', 'map', 'intermediates'))
    p.set_defaults(fn=cmd_features)
    p = sub.add_parser('attention', help='attention rollout and last-layer attention over an image, as a PNG')
    p.add_argument('--model', required=True)
    p.add_argument('image')
    p.add_argument('--out', required=True, help='output .png')
    p.add_argument('--head-fusion', default='mean', choices=('mean', 'max', 'min'))
    p.set_defaults(fn=cmd_attention)
    p = sub.add_parser('evaluate', help='top-1 / top-5 accuracy and loss on a dataset (JSON)')
    p.add_argument('--model', required=True)
    p.add_argument('--dataset', required=True, help='tfds name or a folder with one subfolder per class')
    p.add_argument('--split', default='test')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--data-dir', help='tfds data directory')
    p.set_defaults(fn=cmd_evaluate)
    for name, help_ in (('convert', 'PyTorch (timm, torchvision, HF) -> vitjax, with parity'),
                        ('export', 'vitjax -> timm safetensors, with parity'),
                        ('train', 'the training job (train.py)')):
        sub.add_parser(name, help=help_, add_help=False)
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ('convert', 'export'):  # their own parsers take the rest as is
        module = __import__(f'porting.{argv[0]}', fromlist=['main'])
        return module.main(argv[1:])
    if argv and argv[0] == 'train':
        from vitjax.trainer import run
        run(['vitjax train'] + argv[1:])
        return 0
    args = parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, OSError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
