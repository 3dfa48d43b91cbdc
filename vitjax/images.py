"""Image files: a checked index of a folder with one subfolder per class (each file probed from its header for how
it decodes), and a PIL decoder that yields RGB for any image PIL opens (grayscale, RGBA, palette, CMYK, 16-bit,
EXIF-rotated), for the files TensorFlow's decoders would get wrong."""
from __future__ import annotations

import functools
import os
import sys
from typing import NamedTuple

import numpy as np

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')
SPLIT_DIRS = ('train', 'test', 'val', 'validation')  # ROOT/<split>/<class>/<image>, as ImageNet-style folders
HELD_OUT = 0.1  # a folder of class folders only: this share of each class is its 'test' split
MAX_SIDE = 4096  # larger images are decoded at reduced size (JPEG draft mode) and shrunk to this
# timm's interpolation names -> PIL's resampling filters (timm.data.transforms.str_to_pil_interp)
RESAMPLE = {'bicubic': 3, 'bilinear': 2, 'nearest': 0, 'lanczos': 1, 'box': 4, 'hamming': 5}


class FolderIndex(NamedTuple):
    files: list[str]
    labels: list[int]
    classes: tuple[str, ...]
    skipped: list[tuple[str, str]]  # (file, reason) for files that could not be decoded
    empty_classes: tuple[str, ...]
    probes: dict[str, 'Probe']  # file -> how it decodes and its pixel count


def load_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 for any image PIL opens; ValueError naming the file for anything it cannot decode
    (unreadable, truncated, not an image, or over PIL's decompression-bomb limit of ~179 Mpx)."""
    try:
        return _load_rgb(path)
    except OSError as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f'{path}: cannot decode the image ({type(e).__name__}: {e})') from None
    except Exception as e:  # PIL raises many types: DecompressionBombError, SyntaxError, ValueError, ...
        raise ValueError(f'{path}: cannot decode the image ({type(e).__name__}: {e})') from None


def _load_rgb(path: str) -> np.ndarray:
    from PIL import Image, ImageOps
    with Image.open(path) as im:
        if im.format == 'JPEG' and max(im.size) > MAX_SIDE:
            im.draft('RGB', (MAX_SIDE, MAX_SIDE))  # decode at 1/2, 1/4 or 1/8 scale: large files stay cheap
        im.load()
        im = ImageOps.exif_transpose(im)
        if im.mode in ('I;16', 'I;16B', 'I;16L', 'I'):  # 16/32-bit grayscale: scale to 8 bits, not clip
            arr = np.asarray(im, np.float64)
            peak = 65535.0 if im.mode.startswith('I;16') or arr.max() > 255 else 255.0
            im = Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).round().astype(np.uint8))
        if im.mode in ('RGBA', 'LA', 'PA') or (im.mode == 'P' and 'transparency' in im.info):
            im = im.convert('RGBA')  # composite on white: transparent pixels are not black
            canvas = Image.new('RGBA', im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(canvas, im)
        im = im.convert('RGB')
        if max(im.size) > MAX_SIDE:
            im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.BICUBIC)
        return np.asarray(im, np.uint8)


class Probe(NamedTuple):
    pil: bool  # True: decode with `load_rgb` (PIL); False: TensorFlow decodes the file bytes
    pixels: int  # height * width as decoded (for the cache budget)


def probe(path: str) -> Probe:
    """How to decode a file, from its header and trailer only (no pixels): TensorFlow for 8-bit RGB or
    grayscale JPEG / PNG with no EXIF rotation, PIL for everything else (CMYK, 16-bit, alpha, palette
    transparency, EXIF-rotated, over MAX_SIDE, GIF / BMP / WebP / TIFF). Raises for a file that cannot be
    decoded: not an image, over PIL's decompression-bomb limit, a JPEG without its end marker (truncated), a
    PNG with a bad chunk CRC or no IEND. Formats other than JPEG and PNG (rare in datasets) are decoded once."""
    from PIL import Image
    with Image.open(path) as im:
        fmt, mode, (w, h) = im.format, im.mode, im.size
        # EXIF Orientation. JPEG: from its APP1 header. Elsewhere only an eXIf chunk before the pixels (PIL's
        # PNG getexif() would decode the image to look for one after them).
        exif = im.getexif() if fmt == 'JPEG' else Image.Exif()
        if fmt != 'JPEG' and im.info.get('exif'):
            exif.load(im.info['exif'])
        rotated = exif.get(0x0112, 1) not in (1, None)
        transparent = 'transparency' in im.info
    if fmt == 'JPEG':
        _check_jpeg_end(path)
    elif fmt == 'PNG':
        _check_png_chunks(path)
    else:
        _load_rgb(path)
    huge = max(w, h) > MAX_SIDE
    if huge:
        w, h = (round(w * MAX_SIDE / max(w, h)), round(h * MAX_SIDE / max(w, h)))
    plain = fmt in ('JPEG', 'PNG') and mode in ('RGB', 'L') and not (rotated or transparent or huge)
    return Probe(pil=not plain, pixels=w * h)


