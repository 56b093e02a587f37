"""Decode image bytes (PNG, JPEG, ... or DICOM) to an 8-bit grayscale array, converting what can soundly be
converted: the one decode step of every reader (cache build, streaming, ``explain.py``, overlay callback)."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from pneumo.images.limits import DICOM_SUFFIXES, MAX_PIXELS, MIN_SIDE, BadImageError

__all__ = [
    "DICOM_SUFFIXES",
    "MAX_PIXELS",
    "MIN_SIDE",
    "BadImageError",
    "decode_grayscale",
    "image_shape",
    "is_dicom",
    "to_uint8",
]


def decode_grayscale(data: bytes, name: str, dicom_voi: str = "auto") -> np.ndarray:
    """Decode PNG/JPEG (anything Pillow reads) or DICOM bytes to a ``(H, W)`` uint8 array.

    RGB(A) and palette images become grayscale (luminance); 16-bit and 32-bit images are scaled to 8 bits
    over their own range. DICOM (the ``DICM`` marker or a ``.dcm`` name) goes through
    ``pneumo.images.dicom.decode_dicom`` with ``dicom_voi`` (``auto``, ``window``, ``full-range``). Empty,
    truncated, non-image and oversized data, and images with a side under ``MIN_SIDE`` pixels, raise
    ``BadImageError`` naming the object.

    Example:
        >>> decode_grayscale(open("00000001_000.png", "rb").read(), "00000001_000.png").shape  # doctest: +SKIP
        (1024, 1024)
    """
    if not data:
        raise BadImageError(f"{name}: empty object (0 bytes)")
    if is_dicom(data, name):
        from pneumo.images.dicom import decode_dicom  # pydicom is imported only when a DICOM comes along

        return _large_enough(decode_dicom(data, name, dicom_voi), name)
    return _large_enough(_decode_pillow(data, name), name)


def _large_enough(pixels: np.ndarray, name: str) -> np.ndarray:
    height, width = pixels.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise BadImageError(
            f"{name}: {width}x{height} pixels, under the minimum side of {MIN_SIDE} px (NIH's radiographs are "
            "1024 px): a thumbnail or a broken export; replace it with the full image or remove it"
        )
    return pixels


def _decode_pillow(data: bytes, name: str) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise BadImageError(
                        f"{name}: {img.width}x{img.height} pixels exceeds the {MAX_PIXELS} limit"
                    )
                img.load()
                return to_uint8(img)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(f"{name}: refused as a decompression bomb ({err})") from err
    except (OSError, SyntaxError, ValueError) as err:  # PIL raises these for truncated / unknown data
        raise BadImageError(f"{name}: not a readable image ({err})") from err


def image_shape(data: bytes, name: str) -> tuple[int, int]:
    """``(height, width)`` of an image from its header only (PNG/JPEG or DICOM), without decoding pixels.

    Example:
        >>> import io
        >>> buf = io.BytesIO(); Image.new("L", (5, 3)).save(buf, format="PNG")
        >>> image_shape(buf.getvalue(), "a.png")
        (3, 5)
    """
    if is_dicom(data, name):
        from pneumo.images.dicom import dicom_shape

        return dicom_shape(data, name)
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.height, img.width
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"{name}: not a readable image ({err})") from err


def is_dicom(data: bytes, name: str = "") -> bool:
    """Whether ``data`` is DICOM: the ``DICM`` marker after the 128-byte preamble, or a DICOM file name
    (files written without the preamble).

    Example:
        >>> is_dicom(b"\\x89PNG\\r\\n", "a.png"), is_dicom(bytes(128) + b"DICM", "IM0001")
        (False, True)
    """
    return data[128:132] == b"DICM" or str(name).lower().endswith(DICOM_SUFFIXES)


def to_uint8(img: Image.Image) -> np.ndarray:
    """A Pillow image as ``(H, W)`` uint8 grey: colour to luminance, 16/32-bit scaled over its own range.

    Example:
        >>> to_uint8(Image.new("RGB", (2, 1), (255, 255, 255))).tolist()
        [[255, 255]]
    """
    if img.mode == "L":
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return np.round(scaled).astype(np.uint8)
    return np.asarray(img.convert("L"), dtype=np.uint8)
