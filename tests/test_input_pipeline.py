"""Input pipelines: the digits builder, determinism, exact resume, exactly-once eval, tfds names, folders."""
import collections
import itertools

import numpy as np
import pytest
from PIL import Image

from vitjax.train import data

@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('tfds'))


def train_iter(data_dir, **kw):
    args = dict(global_batch_size=32, image_size=16, data_dir=data_dir, crop='random_resized_crop', flip=True,
                scale=(0.5, 1.0))
    return data.create_train_dataset('vitjax_digits', kw.pop('split', 'train'), **{**args, **kw})


@pytest.mark.slow
def test_stream_depends_on_data_shards_not_on_processes(data_dir):
    """Two processes' batches side by side are what one process reading both shards yields, resumed too."""
    one = train_iter(data_dir, process_index=0, process_count=1, data_shards=2, start_step=3)
    two = [train_iter(data_dir, process_index=p, process_count=2, start_step=3) for p in (0, 1)]
    for _ in range(3):
        a, b, c = next(one), next(two[0]), next(two[1])
        for key in ('image', 'label'):
            np.testing.assert_array_equal(a[key], np.concatenate([b[key], c[key]]))
    plain = next(train_iter(data_dir, process_index=0, process_count=1, start_step=3))
    assert not np.array_equal(plain['image'], a['image'])  # one shard is another stream
    with pytest.raises(ValueError, match='multiple of the process count'):
        train_iter(data_dir, process_index=0, process_count=2, data_shards=3)


def eval_batches(dataset, split, data_dir=None, **kw):
    args = dict(global_batch_size=64, image_size=16, crop_pct=1.0, data_dir=data_dir)
    return list(data.create_eval_dataset(dataset, split, **{**args, **kw}))


def test_digits_builder(data_dir):
    train = data.get_dataset_info('vitjax_digits', 'train', data_dir)
    test = data.get_dataset_info('vitjax_digits', 'test', data_dir)
    assert (train.num_examples, test.num_examples, train.num_classes) == (1437, 360, 10)
    assert train.class_names == tuple(str(i) for i in range(10))
    labels = np.concatenate([b['label'][b['mask'] > 0] for b in eval_batches('vitjax_digits', 'test', data_dir)])
    counts = collections.Counter(labels.tolist())
    assert len(labels) == 360 and all(35 <= counts[c] <= 37 for c in range(10)), counts  # stratified


def test_train_batches_shape_and_range(data_dir):
    b = next(train_iter(data_dir))
    assert b['image'].shape == (32, 16, 16, 3) and b['image'].dtype == np.uint8  # normalised on the device
    assert b['label'].shape == (32,) and b['label'].dtype == np.int32
    assert b['image'].min() < 20 and b['image'].max() > 200  # digits: ink (255) on a black ground, resized
    assert set(b['label'].tolist()) <= set(range(10))


def test_train_stream_is_deterministic_and_seeded(data_dir):
    a = list(itertools.islice(train_iter(data_dir, seed=1), 3))
    b = list(itertools.islice(train_iter(data_dir, seed=1), 3))
    c = list(itertools.islice(train_iter(data_dir, seed=2), 3))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x['image'], y['image'])
        np.testing.assert_array_equal(x['label'], y['label'])
    assert not np.array_equal(a[0]['image'], c[0]['image'])


def test_start_step_resumes_exactly(data_dir):
    stream = list(itertools.islice(train_iter(data_dir, seed=3), 95))  # past two epochs (1437 / 32 = 44.9)
    for k in (7, 48, 94):
        resumed = next(train_iter(data_dir, seed=3, start_step=k))
        np.testing.assert_array_equal(resumed['image'], stream[k]['image'])
        np.testing.assert_array_equal(resumed['label'], stream[k]['label'])


def test_undecoded_records_give_the_cached_stream(data_dir, capsys):
    """cache_bytes=0: records flow encoded through the shuffle and the resume skip and are decoded after it;
    the stream is the cached one (PNG digits: the same pixels), from the start and resumed past an epoch."""
    cached = list(itertools.islice(train_iter(data_dir, seed=4, verbose=True), 47))
    assert 'cached decoded' in capsys.readouterr().out
    fresh = list(itertools.islice(train_iter(data_dir, seed=4, cache_bytes=0, verbose=True), 3))
    out = capsys.readouterr().out
    assert 'decoded every epoch' in out and 'shuffle buffer 1437 x' in out and 'GiB of host memory' in out
    resumed = next(train_iter(data_dir, seed=4, cache_bytes=0, start_step=46))
    for a, b in zip(fresh + [resumed], cached[:3] + [cached[46]]):
        np.testing.assert_array_equal(a['image'], b['image'])
        np.testing.assert_array_equal(a['label'], b['label'])


def test_epochs_are_permutations_in_new_orders(data_dir):
    """Every epoch holds each example once (crop='resize', no flip: an example's pixels identify it), and the
    next epoch is another order."""
    it = train_iter(data_dir, seed=5, crop='resize', flip=False, global_batch_size=479)  # 1437 = 3 * 479
    epochs = [np.concatenate([next(it)['image'] for _ in range(3)]) for _ in range(2)]
    keys = [[x.tobytes() for x in e] for e in epochs]
    assert sorted(keys[0]) == sorted(keys[1]) and keys[0] != keys[1]


