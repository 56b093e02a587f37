"""Decode image bytes to an 8-bit grayscale array, converting what can soundly be converted."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from pneumo.errors import PneumoError

#: Refuse images with more pixels than this (NIH's are 1024 x 1024 to ~3000 x 3000): a decompression bomb.
MAX_PIXELS = 64_000_000


class BadImageError(PneumoError, ValueError):
    """Bytes that are not a usable image; the message names the object."""


def decode_grayscale(data: bytes, name: str) -> np.ndarray:
    """Decode PNG/JPEG bytes to a ``(H, W)`` uint8 array.

    RGB(A) and palette images become grayscale (luminance); 16-bit and 32-bit images are scaled to 8 bits
    over their own range. Empty, truncated, non-image and oversized data raise ``BadImageError``.

    Example:
        >>> decode_grayscale(open("00000001_000.png", "rb").read(), "00000001_000.png").shape  # doctest: +SKIP
        (1024, 1024)
    """
    if not data:
        raise BadImageError(f"{name}: empty object (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise BadImageError(f"{name}: {img.width}x{img.height} pixels exceeds the {MAX_PIXELS} limit")
                img.load()
                return _to_uint8(img)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(f"{name}: refused as a decompression bomb ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:  # PIL raises these for truncated / unknown data
        raise BadImageError(f"{name}: not a readable image ({err})") from err


def _to_uint8(img: Image.Image) -> np.ndarray:
    if img.mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return np.round(scaled).astype(np.uint8)
    return np.asarray(img.convert("L"), dtype=np.uint8)
