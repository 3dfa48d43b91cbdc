"""Reading PyTorch checkpoints safely: safetensors preferred, pickles only through `weights_only=True`."""
from __future__ import annotations

from pathlib import Path


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


def infer_num_classes(state: dict) -> int:
    """Class count from the head in a state dict; 0 for a headless checkpoint."""
    head = state.get('head.weight', state.get('head.fc.weight'))  # ViT / Swin (ClassifierHead)
    return int(head.shape[0]) if head is not None else 0
