"""An NNX face for every vitjax model, through Flax's own Linen <-> NNX bridge (`flax.nnx.bridge.ToNNX`).

    from flax import nnx
    import optax, vitjax.nnx
    m = vitjax.nnx.create_model('vit_base_patch16_224.augreg2_in21k_ft_in1k', pretrained=True, num_classes=10)
    opt = nnx.Optimizer(m, optax.adamw(1e-4), wrt=nnx.Param)      # then nnx.value_and_grad / opt.update(m, g)

The module holds the loaded weights as its `nnx.Param`s; it computes exactly what the Linen model does.
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np


def to_nnx(model, variables, rngs: Optional[Any] = None):
    """A Linen vitjax `model` with its `variables` as an `nnx.Module`."""
    from flax import nnx
    from flax.nnx import bridge
    m = bridge.ToNNX(model, rngs=rngs or nnx.Rngs(0))
    _, h, w = model.pretrained_cfg.input_size
    bridge.lazy_init(m, np.zeros((1, h, w, model.in_chans), np.float32))  # creates the variables' slots
    state = nnx.state(m)
    pure = nnx.to_pure_dict(state)
    pure.update(variables['params'])  # the bridge keeps Linen's 'params' collection at the top level
    nnx.replace_by_pure_dict(state, pure)
    nnx.update(m, state)
    return m


def create_model(name: str, **kwargs: Any):
    """`vitjax.create_model` (pretrained=True, a model directory, or random init) as an `nnx.Module`."""
    from vitjax.registry import create_model as create
    return to_nnx(*create(name, **kwargs))


def load(path: str, **kwargs: Any):
    """`vitjax.load` as an `nnx.Module`."""
    from vitjax.loader import load as load_linen
    return to_nnx(*load_linen(path, **kwargs))
