"""tf.data pipelines for training and evaluation, from a tfds name, `vitjax_digits`, or a folder of images.

Encoded records (tfds with `SkipDecoding`, folder file paths) flow through the per-epoch shuffle and the resume
skip; decoding happens after them, fused with the crop (`vitjax.data.decode`). Train: a random-resized crop +
flip from stateless ops keyed by (seed, example index), so the stream is identical on every run and
`start_step=k` resumes exactly at batch k. Eval: timm's resize + center crop by the model's crop_pct, padded to
whole batches with a `mask`, so every example counts once. Both yield uint8; the steps normalise on the device.
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
from vitjax.data import decode

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    class_names: tuple[str, ...]
    num_examples: int  # in the split asked for, over all processes


# -- sources -----------------------------------------------------------------------------------------------
def _is_folder(dataset: str) -> bool:
    return os.path.isdir(dataset)


def _builder(dataset: str, data_dir: Optional[str], prepare: bool = True):
    if dataset not in tfds.list_builders():
        close = difflib.get_close_matches(dataset, tfds.list_builders(), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ''
        raise ValueError(f'unknown dataset {dataset!r}: not a tfds name nor a folder{hint}')
    builder = tfds.builder(dataset, data_dir=data_dir)
    if not builder.is_prepared() if hasattr(builder, 'is_prepared') else False:
        if not prepare:
            raise ValueError(f'{dataset} is not prepared in {builder.data_dir}')
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


@dataclasses.dataclass(frozen=True)
class Source:
    """This process's shard as records in a fixed order (see `vitjax.data.decode`), before any decoding."""
    records: tf.data.Dataset
    num_examples: int
    encoded_bytes: float  # mean bytes per record as stored (what a shuffle buffer holds)
    decoded_bytes: int  # the whole shard decoded to uint8 at full size (what a cache would hold)
    kind: str  # 'tfds' or 'folder'


SAMPLE = 64  # records read to estimate the byte sizes of a tfds split whose image shape varies


def _source(dataset, split, data_dir, process_index, process_count, sizes: bool = True) -> Source:
    """`sizes=False` skips reading SAMPLE records to estimate a tfds split's byte sizes (eval needs none)."""
    if _is_folder(dataset):
        files, labels, _, _ = _folder_split(dataset, split, process_index, process_count)
        probes = images.folder_splits(os.path.abspath(dataset)).probes
        records = tf.data.Dataset.from_tensor_slices({
            'path': files, 'label': np.asarray(labels, np.int64),
            'pil': np.asarray([probes[f].pil for f in files], bool)})
        encoded = float(np.mean([os.path.getsize(f) for f in files[:SAMPLE]]))
        return Source(records, len(files), encoded, 3 * sum(probes[f].pixels for f in files), 'folder')
    builder = _builder(dataset, data_dir)
    shard = tfds.split_for_jax_process(split, process_index=process_index, process_count=process_count)
    # no tfds autocache: whether a split is cached is decided here, by its decoded bytes
    ds = builder.as_dataset(split=shard, shuffle_files=False, decoders={'image': tfds.decode.SkipDecoding()},
                            read_config=tfds.ReadConfig(shuffle_seed=0, try_autocache=False))
    records = ds.map(lambda e: {'image': e['image'], 'label': e['label']})
    n = _num_examples(builder, shard)
    if not sizes:
        return Source(records, n, 0.0, 0, 'tfds')
    sample = list(records.take(SAMPLE).map(lambda r: (tf.strings.length(r['image']), _pixels(r['image'])))
                  .as_numpy_iterator())
    encoded = float(np.mean([e for e, _ in sample])) if sample else 0.0
    pixels = float(np.mean([p for _, p in sample])) if sample else 0.0
    return Source(records, n, encoded, int(3 * pixels * n), 'tfds')


def _pixels(encoded):
    """Height * width from a JPEG's header; other formats are decoded (only for the SAMPLE records)."""
    shape = tf.cond(tf.io.is_jpeg(encoded), lambda: tf.image.extract_jpeg_shape(encoded),
                    lambda: tf.shape(tf.io.decode_image(encoded, channels=3, expand_animations=False)))
    return tf.cast(shape[0], tf.int64) * tf.cast(shape[1], tf.int64)


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


