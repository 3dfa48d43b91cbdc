"""The porting sources: one row per (library, architecture) vitjax converts from, and the checkpoint reader.

A `Source` row says how to recognise its checkpoints and models, how to build the PyTorch model with the
weights loaded strictly, the name table, how to read the vitjax config and preprocessing off the built model,
and what the parity reference is. `porting.convert` and `porting.export` work from this table only, so a new
family is a name-table module plus one row here.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Optional

from porting import hf_vit, timm_eva, timm_naflex, timm_swin, timm_vit, torchvision_vit
from porting.engine import ConversionError, Rule, UnsupportedModel, apply_rules, invert_rules, to_numpy


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


def _head_classes(state: dict, *keys: str) -> Optional[int]:
    head = next((state[k] for k in keys if k in state), None)
    return int(head.shape[0]) if head is not None else None


def load_timm(name: str, checkpoint: Optional[str], state: Optional[dict] = None, **kwargs):
    """timm's model: hub weights without a checkpoint, else the checkpoint loaded strictly."""
    import timm
    if checkpoint is None:
        return timm.create_model(name, pretrained=True, **kwargs).eval()
    state = read_state_dict(checkpoint) if state is None else state
    kwargs.setdefault('num_classes', _head_classes(state, 'head.weight', 'head.fc.weight') or 0)  # ViT / Swin
    return load_strict(timm.create_model(name, pretrained=False, **kwargs), state, name, checkpoint)


def load_torchvision(name: str, checkpoint: Optional[str], state: Optional[dict] = None, **kwargs):
    """torchvision's model (vit_b_16, ...): DEFAULT hub weights, or a checkpoint loaded strictly."""
    import torchvision
    if checkpoint is None:
        return torchvision.models.get_model(name, weights='DEFAULT', **kwargs).eval()
    state = read_state_dict(checkpoint) if state is None else state
    classes = _head_classes(state, 'heads.head.weight')
    if classes is not None:
        kwargs.setdefault('num_classes', classes)
    return load_strict(torchvision.models.get_model(name, weights=None, **kwargs), state, name, checkpoint)


def load_hf(name: str, checkpoint: Optional[str], state: Optional[dict] = None, **kwargs):
    if checkpoint is None:
        raise ValueError('a Hugging Face source is a local model directory: pass --checkpoint DIR')
    if not hf_vit.is_hf_dir(checkpoint):
        raise ValueError(f'{checkpoint} is not a Hugging Face model directory (config.json + weights)')
    if kwargs:
        raise ValueError(f'Hugging Face sources take no model arguments, got {sorted(kwargs)}')
    return hf_vit.load(checkpoint)


@dataclasses.dataclass(frozen=True)
class Source:
    library: str  # 'timm' | 'torchvision' | 'hf': how the PyTorch model is built and its weights read
    arch: str  # the vitjax architecture the rules fill (vitjax.models.ARCHITECTURES)
    rules: tuple[Rule, ...]  # the name table, applied by porting.engine in both directions
    is_model: Callable[[Any], bool]  # this row's PyTorch class
    model_config: Callable[[Any], dict]  # the built model -> vitjax module kwargs (raises UnsupportedModel)
    pretrained_cfg: Callable[[Any], dict]  # the built model -> preprocessing (vitjax.models.PretrainedCfg)
    load: Callable[..., Any]  # (name, checkpoint or None for hub weights, state or None, **kwargs) -> model
    is_checkpoint: Callable[[Optional[str], Optional[dict]], bool]  # (path, its state dict) is this library's
    reference: Callable[[Any], Any] = lambda m: m  # the model with timm's forward_features / forward_head
    state_of: Callable[[Any], dict] = lambda m: m.state_dict()  # the model's tensors in the rules' names
    buffers: tuple[str, ...] = ()  # key suffixes of recomputed buffers, ignored when present
    create_kwargs: tuple[str, ...] = ()  # vitjax fields the library's constructor takes by name (export, resizes)
    resize_state: Optional[Callable] = None  # (state, src, dst, ref) -> state as the library adapts it
    nominal: tuple[str, ...] = ('init_values',)  # config fields a rebuilt model may read back differently

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


def _timm_class(*names: str):
    return lambda m: type(m).__name__ in names and type(m).__module__.startswith('timm.')


TIMM_VIT = Source(
    'timm', 'vit', timm_vit.RULES, _timm_class('VisionTransformer', 'VisionTransformerDistilled'),
    timm_vit.model_config, timm_vit.pretrained_cfg, load_timm, lambda path, state: True,
    create_kwargs=timm_vit.CREATE_KWARGS, resize_state=timm_vit.reference_state)
TIMM_SWIN = Source(
    'timm', 'swin', timm_swin.RULES, _timm_class('SwinTransformer'), timm_swin.model_config,
    timm_vit.pretrained_cfg, load_timm, lambda path, state: True,
    buffers=('relative_position_index', 'attn_mask'), create_kwargs=timm_swin.CREATE_KWARGS,
    resize_state=timm_swin.reference_state)
TIMM_EVA = Source(
    'timm', 'eva', timm_eva.RULES, _timm_class('Eva'), timm_eva.model_config, timm_vit.pretrained_cfg, load_timm,
    lambda path, state: True, create_kwargs=timm_eva.CREATE_KWARGS, resize_state=timm_vit.reference_state)
TIMM_NAFLEX = Source(
    'timm', 'naflexvit', timm_naflex.RULES, _timm_class('NaFlexVit'), timm_naflex.model_config,
    timm_vit.pretrained_cfg, load_timm, lambda path, state: True, create_kwargs=timm_naflex.CREATE_KWARGS,
    resize_state=timm_naflex.reference_state, nominal=('init_values', 'img_size'))
TORCHVISION_VIT = Source(
    'torchvision', 'vit', torchvision_vit.RULES, torchvision_vit.is_model, torchvision_vit.model_config,
    torchvision_vit.pretrained_cfg, load_torchvision, torchvision_vit.is_state, torchvision_vit.ParityAdapter)
HF_VIT = Source(
    'hf', 'vit', hf_vit.RULES, hf_vit.is_model, hf_vit.model_config, hf_vit.pretrained_cfg, load_hf,
    lambda path, state: hf_vit.is_hf_dir(path), hf_vit.ParityAdapter, hf_vit.state_of)

# Detection tries rows in order: the specific checkpoint layouts first, timm (which takes anything) last.
SOURCES = (HF_VIT, TORCHVISION_VIT, TIMM_VIT, TIMM_SWIN, TIMM_EVA, TIMM_NAFLEX)
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
