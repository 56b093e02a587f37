"""DICOM radiographs to the same ``(H, W)`` uint8 stage as PNG decoding, with the grey levels a viewer shows.

``decode_grayscale`` (``pneumo.images.decode``) hands every object that is DICOM (the ``DICM`` marker, or a
``.dcm``/``.dicom`` name) to ``decode_dicom``, so the cache build, streaming, ``explain.py`` inputs and the
overlay callback all read DICOM through this one step. The grey levels follow the DICOM display pipeline:

1. Modality LUT: ``RescaleSlope``/``RescaleIntercept`` (or a Modality LUT Sequence), pydicom's
   ``apply_modality_lut``;
2. VOI: chosen by ``voi`` (``data.dicom_voi``, ``explain.py dicom_voi=``):

   - ``auto``: the file's VOI LUT Sequence, else its Window Center/Width (the first one), else the full range;
   - ``window``: the file's Window Center/Width (a VOI LUT Sequence is ignored); a file without one is a bad
     image;
   - ``full-range``: no VOI: the whole range the stored bits can hold after the Modality LUT;

3. ``MONOCHROME1`` (white = air) inverted, so that bone is bright in every image;
4. the output range of that step scaled to 0-255 and rounded.

Only the tags of the pixel pipeline are parsed (``PIXEL_TAGS``): patient name, IDs, dates, institution and
every other header value are never read, so they cannot reach a log, a message or an output. Multi-frame,
colour, pixel-less files and compressed transfer syntaxes without an installed decoder raise
``BadImageError`` naming the file (and ``pip install "pneumo[dicom]"`` where that is the fix), for the
``data.on_bad_image`` policy.

Example:
    >>> import numpy as np
    >>> pixels = np.array([[0, 64], [128, 255]], np.uint8)
    >>> decode_dicom(dicom_bytes(pixels, photometric="MONOCHROME1"), "x.dcm")  # inverted back
    array([[255, 191],
           [127,   0]], dtype=uint8)
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_decoder
from pydicom.pixels.processing import apply_modality_lut, apply_voi, apply_windowing
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from pneumo.config import choice
from pneumo.images.limits import MAX_PIXELS, BadImageError

#: Choices of ``data.dicom_voi`` (see the module docstring).
VOI_MODES = ("auto", "window", "full-range")
#: What installs the decoders of compressed transfer syntaxes (pylibjpeg and its plugins).
DICOM_EXTRA = 'pip install "pneumo[dicom]"'
#: The only tags parsed: those of the pixel pipeline. No patient, study or institution value is ever read.
PIXEL_TAGS = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "ExtendedOffsetTable",
    "ExtendedOffsetTableLengths",
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
)
#: Transfer syntaxes whose decoders come with the ``dicom`` extra (pylibjpeg-libjpeg, -openjpeg, -rle).
EXTRA_SYNTAXES = frozenset(
    UID(u)
    for u in (
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline (8-bit)
        "1.2.840.10008.1.2.4.51",  # JPEG Extended (12-bit)
        "1.2.840.10008.1.2.4.57",  # JPEG Lossless
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless, SV1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
        "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
        "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
        "1.2.840.10008.1.2.4.203",  # HTJ2K
        "1.2.840.10008.1.2.5",  # RLE Lossless
    )
)


def check_voi(value: str, key: str = "data.dicom_voi") -> str:
    """``value`` if it is one of ``VOI_MODES``, else ``pneumo.config.choice``'s error naming ``key``.

    Example:
        >>> check_voi("window")
        'window'
    """
    return choice(value, key, VOI_MODES)


def _read(data: bytes, name: str, tags: tuple[str, ...]) -> Dataset:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about odd values; the pixel checks below decide
            return pydicom.dcmread(io.BytesIO(data), force=True, specific_tags=list(tags))
    except Exception as err:  # pydicom raises many kinds for damaged files
        raise BadImageError(f"{name}: not a readable DICOM file ({type(err).__name__})") from err


def dicom_shape(data: bytes, name: str) -> tuple[int, int]:
    """``(rows, columns)`` of a DICOM image, from its header only.

    Example:
        >>> dicom_shape(dicom_bytes(np.zeros((3, 5), np.uint8)), "x.dcm")
        (3, 5)
    """
    ds = _read(data, name, ("Rows", "Columns"))
    if "Rows" not in ds or "Columns" not in ds:
        raise BadImageError(f"{name}: DICOM file without Rows/Columns (no image)")
    return int(ds.Rows), int(ds.Columns)


def _check_image(ds: Dataset, name: str) -> None:
    """Refuse what pneumo cannot read as one grayscale radiograph, naming the file and the reason."""
    if "PixelData" not in ds:
        kind = (
            "float pixel data"
            if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds)
            else "no pixel data"
        )
        raise BadImageError(f"{name}: DICOM file with {kind} (7FE0,0010): not an image pneumo can read")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise BadImageError(
            f"{name}: colour DICOM ({photometric or 'no PhotometricInterpretation'}, {samples} sample(s) per "
            "pixel): pneumo reads grayscale radiographs (MONOCHROME1/MONOCHROME2)"
        )
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise BadImageError(
            f"{name}: multi-frame DICOM ({frames} frames): pneumo reads one radiograph per file; "
            "export the frame to explain as a single-frame file"
        )
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * columns > MAX_PIXELS:
        raise BadImageError(f"{name}: {columns}x{rows} pixels exceeds the {MAX_PIXELS} limit")
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)))
    if syntax.is_compressed:
        try:
            available = get_decoder(syntax).is_available
        except NotImplementedError:
            raise BadImageError(
                f"{name}: DICOM transfer syntax {syntax.name} ({syntax}) has no pixel decoder in pydicom: "
                "convert the file to an uncompressed transfer syntax"
            ) from None
        if not available:
            fix = DICOM_EXTRA if syntax in EXTRA_SYNTAXES else "install a decoder for it (pydicom lists them)"
            raise BadImageError(
                f"{name}: DICOM transfer syntax {syntax.name} ({syntax}) needs a decoder that is not installed: {fix}"
            )


def _modality_range(ds: Dataset) -> tuple[float, float]:
    """The range the stored bits can hold after the Modality LUT (the output range of windowing, too)."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    bits = int(ds.BitsStored)
    lo, hi = (
        (0, 2**bits - 1) if int(ds.PixelRepresentation) == 0 else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    )
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None:
        lo, hi = sorted((lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)))
    return float(lo), float(hi)


