"""timm's pretrained ViT zoo as data: `vitjax/zoo.json` and `vitjax/labels/`, generated from the installed timm so
that vitjax can build any timm pretrained name without torch or timm.

    python -m porting.zoo                   # (re)write the table and the label files
    python -m porting.zoo --check           # exit 1 listing every difference from the installed timm

Architecture configs are read by `porting.sources` (the converter's own readers) off models built on torch's meta
device, so the table and the converter cannot disagree.
"""
from __future__ import annotations

import argparse
import fnmatch
import functools
import gzip
import json
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / 'vitjax' / 'zoo.json'
LABELS = ROOT / 'vitjax' / 'labels'
TAG_FIELDS = ('hf_hub_id', 'num_classes', 'input_size', 'crop_pct', 'crop_mode', 'interpolation', 'mean', 'std')
# Kept only where timm sets them: url is the weights' only home where there is no hf_hub_id, custom_load says it is
# in the original (non-timm) format, fixed_input_size that timm builds the model at input_size.
OPTIONAL_FIELDS = ('test_input_size', 'test_crop_pct', 'license', 'hf_hub_filename', 'custom_load',
                   'fixed_input_size', 'min_input_size')
GZIP_OVER = 1 << 20  # label files larger than this are stored gzipped

# Tensor methods that only write values: on the meta device there are none to write, and timm's weight init
# through them dominates the build time.
_VALUE_WRITES = frozenset({'zero_', 'fill_', 'add_', 'sub_', 'mul_', 'div_', 'uniform_', 'normal_', 'erfinv_',
                           'clamp_', 'copy_', 'exponential_', 'bernoulli_'})


def _skip_init():
    from torch.overrides import TorchFunctionMode

    class SkipInit(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, '__name__', '') in _VALUE_WRITES and args and getattr(args[0], 'is_meta', False):
                return args[0]
            return func(*args, **(kwargs or {}))
    return SkipInit()


def _json(v: Any) -> Any:
    return json.loads(json.dumps(v))  # tuples -> lists; raises on anything JSON cannot hold


def version() -> str:
    import timm
    return timm.__version__


def modules() -> tuple[str, ...]:
    """The timm modules in scope: those the timm source rows name (porting/timm_<family>.py)."""
    from porting import sources
    return tuple(m for s in sources.SOURCES if s.library == 'timm' for m in s.timm_modules)


def architectures() -> dict[str, str]:
    """{architecture: timm module} for every pretrained timm architecture in scope."""
    import timm
    return {a: m for m in modules() for a in timm.list_models(module=m, pretrained=True, include_tags=False)}


def pretrained_cfgs(arch: str) -> dict[str, Any]:
    """{'arch.tag': PretrainedCfg} of the tags with weights, in timm's order (the first is timm's default)."""
    import timm
    return {n: c for n, c in timm.models.get_arch_pretrained_cfgs(arch).items() if c.has_weights}


def tag_entry(cfg) -> dict[str, Any]:
    from timm.data import infer_imagenet_subset
    c = cfg.to_dict()
    out = {k: c.get(k) for k in TAG_FIELDS}
    out.update({k: c[k] for k in OPTIONAL_FIELDS if c.get(k)})
    if not c.get('hf_hub_id'):
        out['url'] = c.get('url')
    out['label_set'] = infer_imagenet_subset(c)
    return _json(out)


def timm_config(name: str) -> tuple[str, dict[str, Any]]:
    """(vitjax architecture, vitjax config) of timm's `name` (arch or arch.tag), as porting.convert reads it."""
    import timm
    import torch
    from porting import sources
    with torch.device('meta'), _skip_init():
        model = timm.create_model(name, pretrained=False)
    src = sources.source_of(model, 'timm')
    return src.arch, _json(src.torch_config(model))


@functools.lru_cache(maxsize=None)
def arch_entries(arch: str, module: str) -> tuple[Optional[dict], dict[str, dict], Optional[str]]:
    """(architecture entry or None, its tag entries, the reason it is left out or None)."""
    from vitjax.weights.engine import UnsupportedModel
    try:
        family, config = timm_config(arch)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ''
        return None, {}, msg if isinstance(e, UnsupportedModel) else f'{type(e).__name__}: {msg}'
    cfgs = pretrained_cfgs(arch)
    tags = {n: tag_entry(c) for n, c in cfgs.items()}
    for n in list(cfgs)[1:]:
        # a tag may build another model: through its pretrained cfg's kwargs, or by the entry point reading the
        # tag (Qwen3's projector width is the tag's LLM's): record the fields it changes
        changed = {k: v for k, v in timm_config(n)[1].items() if k != 'num_classes' and config.get(k) != v}
        if changed:
            tags[n]['config'] = changed
    entry = dict(family=family, module=module, config=config, tags=[n.partition('.')[2] for n in cfgs])
    return entry, tags, None


def expected(only: Optional[Iterable[str]] = None) -> dict[str, Any]:
    """The table as the installed timm gives it; `only`: fnmatch patterns of the architectures to read."""
    table = dict(timm_version=version(), architectures={}, tags={}, left_out={})
    for arch, module in architectures().items():
        if only is not None and not any(fnmatch.fnmatchcase(arch, p) for p in only):
            continue
        entry, tags, reason = arch_entries(arch, module)
        if entry is None:
            table['left_out'][arch] = reason
        else:
            table['architectures'][arch] = entry
            table['tags'].update(tags)
    return table


def restrict(table: dict[str, Any], only: Iterable[str]) -> dict[str, Any]:
    """`table` with only the entries of the architectures `only` matches."""
    keep = lambda name: any(fnmatch.fnmatchcase(name.partition('.')[0], p) for p in only)
    return {k: {n: e for n, e in v.items() if keep(n)} if isinstance(v, dict) else v for k, v in table.items()}


