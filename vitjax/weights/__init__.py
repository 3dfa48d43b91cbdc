"""The torch-free weights layer's name tables: one file a library and family (`<library>_<family>.py`, each
ending with its `TABLES`), collected here, and the engine (`engine.py`) that applies them both ways. A new
family's table is its file alone; its torch side (reading a built PyTorch model) is porting/<same name>.py."""
from __future__ import annotations

import importlib
import pkgutil

from vitjax.weights.table import Table

LIBRARIES = ('hf', 'torchvision', 'timm')


def _collect() -> tuple[Table, ...]:
    tables = []
    for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if m.name.partition('_')[0] in LIBRARIES:
            tables += importlib.import_module(f'{__name__}.{m.name}').TABLES
    return tuple(tables)


TABLES = _collect()


def get(library: str, arch: str) -> Table:
    for t in TABLES:
        if (t.library, t.arch) == (library, arch):
            return t
    raise ValueError(f'no {library} table for vitjax architecture {arch!r} '
                     f'(have: {", ".join(t.name for t in TABLES)})')
