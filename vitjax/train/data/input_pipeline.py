"""tf.data pipelines for training and evaluation, from a tfds name, `vitjax_digits`, or a folder of images.

Encoded records (tfds with `SkipDecoding`, folder file paths) flow through the per-epoch shuffle and the resume
skip; decoding happens after them, fused with the crop (`vitjax.train.data.decode`). Train: a random-resized crop +
flip from stateless ops keyed by (seed, example index), so the stream is identical on every run and
`start_step=k` resumes exactly at batch k. Eval: timm's eval transform by the model's crop_pct and crop_mode
(center, squash, border), padded to whole batches with a `mask`, so every example counts once. Both yield uint8;
the steps normalise on the device.
Each process reads its own shard; batch sizes here are per process.
"""
from __future__ import annotations

import atexit
import math
import re
import weakref
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf

from vitjax import images
from vitjax.train.data import decode
from vitjax.train.data.sources import (DatasetInfo, _process, _source,  # noqa: F401 (DatasetInfo: vitjax.train.data)
                                       get_dataset_info)

AUTOTUNE = tf.data.AUTOTUNE
CROP_MODES = ('center', 'squash', 'border')  # timm's eval crop modes


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
    _check_sizes(global_batch_size=global_batch_size, image_size=image_size, shuffle_buffer=shuffle_buffer)
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f'scale must be (min, max) with 0 < min <= max <= 1, got {tuple(scale)}')
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f'ratio must be (min, max) with 0 < min <= max, got {tuple(ratio)}')
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
    streams, finders = zip(*[_shard_stream(dataset, split, data_dir, k, shards, verbose=verbose and k == mine[0],
                                           **kw) for k in mine])
    ds = streams[0] if len(streams) == 1 else tf.data.Dataset.zip(tuple(streams)).map(
        lambda *parts: {key: tf.concat([p[key] for p in parts], 0) for key in parts[0]})
    return _numpy(ds.prefetch(AUTOTUNE), threads, f'{dataset} split {split!r}',
                  lambda j: [f for find in finders for f in find(j)])


def _shard_stream(dataset, split, data_dir, shard, shards, *, batch, image_size, seed, crop, flip, scale, ratio,
                  interpolation, shuffle_buffer, cache_bytes, start_step, verbose):
    """Shard `shard` of `shards` as batches of `batch`, from batch `start_step` on, and a function that finds the
    files of batch j (from start_step) that the decoders fail on (see `_bad_files`)."""
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

    def bad_files(j):  # a cached shard decodes every record before its first batch: any can be the one
        return _bad_files(src.records if cached else stream.skip(j * batch).take(batch).map(lambda i, r: r))

    return (stream.map(preprocess, num_parallel_calls=AUTOTUNE, deterministic=True).batch(batch, drop_remainder=True),
            bad_files)


def create_eval_dataset(dataset: str, split: str, **kw) -> Iterator[dict[str, np.ndarray]]:
    """One pass over `eval_passes(dataset, split, **kw)`."""
    return eval_passes(dataset, split, **kw)()


