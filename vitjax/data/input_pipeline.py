"""tf.data pipelines for training and evaluation, from a tfds name, `vitjax_digits`, or a folder of images.

Train: a seeded shuffle, per-example random-resized crop + flip from stateless ops keyed by (seed, example
index), so the stream is identical on every run and `start_step=k` resumes exactly at batch k. Eval: resize +
center crop by the model's crop_pct, padded to whole batches with a `mask`, so every example counts once.
Each process reads its own shard; batch sizes here are per process.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from typing import Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vitjax import images

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    class_names: tuple[str, ...]
    num_examples: int  # in the split asked for, over all processes


# -- sources -----------------------------------------------------------------------------------------------
def _is_folder(dataset: str) -> bool:
    return os.path.isdir(dataset)


def _builder(dataset: str, data_dir: Optional[str]):
    if dataset not in tfds.list_builders():
        close = difflib.get_close_matches(dataset, tfds.list_builders(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ''
        raise ValueError(f'unknown dataset {dataset!r}: not a tfds name nor a folder{hint}')
    builder = tfds.builder(dataset, data_dir=data_dir)
    if not builder.is_prepared() if hasattr(builder, 'is_prepared') else False:
        builder.download_and_prepare()
    return builder


def _parse_split(split: str) -> tuple[str, Optional[str], Optional[str]]:
    """tfds split syntax: `name` or `name[a:b]`, a/b absolute or percent."""
    m = re.fullmatch(r'(\w+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?', split.strip())
    if not m:
        raise ValueError(f'cannot parse split {split!r} (use e.g. train, train[:80%], train[80%:90%])')
    return m[1], m[2], m[3]


def _slice_bounds(split: str, n: int) -> tuple[int, int]:
    _, lo, hi = _parse_split(split)
    def bound(text, default):
        if text is None:
            return default
        v = int(text.rstrip('%'))
        v = round(v * n / 100) if text.endswith('%') else v
        return min(max(v + n if v < 0 else v, 0), n)
    return bound(lo, 0), bound(hi, n)


def _folder_split(root, split, process_index, process_count):
    """This process's (files, labels) of a folder split, the class names, and the split's size (all processes)."""
    name = _parse_split(split)[0]
    found = images.folder_splits(os.path.abspath(root))
    if name not in found.splits:
        raise ValueError(f'{root} has no split {name!r} ({found.layout}: its splits are '
                         f'{", ".join(sorted(found.splits))})')
    files, labels = found.splits[name]
    lo, hi = _slice_bounds(split, len(files))
    files, labels = files[lo:hi], labels[lo:hi]
    if not files:
        raise ValueError(f'{root} split {split!r} is empty ({name!r} holds {len(found.splits[name][0])} images)')
    return files[process_index::process_count], labels[process_index::process_count], found.classes, len(files)


def _decode_file(path, label):
    # PIL, not tf.io.decode_image: any mode to RGB (CMYK, 16-bit, palette, alpha), EXIF rotation, huge files
    image = tf.numpy_function(lambda p: images.load_rgb(p.decode()), [path], tf.uint8, stateful=False)
    image.set_shape((None, None, 3))
    return {'image': image, 'label': label}


def _source(dataset, split, data_dir, process_index, process_count) -> tuple[tf.data.Dataset, int]:
    """Undecoded-order examples {'image': uint8 HWC, 'label': int} of this process's shard, and its size."""
    if _is_folder(dataset):
        files, labels, _, _ = _folder_split(dataset, split, process_index, process_count)
        ds = tf.data.Dataset.from_tensor_slices((files, np.asarray(labels, np.int64)))
        return ds.map(_decode_file, num_parallel_calls=AUTOTUNE, deterministic=True), len(files)
    builder = _builder(dataset, data_dir)
    shard = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)
    ds = builder.as_dataset(split=shard, shuffle_files=False, read_config=tfds.ReadConfig(shuffle_seed=0))
    ds = ds.map(lambda e: {'image': e['image'], 'label': e['label']})
    return ds, _num_examples(builder, shard)


def _num_examples(builder, split) -> int:
    try:
        return builder.info.splits[split].num_examples
    except KeyError:  # no split metadata (e.g. under tfds.testing.mock_data): count
        return int(builder.as_dataset(split=split).reduce(0, lambda n, _: n + 1))


