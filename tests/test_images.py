"""Bad data in image folders: corrupt files skipped and reported, every PIL mode to RGB, huge and tiny
images, empty classes; and the same through `python train.py`."""
import io
import os

import numpy as np
import pytest
from PIL import Image

import trainrun
from vitjax.train import data
from vitjax import images



def _jpeg_bytes(size=(32, 32), color=(200, 30, 30)):
    buf = io.BytesIO()
    Image.new('RGB', size, color).save(buf, 'JPEG', quality=95)
    return buf.getvalue()


@pytest.fixture
def messy(tmp_path):
    """Six readable images in every awkward format, four unreadable files, one empty class."""
    a, b, c = (tmp_path / n for n in ('a', 'b', 'empty'))
    for d in (a, b, c):
        d.mkdir()
    Image.new('L', (20, 30), 128).save(a / 'gray.png')
    Image.new('RGBA', (24, 24), (255, 0, 0, 0)).save(a / 'rgba.png')  # fully transparent red
    Image.new('P', (16, 16), 3).save(a / 'palette.gif')
    Image.new('CMYK', (18, 18), (0, 255, 255, 0)).save(a / 'cmyk.jpg')
    Image.fromarray(np.full((12, 12), 65535, np.uint16)).save(b / 'deep16.png')  # 16-bit white
    Image.new('RGB', (1, 1), (0, 0, 255)).save(b / 'tiny.png')
    Image.new('RGB', (6000, 80), (0, 255, 0)).save(b / 'huge_wide.jpg', quality=80)
    (b / 'empty_file.jpg').write_bytes(b'')
    (b / 'garbage.png').write_bytes(b'this is not an image')
    (a / 'truncated.jpg').write_bytes(_jpeg_bytes()[:300])
    good_png = io.BytesIO()
    Image.new('RGB', (8, 8)).save(good_png, 'PNG')
    broken = bytearray(good_png.getvalue())
    broken[40] ^= 0xFF  # inside the image data: the CRC check fails
    (a / 'flipped.png').write_bytes(bytes(broken))
    (c / 'readme.txt').write_text('no images here')
    return tmp_path


def test_modes_convert_to_rgb(messy):
    gray = images.load_rgb(str(messy / 'a' / 'gray.png'))
    assert gray.shape == (30, 20, 3) and (gray == 128).all()
    assert (images.load_rgb(str(messy / 'a' / 'rgba.png')) == 255).all()  # transparent -> white, not black
    cmyk = images.load_rgb(str(messy / 'a' / 'cmyk.jpg'))
    assert cmyk.shape == (18, 18, 3) and cmyk[..., 0].mean() > 200 and cmyk[..., 1:].mean() < 60  # red
    assert (images.load_rgb(str(messy / 'b' / 'deep16.png')) == 255).all()  # scaled, not clipped garbage
    assert images.load_rgb(str(messy / 'a' / 'palette.gif')).shape == (16, 16, 3)
    huge = images.load_rgb(str(messy / 'b' / 'huge_wide.jpg'))
    assert max(huge.shape[:2]) <= images.MAX_SIDE and huge[..., 1].mean() > 200


def test_corrupt_files_skipped_and_reported(messy, capsys):
    index = images.scan(str(messy))
    assert index.classes == ('a', 'b', 'empty') and index.empty_classes == ('empty',)
    assert len(index.files) == 7
    assert sorted(os.path.basename(p) for p, _ in index.skipped) == ['empty_file.jpg', 'flipped.png', 'garbage.png',
                                                                     'truncated.jpg']
    err = capsys.readouterr().err
    assert 'skipped 4 unreadable image file(s)' in err and 'class folder(s) with no readable images: empty' in err


def test_pipelines_run_over_the_messy_folder(messy):
    root = str(messy)
    info = data.get_dataset_info(root, 'all')
    assert (info.num_classes, info.num_examples) == (3, 7)
    batch = next(data.create_train_dataset(root, 'all', global_batch_size=4, image_size=16))
    assert batch['image'].shape == (4, 16, 16, 3) and batch['image'].dtype == np.uint8
    seen = sum(int(b['mask'].sum()) for b in data.create_eval_dataset(root, 'all', global_batch_size=4,
                                                                         image_size=16, crop_pct=0.875))
    assert seen == 7


def test_no_readable_images_is_an_error(tmp_path):
    (tmp_path / 'x').mkdir()
    (tmp_path / 'x' / 'bad.jpg').write_bytes(b'nope')
    with pytest.raises(ValueError, match='holds no readable images'):
        images.scan(str(tmp_path))
    with pytest.raises(ValueError, match='no class subfolders'):
        images.scan(str(tmp_path / 'x'))


@pytest.mark.slow
def test_train_py_on_the_messy_folder(messy, tmp_path):
    proc = trainrun.train(f'--workdir={tmp_path / "run"}', f'--config.dataset={messy}', '--config.total_steps=3',
                          '--config.warmup_steps=1', '--config.batch_size=4', '--config.log_every=1',
                          '--config.eval_every=3', '--config.model_overrides.depth=1')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'skipped 4 unreadable image file(s)' in proc.stderr and 'test accuracy' in proc.stdout
