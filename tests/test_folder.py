"""Image folders as datasets: split syntax (split folders, or a fixed held-out share of class folders), unknown
and empty splits as errors, and images too big to decode as clear errors."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vitjax import images

from vitjax.train import data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fill(root, counts, seed=0):
    rng = np.random.default_rng(seed)
    for c, n in counts.items():
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (12, 14, 3), dtype=np.uint8)).save(root / c / f'{i}.png')


def _files(root, split):
    return data.sources._folder_split(str(root), split, 0, 1)[0]


def test_class_folders_split_into_disjoint_train_and_test(tmp_path):
    _fill(tmp_path, {'cat': 30, 'dog': 11, 'fox': 1})
    train, test, whole = _files(tmp_path, 'train'), _files(tmp_path, 'test'), _files(tmp_path, 'all')
    assert not set(train) & set(test) and sorted(train + test) == sorted(whole) and len(whole) == 42
    per_class = lambda fs: {c: sum(f'/{c}/' in f for f in fs) for c in ('cat', 'dog', 'fox')}
    assert per_class(test) == {'cat': 3, 'dog': 1, 'fox': 0}  # 10% of each class, at least one of two or more
    images.folder_splits.cache_clear()
    images.scan.cache_clear()
    assert _files(tmp_path, 'test') == test  # the same folder always splits the same way
    assert data.get_dataset_info(str(tmp_path), 'train[:50%]').num_examples == len(train) // 2


def test_split_folders(tmp_path):
    _fill(tmp_path / 'train', {'a': 5, 'b': 4})
    _fill(tmp_path / 'val', {'a': 2, 'b': 1}, seed=1)
    assert data.get_dataset_info(str(tmp_path), 'train').num_examples == 9
    assert data.get_dataset_info(str(tmp_path), 'val').num_examples == 3
    assert all('/val/' in f for f in _files(tmp_path, 'val'))
    with pytest.raises(ValueError, match=r"has no split 'test' \(split folders: its splits are train, val\)"):
        data.get_dataset_info(str(tmp_path), 'test')
    _fill(tmp_path / 'test', {'a': 1, 'c': 1})
    images.folder_splits.cache_clear()
    with pytest.raises(ValueError, match='split folders hold different classes'):
        data.get_dataset_info(str(tmp_path), 'train')


@pytest.mark.parametrize('split, message', [
    ('bogus', "has no split 'bogus' (class folders: its splits are all, test, train)"),
    ('train[:0]', "split 'train[:0]' is empty"),
    ('train[50%:10%]', "split 'train[50%:10%]' is reversed: it starts at example 3 of 'train' and ends at 1"),
    ('train[5:2]', "split 'train[5:2]' is reversed"),
    ('train[-1:-3]', "split 'train[-1:-3]' is reversed"),
    ('train[200%:]', "split 'train[200%:]': 200% is not within -100% and 100%"),
    ('train[:-101%]', "split 'train[:-101%]': -101% is not within -100% and 100%"),
    ('train[7:]', "split 'train[7:]': 7 is out of range ('train' holds 6 examples)"),
    ('train[2:50%]', "split 'train[2:50%]' mixes an absolute and a percent bound"),
    ('train[:', 'cannot parse split'),
    ('train[abc]', 'cannot parse split'),
    ('train[1:2:3]', 'cannot parse split'),
])
def test_unknown_empty_or_reversed_split_is_an_error(tmp_path, split, message):
    """Where the split is resolved, so train.py and `vitjax evaluate` both get it (tfds: test_input_pipeline)."""
    _fill(tmp_path, {'a': 4, 'b': 4})  # train: 3 of each class
    for fn in (lambda: data.get_dataset_info(str(tmp_path), split),
               lambda: data.create_eval_dataset(str(tmp_path), split, global_batch_size=2, image_size=8,
                                                process_index=0, process_count=1)):
        with pytest.raises(ValueError) as e:
            fn()
        assert message in str(e.value)


@pytest.mark.parametrize('split, n', [('train[-5%:]', 0), ('train[-50%:]', 3), ('train[-2:]', 2), ('train[1.5%:]', 6),
                                      ('train[0%:0%]', 0), ('train[:100%]', 6), ('train[-100%:]', 6)])
def test_split_slices_resolve_as_tfds_does(tmp_path, split, n):
    _fill(tmp_path, {'a': 4, 'b': 4})
    if n:
        assert data.get_dataset_info(str(tmp_path), split).num_examples == n
    else:
        with pytest.raises(ValueError, match='is empty'):
            data.get_dataset_info(str(tmp_path), split)


@pytest.mark.slow
def test_vitjax_evaluate_refuses_a_bogus_split(tmp_path):
    _fill(tmp_path / 'data', {'a': 3, 'b': 3})
    model = tmp_path / 'm'
    code = ('import vitjax; m, v = vitjax.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=1, '
            f'num_classes=2); vitjax.save({str(model)!r}, m, v, name="vit_tiny_patch16_224")')
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT, capture_output=True)
    run = lambda split: subprocess.run([sys.executable, '-m', 'vitjax.cli', 'evaluate', '--model', str(model),
                                        '--dataset', str(tmp_path / 'data'), '--split', split],
                                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    bad = run('bogus')
    assert bad.returncode == 1 and "has no split 'bogus'" in bad.stderr and 'Traceback' not in bad.stderr
    good = run('test')
    assert good.returncode == 0, good.stderr[-2000:]
    assert '"count": 2' in good.stdout  # one held-out image of each class, not the whole folder


@pytest.fixture(scope='module')
def bomb(tmp_path_factory):
    """A 20000x20000 PNG (400 Mpx, over PIL's decompression-bomb limit) that is small on disk."""
    path = tmp_path_factory.mktemp('bomb') / 'bomb.png'
    Image.new('1', (20000, 20000)).save(path)
    return path


def test_decompression_bomb_is_a_clear_error(bomb, tmp_path):
    with pytest.raises(ValueError, match='bomb.png: cannot decode the image'):
        images.load_rgb(str(bomb))
    _fill(tmp_path, {'a': 2})
    os.link(bomb, tmp_path / 'a' / 'bomb.png')
    index = images.scan(str(tmp_path))  # a folder skips it like any unreadable file
    assert len(index.files) == 2 and [os.path.basename(p) for p, _ in index.skipped] == ['bomb.png']


@pytest.mark.slow
def test_vitjax_predict_on_a_bomb(bomb, tmp_path):
    model = tmp_path / 'm'
    code = ('import vitjax; m, v = vitjax.create_model("vit_tiny_patch16_224", img_size=16, patch_size=8, depth=1, '
            f'num_classes=3); vitjax.save({str(model)!r}, m, v, name="vit_tiny_patch16_224")')
    subprocess.run([sys.executable, '-c', code], check=True, cwd=ROOT, capture_output=True)
    for cmd in (['predict', '--model', str(model), str(bomb)],
                ['features', '--model', str(model), str(bomb), '--out', str(tmp_path / 'f.npz')],
                ['attention', '--model', str(model), str(bomb), '--out', str(tmp_path / 'a.png')]):
        proc = subprocess.run([sys.executable, '-m', 'vitjax.cli', *cmd], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 1, (cmd, proc.stderr[-2000:])
        assert 'cannot decode the image' in proc.stderr and 'Traceback' not in proc.stderr
    assert not (tmp_path / 'f.npz').exists() and not (tmp_path / 'a.png').exists()
    for top in ('0', '-1'):
        proc = subprocess.run([sys.executable, '-m', 'vitjax.cli', 'predict', '--model', str(model), '--top', top,
                               str(bomb)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and '--top must be an integer >= 1' in proc.stderr


def test_fewer_than_two_classes_is_an_error(tmp_path):
    """One class trains to accuracy 1 and loss 0 on anything: refused where the dataset info is built, so
    train.py stops with an error before training and `vitjax evaluate` before evaluating."""
    _fill(tmp_path / 'one', {'cat': 4})
    with pytest.raises(ValueError, match=r"one holds one class \('cat'\); classification needs at least two"):
        data.get_dataset_info(str(tmp_path / 'one'), 'train')
    _fill(tmp_path / 'splits' / 'train', {'cat': 3})
    _fill(tmp_path / 'splits' / 'val', {'cat': 2})
    with pytest.raises(ValueError, match=r"splits holds one class \('cat'\)"):
        data.get_dataset_info(str(tmp_path / 'splits'), 'val')
    _fill(tmp_path / 'empty', {'cat': 3, 'dog': 0})
    (tmp_path / 'empty' / 'dog' / 'broken.jpg').write_bytes(b'not an image')
    with pytest.raises(ValueError, match=r"only class 'cat' holds readable images \(none: dog\)"):
        data.get_dataset_info(str(tmp_path / 'empty'), 'all')
    with pytest.raises(ValueError, match='holds one class'):
        next(data.create_train_dataset(str(tmp_path / 'one'), 'all', global_batch_size=2, image_size=8,
                                       process_index=0, process_count=1))


def test_tfds_dataset_with_fewer_than_two_classes_or_no_label_is_an_error(monkeypatch):
    import types
    import tensorflow_datasets as tfds
    from vitjax.train.data import sources

    def fake(features):
        info = types.SimpleNamespace(features=tfds.features.FeaturesDict(features), splits={})
        builder = types.SimpleNamespace(info=info, as_dataset=lambda **kw: None)
        monkeypatch.setattr(sources, '_builder', lambda *a, **kw: builder)
        monkeypatch.setattr(sources, '_num_examples', lambda *a: 10)
    fake({'image': tfds.features.Image(), 'label': tfds.features.ClassLabel(names=['only'])})
    with pytest.raises(ValueError, match=r"fake holds one class \('only'\); classification needs at least two"):
        data.get_dataset_info('fake', 'train')
    fake({'image': tfds.features.Image(), 'caption': tfds.features.Text()})
    with pytest.raises(ValueError, match="fake has no 'label' class feature to classify by .features: caption, image"):
        data.get_dataset_info('fake', 'train')


def test_hidden_folders_are_not_classes(tmp_path):
    """Jupyter's .ipynb_checkpoints (or a .git) beside the class folders would be an extra, empty class."""
    _fill(tmp_path / 'classes', {'cat': 3, 'dog': 3, '.ipynb_checkpoints': 2})
    _fill(tmp_path / 'split', {'train/cat': 2, 'train/dog': 2, '.cache/x': 1})
    assert data.get_dataset_info(str(tmp_path / 'classes'), 'all').class_names == ('cat', 'dog')
    assert data.get_dataset_info(str(tmp_path / 'split'), 'train').class_names == ('cat', 'dog')
