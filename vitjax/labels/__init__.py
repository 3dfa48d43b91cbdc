"""Class names of the label sets timm's pretrained heads use ('imagenet-1k', 'imagenet-12k', ...: the `label_set`
of a vitjax/zoo.json tag), one name per class index. Generated from timm's ImageNet metadata (Apache-2.0,
Ross Wightman) by `python -m porting.zoo`; reading them needs neither torch nor timm."""
from __future__ import annotations

import functools
import gzip
from importlib import resources


def label_sets() -> list[str]:
    return sorted(p.name.split('.txt')[0] for p in resources.files(__name__).iterdir()
                  if p.name.endswith(('.txt', '.txt.gz')))


@functools.lru_cache(maxsize=None)
def _names(label_set: str) -> tuple[str, ...]:
    root = resources.files(__name__)
    for name, read in ((f'{label_set}.txt', lambda b: b), (f'{label_set}.txt.gz', gzip.decompress)):
        if (root / name).is_file():
            return tuple(read((root / name).read_bytes()).decode('utf-8').removesuffix('\n').split('\n'))
    raise ValueError(f'unknown label set {label_set!r} (known: {", ".join(label_sets())})')


def names(label_set: str) -> list[str]:
    """The class names of `label_set`, in class-index order."""
    return list(_names(label_set))