def get_dataset_info(dataset: str, split: str, data_dir: Optional[str] = None,
                     prepare: bool = True) -> DatasetInfo:
    """Classes and size of a split; a tfds dataset not yet prepared is prepared first unless `prepare=False`
    (then ValueError)."""
    if _is_folder(dataset):
        _, _, classes, n = _folder_split(dataset, split, 0, 1)
        return DatasetInfo(len(classes), classes, n)
    builder = _builder(dataset, data_dir, prepare)
    label = builder.info.features['label']
    n = _num_examples(builder, split)
    if n == 0:
        raise ValueError(f'{dataset} split {split!r} is empty')
    return DatasetInfo(label.num_classes, tuple(label.names), n)


# -- pipelines ---------------------------------------------------------------------------------------------
CACHE_BYTES = 4 << 30  # per process: a split that decodes to more than this is decoded every epoch


def _epoch_seed(seed, epoch):
    return tf.cast(seed, tf.int64) * 1_000_003 + epoch


def create_train_dataset(dataset: str, split: str, *, global_batch_size: int, image_size: int, seed: int = 0,
                         data_dir: Optional[str] = None, crop: str = 'random_resized_crop', flip: bool = True,
                         scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                         interpolation: str = 'bicubic', shuffle_buffer: int = 10_000,
                         cache_bytes: int = CACHE_BYTES, process_index: Optional[int] = None,
                         process_count: Optional[int] = None, data_shards: int = 0, start_step: int = 0,
                         verbose: bool = False, threads: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
    """An endless iterator of {'image': (B, H, W, 3) uint8, 'label': (B,) int32}, B = this process's share.

    The split is read as `data_shards` shards (default: one per process), each process reading its own; a
    global batch is row-block k from shard k, so the stream depends on the shard count, not on how many
    processes read it (one process with data_shards=2 yields what two processes yield together). Epoch e of
    a shard is a shuffle seeded by (seed, e); example i of shard k gets its crop and flip from stateless ops
    keyed by (seed, i * data_shards + k). Records flow undecoded through the shuffle and the resume skip, and
    are decoded after them, so `start_step=k` starts at batch k of the same stream having read at most one
    epoch of records and decoded none of them. A shard that decodes to at most its part of `cache_bytes` is
    decoded once and cached instead (the same crops; JPEG pixels at a crop's edge can differ by a few levels,
    as a fused crop upsamples chroma at its border). `threads` bounds tf.data's threads (default: one per core)."""
    if crop not in ('random_resized_crop', 'resize'):
        raise ValueError(f"crop must be 'random_resized_crop' or 'resize', got {crop!r}")
    process_index, process_count = _process(process_index, process_count)
    shards = data_shards or process_count
    if shards % process_count:
        raise ValueError(f'data_shards ({shards}) must be a multiple of the process count ({process_count})')
    if global_batch_size % shards:
        raise ValueError(f'batch size {global_batch_size} does not split over {shards} data shards')
    mine = range(process_index * shards // process_count, (process_index + 1) * shards // process_count)
    kw = dict(batch=global_batch_size // shards, image_size=image_size, seed=seed, crop=crop, flip=flip,
              scale=scale, ratio=ratio, interpolation=interpolation, shuffle_buffer=shuffle_buffer,
              cache_bytes=cache_bytes // len(mine), start_step=start_step)
    streams = [_shard_stream(dataset, split, data_dir, k, shards, verbose=verbose and k == mine[0], **kw)
               for k in mine]
    ds = streams[0] if len(streams) == 1 else tf.data.Dataset.zip(tuple(streams)).map(
        lambda *parts: {key: tf.concat([p[key] for p in parts], 0) for key in parts[0]})
    return _numpy(ds.prefetch(AUTOTUNE), threads)


def _shard_stream(dataset, split, data_dir, shard, shards, *, batch, image_size, seed, crop, flip, scale, ratio,
                  interpolation, shuffle_buffer, cache_bytes, start_step, verbose) -> tf.data.Dataset:
    """Shard `shard` of `shards` as batches of `batch`, from batch `start_step` on."""
    src = _source(dataset, split, data_dir, shard, shards)
    n = src.num_examples
    if n < batch:
        raise ValueError(f'{dataset} {split} has {n} examples in data shard {shard} of {shards}, fewer than one '
                         f'batch of {batch}')
    records, cached = src.records, src.decoded_bytes <= cache_bytes
    if cached:
        records = records.map(lambda r: {'decoded': decode.decode(r, decode.full_window), 'label': r['label']},
                              num_parallel_calls=AUTOTUNE, deterministic=True).cache()
    # A folder's records are paths (~100 bytes): shuffle the whole split. Encoded tfds records are images.
    buffer = n if src.kind == 'folder' and not cached else min(shuffle_buffer, n)
    if verbose:
        held = (src.decoded_bytes / n if cached else src.encoded_bytes) * buffer
        print(f'input: {dataset} {split}: {n} examples in data shard {shard} of {shards}, '
              + (f'cached decoded ({src.decoded_bytes / 2**30:.2f} GiB <= cache_bytes {cache_bytes / 2**30:.2f} GiB)'
                 if cached else f'decoded every epoch ({src.decoded_bytes / 2**30:.1f} GiB decoded > cache_bytes '
                 f'{cache_bytes / 2**30:.2f} GiB)')
              + f'; shuffle buffer {buffer} x {held / buffer / 1024:.1f} KiB = {held / 2**30:.2f} GiB of host memory')

    # Each epoch fills its shuffle buffer anew (reads only; the prefetch below hides part of that pause), the
    # price of epochs that can be skipped without reading them.
    first_epoch, offset = divmod(start_step * batch, n)
    epochs = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(
        lambda e: records.shuffle(buffer, seed=_epoch_seed(seed, e), reshuffle_each_iteration=False))
    stream = tf.data.Dataset.zip(tf.data.Dataset.counter(start_step * batch), epochs.skip(offset))

    @tf.autograph.experimental.do_not_convert  # plain graph code; autograph only adds warnings here
    def preprocess(index, record):
        key = tf.stack([tf.cast(seed, tf.int64), index * shards + shard])  # no two shards share a crop
        window = decode.random_resized_window(key, scale, ratio) if crop == 'random_resized_crop' \
            else decode.full_window
        mirror = tf.random.stateless_uniform((), key + 1) < 0.5 if flip else False
        image = decode.resize_uint8(decode.decode(record, window), image_size, interpolation, mirror)
        return {'image': image, 'label': tf.cast(record['label'], tf.int32)}

    return stream.map(preprocess, num_parallel_calls=AUTOTUNE, deterministic=True).batch(batch, drop_remainder=True)


def create_eval_dataset(dataset: str, split: str, *, global_batch_size: int, image_size: int,
                        crop_pct: float = 0.875, interpolation: str = 'bicubic', data_dir: Optional[str] = None,
                        process_index: Optional[int] = None, process_count: Optional[int] = None,
                        threads: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
    """Full batches {'image' uint8, 'label', 'mask'}; padding rows are zero with mask 0. Every process yields
    the same number of batches (collectives over devices need that). The crop is timm's (short side to
    image_size / crop_pct, center image_size), taken from the original image so only it is decoded."""
    process_index, process_count = _process(process_index, process_count)
    if global_batch_size % process_count:
        raise ValueError(f'batch size {global_batch_size} does not split over {process_count} processes')
    batch = global_batch_size // process_count
    src = _source(dataset, split, data_dir, process_index, process_count, sizes=False)
    total = get_dataset_info(dataset, split, data_dir).num_examples
    steps = math.ceil(math.ceil(total / process_count) / batch)
    window = decode.center_window(image_size, crop_pct)

    @tf.autograph.experimental.do_not_convert
    def preprocess(record):
        image = decode.resize_uint8(decode.decode(record, window), image_size, interpolation)
        return {'image': image, 'label': tf.cast(record['label'], tf.int32), 'mask': tf.constant(1.0)}

    pad = tf.data.Dataset.from_tensors({'image': tf.zeros((image_size, image_size, 3), tf.uint8),
                                        'label': tf.constant(0, tf.int32), 'mask': tf.constant(0.0)}).repeat()
    ds = src.records.map(preprocess, num_parallel_calls=AUTOTUNE, deterministic=True).concatenate(pad)
    return _numpy(ds.batch(batch).take(steps).prefetch(AUTOTUNE), threads)


def _numpy(ds: tf.data.Dataset, threads: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
    options = tf.data.Options()
    options.deterministic = True
    if threads:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    return iter(tfds.as_numpy(ds.with_options(options)))
