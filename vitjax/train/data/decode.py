"""Decoding inside tf.data, after the shuffle: a crop window is chosen from the image's shape, then only that
window is decoded where the format allows it (JPEG: `decode_and_crop_jpeg`, as big_vision does), resized, and
shipped as uint8 (normalisation runs on the device, inside the jitted steps).

A record is one of {'image': encoded bytes} (tfds), {'path', 'pil'} (a folder file and whether PIL must decode
it, see `vitjax.images.probe`) or {'decoded': uint8 HWC} (a cached dataset); every kind goes through the same
window function, so the crops do not depend on where an example came from.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from vitjax import images

# libjpeg's accurate integer IDCT (PIL's default, so the pixels timm's loader sees); INTEGER_FAST is ~10%
# faster and visibly blockier.
DCT_METHOD = 'INTEGER_ACCURATE'

Window = Callable[[tf.Tensor], tuple]  # (h, w, c) shape -> (y, x, height, width)


def random_resized_window(key: tf.Tensor, scale: Sequence[float], ratio: Sequence[float]) -> Window:
    """Inception-style crop (timm's RandomResizedCrop ranges), drawn from stateless ops keyed by `key`."""
    def window(shape):
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=key, min_object_covered=0.0,
            aspect_ratio_range=tuple(ratio), area_range=tuple(scale), max_attempts=10,
            use_image_if_no_bounding_boxes=True)
        return begin[0], begin[1], size[0], size[1]
    return window


def full_window(shape):
    return tf.constant(0, tf.int32), tf.constant(0, tf.int32), shape[0], shape[1]


def _hw(size) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)


# PIL's filter radii at scale 1 (Resample.c; nearest and box reach half a pixel): a window's margin around its box
SUPPORT = {'nearest': 1, 'box': 1, 'bilinear': 1, 'hamming': 1, 'bicubic': 2, 'lanczos': 3}
Box = Callable[[tf.Tensor], tuple]  # (h, w, c) shape -> (y0, x0, y1, x1) float64, in sub-pixel coordinates


def eval_box(image_size, crop_pct: float, crop_mode: str = 'center') -> Box:
    """The region of the original that timm's eval resize maps onto its CenterCrop of `image_size` (an int or
    (h, w)), for crop_pct <= 1. center: torchvision's Resize of the short side to image_size / crop_pct (the long
    side truncated), or timm's ResizeKeepRatio for a non-square size; squash: each side to image_size / crop_pct.
    Each axis goes through its own scale. `eval_pixels` makes what a crop cannot: border's padding, a crop_pct
    over 1."""
    if crop_mode not in ('center', 'squash'):
        raise ValueError(f'a window is a center or squash crop, not crop_mode={crop_mode!r}')
    th, tw = _hw(image_size)
    sh, sw = math.floor(th / crop_pct), math.floor(tw / crop_pct)

    def box(shape):
        h, w = tf.cast(shape[0], tf.float64), tf.cast(shape[1], tf.float64)
        if crop_mode == 'squash':
            rh, rw = tf.constant(sh, tf.float64), tf.constant(sw, tf.float64)
        elif sh == sw:
            short = tf.minimum(h, w)
            rh = tf.where(h <= w, tf.constant(sh, tf.float64), tf.floor(sh * h / short))
            rw = tf.where(w <= h, tf.constant(sw, tf.float64), tf.floor(sw * w / short))
        else:  # timm's ResizeKeepRatio: the axis with the smaller ratio to its target fits it, both rounded
            ratio = tf.minimum(h / sh, w / sw)
            rh, rw = tf.round(h / ratio), tf.round(w / ratio)
        top, left = tf.round((rh - th) / 2), tf.round((rw - tw) / 2)  # CenterCrop's offsets in the resized image
        return top * h / rh, left * w / rw, (top + th) * h / rh, (left + tw) * w / rw
    return box


def _span(lo, hi, n):
    """[lo, hi) rounded to whole pixels within [0, n), at least one: (start, size) int32."""
    lo = tf.clip_by_value(tf.round(lo), 0, n - 1)
    return tf.cast(lo, tf.int32), tf.cast(tf.clip_by_value(tf.round(hi), lo + 1, n) - lo, tf.int32)


def center_window(image_size, crop_pct: float, crop_mode: str = 'center') -> Window:
    """`eval_box` rounded to whole pixels: the crop's own window of the original."""
    box = eval_box(image_size, crop_pct, crop_mode)

    def window(shape):
        y0, x0, y1, x1 = box(shape)
        (y, ch), (x, cw) = _span(y0, y1, tf.cast(shape[0], tf.float64)), _span(x0, x1, tf.cast(shape[1], tf.float64))
        return y, x, ch, cw
    return window


def _eval_geometry(image_size, crop_pct: float, crop_mode: str, interpolation: str):
    """shape -> (window, box): `center_window` grown by the resize filter's reach (its support, scaled where the
    resize shrinks) within the image, the pixels that resample `eval_box` as resizing the whole image would; and
    the box."""
    th, tw = _hw(image_size)
    box, support = eval_box(image_size, crop_pct, crop_mode), SUPPORT[interpolation]

    def geometry(shape):
        y0, x0, y1, x1 = box(shape)

        def grow(lo, hi, n, out):
            start, size = _span(lo, hi, tf.cast(n, tf.float64))
            m = tf.cast(tf.math.ceil(support * tf.maximum((hi - lo) / out, 1.0)), tf.int32) + 1
            grown = tf.maximum(start - m, 0)
            return grown, tf.minimum(start + size + m, n) - grown
        (y, ch), (x, cw) = grow(y0, y1, shape[0], th), grow(x0, x1, shape[1], tw)
        return (y, x, ch, cw), (y0, x0, y1, x1)
    return geometry


