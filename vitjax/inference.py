"""Inference on image files: timm's eval preprocessing, top-k predictions with class names, features, and
attention maps (rollout and last-layer CLS attention). No torch and no TensorFlow: PIL + numpy + jax.

    model, variables = vitjax.load('out/deit_tiny')
    preds = predict(model, variables, ['cat.jpg'], top=5, class_names=class_names_for(model, 'out/deit_tiny'))
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterator, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from vitjax.images import RESAMPLE
from vitjax.models import SwinTransformer, VisionTransformer, img_size_of
from vitjax.models.tower import Tower
from vitjax.models.sam import VisionTransformerSAM

ImageLike = Union[str, os.PathLike, 'PIL.Image.Image']
FEATURE_KINDS = ('pooled', 'cls', 'tokens', 'map', 'intermediates')
BATCH = 32  # images preprocessed and run at a time: what bounds the memory of a folder's worth
# timm's label set of a pretrained head, by its size (vitjax/labels/).
IMAGENET_LABEL_SETS = {1000: 'imagenet-1k', 11821: 'imagenet-12k', 21843: 'imagenet-21k-goog', 21841: 'imagenet-22k'}


def imagenet_class_names(num_classes: int) -> Optional[list[str]]:
    """Human-readable names for an ImageNet-1k/12k/21k/22k head, or None for other sizes."""
    from vitjax import labels
    return labels.names(IMAGENET_LABEL_SETS[num_classes]) if num_classes in IMAGENET_LABEL_SETS else None


def class_names_for(model, model_dir: Optional[Union[str, os.PathLike]] = None) -> list[str]:
    """The names `train.py` saved with a fine-tuned model, else ImageNet names by head size, else indices."""
    if model_dir is not None:
        from vitjax.loader import read_config
        names = read_config(model_dir).get('class_names')
        if names and len(names) == model.num_classes:
            return list(names)
    return imagenet_class_names(model.num_classes) or [f'class_{i}' for i in range(model.num_classes)]


# -- preprocessing (timm's eval transform: resize by crop_pct, crop or pad by crop_mode, normalise) -----------
def open_image(image: ImageLike):
    from PIL import Image
    if isinstance(image, Image.Image):
        return image.convert('RGB')
    from vitjax.images import load_rgb
    return Image.fromarray(load_rgb(str(image)))


def input_size(model) -> tuple[int, int]:
    return tuple(model.pretrained_cfg.input_size[1:]) if getattr(model, 'dynamic_img_size', False) else \
        img_size_of(model)


def eval_image(im, size: tuple[int, int], crop_pct: float, crop_mode: str = 'center',
               interpolation: str = 'bicubic', mean: Sequence[float] = (0.485, 0.456, 0.406)):
    """timm's `transforms_imagenet_eval` up to ToTensor on a PIL RGB image, as a PIL image of (h, w) `size`.
    center: the short side to size / crop_pct (aspect kept), center crop; squash: each side to size / crop_pct,
    center crop; border: the long side to size / crop_pct (aspect kept), center crop or pad with the mean."""
    from PIL import Image
    h, w = size
    sh, sw = math.floor(h / crop_pct), math.floor(w / crop_pct)
    iw, ih = im.size
    if crop_mode == 'squash':
        new = (sw, sh)
    elif crop_mode == 'border' or sh != sw:  # timm's ResizeKeepRatio: the long side (border) or the short one fits
        ratios = (ih / sh, iw / sw)
        ratio = max(ratios) if crop_mode == 'border' else min(ratios)
        new = (round(iw / ratio), round(ih / ratio))
    else:  # torchvision's Resize(int): the short side to sh, the long one truncated
        new = (sh, int(sh * ih / iw)) if iw <= ih else (int(sh * iw / ih), sh)
    if min(new) < 1:
        raise ValueError(f'a {iw}x{ih} image resizes to {new[0]}x{new[1]} for crop_mode={crop_mode!r} at {h}x{w}')
    if new != im.size:
        im = im.resize(new, RESAMPLE[interpolation])
    iw, ih = im.size
    if iw < w or ih < h:  # CenterCrop pads with black, border's CenterCropOrPad with the mean
        fill = tuple(round(255 * v) for v in mean) if crop_mode == 'border' else (0, 0, 0)
        canvas = Image.new('RGB', (max(iw, w), max(ih, h)), fill)
        canvas.paste(im, ((max(iw, w) - iw) // 2, (max(ih, h) - ih) // 2))
        im, (iw, ih) = canvas, canvas.size
    top, left = int(round((ih - h) / 2.0)), int(round((iw - w) / 2.0))
    return im.crop((left, top, left + w, top + h))


def preprocess(images: Sequence[ImageLike], model) -> np.ndarray:
    """(B, H, W, 3) float32, exactly as timm's `create_transform(**resolve_data_config(model))` makes it."""
    cfg = model.pretrained_cfg
    h, w = input_size(model)
    mean, std = np.asarray(cfg.mean, np.float32), np.asarray(cfg.std, np.float32)
    out = np.empty((len(images), h, w, 3), np.float32)  # filled in place: one copy of the batch, not three
    for i, image in enumerate(images):
        im = open_image(image)
        try:
            im = eval_image(im, (h, w), cfg.crop_pct, cfg.crop_mode, cfg.interpolation, cfg.mean)
        except ValueError as e:
            raise ValueError(f"{getattr(image, 'filename', None) or image}: {e}") from None
        out[i] = (np.asarray(im, np.float32) / 255.0 - mean) / std
    return out


