"""Input at scale: vitjax's tf.data pipelines next to timm's loader on the same real-size JPEGs, uncached.

    python -m benchmarks.input_scale build ROOT         # 5,000 photo-like JPEGs (~500x375) + the tfds dataset
    python -m benchmarks.input_scale measure SIDE ...   # one measurement in this process (JSON on stdout)

The photos are scikit-learn's two sample photographs (china.jpg, flower.jpg, 640x427) cut, scaled, flipped and
colour-jittered into 5,000 distinct JPEGs (quality 90, 4:2:0, ~500x375 landscape or portrait), in 10 classes,
written as an image folder ROOT/photos/<class>/ and as a tfds dataset (`vitjax_photos`, ROOT/tfds) built from
the same files by `VitjaxPhotos`. Each measurement runs in a fresh process with `threads` tf.data threads
(vitjax) or DataLoader workers (timm) and reports images/s after one warm-up batch.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.harness import ROOT, record

NUM_IMAGES, NUM_CLASSES, SIZE, BATCH = 5_000, 10, 224, 128


# -- the data ------------------------------------------------------------------------------------------------
def build_folder(out: Path, n: int = NUM_IMAGES, seed: int = 0) -> Path:
    from PIL import Image, ImageEnhance
    from sklearn.datasets import load_sample_images
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    folder = out / 'photos'
    for i in range(n):
        src = photos[i % len(photos)]
        w, h = src.size
        area = rng.uniform(0.3, 1.0) * w * h
        aspect = rng.uniform(3 / 4, 4 / 3)
        cw, ch = min(w, int(round((area * aspect) ** 0.5))), min(h, int(round((area / aspect) ** 0.5)))
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        im = src.crop((x, y, x + cw, y + ch))
        long_side = int(rng.uniform(450, 550))
        size = (long_side, long_side * 3 // 4) if rng.random() < 0.7 else (long_side * 3 // 4, long_side)
        im = im.resize(size, Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            im = enhance(im).enhance(rng.uniform(0.7, 1.3))
        path = folder / f'{i % NUM_CLASSES}' / f'{i:05d}.jpg'
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path, 'JPEG', quality=90)
    return folder


def build_tfds(folder: Path, data_dir: Path):
    import tensorflow_datasets as tfds
    from benchmarks import photos  # noqa: F401  (registers vitjax_photos)
    builder = tfds.builder('vitjax_photos', data_dir=str(data_dir))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(folder)))


# -- one measurement (fresh process) ----------------------------------------------------------------------------
def _img_s(it, batches: int) -> tuple[float, int]:
    first = next(it)  # warm-up: pipeline start, thread pools, first shuffle-buffer fill
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * BATCH / (time.perf_counter() - t0), int(np.asarray(first['image']).nbytes) // BATCH


def measure_vitjax(pipe: str, source: str, threads: int, root: Path, batches: int) -> dict:
    from vitjax.train import data
    from benchmarks import photos  # noqa: F401
    dataset, data_dir = (str(root / 'photos'), None) if source == 'folder' else ('vitjax_photos', str(root / 'tfds'))
    if pipe == 'train':
        it = data.create_train_dataset(dataset, 'train' if source == 'tfds' else 'all', global_batch_size=BATCH,
                                       image_size=SIZE, data_dir=data_dir, cache_bytes=0, threads=threads,
                                       shuffle_buffer=1_000, process_index=0, process_count=1)
    else:
        it = data.create_eval_dataset(dataset, 'train' if source == 'tfds' else 'all', global_batch_size=BATCH,
                                      image_size=SIZE, crop_pct=0.875, data_dir=data_dir, threads=threads,
                                      process_index=0, process_count=1)
    img_s, nbytes = _img_s(it, batches)
    return {'img_s': img_s, 'bytes_per_image': nbytes}


def measure_timm(pipe: str, threads: int, root: Path, batches: int, prefetcher: bool = True) -> dict:
    """timm's own loader path: ImageDataset + its train / eval transform in a DataLoader with `threads` worker
    processes. prefetcher (timm's GPU default): uint8 out + fast_collate, normalised on the device by timm's
    PrefetchLoader, the same split of work as vitjax's and the faster of timm's two paths; without it
    (timm on CPU): ToTensor + Normalize in the workers, float32 out."""
    import torch
    from timm.data import ImageDataset, create_transform
    from timm.data.loader import fast_collate
    torch.set_num_threads(1)
    transform = create_transform(SIZE, is_training=pipe == 'train', interpolation='bicubic', color_jitter=None,
                                 crop_pct=0.875, use_prefetcher=prefetcher)
    ds = ImageDataset(str(root / 'photos'), transform=transform)
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=pipe == 'train', num_workers=threads,
                                         collate_fn=fast_collate if prefetcher else None, drop_last=True,
                                         persistent_workers=True,
                                         prefetch_factor=4)
    it = ({'image': x.numpy()} for epoch in range(100) for x, _ in loader)
    img_s, nbytes = _img_s(it, batches)
    return {'img_s': img_s, 'bytes_per_image': nbytes}


def measure_resume(source: str, root: Path, start_step: int) -> dict:
    """Seconds from pipeline creation to the first batch at `start_step` (batch 128), and the first 3 batches
    compared with a run started 10 steps earlier that read on (a different epoch offset and skip)."""
    from vitjax.train import data
    from benchmarks import photos  # noqa: F401
    dataset, data_dir = (str(root / 'photos'), None) if source == 'folder' else ('vitjax_photos', str(root / 'tfds'))
    kw = dict(global_batch_size=BATCH, image_size=SIZE, data_dir=data_dir, cache_bytes=0, process_index=0,
              process_count=1, shuffle_buffer=1_000)
    split = 'train' if source == 'tfds' else 'all'
    t0 = time.perf_counter()
    it = data.create_train_dataset(dataset, split, start_step=start_step, **kw)
    resumed = [next(it)]
    first_s = time.perf_counter() - t0
    resumed += [next(it), next(it)]
    earlier = data.create_train_dataset(dataset, split, start_step=start_step - 10, **kw)
    for _ in range(10):
        next(earlier)
    equal = all(np.array_equal(a['image'], next(earlier)['image']) for a in resumed)
    return {'first_batch_s': first_s, 'equal': bool(equal)}


def measure_scan(root: Path) -> dict:
    from vitjax import images
    t0 = time.perf_counter()
    index = images.scan(str(root / 'photos'))
    return {'ms_per_file': 1000 * (time.perf_counter() - t0) / len(index.files), 'files': len(index.files),
            'pil_files': sum(p.pil for p in index.probes.values())}


# -- the benchmark section ------------------------------------------------------------------------------------
def _run(*args) -> dict:
    env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': '2'}
    proc = subprocess.run([sys.executable, '-m', 'benchmarks.input_scale', *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f'input_scale {args}: {proc.stderr[-2000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_input_scale(root: Path, batches: int = 12) -> list[dict]:
    if not (root / 'tfds').exists():
        _run('build', root)
    out = []
    for pipe in ('train', 'eval'):
        for threads in (1, 2):
            timm = _run('measure', 'timm', pipe, 'folder', threads, root, batches)
            timm_float = _run('measure', 'timm_float', pipe, 'folder', threads, root, batches)
            for source in ('tfds', 'folder'):
                jx = _run('measure', 'vitjax', pipe, source, threads, root, batches)
                out.append(record(name=f'input_scale_{pipe}', model=source, batch=BATCH, dtype='uint8',
                                  device=f'host, {threads} thread(s)', vitjax_img_s=round(jx['img_s'], 1),
                                  baseline=f'timm loader, {threads} worker(s)', baseline_img_s=round(timm['img_s'], 1),
                                  image_size=SIZE, threads=threads, bytes_per_image=jx['bytes_per_image'],
                                  baseline_bytes_per_image=timm['bytes_per_image'],
                                  timm_float_img_s=round(timm_float['img_s'], 1),
                                  timm_float_bytes_per_image=timm_float['bytes_per_image']))
                print(f"  {pipe} {source} {threads} thread(s): vitjax {jx['img_s']:.0f} img/s, timm "
                      f"{timm['img_s']:.0f} img/s (uint8), {timm_float['img_s']:.0f} img/s (float32)", flush=True)
    for source in ('tfds', 'folder'):
        for step in (100_000, 100_039):  # 100,039 * 128 examples: an offset of 4,992 into the epoch to skip
            r = _run('resume', source, step, root)
            out.append(record(name='input_resume', model=source, batch=BATCH, device='host', start_step=step,
                              first_batch_s=round(r['first_batch_s'], 2), equal=r['equal']))
    scan = _run('scan', root)
    out.append(record(name='input_scan', model='folder', device='host', ms_per_file=round(scan['ms_per_file'], 3),
                      files=scan['files'], pil_files=scan['pil_files']))
    return out


def main(argv: list[str]) -> int:
    cmd, *args = argv
    if cmd == 'build':
        root = Path(args[0])
        build_tfds(build_folder(root), root / 'tfds')
        return 0
    if cmd == 'measure':
        side, pipe, source, threads, root, batches = args
        r = measure_vitjax(pipe, source, int(threads), Path(root), int(batches)) if side == 'vitjax' else \
            measure_timm(pipe, int(threads), Path(root), int(batches), prefetcher=side == 'timm')
    elif cmd == 'resume':
        r = measure_resume(args[0], Path(args[2]), int(args[1]))
    elif cmd == 'scan':
        r = measure_scan(Path(args[0]))
    else:
        raise SystemExit(f'unknown command {cmd!r}')
    print(json.dumps(r))
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
