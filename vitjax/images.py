"""Image files: a checked index of a folder with one subfolder per class, and a decoder that yields RGB for any image
PIL opens (grayscale, RGBA, palette, CMYK, 16-bit, EXIF-rotated), skipping files that cannot be decoded."""
from __future__ import annotations

import functools
import os
import sys
from typing import NamedTuple

import numpy as np

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff')
MAX_SIDE = 4096  # larger images are decoded at reduced size (JPEG draft mode) and shrunk to this


class FolderIndex(NamedTuple):
    files: list[str]
    labels: list[int]
    classes: tuple[str, ...]
    skipped: list[tuple[str, str]]  # (file, reason) for files that could not be decoded
    empty_classes: tuple[str, ...]


def load_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 for any image PIL opens; raises on unreadable or truncated files."""
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


def _check(path: str):
    try:
        load_rgb(path)
        return None
    except Exception as e:  # PIL raises many types: UnidentifiedImageError, OSError (truncated), SyntaxError
        return f'{type(e).__name__}: {e}'


@functools.lru_cache(maxsize=8)
def scan(root: str) -> FolderIndex:
    """Classes are the sorted subfolder names; every file is decoded once here so that a corrupt one is
    skipped and reported up front instead of failing mid-training. The order is a fixed shuffle, so that
    slices like train[:80%] / train[80%:90%] are random but reproducible."""
    classes = tuple(sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))))
    if not classes:
        raise ValueError(f'{root} has no class subfolders (expected ROOT/<class>/<image>)')
    files, labels, skipped, counts = [], [], [], []
    for label, name in enumerate(classes):
        count = 0
        for dirpath, _, names in sorted(os.walk(os.path.join(root, name))):
            for f in sorted(names):
                if not f.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                path = os.path.join(dirpath, f)
                reason = _check(path)
                if reason:
                    skipped.append((path, reason))
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
    return FolderIndex([files[i] for i in order], [labels[i] for i in order], classes, skipped, empty)
