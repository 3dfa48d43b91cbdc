"""`vitjax.load` / `read_config`: one name for a model directory (local or gs://) or timm's hub weights
(`hf-hub:timm/<arch>.<tag>`, `<arch>.<tag>`; vitjax/hub.py, no torch). A local path wins over a timm name of
the same spelling; `create_model(name, pretrained=True)` always means the hub."""
from __future__ import annotations

import copy
import os
from typing import Any, Optional, Union

from vitjax import hub, io
from vitjax.adapt import adapted


def load(path: Union[str, os.PathLike], num_classes: Optional[int] = None, img_size: Any = None,
         in_chans: Optional[int] = None, revision: Optional[str] = None, **overrides: Any):
    """`(model, variables)`, optionally with another head size, image size or (hub weights, adapted as timm
    does) input channel count; `revision` pins a hub commit (also `name@rev`)."""
    if hub.is_hub_name(path):
        return hub.load(str(path), num_classes, img_size, in_chans, revision, **overrides)
    if in_chans is not None or revision is not None:
        raise ValueError(f'{path}: in_chans and revision apply to hub weights, not to a model directory')
    try:
        model, params = io.read_model(path)
    except FileNotFoundError as e:
        if not hub.is_hub_name(path, local=False):
            raise
        raise FileNotFoundError(f'{e} (the local {path} hides the timm name: for hub weights, '
                                f'vitjax.create_model({os.fspath(path)!r}, pretrained=True))') from None
    return adapted(model, params, num_classes, img_size, overrides)


def read_config(path: Union[str, os.PathLike], revision: Optional[str] = None) -> dict[str, Any]:
    """A model directory's config.json, or a hub repo's as one (its config.json alone is downloaded)."""
    if hub.is_hub_name(path):
        return copy.deepcopy(hub.read_hub_config(str(path), revision))
    return io.read_dir_config(path)
