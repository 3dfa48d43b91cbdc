"""Every porting source row, collected from the family porting files (porting/<library>_<family>.py, each
ending with its `SOURCES`), and the lookups over them. `porting.convert` and `porting.export` work from these
rows only, so a new family is its porting file alone."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Optional

import porting
from porting.source import Source, read_state_dict  # noqa: F401 (the row type and reader, for callers)
from vitjax.weights.engine import UnsupportedModel

# Detection tries rows in this order of library: the specific checkpoint layouts first, timm (which takes
# anything) last.
LIBRARY_ORDER = ('hf', 'torchvision', 'timm')


def _collect() -> tuple[Source, ...]:
    rows = []
    for m in sorted(pkgutil.iter_modules(porting.__path__), key=lambda m: m.name):
        if m.name.partition('_')[0] in LIBRARY_ORDER:
            rows += getattr(importlib.import_module(f'porting.{m.name}'), 'SOURCES', ())
    return tuple(sorted(rows, key=lambda s: LIBRARY_ORDER.index(s.library)))


SOURCES = _collect()
LIBRARIES = tuple(dict.fromkeys(s.library for s in SOURCES))


def detect(checkpoint: Optional[str], state: Optional[dict]) -> str:
    """The library a checkpoint (file or directory; None: hub weights) comes from."""
    if checkpoint is None:
        return 'timm'
    return next(s.library for s in SOURCES if s.is_checkpoint(checkpoint, state))


def loader(library: str) -> Callable[..., Any]:
    return next(s.load for s in SOURCES if s.library == library)


def source_of(torch_model, library: Optional[str] = None) -> Source:
    """The row for a built PyTorch model."""
    for s in SOURCES:
        if (library is None or s.library == library) and s.is_model(torch_model):
            return s
    have = '; '.join(s.name for s in SOURCES if library in (None, s.library)) or f'no library {library!r}'
    raise UnsupportedModel(f'{type(torch_model).__module__}.{type(torch_model).__name__} (supported: {have})')


def get(library: str, arch: str) -> Source:
    for s in SOURCES:
        if (s.library, s.arch) == (library, arch):
            return s
    raise ValueError(f'no {library} source for vitjax architecture {arch!r} '
                     f'(have: {", ".join(s.name for s in SOURCES)})')
