"""Decoding inside tf.data, after the shuffle: a crop window is chosen from the image's shape, then only that
window is decoded where the format allows it (JPEG: `decode_and_crop_jpeg`, as big_vision does), resized, and
shipped as uint8 (normalisation runs on the device, inside the jitted steps).

A record is one of {'image': encoded bytes} (tfds), {'path', 'pil'} (a folder file and whether PIL must decode
it, see `vitjax.images.probe`) or {'decoded': uint8 HWC} (a cached dataset); every kind goes through the same
window function, so the crops do not depend on where an example came from.
"""
from __future__ import annotations

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


def center_window(image_size: int, crop_pct: float) -> Window:
    """timm's eval crop (torchvision's Resize of the short side to image_size / crop_pct, then CenterCrop of
    image_size) expressed in the original image: the window that becomes the crop (each axis through its own
    scale, as torchvision truncates the long side), rounded to whole pixels, so only it is decoded and resized."""
    resize_to = int(image_size / crop_pct)

    def window(shape):
        h, w = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
        short = tf.minimum(h, w)
        # torchvision's resized size (the long side truncated) and its crop offsets in it, mapped back through
        # each axis's own scale: the crop's edges to the nearest original pixel
        rh = tf.where(h <= w, float(resize_to), tf.floor(resize_to * h / short))
        rw = tf.where(w <= h, float(resize_to), tf.floor(resize_to * w / short))

        def span(n, rn):
            start = tf.round((rn - image_size) / 2)
            lo, hi = tf.round(start * n / rn), tf.round((start + image_size) * n / rn)
            lo = tf.clip_by_value(lo, 0, n - 1)
            return tf.cast(lo, tf.int32), tf.cast(tf.clip_by_value(hi, lo + 1, n) - lo, tf.int32)
        (y, ch), (x, cw) = span(h, rh), span(w, rw)
        return y, x, ch, cw
    return window


def crop(image: tf.Tensor, window: Window) -> tf.Tensor:
    y, x, h, w = window(tf.shape(image))
    return tf.slice(image, tf.stack([y, x, 0]), tf.stack([h, w, 3]))


def decode_and_crop(encoded: tf.Tensor, window: Window) -> tf.Tensor:
    """Only the window of a JPEG is decoded; other formats (PNG, GIF, BMP) decode whole, then crop."""
    def jpeg():
        y, x, h, w = window(tf.image.extract_jpeg_shape(encoded))
        return tf.image.decode_and_crop_jpeg(encoded, tf.stack([y, x, h, w]), channels=3, dct_method=DCT_METHOD)

    def other():
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        return crop(tf.ensure_shape(image, (None, None, 3)), window)

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def _load_pil(path: tf.Tensor) -> tf.Tensor:
    # the path arrives as bytes inside tf.data, as a 0-d array when called eagerly
    image = tf.numpy_function(lambda p: images.load_rgb(np.asarray(p).item().decode()), [path], tf.uint8,
                              stateful=False)
    return tf.ensure_shape(image, (None, None, 3))


def decode(record: dict, window: Window) -> tf.Tensor:
    """The window of a record's image as uint8 (h, w, 3), whatever kind of record it is."""
    if 'decoded' in record:
        return crop(record['decoded'], window)
    if 'path' in record:
        return tf.cond(record['pil'], lambda: crop(_load_pil(record['path']), window),
                       lambda: decode_and_crop(tf.io.read_file(record['path']), window))
    return decode_and_crop(record['image'], window)


def resize_uint8(image: tf.Tensor, size: int, interpolation: str, flip=False) -> tf.Tensor:
    """Resize to size x size with PIL's filter for `interpolation` (antialiased, in fixed point on uint8), then
    mirror left-right where `flip` (a bool tensor) is true: the resize and flip timm's loader applies to a crop,
    pixel for pixel. PIL releases the GIL while it resamples, and it costs about half of TensorFlow's float
    `ScaleAndTranslate` on these crops (benchmarks/notes.md)."""
    if interpolation not in images.RESAMPLE:
        raise ValueError(f'interpolation {interpolation!r} is not one of {sorted(images.RESAMPLE)}')
    resample = images.RESAMPLE[interpolation]

    def resize(pixels, mirror):
        from PIL import Image
        out = Image.fromarray(pixels).resize((size, size), resample)
        return np.asarray(out.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mirror else out)

    out = tf.numpy_function(resize, [image, tf.convert_to_tensor(flip, tf.bool)], tf.uint8, stateful=False)
    return tf.ensure_shape(out, (size, size, 3))
