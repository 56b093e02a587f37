"""What ``explain.py`` explains: one image, a folder, a text file of paths/URLs, or a split of the data set.

Every input becomes an ``ImageRef`` (display name, full location, true label and ground-truth boxes where
known); ``load_image`` reads, decodes and preprocesses one exactly like training does
(``decode_grayscale`` -> ``ResizeToUint8`` -> ``build_tensor_transforms(image_size, None)``). PNG, JPEG and
DICOM may be mixed: a folder gives its files ending in ``IMAGE_SUFFIXES`` (``.dcm`` included); a list may
name DICOM files without an ending (they are recognised by their ``DICM`` marker).

Example:
    >>> refs = resolve_inputs("data/nih_demo/images")  # doctest: +SKIP
    >>> loaded = load_image(refs[0], image_size=64)  # doctest: +SKIP
    >>> tuple(loaded.tensor.shape)  # doctest: +SKIP
    (1, 64, 64)
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import fsspec
import numpy as np
import torch
from PIL import Image

from pneumo.errors import PneumoError
from pneumo.images.decode import DICOM_SUFFIXES, decode_grayscale
from pneumo.images.preprocess import ResizeToUint8, build_tensor_transforms
from pneumo.io.store import absolute_location, is_url, translate_error

#: File name endings taken from a folder (other files there are skipped and reported).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", *DICOM_SUFFIXES)
#: File name endings read as a list of image paths/URLs, one per line.
LIST_SUFFIXES = (".txt", ".lst", ".list")


class InputError(PneumoError, ValueError):
    """Inputs that cannot be resolved; the message names them and what to do."""


@dataclass
class ImageRef:
    """One image to explain.

    Attributes:
        name: file name (``00000001_000.png``), used to name the outputs and to look up labels and boxes.
        location: full path or URL it is read from.
        label: true pneumonia label (0/1) or ``None`` when unknown.
        boxes: ``(k, 4)`` ground-truth ``[x, y, w, h]`` boxes in pixels of the source image (may be empty).
    """

    name: str
    location: str
    label: int | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))


@dataclass
class LoadedImage:
    """A preprocessed image: ``tensor`` ``(1, S, S)`` float32 in [0, 1], the source ``(H, W)``, and ``display``:
    the source pixels (uint8), shrunk to at most ``Preprocessor.display_size`` wide, for overlays."""

    ref: ImageRef
    tensor: torch.Tensor
    source_shape: tuple[int, int]
    display: np.ndarray | None = None


#: fsspec options: one mapping for every URL, or a function giving the options of a URL (``gs://`` settings
#: such as the requester-pays project apply to ``gs://`` URLs only).
StorageOptions = Mapping | Callable[[str], Mapping] | None


def options_for(location: str, storage_options: StorageOptions) -> dict:
    """The fsspec options of ``location``."""
    if callable(storage_options):
        return dict(storage_options(location) or {})
    return dict(storage_options or {})


def _fs(location: str, storage_options: StorageOptions):
    return fsspec.core.url_to_fs(location, **options_for(location, storage_options))


def _full(fs, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def resolve_inputs(inputs: str, storage_options: StorageOptions = None) -> tuple[list[ImageRef], list[str]]:
    """Expand ``inputs`` (an image, a folder, or a ``.txt`` list of paths/URLs; local or any fsspec URL).

    Relative entries of a list resolve against the list's folder. Returns the images and the names of
    files skipped from a folder because they are not images by their ending.

    Raises:
        InputError: the location does not exist, or names no image.
    """
    location = absolute_location(str(inputs))
    try:
        refs, skipped = _resolve(location, storage_options, inputs)
    except (InputError, PneumoError):
        raise
    except Exception as err:  # noqa: BLE001 - access errors (401/403, Requester Pays) name the setting to fix
        raise translate_error(location, err) from err
    if not refs:
        raise InputError(
            f"inputs={inputs}: holds no image (looked for {', '.join(IMAGE_SUFFIXES)} files"
            f"{'; skipped ' + ', '.join(skipped[:5]) if skipped else ''})"
        )
    return refs, skipped


def _is_file(fs, entry: Mapping) -> bool:
    """A listed file; a symbolic link counts when it points to a file (fsspec lists links as ``other``)."""
    if entry["type"] == "file":
        return True
    return bool(entry.get("islink")) and fs.isfile(entry["name"])


def _resolve(location: str, storage_options: StorageOptions, inputs: str) -> tuple[list[ImageRef], list[str]]:
    fs, path = _fs(location, storage_options)
    if not fs.exists(path):
        raise InputError(f"inputs={inputs}: no such file, folder or object")
    skipped: list[str] = []
    if fs.isdir(path):
        # one listing with details: no per-entry stat (a request each on a bucket)
        files = sorted(
            e["name"]
            for e in fs.ls(path, detail=True)
            if _is_file(fs, e) and not posixpath.basename(e["name"]).startswith(".")
        )
        images = [p for p in files if p.lower().endswith(IMAGE_SUFFIXES)]
        skipped = [posixpath.basename(p) for p in files if p not in images]
        refs = [ImageRef(posixpath.basename(p), _full(fs, p)) for p in images]
    elif path.lower().endswith(LIST_SUFFIXES):
        base = posixpath.dirname(_full(fs, path))
        text = fs.cat_file(path).decode("utf-8", errors="replace")
        refs = []
        for line in text.splitlines():
            entry = line.strip()
            if not entry or entry.startswith("#"):
                continue
            if not (is_url(entry) or entry.startswith(("/", "file://"))):
                entry = posixpath.join(base, entry)
            refs.append(ImageRef(posixpath.basename(entry.rstrip("/")), entry))
    else:
        refs = [ImageRef(posixpath.basename(path), _full(fs, path))]
    return refs, skipped


def read_bytes(location: str, storage_options: StorageOptions = None) -> bytes:
    """The bytes at a path or URL; ``ObjectNotFoundError`` / ``AccessDeniedError`` / ``ImageStoreError`` name it."""
    fs, path = _fs(location, storage_options)
    try:
        return fs.cat_file(path)
    except Exception as err:  # noqa: BLE001 - one error naming the object (and, for access, the setting)
        raise translate_error(location, err) from err


class Preprocessor:
    """Training's preprocessing of one image: decode -> ``ResizeToUint8`` -> tensor transforms (no augmentation).


    Args:
        image_size: the network's input side.
        display_size: also keep the source pixels for overlays, shrunk (aspect kept) to at most this width;
            ``None`` keeps none.
        dicom_voi: grey levels of DICOM images (``auto``, ``window``, ``full-range``; ``pneumo.images.dicom``).
    """

    def __init__(self, image_size: int, display_size: int | None = None, dicom_voi: str = "auto") -> None:
        self.image_size, self.dicom_voi = int(image_size), dicom_voi
        self.display_size = None if display_size is None else int(display_size)
        self.resize = ResizeToUint8(self.image_size)
        self.transform = build_tensor_transforms(self.image_size, None)

    def __call__(self, data: bytes, name: str) -> tuple[torch.Tensor, tuple[int, int]]:
        tensor, shape, _ = self.with_display(data, name)
        return tensor, shape

    def with_display(self, data: bytes, name: str) -> tuple[torch.Tensor, tuple[int, int], np.ndarray | None]:
        """The network tensor, the source ``(H, W)`` and the display copy of the source pixels."""
        pixels = decode_grayscale(data, name, self.dicom_voi)
        shape = (int(pixels.shape[0]), int(pixels.shape[1]))
        display = None
        if self.display_size is not None:
            display = pixels
            if shape[1] > self.display_size:
                height = max(1, round(shape[0] * self.display_size / shape[1]))
                display = np.asarray(
                    Image.fromarray(pixels).resize((self.display_size, height), Image.Resampling.BOX)
                )
        return self.transform(self.resize(pixels)[None]), shape, display


def load_image(
    ref: ImageRef, preprocess: Preprocessor, storage_options: StorageOptions = None
) -> LoadedImage:
    """Read and preprocess one image; raises ``FileNotFoundError``/``BadImageError``/``OSError`` naming it."""
    tensor, shape, display = preprocess.with_display(read_bytes(ref.location, storage_options), ref.location)
    return LoadedImage(ref, tensor, shape, display)
