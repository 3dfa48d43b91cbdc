"""Image files: a checked index of a folder with one subfolder per class (each file probed from its structure for how
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
    """How to decode a file, from its structure (a PNG's zlib stream is inflated; no pixels are decoded):
    TensorFlow for 8-bit RGB or grayscale JPEG / PNG with no EXIF rotation, PIL for everything else (CMYK, 16-bit,
    alpha, palette transparency, EXIF-rotated, over MAX_SIDE, GIF / BMP / WebP / TIFF). Raises for a file that
    cannot be decoded: not an image, over PIL's decompression-bomb limit, a JPEG whose markers or tables libjpeg
    rejects (`_check_jpeg`), a PNG that libpng rejects (`_check_png`). Formats other than JPEG and PNG (rare in
    datasets) are decoded once."""
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
        _check_jpeg(path)
    elif fmt == 'PNG':
        _check_png(path)
    else:
        _load_rgb(path)
    huge = max(w, h) > MAX_SIDE
    if huge:
        w, h = (round(w * MAX_SIDE / max(w, h)), round(h * MAX_SIDE / max(w, h)))
    plain = fmt in ('JPEG', 'PNG') and mode in ('RGB', 'L') and not (rotated or transparent or huge)
    return Probe(pil=not plain, pixels=w * h)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC9, 0xCA}  # the frame types libjpeg-turbo decodes


def _check_jpeg(path: str):
    """The checks libjpeg makes on a JPEG's markers and tables, without decoding pixels: a decoder fails (with a
    message naming no file) on an unknown or second SOI / SOF marker, a table or header that does not parse, a
    scan using a table never defined, a scan before the frame or after a complete one, or no EOI. Entropy-coded
    data is only searched for markers: noise in it is a warning to libjpeg, but the markers noise makes are not
    (the scan ends at one and libjpeg reads it as a segment)."""
    with open(path, 'rb') as f:
        data = f.read()
    # Every marker but a stuffed 0xFF00, a restart marker or fill: inside entropy-coded data it ends the scan
    b = np.frombuffer(data, np.uint8)
    after = b[1:][b[:-1] == 0xFF]
    markers = np.flatnonzero(b[:-1] == 0xFF)[(after != 0) & (after != 0xFF) & ((after < 0xD0) | (after > 0xD7))]
    pos, frame, quant, huffman, scans, complete = 2, None, set(), {}, 0, False  # huffman: table -> usable
    while True:
        k = np.searchsorted(markers, pos)
        if k == len(markers):
            raise ValueError('JPEG end marker missing (truncated file)')
        start = int(markers[k])
        kind, at = data[start + 1], start + 2
        where = f'JPEG marker 0x{kind:02X} at byte {start}'
        if kind == 0xD9:
            break
        if kind == 0x01:  # TEM: no length
            pos = at
            continue
        if at + 2 > len(data):
            raise ValueError('JPEG end marker missing (truncated file)')
        length = int.from_bytes(data[at:at + 2], 'big')
        body, pos = data[at + 2:at + length], at + length
        if length < 2 or len(body) < length - 2:
            raise ValueError(f'{where} has a bad length (corrupt file)')
        if kind == 0xD8 or (0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xCC) and frame is not None):
            raise ValueError(f'{where}: a second start of image or frame (corrupt file)')
        if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xCC):
            if kind not in _SOF:
                raise ValueError(f'{where}: a JPEG process libjpeg does not decode')
            n = body[5] if len(body) > 5 else 0
            ids, sampling = body[6:6 + 3 * n:3], body[7:7 + 3 * n:3]
            if (len(body) != 6 + 3 * n or not 1 <= n <= 4 or body[0] != 8 or len(set(ids)) < n
                    or not 0 < int.from_bytes(body[1:3], 'big') <= 65500
                    or not 0 < int.from_bytes(body[3:5], 'big') <= 65500
                    or any(not (1 <= f >> 4 <= 4 and 1 <= f & 15 <= 4) for f in sampling)):
                raise ValueError(f'{where}: bad frame header (corrupt file)')
            # component id -> (quantization table, sampling factors h * v)
            frame = {c: (t, (f >> 4) * (f & 15)) for c, f, t in zip(ids, sampling, body[8:8 + 3 * n:3])}
            progressive, arithmetic = kind in (0xC2, 0xCA), kind in (0xC9, 0xCA)
            if not progressive:  # libjpeg-turbo's default tables 0 and 1 (Motion JPEG frames carry none)
                huffman = {0x00: True, 0x01: True, 0x10: True, 0x11: True, **huffman}
        elif kind == 0xC4:
            i = 0
            while i < len(body):
                counts = body[i + 1:i + 17]
                symbols = body[i + 17:i + 17 + sum(counts)]
                if body[i] & 0xEC or len(counts) < 16 or len(symbols) < sum(counts) or sum(counts) > 256:
                    raise ValueError(f'{where}: bogus Huffman table (corrupt file)')
                # its codes are checked (by libjpeg too) only where a scan uses it
                huffman[body[i]] = _huffman_ok(counts) and (body[i] & 0x10 or max(symbols, default=0) <= 15)
                i += 17 + len(symbols)
        elif kind == 0xDB:
            i = 0
            while i < len(body):
                size = 129 if body[i] >> 4 else 65
                if body[i] >> 4 > 1 or body[i] & 0x0F > 3 or len(body) < i + size:
                    raise ValueError(f'{where}: bogus quantization table (corrupt file)')
                quant.add(body[i] & 0x0F)
                i += size
        elif kind == 0xDA:
            n = body[0] if body else 0
            if frame is None:
                raise ValueError(f'{where}: a scan before the frame header (corrupt file)')
            if complete:
                raise ValueError(f'{where}: a second scan after one holding every component (corrupt file)')
            ids, tables = body[1:1 + 2 * n:2], body[2:2 + 2 * n:2]
            if (not 1 <= n <= 4 or len(body) != 4 + 2 * n or len(set(ids)) < n or any(c not in frame for c in ids)
                    or n > 1 and sum(frame[c][1] for c in ids) > 10):
                raise ValueError(f'{where}: bad scan header (corrupt file)')
            if not {frame[c][0] for c in ids} <= quant:
                raise ValueError(f'{where}: a quantization table it uses is not defined (corrupt file)')
            ss, se, ah, al = body[-3], body[-2], body[-1] >> 4, body[-1] & 15
            bad_band = se != 0 if ss == 0 else ss > se or se > 63 or n != 1  # DC alone, or one component's AC
            if progressive and (bad_band or ah and al != ah - 1 or al > 13):
                raise ValueError(f'{where}: bad progression parameters (corrupt file)')
            dc, ac = {t >> 4 for t in tables}, {0x10 | t & 15 for t in tables}  # as DHT numbers its tables
            # a sequential scan codes DC and AC, a progressive one AC or DC (a DC refinement uses no table)
            need = set() if arithmetic else dc | ac if not progressive else ac if ss else set() if ah else dc
            if not all(huffman.get(t) for t in need):
                raise ValueError(f'{where}: a Huffman table it uses is undefined or bogus (corrupt file)')
            complete = complete or not scans and not progressive and n == len(frame)  # then libjpeg wants EOI
            scans += 1
        elif kind == 0xCC:
            if len(body) % 2 or any(t >= 32 or (v & 15 > v >> 4 if t < 16 else not 1 <= v <= 63)
                                    for t, v in zip(body[::2], body[1::2])):
                raise ValueError(f'{where}: bogus arithmetic-coding table (corrupt file)')
        elif kind == 0xDD:
            if length != 4:
                raise ValueError(f'{where}: bad restart interval (corrupt file)')
        elif not (0xE0 <= kind <= 0xEF or kind in (0xFE, 0xDC)):
            raise ValueError(f'{where}: unknown marker (corrupt file)')
    if not scans:
        raise ValueError('JPEG has no image data (no scan)')


def _huffman_ok(counts: bytes) -> bool:
    """libjpeg's check of a Huffman table's code lengths: the codes fit (none is all ones)."""
    code = 0
    for bits, n in enumerate(counts, 1):
        code += n
        if code >= 1 << bits:
            return False
        code <<= 1
    return True


_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_CHUNKS = (b'IHDR', b'PLTE', b'IDAT', b'IEND')  # the critical chunks libpng knows


def _check_png(path: str):
    """Every chunk's CRC up to IEND (a flipped byte anywhere shows), no unknown critical chunk, one run of
    IDAT chunks, and its zlib stream inflated (streamed, not kept): whole, with a filter type on every row and
    the rows the header promises. libpng fails on any of these with a message naming no file."""
    import struct
    import zlib
    with open(path, 'rb') as f:
        data = f.read()
    pos, idat, header, runs, previous, palette = 8, [], None, 0, None, False
    while pos + 12 <= len(data):
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ValueError(f'PNG chunk {kind!r} runs past the end of the file (truncated)')
        if zlib.crc32(data[pos + 4:end]) != struct.unpack('>I', data[end:end + 4])[0]:
            raise ValueError(f'PNG chunk {kind!r} fails its CRC check (corrupt file)')
        if kind == b'IEND':
            break
        if not kind[0] & 0x20 and kind not in _PNG_CHUNKS:
            raise ValueError(f'PNG has an unknown critical chunk {kind!r} (corrupt file)')
        if kind == b'IHDR':
            header = struct.unpack('>IIBBBBB', data[pos + 8:end]) if length == 13 else None
        elif kind == b'PLTE':
            palette = True
        elif kind == b'IDAT':
            runs += previous != b'IDAT'
            idat.append(data[pos + 8:end])
        previous, pos = kind, end + 4
    else:
        raise ValueError('PNG has no IEND chunk (truncated file)')
    if header is None:
        raise ValueError('PNG has a bad IHDR chunk (corrupt file)')
    if not idat or runs > 1:
        raise ValueError('PNG has no image data' if not idat else 'PNG image data is not one run of IDAT chunks')
    width, height, depth, color, _, _, interlace = header
    if color == 3 and not palette:
        raise ValueError('PNG palette image has no PLTE chunk (corrupt file)')
    bits = depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color, 0)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    # where each row's filter-type byte lies in the inflated stream
    starts, total = [], 0
    for x0, y0, dx, dy in passes:
        rows, row_bytes = -(-(height - y0) // dy), (-(-(width - x0) // dx) * bits + 7) // 8 + 1
        if width > x0 and height > y0:
            starts.append(total + np.arange(rows, dtype=np.int64) * row_bytes)
            total += rows * row_bytes
    starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    inflate, stream, done = zlib.decompressobj(), b''.join(idat), 0
    try:
        while not inflate.eof:  # to the stream's end, which libpng reads too
            out = inflate.decompress(stream, 1 << 20)  # in pieces: a small file can inflate to gigabytes
            stream = inflate.unconsumed_tail
            if not out:
                break
            at = starts[(starts >= done) & (starts < done + len(out))] - done
            if (np.frombuffer(out, np.uint8)[at] > 4).any():
                raise ValueError('PNG image data has a bad row filter type (corrupt file)')
            done += len(out)
            if done > total + (64 << 20):
                raise ValueError('PNG image data inflates far past the image (corrupt file)')
    except zlib.error as e:
        raise ValueError(f'PNG image data is not a valid zlib stream ({e}) (corrupt file)') from None
    if done < total or not inflate.eof:
        raise ValueError(f'PNG image data ends early: {min(done, total)} of {total} bytes, or its zlib stream '
                         'does (truncated or corrupt file)')


@functools.lru_cache(maxsize=8)
def scan(root: str) -> FolderIndex:
    """Classes are the sorted subfolder names; every file is probed here (its structure, see `probe`) so
    that a corrupt one is skipped and reported up front instead of failing mid-training, without decoding a
    1.28M-file folder before step 1. The order is a fixed shuffle, so that slices like train[:80%] /
    train[80%:90%] are random but reproducible."""
    # hidden folders (.ipynb_checkpoints, .git) are not classes: each would add an empty class to the head
    classes = tuple(sorted(d for d in os.listdir(root) if not d.startswith('.') and os.path.isdir(os.path.join(root, d))))
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
    subdirs = sorted(d for d in os.listdir(root) if not d.startswith('.') and os.path.isdir(os.path.join(root, d)))
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