def _chunks(images: Sequence[ImageLike], batch_size: int) -> Iterator[Sequence[ImageLike]]:
    # preprocessed where they are run, not by a generator: the previous batch would live on beside the next
    return (images[i:i + batch_size] for i in range(0, len(images), batch_size))


def _batched(fn, x: np.ndarray, batch: int = BATCH):
    outs = [fn(x[i:i + batch]) for i in range(0, len(x), batch)]
    return jax.tree.map(lambda *a: np.concatenate([np.asarray(v) for v in a]), *outs)


# -- predictions -------------------------------------------------------------------------------------------
def predict(model, variables, images: Sequence[ImageLike], top: int = 5,
            class_names: Optional[Sequence[str]] = None, batch_size: int = BATCH) -> list[list[dict[str, Any]]]:
    """Top-k `{'index', 'label', 'probability'}` per image, most probable first."""
    run = jax.jit(lambda x: model.apply(variables, x))
    check_image_logits(model, 'predict', run, min(batch_size, len(images)) or 1)
    names = list(class_names) if class_names is not None else class_names_for(model)
    k = min(top, model.num_classes)
    result = []
    for chunk in _chunks(images, batch_size):  # only the top k of each image kept: not N x classes
        for p in np.asarray(jax.nn.softmax(jnp.asarray(run(preprocess(chunk, model)), jnp.float32), axis=-1)):
            idx = np.argsort(-p, kind='stable')[:k]
            result.append([{'index': int(i), 'label': names[i], 'probability': float(p[i])} for i in idx])
    return result


def check_image_logits(model, what: str, run, batch: int = 1) -> None:
    """`what` (predict, evaluate) needs one row of logits per image: refused up front for a model without a head,
    or whose head pools nothing (timm's global_pool='' gives logits per token). `run(images)` is its forward pass;
    only its shape is traced (a jitted `run` keeps the trace for its first call of `batch` images)."""
    if model.num_classes <= 0:
        raise ValueError(f'{what}: this model has no classifier head (num_classes=0); use features instead')
    h, w = input_size(model)
    shape = tuple(jax.eval_shape(run, jax.ShapeDtypeStruct((batch, h, w, 3), jnp.float32)).shape)
    if shape != (batch, model.num_classes):
        pool = getattr(model, 'global_pool', None)
        raise ValueError(f'{what} needs one row of logits per image, but this {type(model).__name__} gives '
                         f'{shape[1:]} per image' + (" (global_pool='' pools nothing: timm's logits per token)"
                                                     if pool == '' else '')
                         + "; give it a pooling one, e.g. vitjax.load(path, global_pool='avg')")


# -- features ----------------------------------------------------------------------------------------------
def features(model, variables, x: np.ndarray, kind: str = 'pooled') -> dict[str, np.ndarray]:
    """Features of preprocessed images, by kind:
    pooled  (B, D)        what the head sees (pre-logits)
    cls     (B, D)        the class token after the final norm (ViT with a class token)
    tokens  (B, N, D)     every token after the final norm (Swin, SAM: the last map flattened)
    map     (B, h, w, D)  the patch tokens as a grid (ViT-B/16 at 224: 14x14x768; Swin: the last stage map;
                          SAM: the neck's)
    intermediates         every block's (ViT) or stage's (Swin) output, NHWC, as `block_i` / `stage_i`
    """
    return _batched(_features_fn(model, variables, kind), x)


def iter_features(model, variables, images: Sequence[ImageLike], kind: str = 'pooled',
                  batch_size: int = BATCH) -> Iterator[dict[str, np.ndarray]]:
    """`features` of image files, `batch_size` at a time, in order (the arrays as numpy, keys sorted)."""
    run = _features_fn(model, variables, kind)
    for chunk in _chunks(images, batch_size):
        yield jax.tree.map(np.asarray, run(preprocess(chunk, model)))


