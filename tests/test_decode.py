"""Decoding after the shuffle: the fused JPEG crop against decode-then-crop, the per-file decoder choice, timm's
eval crop taken from the original image, and uint8 batches normalised on the device."""
import io
import os

import jax
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from sklearn.datasets import load_sample_image

from vitjax import images
from vitjax.train.data import decode
from vitjax.train.train_step import model_input


def _jpeg(array, quality=90, **kw):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, 'JPEG', quality=quality, **kw)
    return buf.getvalue()


@pytest.fixture(scope='module')
def photo():
    return load_sample_image('china.jpg')  # 427 x 640, a real photograph


@pytest.mark.parametrize('subsampling, progressive', [(0, False), (2, False), (2, True)])
def test_fused_crop_matches_decode_then_crop(photo, subsampling, progressive):
    encoded = tf.constant(_jpeg(photo, subsampling=subsampling, progressive=progressive))
    full = tf.io.decode_jpeg(encoded, channels=3, dct_method=decode.DCT_METHOD)
    np.testing.assert_array_equal(full.numpy(), np.asarray(Image.open(io.BytesIO(encoded.numpy())).convert('RGB')))
    sizes_fused, sizes_full, diffs = [], [], []
    for k in range(200):
        window = decode.random_resized_window(tf.constant([7, k], tf.int64), (0.08, 1.0), (3 / 4, 4 / 3))
        a, b = decode.decode_and_crop(encoded, window).numpy(), decode.crop(full, window).numpy()
        sizes_fused.append(a.shape)
        sizes_full.append(b.shape)
        diffs.append(np.abs(a.astype(int) - b).mean())
    assert sizes_fused == sizes_full  # the same window for every key: the same distribution of crop sizes
    areas = np.array([h * w for h, w, _ in sizes_full]) / (427 * 640)
    assert areas.min() < 0.2 and areas.max() > 0.8  # the (0.08, 1) range is actually drawn from
    if subsampling == 0:
        assert max(diffs) == 0  # 4:4:4: the fused decode is the same pixels
    else:
        assert max(diffs) < 0.5  # 4:2:0: chroma is upsampled differently only along the crop's border


def test_non_jpeg_crops_after_decoding(photo):
    buf = io.BytesIO()
    Image.fromarray(photo[:64, :80]).save(buf, 'PNG')
    window = decode.random_resized_window(tf.constant([0, 1], tf.int64), (0.08, 1.0), (3 / 4, 4 / 3))
    y, x, h, w = (int(v) for v in window(tf.constant([64, 80, 3])))
    np.testing.assert_array_equal(decode.decode_and_crop(tf.constant(buf.getvalue()), window).numpy(),
                                  photo[y:y + h, x:x + w])


def _save(path, image, fmt, **kw):
    image.save(path, fmt, **kw)
    return str(path)


def test_per_file_decoder_choice(tmp_path, photo):
    rgb = Image.fromarray(photo[:60, :90])
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    files = {
        'rgb.jpg': (_save(tmp_path / 'rgb.jpg', rgb, 'JPEG'), False),
        'gray.jpg': (_save(tmp_path / 'gray.jpg', rgb.convert('L'), 'JPEG'), False),
        'rgb.png': (_save(tmp_path / 'rgb.png', rgb, 'PNG'), False),
        'gray.png': (_save(tmp_path / 'gray.png', rgb.convert('L'), 'PNG'), False),
        'cmyk.jpg': (_save(tmp_path / 'cmyk.jpg', rgb.convert('CMYK'), 'JPEG'), True),
        'rotated.jpg': (_save(tmp_path / 'rotated.jpg', rgb, 'JPEG', exif=exif.tobytes()), True),
        'rgba.png': (_save(tmp_path / 'rgba.png', rgb.convert('RGBA'), 'PNG'), True),
        'deep16.png': (_save(tmp_path / 'deep16.png', Image.fromarray(np.full((8, 8), 4000, np.uint16)), 'PNG'),
                       True),
        'palette.gif': (_save(tmp_path / 'palette.gif', rgb.convert('P'), 'GIF'), True),
        'huge.jpg': (_save(tmp_path / 'huge.jpg', Image.new('RGB', (images.MAX_SIDE + 8, 16)), 'JPEG'), True),
    }
    for name, (path, pil) in files.items():
        probe = images.probe(path)
        assert probe.pil == pil, name
        record = {'path': tf.constant(path), 'pil': tf.constant(probe.pil)}
        got = decode.decode(record, decode.full_window).numpy()
        h, w = got.shape[:2]
        assert (h, w) == images.load_rgb(path).shape[:2] and abs(probe.pixels - h * w) <= h + w, name
        if not pil:  # TensorFlow decodes these to PIL's pixels
            np.testing.assert_array_equal(got, images.load_rgb(path), err_msg=name)
    assert decode.decode({'path': tf.constant(files['rotated.jpg'][0]), 'pil': tf.constant(True)},
                         decode.full_window).shape[:2] == (90, 60)  # EXIF rotation applied


