"""What every image reader refuses: oversized images and bytes that are not an image.

Example:
    >>> MAX_PIXELS >= 3000 * 3000
    True
"""

from __future__ import annotations

from pneumo.errors import PneumoError

#: Refuse images with more pixels than this (NIH's are 1024 x 1024 to ~3000 x 3000): a decompression bomb.
MAX_PIXELS = 64_000_000
#: Refuse images with a side shorter than this: NIH's radiographs are 1024 px (and other sources' far
#: larger); a smaller one is a thumbnail or a broken export, which upscaling would turn into a few blurred
#: pixels that the model would still score (a 1 x 1 "image" was used before this limit).
MIN_SIDE = 8
#: File name endings of DICOM files (files with other names are recognised by their ``DICM`` marker).
DICOM_SUFFIXES = (".dcm", ".dicom")


class BadImageError(PneumoError, ValueError):
    """Bytes that are not a usable image; the message names the object (and the fix, where there is one)."""
