"""A name table: how the tensors of one (library, family) of PyTorch checkpoints map onto a vitjax architecture's
params, both ways. Torch-free: the hub reader (vitjax/hub.py) fills params from safetensors with it, and
porting's conversion and export (the torch side) wrap it in a `porting.source.Source` row."""
from __future__ import annotations

import dataclasses

from vitjax.weights.engine import Rule, apply_rules, invert_rules, to_numpy


@dataclasses.dataclass(frozen=True)
class Table:
    library: str  # 'timm' | 'torchvision' | 'hf': whose state-dict names the rules read
    arch: str  # the vitjax architecture the rules fill (vitjax.models.ARCHITECTURES)
    rules: tuple[Rule, ...]  # applied by vitjax.weights.engine in both directions
    buffers: tuple[str, ...] = ()  # key suffixes of recomputed buffers, ignored when present
    create_kwargs: tuple[str, ...] = ()  # vitjax fields the library's constructor takes by name (hub, export)
    nominal: tuple[str, ...] = ('init_values',)  # config fields a rebuilt model may read back differently
    timm_modules: tuple[str, ...] = ()  # the timm modules whose pretrained architectures it converts (the zoo)

    @property
    def name(self) -> str:
        return f'{self.library} {self.arch}'

    def module(self, config: dict):
        from vitjax.io import as_tuples
        from vitjax.models import ARCHITECTURES
        return ARCHITECTURES[self.arch](**as_tuples(config))

    def from_state(self, state: dict, config: dict) -> dict:
        """State dict (torch or numpy values) + vitjax config -> Flax params, strictly checked."""
        from vitjax.io import param_shapes, unflatten
        pairs = ((k, to_numpy(state[k])) for k in state if not k.endswith(self.buffers))
        expected = param_shapes(self.module(config))
        return unflatten(apply_rules(pairs, self.rules, expected, config, f'{self.name} -> vitjax'))

    def to_state(self, params, config: dict, source_keys=None) -> dict:
        """The exact inverse of `from_state`: Flax params -> state dict (numpy); `source_keys`, the PyTorch
        model's state-dict keys, pick the layout where the table holds two (Eva's fused or separate q/k/v)."""
        from vitjax.io import flatten
        return invert_rules(flatten(params), self.rules, config, f'vitjax -> {self.name}', source_keys)
