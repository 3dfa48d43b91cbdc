"""`vitjax`: the command-line front door (pyproject [project.scripts]).

    vitjax predict   --model DIR|NAME IMAGE_OR_FOLDER... [--top 5] [--json] [--batch-size 32]
    vitjax features  --model DIR|NAME IMAGE_OR_FOLDER... --out feats.npz [--kind pooled|cls|tokens|map|intermediates]
                     [--batch-size 32]
    vitjax attention --model DIR|NAME IMAGE --out attn.png
    vitjax evaluate  --model DIR --dataset NAME|FOLDER [--split test] [--batch-size 64]
    vitjax convert ... | vitjax export ... | vitjax train ...   (the porting CLIs and train.py, same arguments)

DIR is a vitjax model directory (from `vitjax convert` or `train.py`), local or gs://...; NAME is a timm name,
converted from the hub once (needs torch and network) into ~/.cache/vitjax/NAME with its parity check.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Optional, Union

from vitjax.images import IMAGE_EXTENSIONS

CACHE = Path(os.environ.get('VITJAX_CACHE', Path.home() / '.cache' / 'vitjax'))


def _at_least_one(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value < 1:
            raise argparse.ArgumentTypeError(f'{flag} must be an integer >= 1 (got {text})')
        return value
    return parse


def resolve_model(spec: str) -> Union[str, Path]:
    """A model directory as given (a gs://... one as is: Path would mangle it), a timm hub name (loaded without
    torch), or another timm name converted (with parity) into the cache on first use."""
    from vitjax import hub, storage
    if storage.is_url(spec):
        return spec
    if hub.is_hub_name(spec):  # torch-free from the hub (vitjax/hub.py), unless converted here before
        return CACHE / spec if (CACHE / spec).is_dir() else spec
    path = Path(spec)
    if path.is_dir():
        return path
    if os.path.lexists(path) or os.sep in spec:  # meant as a path: 'unknown model name' would mislead
        raise ValueError(f'{spec}: ' + ('not a directory' if os.path.lexists(path) else 'no such model directory'))
    from vitjax.registry import model_args
    model_args(spec)  # an unknown name fails here, with close matches, before anything is downloaded
    target = CACHE / spec
    if not target.is_dir():
        status, why = _porting('convert', '--model', spec, '--out', str(target)), ''
        if status is None:
            why = ': converting a timm name that is not on the hub needs the porting extra (torch, timm)'
        if status != 0:
            raise ValueError(f'could not convert {spec} from the hub (offline? pass a model directory){why}')
    return target


def _porting(tool: str, *args: str) -> Optional[int]:
    """`python -m porting.<tool> args` (the torch side: this package never imports it) -> its exit status, or
    None where the porting extra is not installed."""
    import importlib.util
    import subprocess
    if not all(importlib.util.find_spec(m) for m in ('porting', 'torch', 'timm')):
        return None
    return subprocess.call([sys.executable, '-m', f'porting.{tool}', *args])


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
                              class_names=inference.class_names_for(model, path), batch_size=args.batch_size)
    if args.json:
        print(json.dumps([{'file': f, 'top': p} for f, p in zip(files, preds)], indent=2))
        return 0
    for f, p in zip(files, preds):
        print(f)
        for r in p:
            print(f"  {r['probability']:7.2%}  {r['label']}  ({r['index']})")
    return 0


# Only outputs recognisably ours are replaced: the arrays `features` writes, the PNG tag `attention` adds.
PNG_TAG = 'vitjax attention'
FEATURE_ARRAY = re.compile(r'(files|pooled|cls|tokens|map|(block|stage)_\d+)\.npy')


def _our_npz(path: Path) -> bool:
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile):
        return False
    return 'files.npy' in names and all(FEATURE_ARRAY.fullmatch(n) for n in names)


def _our_png(path: Path) -> bool:
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.format == 'PNG' and im.text.get('Software') == PNG_TAG
    except Exception:  # PIL raises several types for files that are not images
        return False


def _check_out(out: str, suffix: str, ours, inputs) -> Path:
    """Before the model is loaded: the output's suffix (numpy and matplotlib would append their own and write a
    path we do not report), and a place we may write."""
    from vitjax.io import check_output_file
    if Path(out).suffix.lower() != suffix:
        raise ValueError(f'--out {out}: must end in {suffix}')
    return check_output_file(out, ours, inputs)


def cmd_features(args) -> int:
    from vitjax import inference
    from vitjax.io import write_file
    out = _check_out(args.out, '.npz', _our_npz, [i for i in args.images if os.path.isfile(i)])
    _, model, variables = _load(args.model)
    files = expand_images(args.images)
    shapes = {}

    def write(tmp):
        shapes.update(_savez_batches(tmp, files, inference.iter_features(model, variables, files, args.kind,
                                                                          args.batch_size)))
    write_file(out, write, _our_npz)
    print(json.dumps({'out': str(out), 'files': len(files), **shapes}))
    return 0


def _savez_batches(path: str, files: list[str], batches) -> dict[str, list[int]]:
    """`np.savez(path, files=files, **arrays)`, the arrays given batch by batch along axis 0, with one batch in
    memory: each grows in an unnamed temporary file beside `path` (gone with the process, whatever kills it) and is
    then copied into the archive as savez stores it. Returns the arrays' shapes."""
    import tempfile
    import zipfile
    import numpy as np
    from numpy.lib import format as npf
    spools, shapes = {}, {}
    try:
        for batch in batches:
            for k, v in batch.items():
                if k not in spools:
                    shapes[k] = (len(files), *v.shape[1:])
                    spools[k] = tempfile.TemporaryFile(dir=os.path.dirname(path) or '.')
                    npf.write_array_header_1_0(spools[k], {'descr': npf.dtype_to_descr(v.dtype),
                                                           'fortran_order': False, 'shape': shapes[k]})
                spools[k].write(np.ascontiguousarray(v).tobytes())
        with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED, allowZip64=True) as z:
            with z.open('files.npy', 'w', force_zip64=True) as f:
                npf.write_array(f, np.asarray(files))
            for k in sorted(spools):  # savez's order: the keys of the dict that jax's tree functions sort
                spools[k].seek(0)
                with z.open(f'{k}.npy', 'w', force_zip64=True) as f:
                    shutil.copyfileobj(spools[k], f, 1 << 22)
    finally:
        for spool in spools.values():
            spool.close()
    return {k: list(shape) for k, shape in sorted(shapes.items())}