def _values_of_interest(
    pixels: np.ndarray, ds: Dataset, voi: str, name: str
) -> tuple[np.ndarray, float, float]:
    """Modality LUT then the VOI step of ``voi``; returns the values and the range they span."""
    values = apply_modality_lut(pixels, ds)
    lo, hi = _modality_range(ds)
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    if voi == "auto" and ds.get("VOILUTSequence"):
        if not np.issubdtype(values.dtype, np.integer):
            values = np.rint(values).astype(np.int64)  # LUT inputs are integers
        item = ds.VOILUTSequence[0]
        depth = int(item.LUTDescriptor[2])
        if depth == 8:
            # pydicom 3.0.2 indexes an 8-bit LUT with uint8 indices, which wrap past 256 entries (an 8-bit LUT
            # may have up to 65536): look it up as 16-bit entries, the same values
            item.LUTDescriptor = [*list(item.LUTDescriptor)[:2], 16]
        return apply_voi(values, ds), 0.0, float(2**depth - 1)
    if voi in ("auto", "window") and has_window:
        return apply_windowing(values, ds), lo, hi
    if voi == "window":
        raise BadImageError(
            f"{name}: DICOM file without Window Center/Width, which data.dicom_voi=window requires "
            "(use auto or full-range)"
        )
    return values, lo, hi


