"""A porting source row: how vitjax recognises one (library, family) of PyTorch checkpoints and models, builds
the PyTorch model with the weights loaded strictly, and reads the vitjax config and preprocessing off the built
model; its name table is the torch-free `vitjax.weights` table it holds. Each family's porting file
(porting/<library>_<family>.py) ends with its rows in `SOURCES`; porting/sources.py collects them. Also the
checkpoint reader and timm's loader they share."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

from vitjax.weights.engine import ConversionError
from vitjax.weights.table import Table


def read_state_dict(path) -> dict:
    """A checkpoint file -> {name: torch.Tensor}. Pickled code is refused, never run."""
    import torch
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint {path} does not exist')
    if path.suffix == '.safetensors':
        from safetensors.torch import load_file
        try:
            state = load_file(str(path))
        except Exception as e:
            raise ValueError(f'{path} is not a readable safetensors file: {e}') from None
    elif path.suffix in ('.pth', '.pt', '.bin'):
        try:
            state = torch.load(path, map_location='cpu', weights_only=True)
        except Exception as e:  # UnpicklingError for code-carrying pickles, RuntimeError for corrupt archives
            raise ValueError(f'{path} could not be loaded safely (weights_only=True): {e}') from None
        for wrapper in ('model', 'state_dict', 'model_ema'):  # common training-checkpoint layouts
            if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    else:
        raise ValueError(f'{path}: unsupported checkpoint type {path.suffix!r} (use .safetensors, .pth, .pt or .bin)')
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f'{path} does not hold a state dict of tensors')
    return state


def load_strict(model, state: dict, name: str, checkpoint: str):
    """`model` with `state` loaded, after naming every missing, unexpected, mis-shaped or mis-typed key."""
    want = model.state_dict()
    problems = [f'  missing: {k}' for k in want if k not in state]
    problems += [f'  unexpected: {k}' for k in state if k not in want]
    problems += [f'  wrong shape: {k}: {tuple(v.shape)} != {tuple(want[k].shape)}'
                 for k, v in state.items() if k in want and v.shape != want[k].shape]
    # torch would silently cast integer or bool tensors into float parameters
    problems += [f'  wrong dtype: {k}: {v.dtype} (expected {want[k].dtype})'
                 for k, v in state.items() if k in want and v.is_floating_point() != want[k].is_floating_point()]
    if problems:
        raise ConversionError(f'{checkpoint} is not a {name} state dict:\n' + '\n'.join(problems))
    model.load_state_dict(state, strict=True)
    return model.eval()


def head_classes(state: dict, *keys: str) -> Optional[int]:
    head = next((state[k] for k in keys if k in state), None)
    return int(head.shape[0]) if head is not None else None


def load_timm(name: str, checkpoint: Optional[str], state: Optional[dict] = None, **kwargs):
    """timm's model: hub weights without a checkpoint, else the checkpoint loaded strictly."""
    import timm
    if checkpoint is None:
        return timm.create_model(name, pretrained=True, **kwargs).eval()
    state = read_state_dict(checkpoint) if state is None else state
    kwargs.setdefault('num_classes', head_classes(state, 'head.weight', 'head.fc.weight') or 0)  # ViT / Swin
    return load_strict(timm.create_model(name, pretrained=False, **kwargs), state, name, checkpoint)


@dataclasses.dataclass(frozen=True)
class Source:
    table: Table  # the torch-free name table (vitjax/weights/<library>_<family>.py) the rest of the row reads into
    is_model: Callable[[Any], bool]  # this row's PyTorch class
    torch_config: Callable[[Any], dict]  # the built model -> vitjax module kwargs (raises UnsupportedModel)
    pretrained_cfg: Callable[[Any], dict]  # the built model -> preprocessing (vitjax.models.PretrainedCfg)
    load: Callable[..., Any]  # (name, checkpoint or None for hub weights, state or None, **kwargs) -> model
    is_checkpoint: Callable[[Optional[str], Optional[dict]], bool]  # (path, its state dict) is this library's
    reference: Callable[[Any], Any] = lambda m: m  # the model with timm's forward_features / forward_head
    state_of: Callable[[Any], dict] = lambda m: m.state_dict()  # the model's tensors in the rules' names
    resize_state: Optional[Callable] = None  # (state, src, dst, ref) -> state as the library adapts it

    # The table's fields and methods, as the row's own.
    library = property(lambda self: self.table.library)
    arch = property(lambda self: self.table.arch)
    rules = property(lambda self: self.table.rules)
    buffers = property(lambda self: self.table.buffers)
    create_kwargs = property(lambda self: self.table.create_kwargs)
    nominal = property(lambda self: self.table.nominal)
    timm_modules = property(lambda self: self.table.timm_modules)
    name = property(lambda self: self.table.name)

    def module(self, config: dict):
        return self.table.module(config)

    def from_state(self, state: dict, config: dict) -> dict:
        return self.table.from_state(state, config)

    def to_state(self, params, config: dict, source_keys=None) -> dict:
        return self.table.to_state(params, config, source_keys)


def timm_class(*names: str):
    return lambda m: type(m).__name__ in names and type(m).__module__.startswith('timm.')