def cmd_attention(args) -> int:
    from PIL import Image, PngImagePlugin
    from vitjax import inference
    from vitjax.io import write_file
    out = _check_out(args.out, '.png', _our_png, [args.image])
    _, model, variables = _load(args.model)
    x = inference.preprocess([args.image], model)
    maps = inference.attention_maps(model, variables, x, args.head_fusion)

    def write(tmp):
        inference.render_attention(inference.denormalize(x[0], model), {k: v[0] for k, v in maps.items()}, tmp,
                                   title=Path(args.image).name)
        with Image.open(tmp) as im:  # PNG is lossless: saved again, only with our tag added
            im.load()
            info = PngImagePlugin.PngInfo()
            info.add_text('Software', PNG_TAG)
            im.save(tmp, format='PNG', pnginfo=info)
    write_file(out, write, _our_png)
    print(json.dumps({'out': str(out), 'grid': list(maps['rollout'].shape[1:])}))
    return 0


def cmd_evaluate(args) -> int:
    from vitjax.train.evaluate import evaluate
    path, model, variables = _load(args.model)
    result = evaluate(model, variables, args.dataset, args.split, batch_size=args.batch_size,
                      data_dir=args.data_dir, class_names=_saved_names(path))
    print(json.dumps({'model': str(path), **result}, indent=2))
    return 0


def _saved_names(path) -> Optional[list]:
    from vitjax.loader import read_config
    return read_config(path).get('class_names')


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog='vitjax', description=__doc__.split('\n')[0])
    sub = ap.add_subparsers(dest='command', required=True)
    p = sub.add_parser('predict', help='top-k classes for images')
    p.add_argument('--model', required=True, help='model directory or timm name')
    p.add_argument('images', nargs='+', help='image files or folders')
    p.add_argument('--top', type=_at_least_one('--top'), default=5, help='classes per image (at most all of them)')
    p.add_argument('--json', action='store_true', help='JSON on stdout')
    p.add_argument('--batch-size', type=_at_least_one('--batch-size'), default=32, help='images at a time')
    p.set_defaults(fn=cmd_predict)
    p = sub.add_parser('features', help='features of images into an .npz')
    p.add_argument('--model', required=True)
    p.add_argument('images', nargs='+')
    p.add_argument('--out', required=True, help='output .npz (arrays + files)')
    p.add_argument('--kind', default='pooled', choices=('pooled', 'cls', 'tokens', 'map', 'intermediates'))
    p.add_argument('--batch-size', type=_at_least_one('--batch-size'), default=32, help='images at a time')
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
    p.add_argument('--batch-size', type=_at_least_one('--batch-size'), default=64)
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
        status = _porting(*argv)
        if status is None:
            print(f'error: vitjax {argv[0]} reads PyTorch models: it needs the porting extra (torch, timm): '
                  "pip install 'vitjax[porting]'", file=sys.stderr)
            return 1
        return status
    if argv and argv[0] == 'train':
        from vitjax.train.main import run
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