def test_probe_rejects_truncated_and_corrupt_files(tmp_path, photo):
    data = _jpeg(photo[:64, :64])
    (tmp_path / 'cut.jpg').write_bytes(data[:len(data) // 2])
    big = _jpeg(photo)
    (tmp_path / 'cut_late.jpg').write_bytes(big[:-5000])  # the header parses; only the end marker is gone
    png = io.BytesIO()
    Image.fromarray(photo[:64, :64]).save(png, 'PNG')
    flipped = bytearray(png.getvalue())
    flipped[flipped.index(b'IDAT') + 14] ^= 0x01  # inside the compressed pixels: PIL's header parse passes
    (tmp_path / 'flipped.png').write_bytes(bytes(flipped))
    (tmp_path / 'cut.png').write_bytes(png.getvalue()[:-20])
    for name, message in (('cut.jpg', '(?i)end marker|truncated'), ('cut_late.jpg', 'end marker'),
                          ('flipped.png', 'CRC'), ('cut.png', '(?i)truncated')):
        with pytest.raises((ValueError, OSError), match=message):  # PIL's own header checks raise OSError
            images.probe(str(tmp_path / name))


@pytest.mark.parametrize('interpolation', ['bicubic', 'bilinear'])
def test_resize_and_flip_are_timms_pixels(photo, interpolation):
    """Given the same crop, the train resize + flip is torchvision's resized_crop + hflip on the PIL image (what
    timm's RandomResizedCropAndInterpolation and RandomHorizontalFlip run), pixel for pixel; x and y are not
    swapped, and the flip flag acts only when true."""
    import torchvision.transforms.functional as F
    y, x, h, w = 31, 117, 203, 347  # a wide crop: a transposed window would change the shape it resizes
    window = lambda shape: (tf.constant(y), tf.constant(x), tf.constant(h), tf.constant(w))
    mode = {'bicubic': F.InterpolationMode.BICUBIC, 'bilinear': F.InterpolationMode.BILINEAR}[interpolation]
    ref = F.resized_crop(Image.fromarray(photo), y, x, h, w, [224, 224], mode)
    for flip, expect in ((False, ref), (True, F.hflip(ref))):
        ours = decode.resize_uint8(decode.crop(tf.constant(photo), window), 224, interpolation, tf.constant(flip))
        np.testing.assert_array_equal(ours.numpy(), np.asarray(expect))
    with pytest.raises(ValueError, match="interpolation 'cubic' is not one of"):
        decode.resize_uint8(tf.constant(photo), 224, 'cubic')


def test_eval_window_is_timms_resize_then_center_crop(photo):
    """The square of the original that timm's Resize(256) + CenterCrop(224) keep, resized: aligned with timm's
    output (any shift of the window is further from it) and as close as resizing a window of the original instead
    of the whole image allows."""
    window = decode.center_window(224, 0.875)
    y, x, h, w = (int(v) for v in window(tf.constant([427, 640, 3])))
    # torchvision resizes 427x640 to 256x383 and crops at (16, 80): rows 16..240 and columns 80..304 of it
    assert (y, x, h, w) == (round(16 * 427 / 256), round(80 * 640 / 383), 373, 374)
    from timm.data import create_transform
    ref = np.asarray(create_transform(224, interpolation='bicubic', crop_pct=0.875, use_prefetcher=True)(
        Image.fromarray(photo))).transpose(1, 2, 0).astype(int)
    image = tf.constant(photo)

    def diff(dy, dx):
        shifted = lambda shape: (tf.constant(y + dy), tf.constant(x + dx), tf.constant(h), tf.constant(w))
        return np.abs(decode.resize_uint8(decode.crop(image, shifted), 224, 'bicubic').numpy() - ref).mean()
    ours = diff(0, 0)
    assert ours < 3  # 2.45 levels: the same PIL filter over a window, not the whole image (resize-then-crop: 6.1)
    assert all(diff(dy, dx) > ours + 1 for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)))
    fused = decode.resize_uint8(decode.decode_and_crop(tf.constant(_jpeg(photo, subsampling=0, quality=100)),
                                                       window), 224, 'bicubic').numpy()
    assert np.abs(fused - ref).mean() < 4