def eval_crop(record: dict, image_size, crop_pct: float, crop_mode: str, interpolation: str) -> tf.Tensor:
    """timm's center / squash eval transform (crop_pct <= 1) of a record, uint8: only the window `_eval_geometry`
    gives is decoded, and PIL resamples `eval_box` in it: the crop of the whole image resized, but for PIL
    holding the box in float32."""
    geometry = _eval_geometry(image_size, crop_pct, crop_mode, interpolation)
    image, shape = decode(record, lambda shape: geometry(shape)[0], with_shape=True)
    (y, x, _, _), (y0, x0, y1, x1) = geometry(shape)
    y, x = tf.cast(y, tf.float64), tf.cast(x, tf.float64)
    return resize_uint8(image, image_size, interpolation, box=tf.stack([x0 - x, y0 - y, x1 - x, y1 - y]))


def windowed(crop_pct: float, crop_mode: str) -> bool:
    """Whether timm's eval transform is a crop of the resized image (a window of the original), not a pad."""
    return crop_mode in ('center', 'squash') and crop_pct <= 1


def eval_pixels(image: tf.Tensor, image_size, crop_pct: float, crop_mode: str, interpolation: str,
                mean: Sequence[float]) -> tf.Tensor:
    """timm's whole eval transform (`vitjax.inference.eval_image`, PIL) on a whole decoded image, uint8."""
    from vitjax.inference import eval_image
    from PIL import Image
    h, w = _hw(image_size)
    run = lambda pixels: np.asarray(eval_image(Image.fromarray(pixels), (h, w), crop_pct, crop_mode, interpolation,
                                               mean))
    return tf.ensure_shape(tf.numpy_function(run, [image], tf.uint8, stateful=False), (h, w, 3))


def crop(image: tf.Tensor, window: Window) -> tf.Tensor:
    y, x, h, w = window(tf.shape(image))
    return tf.slice(image, tf.stack([y, x, 0]), tf.stack([h, w, 3]))


def decode_and_crop(encoded: tf.Tensor, window: Window) -> tf.Tensor:
    """Only the window of a JPEG is decoded; other formats (PNG, GIF, BMP) decode whole, then crop."""
    return _decode_and_crop(encoded, window)[0]


def _decode_and_crop(encoded: tf.Tensor, window: Window) -> tuple[tf.Tensor, tf.Tensor]:
    def jpeg():
        shape = tf.image.extract_jpeg_shape(encoded)
        y, x, h, w = window(shape)
        return tf.image.decode_and_crop_jpeg(encoded, tf.stack([y, x, h, w]), channels=3,
                                             dct_method=DCT_METHOD), shape

    def other():
        image = tf.ensure_shape(tf.io.decode_image(encoded, channels=3, expand_animations=False), (None, None, 3))
        return crop(image, window), tf.shape(image)

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def _load_pil(path: tf.Tensor) -> tf.Tensor:
    # the path arrives as bytes inside tf.data, as a 0-d array when called eagerly
    image = tf.numpy_function(lambda p: images.load_rgb(np.asarray(p).item().decode()), [path], tf.uint8,
                              stateful=False)
    return tf.ensure_shape(image, (None, None, 3))


def decode(record: dict, window: Window, with_shape: bool = False):
    """The window of a record's image as uint8 (h, w, 3), whatever kind of record it is; with its whole image's
    (h, w, 3) shape where `with_shape`."""
    def cropped(image):
        return crop(image, window), tf.shape(image)
    if 'decoded' in record:
        out = cropped(record['decoded'])
    elif 'path' in record:
        out = tf.cond(record['pil'], lambda: cropped(_load_pil(record['path'])),
                      lambda: _decode_and_crop(tf.io.read_file(record['path']), window))
    else:
        out = _decode_and_crop(record['image'], window)
    return out if with_shape else out[0]


def resize_uint8(image: tf.Tensor, size, interpolation: str, flip=False, box=None) -> tf.Tensor:
    """Resize to `size` (an int: square; or (h, w)) with PIL's filter for `interpolation` (antialiased, in fixed
    point on uint8), then mirror left-right where `flip` (a bool tensor) is true: the resize and flip timm's loader
    applies to a crop, pixel for pixel. `box` (x0, y0, x1, y1), float: resample only that region, its
    neighbourhood within reach of the filter. PIL releases the GIL while it resamples, and it costs about half
    of TensorFlow's float `ScaleAndTranslate` on these crops (benchmarks/notes.md)."""
    if interpolation not in images.RESAMPLE:
        raise ValueError(f'interpolation {interpolation!r} is not one of {sorted(images.RESAMPLE)}')
    resample = images.RESAMPLE[interpolation]
    h, w = _hw(size)

    def resize(pixels, mirror, region):
        from PIL import Image
        im = Image.fromarray(pixels)
        region = tuple(np.clip(region, 0, im.size * 2).tolist()) if region.size else None
        out = im.resize((w, h), resample, box=region)
        return np.asarray(out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else out)

    region = tf.zeros((0,), tf.float64) if box is None else tf.cast(box, tf.float64)
    out = tf.numpy_function(resize, [image, tf.convert_to_tensor(flip, tf.bool), region], tf.uint8, stateful=False)
    return tf.ensure_shape(out, (h, w, 3))