def decode_dicom(data: bytes, name: str, voi: str = "auto") -> np.ndarray:
    """Decode a single-frame grayscale DICOM to a ``(H, W)`` uint8 array as a viewer shows it.

    Args:
        data: the file's bytes.
        name: the file's name or URL, for messages (nothing from the header is ever put in a message).
        voi: ``auto``, ``window`` or ``full-range`` (see the module docstring).

    Raises:
        BadImageError: not DICOM, no pixel data, colour, multi-frame, oversized, no decoder installed for
            its transfer syntax, or pixel data that cannot be decoded; the message names the file.
    """
    check_voi(voi)
    ds = _read(data, name, PIXEL_TAGS)
    _check_image(ds, name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = ds.pixel_array
            values, lo, hi = _values_of_interest(pixels, ds, voi, name)
    except BadImageError:
        raise
    except Exception as err:  # decoders raise many kinds; only pixel tags were parsed
        detail = " ".join(str(err).split())[:200]
        raise BadImageError(
            f"{name}: DICOM pixel data cannot be decoded ({type(err).__name__}: {detail})"
        ) from err
    if values.ndim != 2:
        raise BadImageError(f"{name}: DICOM pixel data of shape {values.shape}, expected one grayscale image")
    monochrome1 = str(ds.PhotometricInterpretation).strip() == "MONOCHROME1"
    if (lo, hi) == (0.0, 255.0) and np.issubdtype(values.dtype, np.integer):
        # 8-bit values over 0-255 (an 8-bit file without rescale or window): the mapping is the identity
        pixels8 = np.clip(values, 0, 255).astype(np.uint8)
        return 255 - pixels8 if monochrome1 else pixels8
    scaled = (
        (np.asarray(values, np.float64) - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros(values.shape)
    )
    if monochrome1:
        scaled = 255.0 - scaled
    return np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)


def dicom_bytes(
    pixels: np.ndarray,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    rescale: tuple[float, float] | None = None,
    window: tuple[float, float] | None = None,
    identifiers: Mapping[str, str] | None = None,
    transfer_syntax: str = ExplicitVRLittleEndian,
    uid_seed: str | None = None,
) -> bytes:
    """A single-frame grayscale DICOM file (Secondary Capture) holding ``pixels`` as its stored values.

    What the demo generator (``--format dicom``), the tests and the benchmark write.

    Args:
        pixels: ``(H, W)`` uint8 or uint16 stored values (written as they are: invert them yourself for
            ``MONOCHROME1``).
        photometric: ``MONOCHROME2`` (white = bone) or ``MONOCHROME1`` (white = air).
        bits_stored: significant bits (default: all of the dtype's).
        rescale: ``(slope, intercept)`` of the Modality LUT, or ``None`` for none.
        window: ``(center, width)`` of a VOI window, or ``None`` for none.
        identifiers: header values such as ``{"PatientName": ..., "PatientID": ...}`` (keywords of pydicom).
        transfer_syntax: e.g. ``ExplicitVRLittleEndian``, ``RLELossless``; compressed syntaxes are encoded by
            pydicom (RLE natively, JPEG 2000 with the ``dicom`` extra).
        uid_seed: makes the instance UIDs deterministic (the same seed gives the same UIDs).
    """
    pixels = np.ascontiguousarray(pixels)
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"pixels must be a 2-D uint8 or uint16 array, got {pixels.dtype} {pixels.shape}")
    allocated = pixels.dtype.itemsize * 8
    stored = int(bits_stored or allocated)
    entropy = [uid_seed] if uid_seed is not None else None
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=entropy and [*entropy, "sop"])
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=entropy and [*entropy, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=entropy and [*entropy, "series"])
    ds.Modality = "DX"
    for keyword, value in (identifiers or {}).items():
        setattr(ds, keyword, value)
    ds.Rows, ds.Columns = (int(s) for s in pixels.shape)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = allocated, stored, stored - 1
    ds.PixelRepresentation = 0
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = (f"{float(v):g}" for v in rescale)
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = (f"{float(v):g}" for v in window)
    ds.PixelData = pixels.tobytes()
    if UID(transfer_syntax) != ExplicitVRLittleEndian:
        ds.compress(transfer_syntax, pixels)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def describe(data: bytes, name: str) -> dict:
    """The pixel-pipeline facts of a DICOM file (never a patient, study or institution value).

    Example:
        >>> describe(dicom_bytes(np.zeros((4, 6), np.uint8), window=(40, 400)), "x.dcm")["window"]
        [40.0, 400.0]
    """
    ds = _read(data, name, PIXEL_TAGS)
    syntax = UID(str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)))

    def first(keyword: str) -> float | None:
        value = ds.get(keyword)
        if value is None:
            return None
        return float(value[0] if getattr(ds[keyword], "VM", 1) > 1 else value)

    window = [first("WindowCenter"), first("WindowWidth")] if "WindowCenter" in ds else None
    return {
        "file": name,
        "transfer_syntax": f"{syntax.name} ({syntax})",
        "photometric": str(ds.get("PhotometricInterpretation", "")),
        "samples_per_pixel": int(ds.get("SamplesPerPixel", 1) or 1),
        "frames": int(ds.get("NumberOfFrames", 1) or 1),
        "rows_columns": [int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)],
        "bits_allocated_stored": [int(ds.get("BitsAllocated", 0) or 0), int(ds.get("BitsStored", 0) or 0)],
        "signed": bool(int(ds.get("PixelRepresentation", 0) or 0)),
        "rescale_slope_intercept": [first("RescaleSlope"), first("RescaleIntercept")]
        if "RescaleSlope" in ds
        else None,
        "window": window,
        "voi_lut_sequence": bool(ds.get("VOILUTSequence")),
        "modality_lut_sequence": bool(ds.get("ModalityLUTSequence")),
    }