def test_uint8_normalised_on_the_device_equals_the_float_pipeline():
    """The old pipeline normalised resized floats on the host (clip, /255, -mean, /std); the steps now do it on
    the device from uint8. Same numbers for the same pixels."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    pixels[0, 0, 0] = (0, 255, 128)
    old = ((tf.clip_by_value(tf.cast(pixels, tf.float32), 0, 255) / 255.0 - tf.constant(mean)) / tf.constant(std))
    device = jax.jit(lambda x: model_input(x, mean, std))(pixels)
    assert device.dtype == np.float32 and np.abs(np.asarray(device) - old.numpy()).max() <= 1e-6
    floats = np.zeros((1, 4, 4, 3), np.float32)
    assert model_input(floats, mean, std) is floats  # float batches are taken as already normalised
    with pytest.raises(ValueError, match='mean and std'):
        model_input(pixels, None, None)


def _chunk(kind, body):
    import struct
    import zlib
    return struct.pack('>I', len(body)) + kind + body + struct.pack('>I', zlib.crc32(kind + body))


def _png(idats, extra=(), interlace=0, pixels=None):
    """A 64 x 48 RGB PNG from raw IDAT payloads, every chunk with a valid CRC."""
    import struct
    head = b'\x89PNG\r\n\x1a\n' + _chunk(b'IHDR', struct.pack('>IIBBBBB', 64, 48, 8, 2, 0, 0, interlace))
    return head + b''.join(_chunk(k, b) for k, b in extra) + b''.join(_chunk(b'IDAT', d) for d in idats) \
        + _chunk(b'IEND', b'')


def _rows(pixels, filter_type=0):
    return b''.join(bytes([filter_type]) + row.tobytes() for row in pixels)


def _scan_bounds(data):
    """(start, end) of a baseline JPEG's entropy-coded data: after its SOS segment, up to the EOI marker."""
    import struct
    sos = data.index(b'\xff\xda')
    return sos + 2 + struct.unpack('>H', data[sos + 2:sos + 4])[0], data.rindex(b'\xff\xd9')


