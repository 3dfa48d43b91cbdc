"""Faults in the data layer: a pipeline still working when its reader leaves must not keep the process alive, and
a file the decoders fail on mid-run is named in a ValueError (train.py reports it), not a raw TensorFlow error."""
import os
import re
import subprocess
import sys
import threading

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

READ_AND_LEAVE = '''
import sys
from vitjax.train import data
read = lambda: data.create_train_dataset(sys.argv[1], 'train', global_batch_size=8, image_size=32)
next(read())  # abandoned at once, its pipeline busy
it = read()
next(it)  # left to the interpreter's exit
print('read', flush=True)
'''


def test_process_exits_with_the_pipeline_still_busy(tmp_path):
    """The pipeline's PIL calls run Python on TensorFlow's threads: at exit they must be stopped before the
    interpreter finalizes (after that CPython ends any thread that takes the GIL, and the iterator's destructor
    waits forever for the call it was making). Photo-like JPEGs keep the prefetch busy when the reader leaves."""
    rng = np.random.default_rng(0)
    for i in range(32):
        (tmp_path / f'c{i % 2}').mkdir(exist_ok=True)
        w = int(rng.integers(200, 300))
        small = rng.integers(0, 255, (w // 32 + 1, w // 24 + 1, 3), np.uint8)
        Image.fromarray(small).resize((w, w * 3 // 4), Image.BILINEAR).save(tmp_path / f'c{i % 2}' / f'{i}.jpg')
    proc = subprocess.Popen([sys.executable, '-c', READ_AND_LEAVE, str(tmp_path)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    watchdog = threading.Timer(90, proc.kill)  # the import and the first batch are not timed, only bounded
    watchdog.start()
    try:
        assert proc.stdout.readline().strip() == 'read'
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError('the process did not exit after its reader left the pipeline') from None
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == 0


def _folder(root, n=4):
    rng = np.random.default_rng(0)
    for c in ('a', 'b'):
        (root / c).mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(root / c / f'{i}.png')


@pytest.mark.parametrize('make', ['train', 'train_uncached', 'eval'])
def test_a_file_broken_after_the_scan_is_named(tmp_path, make):
    """The probe passed it, then it changed on disk (or the probe missed a way to break it): the decoder's error
    names no file, so the pipeline finds the file(s) it failed on and names them."""
    from vitjax import images
    from vitjax.train import data
    _folder(tmp_path)
    images.scan(str(tmp_path))  # probed while intact
    broken = tmp_path / 'b' / '2.png'
    header = broken.read_bytes()[:33]  # signature and IHDR: the rest is not a zlib stream
    broken.write_bytes(header + bytes.fromhex('0000000449444154') + b'\x01\x02\x03\x04' + b'\0' * 4)
    kw = dict(global_batch_size=8, image_size=8, process_index=0, process_count=1)
    if make == 'eval':
        it = data.create_eval_dataset(str(tmp_path), 'all', **kw)
    else:
        it = data.create_train_dataset(str(tmp_path), 'all', cache_bytes=0 if make == 'train_uncached' else 1 << 30,
                                       **kw)
    with pytest.raises(ValueError, match=f"cannot decode .*{broken}"):
        next(it)
    it = data.create_eval_dataset(str(tmp_path), 'all', **kw)
    (tmp_path / 'a' / '0.png').unlink()  # gone mid-run: TensorFlow's NotFoundError, not a ValueError
    with pytest.raises(ValueError, match=f"cannot decode .*{tmp_path / 'a' / '0.png'}"):
        next(it)


@pytest.mark.parametrize('kind, kw, message', [
    ('train', dict(global_batch_size=0), 'global_batch_size must be >= 1, got 0'),
    ('eval', dict(global_batch_size=0), 'global_batch_size must be >= 1, got 0'),
    ('train', dict(image_size=0), 'image_size must be >= 1, got 0'),
    ('eval', dict(image_size=-4), 'image_size must be >= 1, got -4'),
    ('train', dict(shuffle_buffer=0), 'shuffle_buffer must be >= 1, got 0'),
    ('train', dict(scale=(0.5, 0.1)), 'scale must be (min, max) with 0 < min <= max <= 1, got (0.5, 0.1)'),
    ('train', dict(ratio=(0.0, 1.0)), 'ratio must be (min, max) with 0 < min <= max, got (0.0, 1.0)'),
    ('eval', dict(crop_pct=0.0), 'crop_pct must be > 0, got 0.0'),
])
def test_bad_pipeline_arguments_are_clear_errors(tmp_path, kind, kw, message):
    """Checked before any pipeline is built: TensorFlow would fail on them mid-run (a batch of 0), with a
    ZeroDivisionError (crop_pct 0), or not at all (a reversed scale range)."""
    from vitjax.train import data
    _folder(tmp_path)
    make = data.create_train_dataset if kind == 'train' else data.create_eval_dataset
    args = {**dict(global_batch_size=4, image_size=8, process_index=0, process_count=1), **kw}
    with pytest.raises(ValueError, match=re.escape(message)):
        next(make(str(tmp_path), 'all', **args))
