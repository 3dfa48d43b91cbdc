"""Where a split's records come from: a tfds name (prepared on first use, the split string parsed and sliced as
tfds does, sharded per process) or a folder of images (`vitjax.images` indexes it). A `Source` is this process's
shard as encoded records in a fixed order with the byte sizes the pipeline plans its shuffle buffer and cache
from; `get_dataset_info` reads the classes and the size of a split without building a pipeline."""
from __future__ import annotations

import dataclasses
import difflib
import os
import re
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from vitjax import images


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    num_classes: int
    class_names: tuple[str, ...]
    num_examples: int  # in the split asked for, over all processes


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


_BOUND = r'-?\d+(?:\.\d+)?%|-?\d+'
_PART = re.compile(rf'([\w-]+)(?:\[({_BOUND})?:({_BOUND})?\])?')


def _parse_split(split: str) -> list[tuple[str, Optional[str], Optional[str]]]:
    """tfds split syntax: parts `name` or `name[a:b]` (a, b absolute or percent) joined by '+'."""
    parts = [_PART.fullmatch(p) for p in re.split(r'\s*\+\s*', split.strip())]
    if not all(parts):
        raise ValueError(f'cannot parse split {split!r} (use e.g. train, train[:80%], train[80%:90%], train+test)')
    return [(m[1], m[2], m[3]) for m in parts]


def _slice(where: str, part, n: int) -> tuple[int, int]:
    """[start, end) of a split part over n examples, as tfds resolves it (a percent to the nearest example),
    except that -5% of a split too small for 5% to hold an example is its end, not its start. ValueError
    naming the split (`where`) for a bound out of range, mixed units or a reversed slice; tfds takes a
    reversed slice for a negative count and then fails reading it with a bare AssertionError."""
    name, lo, hi = part
    if lo and hi and lo.endswith('%') != hi.endswith('%'):
        raise ValueError(f'{where} mixes an absolute and a percent bound (tfds would read both as percent)')

    def bound(text, default):
        if text is None:
            return default
        if text.endswith('%'):
            if abs(float(text[:-1])) > 100:
                raise ValueError(f'{where}: {text} is not within -100% and 100%')
            size = round(abs(float(text[:-1])) * n / 100)
        elif abs(int(text)) > n:
            raise ValueError(f'{where}: {text} is out of range ({name!r} holds {n} examples)')
        else:
            size = abs(int(text))
        return n - size if text.startswith('-') else size
    start, end = bound(lo, 0), bound(hi, n)
    if start > end:
        raise ValueError(f'{where} is reversed: it starts at example {start} of {name!r} and ends at {end} (a '
                         f'slice is [start:end])')
    return start, end


def _tfds_split(dataset: str, builder, split: str) -> str:
    """The split checked and resolved to the absolute slices tfds then reads (`_slice`), so that a tfds name and
    a folder read a split alike. Syntax of tfds's own beyond `_parse_split` (shards) is resolved by tfds."""
    infos, where = builder.info.splits, f'{dataset} split {split!r}'
    if not infos:  # no split metadata (e.g. under tfds.testing.mock_data): tfds alone resolves it
        return split
    try:
        parts = _parse_split(split)
    except ValueError as ours:
        try:
            absolute = tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
        except (ValueError, KeyError, NotImplementedError, AssertionError):  # tfds's ways of saying 'bad split'
            raise ValueError(f'{dataset}: {ours}') from None
        parts = [(a.splitname, str(a.from_ or 0), str(infos[a.splitname].num_examples if a.to is None else a.to))
                 for a in absolute]
    if 'all' not in infos:  # tfds's 'all': every split, whole
        if any(name == 'all' and (lo or hi) for name, lo, hi in parts):
            raise ValueError(f'{where}: tfds cannot slice \'all\'; join sliced splits with +')
        parts = [q for p in parts for q in ([(name, None, None) for name in infos] if p[0] == 'all' else [p])]
    out = []
    for name, lo, hi in parts:
        if name not in infos:
            raise ValueError(f'{dataset} has no split {name!r} (its splits are {", ".join(sorted(infos))})')
        start, end = _slice(where, (name, lo, hi), infos[name].num_examples)
        out.append(f'{name}[{start}:{end}]')
    return '+'.join(out)


def _folder_split(root, split, process_index, process_count):
    """This process's (files, labels) of a folder split, the class names, and the split's size (all processes)."""
    parts = _parse_split(split)
    found = images.folder_splits(os.path.abspath(root))
    files, labels = [], []
    for name, lo, hi in parts:
        if name not in found.splits:
            raise ValueError(f'{root} has no split {name!r} ({found.layout}: its splits are '
                             f'{", ".join(sorted(found.splits))})')
        part_files, part_labels = found.splits[name]
        start, end = _slice(f'{root} split {split!r}', (name, lo, hi), len(part_files))
        files, labels = files + part_files[start:end], labels + part_labels[start:end]
    if not files:
        held = ', '.join(f'{name!r} holds {len(found.splits[name][0])} images' for name in dict.fromkeys(
            name for name, _, _ in parts))
        raise ValueError(f'{root} split {split!r} is empty ({held})')
    _two_classes(root, found.classes)
    readable = {found.classes[k] for _, part_labels in found.splits.values() for k in set(part_labels)}
    if len(readable) < 2:  # the model would see one label only: the same accuracy 1 and loss 0
        raise ValueError(f'{root}: only class {next(iter(readable))!r} holds readable images (none: '
                         f'{", ".join(c for c in found.classes if c not in readable)}); classification needs at '
                         'least two')
    return files[process_index::process_count], labels[process_index::process_count], found.classes, len(files)


def _two_classes(dataset: str, names: Sequence[str]):
    """One class trains to accuracy 1 and loss 0 whatever the model: refused before any training."""
    if len(names) < 2:
        held = f'one class ({names[0]!r})' if names else 'no classes'
        raise ValueError(f'{dataset} holds {held}; classification needs at least two')


def _label_feature(dataset: str, builder):
    """The tfds dataset's ClassLabel 'label', checked along with an 'image' to classify."""
    features = builder.info.features
    if 'label' not in features or not isinstance(features['label'], tfds.features.ClassLabel) \
            or 'image' not in features:
        missing = "'label' class feature to classify by" if 'image' in features else "'image' feature"
        raise ValueError(f'{dataset} has no {missing} (features: {", ".join(sorted(features.keys()))})')
    _two_classes(dataset, features['label'].names)
    return features['label']


@dataclasses.dataclass(frozen=True)
class Source:
    """This process's shard as records in a fixed order (see `vitjax.train.data.decode`), before any decoding."""
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
    _label_feature(dataset, builder)
    shard = tfds.split_for_jax_process(_tfds_split(dataset, builder, split), process_index=process_index,
                                       process_count=process_count)
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
    label = _label_feature(dataset, builder)
    n = _num_examples(builder, _tfds_split(dataset, builder, split))
    if n == 0:
        raise ValueError(f'{dataset} split {split!r} is empty')
    return DatasetInfo(label.num_classes, tuple(label.names), n)
