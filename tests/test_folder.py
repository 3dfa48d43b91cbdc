"""Image folders as datasets: split syntax (split folders, or a fixed held-out share of class folders), unknown
and empty splits as errors, and images too big to decode as clear errors."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vitjax import data, images

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fill(root, counts, seed=0):
    rng = np.random.default_rng(seed)
    for c, n in counts.items():
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (12, 14, 3), dtype=np.uint8)).save(root / c / f'{i}.png')


def _files(root, split):
    return data.input_pipeline._folder_split(str(root), split, 0, 1)[0]


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
    ('train[50%:10%]', "split 'train[50%:10%]' is empty"),
    ('train[:', 'cannot parse split'),
])
def test_unknown_or_empty_split_is_an_error(tmp_path, split, message):
    _fill(tmp_path, {'a': 4, 'b': 4})
    with pytest.raises(ValueError) as e:
        data.get_dataset_info(str(tmp_path), split)
    assert message in str(e.value)


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