def label_sets() -> list[str]:
    """The label sets of the pretrained tags in scope (read off the pretrained cfgs: no model builds)."""
    from timm.data import infer_imagenet_subset
    return sorted({s for a in architectures() for c in pretrained_cfgs(a).values()
                   if (s := infer_imagenet_subset(c.to_dict())) is not None})


def label_names(label_set: str) -> list[str]:
    from timm.data import ImageNetInfo
    info = ImageNetInfo(label_set)
    return [info.index_to_description(i) for i in range(info.num_classes())]


def label_files() -> dict[str, str]:
    """{file name: text} of vitjax/labels."""
    out = {}
    for s in label_sets():
        text = ''.join(f'{n}\n' for n in label_names(s))
        out[f'{s}.txt.gz' if len(text.encode()) > GZIP_OVER else f'{s}.txt'] = text
    return out


def _read_label_file(path: Path) -> str:
    return gzip.decompress(path.read_bytes()).decode() if path.suffix == '.gz' else path.read_text()


def _label_paths(labels: Path) -> dict[str, Path]:
    return {p.name: p for pat in ('*.txt', '*.txt.gz') for p in labels.glob(pat)}


def dumps(table: dict[str, Any]) -> str:
    """Sorted JSON with one line per entry, so that a diff names the entries that changed."""
    def block(d: dict) -> str:
        return '{' + ''.join(f'\n {json.dumps(k)}: {json.dumps(v, sort_keys=True)},' for k, v in sorted(d.items())
                             ).rstrip(',') + '}'
    return '{' + ',\n'.join(f'{json.dumps(k)}: {block(v) if isinstance(v, dict) else json.dumps(v)}'
                            for k, v in sorted(table.items())) + '}\n'


def diff(have: Any, want: Any, path: str = '') -> Iterator[str]:
    """Every difference between the checked-in table (`have`) and timm's (`want`), one line each."""
    if isinstance(have, dict) and isinstance(want, dict):
        for k in sorted(set(have) | set(want)):
            p = f'{path}/{k}' if path else k
            if k not in have:
                yield f'{p}: missing from the table (timm: {json.dumps(want[k], sort_keys=True)[:200]})'
            elif k not in want:
                yield f'{p}: in the table but not in timm'
            else:
                yield from diff(have[k], want[k], p)
    elif (h := json.dumps(have, sort_keys=True)) != (w := json.dumps(want, sort_keys=True)):  # 1 != 1.0 != true
        yield f'{path}: table {h[:200]}, timm {w[:200]}'


def check(table: dict[str, Any], only: Optional[Iterable[str]] = None) -> list[str]:
    """Every difference between `table` and the installed timm (`only`: these architectures' entries)."""
    return list(diff(table if only is None else restrict(table, only), expected(only)))


def diff_labels(labels: Path) -> Iterator[str]:
    want, have = label_files(), _label_paths(labels)
    for name in sorted(set(want) | set(have)):
        if name not in have:
            yield f'labels/{name}: missing'
        elif name not in want:
            yield f'labels/{name}: not a label set the zoo uses'
        elif _read_label_file(have[name]) != want[name]:
            got, exp = _read_label_file(have[name]).splitlines(), want[name].splitlines()
            i = next((i for i, (a, b) in enumerate(zip(got, exp)) if a != b), min(len(got), len(exp)))
            yield f'labels/{name}: {len(got)} lines, timm has {len(exp)}; first difference at line {i + 1}'


def write(table_path: Path, labels: Path) -> dict[str, Any]:
    table = expected()
    table_path.write_text(dumps(table))
    labels.mkdir(parents=True, exist_ok=True)
    files = label_files()
    for name, path in _label_paths(labels).items():
        if name not in files:
            path.unlink()
    for name, text in files.items():
        data = text.encode()
        (labels / name).write_bytes(gzip.compress(data, mtime=0) if name.endswith('.gz') else data)
    return table


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog='python -m porting.zoo', description=__doc__.split('\n\n')[0])
    ap.add_argument('--check', action='store_true', help='compare, write nothing; exit 1 on any difference')
    ap.add_argument('--table', type=Path, default=TABLE, help=f'the table (default {TABLE.relative_to(ROOT)})')
    ap.add_argument('--labels', type=Path, default=LABELS, help=f'label files (default {LABELS.relative_to(ROOT)})')
    ap.add_argument('--only', nargs='+', metavar='GLOB',
                    help='--check: compare only these architectures (fnmatch) and their tags; labels are skipped')
    args = ap.parse_args(argv)
    import torch  # noqa: F401  before anything that may pull in tensorflow
    if not args.check:
        if args.only:
            ap.error('--only goes with --check: the table is always written whole')
        table = write(args.table, args.labels)
        print(f'wrote {args.table}: {len(table["architectures"])} architectures, {len(table["tags"])} tags, '
              f'{len(table["left_out"])} left out; labels: {", ".join(sorted(label_files()))}')
        return 0
    try:
        have = json.loads(args.table.read_text())
        if not isinstance(have, dict):
            raise ValueError('not a JSON object')
    except (OSError, ValueError) as e:
        print(f'{args.table}: {e}', file=sys.stderr)
        return 1
    problems = check(have, args.only)
    if not args.only:
        problems += diff_labels(args.labels)
    for p in problems:
        print(p)
    if problems:
        print(f'{len(problems)} difference(s) between {args.table} and timm {version()}; '
              f'regenerate with `python -m porting.zoo`', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