def eval_passes(dataset: str, split: str, *, global_batch_size: int, image_size,
                crop_pct: float = 0.875, crop_mode: str = 'center', interpolation: str = 'bicubic',
                mean: Sequence[float] = (0.485, 0.456, 0.406), data_dir: Optional[str] = None,
                process_index: Optional[int] = None, process_count: Optional[int] = None,
                threads: Optional[int] = None) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
    """A function that starts a pass over the split: the pipeline is built (the split found, its functions
    traced) once, not at every evaluation of a run. Each pass yields full batches {'image' uint8, 'label',
    'mask'}; padding rows are zero with mask 0. Every process yields the same number of batches (collectives
    over devices need that). The images are timm's eval transform of `crop_mode` at `image_size` (an int, or
    (h, w)); `mean` is border's pad colour. A center or squash crop (crop_pct <= 1) decodes only the window of
    the original it needs (`decode.eval_crop`); border (and a crop_pct over 1, which pads) runs timm's whole
    transform on the whole image."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    _check_sizes(global_batch_size=global_batch_size)
    if not min(h, w) >= 1:
        raise ValueError(f'image_size must be >= 1, got {image_size}')
    if not crop_pct > 0:
        raise ValueError(f'crop_pct must be > 0, got {crop_pct}')
    if crop_mode not in CROP_MODES:
        raise ValueError(f'crop_mode must be one of {CROP_MODES}, got {crop_mode!r}')
    if interpolation not in images.RESAMPLE:
        raise ValueError(f'interpolation {interpolation!r} is not one of {sorted(images.RESAMPLE)}')
    process_index, process_count = _process(process_index, process_count)
    if global_batch_size % process_count:
        raise ValueError(f'batch size {global_batch_size} does not split over {process_count} processes')
    batch = global_batch_size // process_count
    src = _source(dataset, split, data_dir, process_index, process_count, sizes=False)
    total = get_dataset_info(dataset, split, data_dir).num_examples
    steps = math.ceil(math.ceil(total / process_count) / batch)
    if decode.windowed(crop_pct, crop_mode):
        pixels = lambda record: decode.eval_crop(record, (h, w), crop_pct, crop_mode, interpolation)
    else:
        pixels = lambda record: decode.eval_pixels(decode.decode(record, decode.full_window), (h, w), crop_pct,
                                                   crop_mode, interpolation, tuple(mean))

    @tf.autograph.experimental.do_not_convert
    def preprocess(record):
        return {'image': pixels(record), 'label': tf.cast(record['label'], tf.int32), 'mask': tf.constant(1.0)}

    pad = tf.data.Dataset.from_tensors({'image': tf.zeros((h, w, 3), tf.uint8),
                                        'label': tf.constant(0, tf.int32), 'mask': tf.constant(0.0)}).repeat()
    ds = src.records.map(preprocess, num_parallel_calls=AUTOTUNE, deterministic=True).concatenate(pad)
    ds = ds.batch(batch).take(steps).prefetch(AUTOTUNE)
    return lambda: _numpy(ds, threads, f'{dataset} split {split!r}',
                          lambda j: _bad_files(src.records.skip(j * batch).take(batch)))


def _check_sizes(**sizes):
    """Checked up front: TensorFlow fails on them only once the pipeline runs."""
    for name, value in sizes.items():
        if not value >= 1:
            raise ValueError(f'{name} must be >= 1, got {value}')


def _bad_files(records: tf.data.Dataset) -> list[str]:
    """'path (error)' for each folder record the pipeline's decoders fail on, each decoded on its own."""
    bad = []
    for r in records.as_numpy_iterator():
        if 'path' not in r:  # a tfds record: no file to name
            return []
        path = r['path'].decode()
        try:
            if r['pil']:
                images.load_rgb(path)
            else:
                decode.decode_and_crop(tf.io.read_file(path), decode.full_window)
        except (tf.errors.OpError, ValueError, OSError) as e:
            bad.append(f'{path} ({_reason(e)})')
    return bad


def _reason(e: Exception) -> str:
    """The line of a TensorFlow error that says what failed (a Python exception's, for a numpy_function's)."""
    text = re.sub(r'\{\{[^}]*\}\}|\[Op:\w+\].*', '', getattr(e, 'message', None) or str(e))
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(e).__name__]
    raised = [line for line in lines if re.match(r'\w+(Error|Exception): ', line)]
    return raised[-1] if raised else lines[0].split('transformation with iterator: ')[-1]


def _numpy(ds: tf.data.Dataset, threads: Optional[int], where: str, bad_files) -> Iterator[dict[str, np.ndarray]]:
    options = tf.data.Options()
    options.deterministic = True
    if threads:
        options.threading.private_threadpool_size = threads
        options.threading.max_intra_op_parallelism = 1
    return Pipeline(ds.with_options(options), where, bad_files)


class Pipeline:
    """An iterator of numpy batches that `close()` (or dropping it) stops; the ones still open at exit are closed
    by an atexit hook. The pipeline's PIL calls (`tf.numpy_function`) run Python on tf.data's threads: an
    iterator left for the interpreter's module teardown is destroyed after CPython has begun finalizing, when it
    ends any thread that takes the GIL, so the call in flight never returns and the destructor, waiting for it,
    never does either (the process hangs at exit)."""

    def __init__(self, ds: tf.data.Dataset, where: str, bad_files):
        self._it, self._where, self._bad_files, self._batches = iter(ds.as_numpy_iterator()), where, bad_files, 0
        _OPEN.add(self)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        """A batch; a ValueError naming the files for one whose images cannot be decoded. The probe skips bad
        files up front, but a file can change after it, and a decoder's error names no file: the batch's files
        (the pipeline is deterministic, so its errors come in order) are then decoded one by one to find them."""
        if self._it is None:
            raise StopIteration
        try:
            batch = next(self._it)
        except tf.errors.OpError as e:
            self.close()
            bad = self._bad_files(self._batches)
            if bad:
                raise ValueError(f'{self._where}: cannot decode {len(bad)} image file(s) (changed since the folder '
                                 f'was scanned?): {"; ".join(bad[:5])}' + (' ...' if len(bad) > 5 else '')) from None
            raise ValueError(f'{self._where}: reading batch {self._batches} failed: {_reason(e)}') from None
        self._batches += 1
        return batch

    def close(self):
        self._it = None  # TensorFlow cancels the pipeline and waits for its calls in flight, the GIL released


_OPEN: 'weakref.WeakSet[Pipeline]' = weakref.WeakSet()


@atexit.register  # atexit runs before finalization, while tf.data's threads can still finish their Python calls
def _close_open_pipelines():
    for pipeline in list(_OPEN):
        pipeline.close()