def _bad_and_good_files(photo):
    """{name: (bytes, whether TensorFlow's decoders fail on it)}: every chunk CRC and JPEG marker in place."""
    import zlib
    rng = np.random.default_rng(0)
    pixels = photo[:48, :64]
    raw = _rows(pixels)
    good = zlib.compress(raw)
    jpeg, prog = _jpeg(photo[:192, :256]), _jpeg(photo[:192, :256], progressive=True)
    s, e = _scan_bounds(jpeg)
    noise = rng.integers(0, 256, e - s, np.uint8)
    dht = prog.index(b'\xff\xc4', prog.index(b'\xff\xda'))  # a Huffman table between progressive scans
    ac_scan = prog.index(b'\xff\xda', dht)  # the AC scan after it: point its table at one never defined
    undefined = prog[:ac_scan + 6] + bytes([prog[ac_scan + 6] | 0x03]) + prog[ac_scan + 7:]
    unfinished = zlib.compressobj()
    unfinished = unfinished.compress(raw + raw) + unfinished.flush(zlib.Z_SYNC_FLUSH)  # every row, no stream end
    return {
        'nonzlib.png': (_png([rng.integers(0, 256, 500, np.uint8).tobytes()]), True),
        'zlib_cut.png': (_png([good[:len(good) // 2]]), True),
        'short_pixels.png': (_png([zlib.compress(raw[:len(raw) // 2])]), True),
        'bad_filter.png': (_png([zlib.compress(_rows(pixels, 7))]), True),
        'bad_adler.png': (_png([good[:-4] + b'\0\0\0\0']), True),
        'no_idat.png': (_png([]), True),
        'unknown_critical_chunk.png': (_png([good], extra=[(b'ABCD', b'xyz')]), True),
        'noise_with_markers.jpg': (jpeg[:s] + noise.tobytes() + jpeg[e:], True),
        'sof_in_scan.jpg': (jpeg[:s + 100] + b'\xff\xc0\x00\x11garbage' + jpeg[s + 100:], True),
        'bogus_huffman_table.jpg': (prog[:dht + 4] + b'\xff' * 20 + prog[dht + 24:], True),
        'undefined_huffman_table.jpg': (undefined, True),
        'zlib_unfinished.png': (_png([unfinished]), True),
        # damaged but decodable (libjpeg / libpng warn): must not be skipped
        'noise_no_markers.jpg': (jpeg[:s] + np.minimum(noise, 254).tobytes() + jpeg[e:], False),
        'scan_cut_short.jpg': (jpeg[:s] + jpeg[s:s + 10] + jpeg[e:], False),
        'trailing_bytes.jpg': (jpeg + bytes(4096), False),
        'progressive.jpg': (prog, False),
        'split_idat.png': (_png([good[:10], good[10:]]), False),
        'extra_zlib_data.png': (_png([zlib.compress(raw + raw)]), False),
        'interlaced.png': (_png([zlib.compress(_adam7(pixels))], interlace=1), False),
    }


def _adam7(pixels):
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    return b''.join(_rows(pixels[y0::dy, x0::dx]) for x0, y0, dx, dy in passes if pixels[y0::dy, x0::dx].size)


def test_probe_rejects_what_tensorflow_cannot_decode(tmp_path, photo):
    """Files whose headers, chunk CRCs and markers are all in place but whose body TensorFlow's decoder rejects
    (with an error naming no file) are rejected by the probe; damaged files the decoders accept are kept."""
    for name, (content, tf_fails) in _bad_and_good_files(photo).items():
        path = str(tmp_path / name)
        with open(path, 'wb') as f:
            f.write(content)
        try:
            decode.decode_and_crop(tf.constant(content), decode.full_window)
            assert not tf_fails, f'{name}: TensorFlow decodes it'
        except tf.errors.InvalidArgumentError:
            assert tf_fails, f'{name}: TensorFlow fails on it'
        if tf_fails:
            with pytest.raises(ValueError):
                images.probe(path)
        else:
            images.probe(path)


def test_folder_skips_a_png_with_non_zlib_pixels(tmp_path, photo, capsys):
    """The file of the issue: a PNG whose IDAT is not a zlib stream is skipped and counted like any bad image;
    the pipeline then trains over the rest."""
    from vitjax.train import data
    for c in ('a', 'b'):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(photo[i * 40:i * 40 + 32, :32]).save(tmp_path / c / f'{i}.png')
    (tmp_path / 'a' / 'nonzlib.png').write_bytes(_png([bytes(range(256)) * 2]))
    index = images.scan(str(tmp_path))
    assert [os.path.basename(p) for p, _ in index.skipped] == ['nonzlib.png'] and len(index.files) == 6
    assert 'skipped 1 unreadable image file(s)' in capsys.readouterr().err
    batch = next(data.create_train_dataset(str(tmp_path), 'all', global_batch_size=6, image_size=16,
                                           process_index=0, process_count=1))
    assert batch['image'].shape == (6, 16, 16, 3)