def _features_fn(model, variables, kind: str):
    if kind not in FEATURE_KINDS:
        raise ValueError(f'kind must be one of {FEATURE_KINDS}, got {kind!r}')
    swin = isinstance(model, SwinTransformer)
    if kind == 'cls' and not getattr(model, 'class_token', False):
        raise ValueError(f'{type(model).__name__} has no class token; use pooled or map')

    def run(x):
        if kind == 'intermediates':
            maps = model.apply(variables, x, output_fmt='NHWC', intermediates_only=True,
                               method=model.forward_intermediates)
            return {f"{'stage' if swin else 'block'}_{i}": m for i, m in enumerate(maps)}
        f = model.apply(variables, x, method=model.forward_features)
        if kind == 'pooled':
            return {kind: model.apply(variables, f, pre_logits=True, method=model.forward_head)}
        if f.ndim == 4:  # forward_features is already a map (Swin, SAM, Qwen3)
            return {kind: f.reshape(f.shape[0], -1, f.shape[-1]) if kind == 'tokens' else f}
        if kind == 'cls':
            return {kind: f[:, 0]}
        if kind == 'tokens':
            return {kind: f}
        b, h, w = x.shape[:3]  # the tokens' grid: the patches', or Qwen3's merged one
        grid = getattr(model, 'feature_grid', model.token_grid)(h, w)
        return {kind: f[:, model.num_prefix_tokens:].reshape(b, *grid, -1)}

    return jax.jit(run)


# -- attention ---------------------------------------------------------------------------------------------
def attention_maps(model, variables, x: np.ndarray, head_fusion: str = 'mean') -> dict[str, np.ndarray]:
    """Attention of a ViT over the patch grid, (B, gh, gw) each, normalised to [0, 1] per image:
    `rollout` (Abnar & Zuidema 2020: per layer, heads fused, 0.5 A + 0.5 I, rows renormalised, multiplied
    through the layers) and `last_layer` (the last block's attention). The query is the class token, or the
    mean over patch queries for models without one; prefix tokens (class, registers, distillation) are never
    shown as patches. SAM's window blocks count as attending to their own window only; for Swin (V1, V2) the
    layers are the last stage's blocks, over its map (its windows, shifted, laid on it the same way)."""
    sam, swin = isinstance(model, VisionTransformerSAM), isinstance(model, SwinTransformer)
    if not isinstance(model, (VisionTransformer, VisionTransformerSAM, SwinTransformer, Tower)):
        raise ValueError(f'attention maps are for the ViT families and Swin, not {type(model).__name__}')
    if head_fusion not in ('mean', 'max', 'min'):
        raise ValueError(f"head_fusion must be 'mean', 'max' or 'min', got {head_fusion!r}")
    npt, cls = (0, False) if sam or swin else (model.num_prefix_tokens, model.class_token)

    def run(x):
        _, state = model.apply(variables, x, mutable=['intermediates'])
        inter = state['intermediates']
        inter = inter.get('encoder', inter)  # a tower classifier holds its encoder as `encoder`
        if swin:
            inter = inter[f'layers_{len(model.depths) - 1}']
        layers = [inter[f'blocks_{i}']['attn']['attn'][0]  # (B, heads, N, N); window blocks (B * windows, ...)
                  for i in range(model.depths[-1] if swin else model.depth)]
        fused = [getattr(jnp, head_fusion)(a.astype(jnp.float32), axis=1) for a in layers]
        if sam or swin:  # each window block's (B * windows, n, n) as (B, N, N) over the map
            fused = [model.grid_attention(a, i, *x.shape[1:3]) for i, a in enumerate(fused)]
        n = fused[0].shape[-1]
        rollout = jnp.broadcast_to(jnp.eye(n), fused[0].shape)
        for a in fused:
            a = 0.5 * a + 0.5 * jnp.eye(n)
            rollout = (a / a.sum(-1, keepdims=True)) @ rollout

        def query(m):  # (B, N, N) -> (B, patches)
            rows = m[:, 0] if cls else m[:, npt:].mean(axis=1)
            return rows[:, npt:]

        return {'rollout': query(rollout), 'last_layer': query(fused[-1])}

    out = _batched(jax.jit(run), x)
    b, h, w = x.shape[:3]
    grid = model.token_grid(h, w)
    normed = {}
    for k, v in out.items():
        v = v.reshape(b, *grid)
        lo, hi = v.min(axis=(1, 2), keepdims=True), v.max(axis=(1, 2), keepdims=True)
        normed[k] = (v - lo) / np.maximum(hi - lo, 1e-12)
    return normed


def render_attention(image: np.ndarray, maps: dict[str, np.ndarray], out: Union[str, os.PathLike],
                     title: str = '') -> str:
    """The (preprocessed, denormalised) image and each map overlaid on it, side by side, as a PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from PIL import Image
    h, w = image.shape[:2]
    fig, axes = plt.subplots(1, 1 + len(maps), figsize=(3.2 * (1 + len(maps)), 3.4))
    axes[0].imshow(image)
    axes[0].set_title(title or 'input')
    for ax, (name, m) in zip(axes[1:], maps.items()):
        up = np.asarray(Image.fromarray((m * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR))
        ax.imshow(image)
        ax.imshow(up, cmap='jet', alpha=0.5)
        ax.set_title(name.replace('_', ' '))
    for ax in axes:
        ax.axis('off')
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return str(out)


def denormalize(x: np.ndarray, model) -> np.ndarray:
    cfg = model.pretrained_cfg
    return np.clip(x * np.asarray(cfg.std) + np.asarray(cfg.mean), 0, 1)
