"""An NNX face for every vitjax model, through Flax's own Linen <-> NNX bridge (`flax.nnx.bridge.ToNNX`).

    from flax import nnx
    import optax, vitjax.nnx
    m = vitjax.nnx.create_model('vit_base_patch16_224.augreg2_in21k_ft_in1k', pretrained=True, num_classes=10)
    opt = nnx.Optimizer(m, optax.adamw(1e-4), wrt=nnx.Param)      # then nnx.value_and_grad / opt.update(m, g)
    model, variables = vitjax.nnx.to_linen(m)                      # e.g. for vitjax.save

The module holds the loaded weights as its `nnx.Param`s, and timm's buffers (Gemma 4's clamp bounds and
standardization, `vitjax.models.BUFFERS`) as `Buffer`s: `nnx.grad` and `wrt=nnx.Param` leave those as they are, as
train.py does. It computes exactly what the Linen model does.
"""
from __future__ import annotations

import re
from typing import Any, Optional

from flax import nnx
from flax.nnx import bridge, traversals


class Buffer(nnx.Variable):
    """A timm buffer: a weight the model reads and training never changes (not an `nnx.Param`)."""


class Bridge(bridge.ToNNX):
    """Flax's ToNNX holding a vitjax model's variables, its `Buffer`s handed to the Linen model among the
    params (where the Linen model keeps them)."""

    def __call__(self, *args: Any, rngs: Any = None, method: Any = None, mutable: Any = False, **kwargs: Any):
        import jax
        rngs = self.to_nnx__rngs if rngs is None else rngs
        keys = ({n: s() for n, s in rngs.items()} if isinstance(rngs, nnx.Rngs) else
                {'params': rngs} if isinstance(rngs, jax.Array) else {})
        if 'params' not in keys and 'default' in keys:  # as the bridge does (Linen's dropout draws from it)
            keys['params'] = keys.pop('default')
        variables = {'params': nnx.to_pure_dict(nnx.state(self, (nnx.Param, Buffer)))}
        out = self.to_nnx__module.apply(variables, *args, rngs=keys, method=method, mutable=mutable or False,
                                        **kwargs)
        if not mutable:
            return out
        out, updates = out  # e.g. 'intermediates': kept on the module beside the params, as the bridge does
        for name, value in bridge.variables.linen_vars_to_nnx_attrs(
                {k: v for k, v in updates.items() if k != 'params'}).items():
            old = getattr(self, name, None)
            if isinstance(old, dict) and isinstance(value, dict):
                flat = traversals.flatten_mapping
                value = traversals.unflatten_mapping({**flat(old), **flat(value)})
            setattr(self, name, nnx.data(value) if isinstance(value, dict) else value)
        return out


def to_nnx(model, variables, rngs: Optional[Any] = None) -> Bridge:
    """A Linen vitjax `model` with its `variables` as an `nnx.Module`."""
    from flax import traverse_util

    from vitjax.models import BUFFERS
    m = Bridge(model, rngs=rngs or nnx.Rngs(0))
    flat = traverse_util.flatten_dict(dict(variables['params']), sep='/')
    typed = {k: (Buffer if any(re.search(b, k) for b in BUFFERS) else nnx.Param)(v) for k, v in flat.items()}
    for name, value in traverse_util.unflatten_dict(typed, sep='/').items():  # Linen's params at the top level
        setattr(m, name, nnx.data(value) if isinstance(value, dict) else value)
    return m


def to_linen(m: Bridge):
    """(model, variables) of an NNX vitjax model, Params and Buffers, as `vitjax.create_model` returns them."""
    return m.to_nnx__module, {'params': nnx.to_pure_dict(nnx.state(m, (nnx.Param, Buffer)))}


def create_model(name: str, **kwargs: Any) -> Bridge:
    """`vitjax.create_model` (pretrained=True, a model directory, or random init) as an `nnx.Module`."""
    from vitjax.registry import create_model as create
    return to_nnx(*create(name, **kwargs))


def load(path: str, **kwargs: Any) -> Bridge:
    """`vitjax.load` as an `nnx.Module`."""
    from vitjax.loader import load as load_linen
    return to_nnx(*load_linen(path, **kwargs))