def _check_jpeg_end(path: str):
    with open(path, 'rb') as f:
        f.seek(max(os.fstat(f.fileno()).st_size - 1024, 0))
        if b'\xff\xd9' not in f.read():
            raise ValueError('JPEG end marker missing (truncated file)')


def _check_png_chunks(path: str):
    """Every chunk's CRC, up to IEND: a flipped byte anywhere shows (zlib.crc32 reads ~1 GB/s, no inflate)."""
    import struct
    import zlib
    with open(path, 'rb') as f:
        data = f.read()
    pos = 8
    while pos + 12 <= len(data):
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ValueError(f'PNG chunk {kind!r} runs past the end of the file (truncated)')
        if zlib.crc32(data[pos + 4:end]) != struct.unpack('>I', data[end:end + 4])[0]:
            raise ValueError(f'PNG chunk {kind!r} fails its CRC check (corrupt file)')
        if kind == b'IEND':
            return
        pos = end + 4
    raise ValueError('PNG has no IEND chunk (truncated file)')


@functools.lru_cache(maxsize=8)
def scan(root: str) -> FolderIndex:
    """Classes are the sorted subfolder names; every file is probed here (header and trailer, see `probe`) so
    that a corrupt one is skipped and reported up front instead of failing mid-training, without decoding a
    1.28M-file folder before step 1. The order is a fixed shuffle, so that slices like train[:80%] /
    train[80%:90%] are random but reproducible."""
    classes = tuple(sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))))
    if not classes:
        raise ValueError(f'{root} has no class subfolders (expected ROOT/<class>/<image>)')
    files, labels, skipped, counts, probes = [], [], [], [], {}
    for label, name in enumerate(classes):
        count = 0
        for dirpath, _, names in sorted(os.walk(os.path.join(root, name))):
            for f in sorted(names):
                if not f.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                path = os.path.join(dirpath, f)
                try:
                    probes[path] = probe(path)
                except Exception as e:  # PIL raises many types: UnidentifiedImageError, OSError, SyntaxError
                    skipped.append((path, f'{type(e).__name__}: {e}'))
                    continue
                files.append(path)
                labels.append(label)
                count += 1
        counts.append(count)
    empty = tuple(c for c, n in zip(classes, counts) if n == 0)
    if not files:
        raise ValueError(f'{root} holds no readable images ({", ".join(IMAGE_EXTENSIONS)}); '
                         f'{len(skipped)} could not be decoded')
    if skipped:
        shown = '; '.join(f'{p} ({r})' for p, r in skipped[:5])
        print(f'warning: {root}: skipped {len(skipped)} unreadable image file(s): {shown}'
              + (' ...' if len(skipped) > 5 else ''), file=sys.stderr)
    if empty:
        print(f'warning: {root}: class folder(s) with no readable images: {", ".join(empty)} (they keep their '
              'label index; the model still has an output for them)', file=sys.stderr)
    order = np.random.default_rng(0).permutation(len(files))
    return FolderIndex([files[i] for i in order], [labels[i] for i in order], classes, skipped, empty, probes)


class FolderSplits(NamedTuple):
    splits: dict[str, tuple[list[str], list[int]]]  # split name -> (files, labels)
    classes: tuple[str, ...]
    layout: str  # 'split folders' or 'class folders'
    probes: dict[str, Probe]  # file -> how it decodes and its pixel count


@functools.lru_cache(maxsize=8)
def folder_splits(root: str) -> FolderSplits:
    """The splits of an image folder. ROOT/<split>/<class>/... (split one of train, test, val, validation):
    one split per folder, the same classes in each. ROOT/<class>/... only: 'train' and 'test' hold
    1 - HELD_OUT and HELD_OUT of every class (at least one image of each class with two or more goes to
    'test'), drawn by the fixed shuffle of `scan`, so the same folder always splits the same way; 'all' is
    the whole folder."""
    subdirs = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if subdirs and set(subdirs) <= set(SPLIT_DIRS):
        indexes = {d: scan(os.path.join(root, d)) for d in subdirs}
        classes = {d: ix.classes for d, ix in indexes.items()}
        if len(set(classes.values())) > 1:
            raise ValueError(f'{root}: the split folders hold different classes: ' + '; '.join(
                f'{d}: {", ".join(c)}' for d, c in classes.items()))
        splits = {d: (ix.files, ix.labels) for d, ix in indexes.items()}
        probes = {f: p for ix in indexes.values() for f, p in ix.probes.items()}
        return FolderSplits(splits, next(iter(classes.values())), 'split folders', probes)
    index = scan(root)
    per_class: dict[int, int] = {}
    for label in index.labels:
        per_class[label] = per_class.get(label, 0) + 1
    held = {k: 0 if n < 2 else max(1, round(n * HELD_OUT)) for k, n in per_class.items()}
    seen: dict[int, int] = {}
    train, test = ([], []), ([], [])
    for f, label in zip(index.files, index.labels):
        seen[label] = seen.get(label, 0) + 1
        part = test if seen[label] <= held[label] else train
        part[0].append(f)
        part[1].append(label)
    splits = {'train': train, 'test': test, 'all': (index.files, index.labels)}
    return FolderSplits(splits, index.classes, 'class folders', index.probes)