def test_eval_counts_every_example_once(data_dir):
    batches = eval_batches('vitjax_digits', 'test', data_dir, global_batch_size=100)  # 360 = 3 * 100 + 60
    assert len(batches) == 4 and all(b['image'].shape == (100, 16, 16, 3) for b in batches)
    mask = np.concatenate([b['mask'] for b in batches])
    assert mask.sum() == 360 and mask[:360].all() and not mask[360:].any()
    assert not batches[-1]['image'][60:].any() and not batches[-1]['label'][60:].any()


def test_eval_process_shards_are_disjoint_and_complete(data_dir):
    def keys(batches):
        return sorted(b['image'][i].tobytes() for b in batches for i in np.flatnonzero(b['mask']))
    whole = keys(eval_batches('vitjax_digits', 'test', data_dir))
    shards = [eval_batches('vitjax_digits', 'test', data_dir, process_index=i, process_count=2) for i in (0, 1)]
    assert len(shards[0]) == len(shards[1])  # same number of collective steps on every process
    assert sorted(keys(shards[0]) + keys(shards[1])) == whole


def test_named_tfds_dataset_with_mock_data():
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=40):  # mock data has no split slicing; digits test that below
        info = data.get_dataset_info('cifar10', 'train')
        assert info.num_classes == 10 and info.num_examples == 40
        b = next(data.create_train_dataset('cifar10', 'train', global_batch_size=8, image_size=24))
        assert b['image'].shape == (8, 24, 24, 3) and np.isfinite(b['image']).all()
        batches = eval_batches('cifar10', 'test', image_size=24, global_batch_size=6, crop_pct=0.875)
        assert len(batches) == 7 and sum(b['mask'].sum() for b in batches) == 40


def test_tfds_split_slicing(data_dir):
    parts = ['train[:80%]', 'train[80%:90%]', 'train[90%:]']
    sizes = [data.get_dataset_info('vitjax_digits', p, data_dir).num_examples for p in parts]
    assert sum(sizes) == 1437 and sizes[0] == 1150
    counted = [sum(b['mask'].sum() for b in eval_batches('vitjax_digits', p, data_dir)) for p in parts]
    assert counted == sizes


def test_unknown_dataset_suggests_names():
    with pytest.raises(ValueError, match=r"unknown dataset 'cifar01'.*did you mean .*cifar10"):
        data.get_dataset_info('cifar01', 'train')


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for c, n in (('cat', 7), ('dog', 6), ('fox', 7)):
        (tmp_path / c).mkdir()
        for i in range(n):
            size = (int(rng.integers(10, 40)), int(rng.integers(10, 40)))
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(tmp_path / c / f'{i}.png')
    (tmp_path / 'notes.txt').write_text('not a class')
    return tmp_path


def test_folder_dataset_and_80_10_10_split(image_folder):
    root = str(image_folder)
    info = data.get_dataset_info(root, 'all')
    assert info.class_names == ('cat', 'dog', 'fox') and info.num_examples == 20
    parts = ['all[:80%]', 'all[80%:90%]', 'all[90%:]']
    sizes = [data.get_dataset_info(root, p).num_examples for p in parts]
    assert sizes == [16, 2, 2]
    seen = []
    for p in parts:
        for b in eval_batches(root, p, global_batch_size=4, crop_pct=0.875):
            seen += [b['image'][i].tobytes() for i in np.flatnonzero(b['mask'])]
    whole = [b['image'][i].tobytes() for b in eval_batches(root, 'all', global_batch_size=4, crop_pct=0.875)
             for i in np.flatnonzero(b['mask'])]
    assert len(seen) == 20 and sorted(seen) == sorted(whole)
    b = next(data.create_train_dataset(root, 'all[:80%]', global_batch_size=4, image_size=16))
    assert b['image'].shape == (4, 16, 16, 3)


def test_dataset_smaller_than_a_batch(image_folder):
    with pytest.raises(ValueError, match='fewer than one batch'):
        next(data.create_train_dataset(str(image_folder), 'all[90%:]', global_batch_size=4, image_size=16))


@pytest.mark.parametrize('split, message', [
    ('train[50%:10%]', "vitjax_digits split 'train[50%:10%]' is reversed: it starts at example 718 of 'train'"),
    ('train[10:5]', "split 'train[10:5]' is reversed"),
    ('train[200%:]', "split 'train[200%:]': 200% is not within -100% and 100%"),
    ('train[5000:]', "split 'train[5000:]': 5000 is out of range ('train' holds 1437 examples)"),
    ('train[abc]', "cannot parse split 'train[abc]'"),
    ('train[:10]+valid', "vitjax_digits has no split 'valid' (its splits are test, train)"),
    ('all[:10%]', "tfds cannot slice 'all'"),
])
def test_bad_tfds_split_is_a_clear_error(data_dir, split, message):
    """Resolved like a folder's split (tfds itself counts a reversed slice negative and then fails reading it
    with a bare AssertionError), for the dataset info and both pipelines, so train.py and `vitjax evaluate`
    both report it."""
    for fn in (lambda: data.get_dataset_info('vitjax_digits', split, data_dir),
               lambda: train_iter(data_dir, split=split, process_index=0, process_count=1),
               lambda: eval_batches('vitjax_digits', split, data_dir, process_index=0, process_count=1)):
        with pytest.raises(ValueError) as e:
            fn()
        assert message in str(e.value)


def test_tfds_split_slices(data_dir):
    info = lambda split: data.get_dataset_info('vitjax_digits', split, data_dir).num_examples
    assert info('train[-5%:]') == 72 and info('train[:10]+test[-10:]') == 20 and info('all') == 1437 + 360
    assert info('train[1.5%:]') == 1437 - 22 and info('train[0shard]') == 1437  # tfds's own shard syntax
