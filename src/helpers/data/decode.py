"""Decoding one input file into the prepared arrays: any image mode -> 8-bit RGB at the prepared
size, and every way a file can be unusable turned into a reason for skipped.csv."""
from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

MAX_IMAGE_PIXELS = 50_000_000     # ~7000x7000; both datasets are far below this


class _Skip(Exception):
    """An input file that cannot be used; the message is the reason recorded in skipped.csv."""


def _to_rgb8(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; alpha composited on black.

    16-bit data are mapped by the container's full range (65535 -> 255), not clipped as PIL's
    convert("L") would; 32-bit integers holding 8- or 16-bit values likewise; other integer and
    float images are stretched from their min to their max.
    """
    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        finite = a[np.isfinite(a)]
        lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        if mode == "I" and lo >= 0 and hi <= 255:
            pass                                             # 8-bit values in a 32-bit container
        elif mode != "F" and lo >= 0 and hi <= 65535:
            a = a / 257.0                                    # 16-bit container -> 8 bit
        else:
            a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        a = np.nan_to_num(a, nan=0.0)
        return Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if "A" in mode or "a" in mode or "transparency" in im.info:
        rgba = im.convert("RGBA")
        black = Image.new("RGBA", im.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return im.convert("RGB")


def _open_checked(data: bytes) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise _Skip(f"decompression bomb: {e}") from None
        except Image.UnidentifiedImageError:
            raise _Skip("not an image: content is not a recognised image format") from None
        w, h = im.size
        if w * h > MAX_IMAGE_PIXELS:
            raise _Skip(f"decompression bomb: header claims {w}x{h} = {w * h} pixels "
                        f"(limit {MAX_IMAGE_PIXELS})")
        if w == 0 or h == 0:
            raise _Skip(f"empty image ({w}x{h})")
        try:
            im.load()
        except OSError as e:
            kind = "truncated image" if "truncated" in str(e).lower() else "corrupt image"
            raise _Skip(f"{kind}: {e}") from None
        except (ValueError, SyntaxError, EOFError) as e:
            raise _Skip(f"corrupt image: {e}") from None
    return im


def _crop_border(im: Image.Image, border: float) -> Image.Image:
    """The image less ``border`` of its width and height on every side."""
    w, h = im.size
    dx, dy = round(border * w), round(border * h)
    return im.crop((dx, dy, w - dx, h - dy)) if border else im


def reduce_shortcuts(im: Image.Image, border: float, equalize: bool) -> Image.Image:
    """An RGB image with its borders cropped away (where markers, text and collimation edges sit)
    and its grey levels equalised to one common, flat histogram (exposure and the collection's
    processing leave less of a trace); grey, replicated to RGB."""
    from PIL import ImageOps

    grey = _crop_border(im, border).convert("L")
    return (ImageOps.equalize(grey) if equalize else grey).convert("RGB")


def decode_one(job: tuple) -> tuple:
    """Decode one image (and its mask) -> (reason | None, sha256, image (3,S,S), mask (S,S) | None).

    ``mask_kind`` "lesion": any coverage counts; else (organ outlines) the nearest pixel.
    ``reduce``: None, or (border, equalize) of :func:`reduce_shortcuts` (the mask is cropped alike).
    """
    path, size, mask_path, mask_kind, *rest = job
    reduce = rest[0] if rest else None
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return f"unreadable file: {e.strerror or e}", "", None, None
    sha = hashlib.sha256(data).hexdigest()
    if not data:
        return "empty file (0 bytes)", sha, None, None
    try:
        im = _to_rgb8(_open_checked(data))
    except _Skip as e:
        return str(e), sha, None, None
    if reduce:
        im = reduce_shortcuts(im, *reduce)
    image = np.asarray(im.resize((size, size), Image.BILINEAR)).transpose(2, 0, 1).copy()
    mask = None
    if mask_path:
        try:
            m = _crop_border(_open_checked(Path(mask_path).read_bytes()).convert("L"), reduce[0] if reduce else 0)
            if mask_kind == "lesion":   # any coverage counts, so tiny stones survive downscaling
                mask = np.asarray(m.resize((size, size), Image.BOX)) > 0
            else:
                mask = np.asarray(m.resize((size, size), Image.NEAREST)) > 127
            mask = mask.astype(np.uint8)
        except (OSError, _Skip):
            mask = None
    return None, sha, image, mask