def _process(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax
        return jax.process_index(), jax.process_count()
    return process_index, process_count


def get_dataset_info(dataset: str, split: str, data_dir: Optional[str] = None) -> DatasetInfo:
    if _is_folder(dataset):
        _, _, classes, n = _folder_split(dataset, split, 0, 1)
        return DatasetInfo(len(classes), classes, n)
    builder = _builder(dataset, data_dir)
    label = builder.info.features['label']
    n = _num_examples(builder, split)
    if n == 0:
        raise ValueError(f'{dataset} split {split!r} is empty')
    return DatasetInfo(label.num_classes, tuple(label.names), n)


# -- preprocessing -----------------------------------------------------------------------------------------
def _normalize(image, mean, std):
    """Resized float pixels (bicubic overshoots 0..255) to the model's normalised input."""
    image = tf.clip_by_value(tf.cast(image, tf.float32), 0, 255) / 255.0
    return (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def _resize(image, size, interpolation):
    return tf.image.resize(image, size, method=interpolation, antialias=True)


def create_train_dataset(dataset: str, split: str, *, global_batch_size: int, image_size: int,
                         mean: Sequence[float], std: Sequence[float], seed: int = 0,
                         data_dir: Optional[str] = None, crop: str = 'random_resized_crop', flip: bool = True,
                         scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                         interpolation: str = 'bicubic', shuffle_buffer: int = 10_000,
                         process_index: Optional[int] = None, process_count: Optional[int] = None,
                         start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """An endless iterator of {'image': (B, H, W, 3) float32, 'label': (B,) int32}, B = this process's share."""
    process_index, process_count = _process(process_index, process_count)
    if global_batch_size % process_count:
        raise ValueError(f'batch size {global_batch_size} does not split over {process_count} processes')
    batch = global_batch_size // process_count
    ds, n = _source(dataset, split, data_dir, process_index, process_count)
    if n < batch:
        raise ValueError(f'{dataset} {split} has {n} examples for this process, fewer than one batch of {batch}')
    if n <= 200_000:
        ds = ds.cache()  # small datasets: decode once
    ds = ds.repeat().shuffle(min(shuffle_buffer, n), seed=seed, reshuffle_each_iteration=True)
    ds = ds.enumerate().skip(start_step * batch)  # skip before decoding work: resume costs only reads

    @tf.autograph.experimental.do_not_convert  # plain graph code; autograph only adds warnings here
    def preprocess(index, example):
        image = example['image']
        key = tf.stack([tf.cast(seed, tf.int64), index])
        if crop == 'random_resized_crop':
            begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
                tf.shape(image), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), seed=key,
                min_object_covered=0.0, aspect_ratio_range=tuple(ratio), area_range=tuple(scale),
                max_attempts=10, use_image_if_no_bounding_boxes=True)
            image = tf.slice(image, begin, size)
        elif crop != 'resize':
            raise ValueError(f"crop must be 'random_resized_crop' or 'resize', got {crop!r}")
        image = _resize(image, (image_size, image_size), interpolation)
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, seed=key + 1)
        image = _normalize(image, mean, std)
        return {'image': image, 'label': tf.cast(example['label'], tf.int32)}

    ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(batch, drop_remainder=True).prefetch(AUTOTUNE)
    return _numpy(ds)


def create_eval_dataset(dataset: str, split: str, *, global_batch_size: int, image_size: int,
                        mean: Sequence[float], std: Sequence[float], crop_pct: float = 0.875,
                        interpolation: str = 'bicubic', data_dir: Optional[str] = None,
                        process_index: Optional[int] = None, process_count: Optional[int] = None,
                        ) -> Iterator[dict[str, np.ndarray]]:
    """Full batches {'image', 'label', 'mask'}; padding rows are zero with mask 0. Every process yields the
    same number of batches (collectives over devices need that)."""
    process_index, process_count = _process(process_index, process_count)
    if global_batch_size % process_count:
        raise ValueError(f'batch size {global_batch_size} does not split over {process_count} processes')
    batch = global_batch_size // process_count
    ds, _ = _source(dataset, split, data_dir, process_index, process_count)
    total = get_dataset_info(dataset, split, data_dir).num_examples
    steps = math.ceil(math.ceil(total / process_count) / batch)
    resize_to = int(math.floor(image_size / crop_pct))

    @tf.autograph.experimental.do_not_convert
    def preprocess(example):
        image = example['image']
        h, w = tf.shape(image)[0], tf.shape(image)[1]
        short = tf.cast(tf.minimum(h, w), tf.float32)
        new_h = tf.cast(tf.round(tf.cast(h, tf.float32) * resize_to / short), tf.int32)
        new_w = tf.cast(tf.round(tf.cast(w, tf.float32) * resize_to / short), tf.int32)
        image = _resize(image, tf.stack([new_h, new_w]), interpolation)
        top, left = (new_h - image_size) // 2, (new_w - image_size) // 2
        image = image[top:top + image_size, left:left + image_size]
        image = _normalize(image, mean, std)
        image = tf.ensure_shape(image, (image_size, image_size, 3))
        return {'image': image, 'label': tf.cast(example['label'], tf.int32), 'mask': tf.constant(1.0)}

    pad = tf.data.Dataset.from_tensors({'image': tf.zeros((image_size, image_size, 3)),
                                        'label': tf.constant(0, tf.int32), 'mask': tf.constant(0.0)}).repeat()
    ds = ds.map(preprocess, num_parallel_calls=AUTOTUNE, deterministic=True).concatenate(pad)
    return _numpy(ds.batch(batch).take(steps).prefetch(AUTOTUNE))


def _numpy(ds: tf.data.Dataset) -> Iterator[dict[str, np.ndarray]]:
    options = tf.data.Options()
    options.deterministic = True
    return iter(tfds.as_numpy(ds.with_options(options)))
