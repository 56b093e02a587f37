"""What ``explain.py`` explains: one image, a folder, a text file of paths/URLs, or a split of the data set.

Every input becomes an ``ImageRef`` (display name, full location, true label and ground-truth boxes where
known); ``load_image`` reads one and preprocesses it exactly like training does (``Preprocessor``: the one
chain, owned by ``pneumo.images.preprocess``). PNG, JPEG and DICOM may be mixed: a folder gives its files ending in ``IMAGE_SUFFIXES`` (``.dcm`` included); a list may
name DICOM files without an ending (they are recognised by their ``DICM`` marker).

Example:
    >>> refs = resolve_inputs("data/nih_demo/images")  # doctest: +SKIP
    >>> loaded = load_image(refs[0], image_size=64)  # doctest: +SKIP
    >>> tuple(loaded.tensor.shape)  # doctest: +SKIP
    (1, 64, 64)
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import torch

from pneumo.errors import PneumoError
from pneumo.images.decode import DICOM_SUFFIXES
from pneumo.images.preprocess import Preprocessor
from pneumo.io.reading import Retries, call_fs, translate_error
from pneumo.io.reading import read_bytes as read_location
from pneumo.io.storage import StorageSettings
from pneumo.io.store import absolute_location, is_url

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


#: fsspec options: one mapping for every URL, a function giving the options of a URL, or ``StorageSettings``
#: (the options of each URL, ``gs://`` settings such as the requester-pays project for ``gs://`` URLs only, and
#: the I/O limits of every read: ``io_for``).
StorageOptions = StorageSettings | Mapping | Callable[[str], Mapping] | None


def options_for(location: str, storage_options: StorageOptions) -> dict:
    """The fsspec options of ``location``."""
    if isinstance(storage_options, StorageSettings):
        return storage_options.options_for(location)
    if callable(storage_options):
        return dict(storage_options(location) or {})
    return dict(storage_options or {})


def io_for(storage_options: StorageOptions) -> dict | None:
    """The I/O limits of reads (``StorageSettings.io``); ``None`` (the defaults) for plain options."""
    return dict(storage_options.io) if isinstance(storage_options, StorageSettings) else None


def _fs(location: str, storage_options: StorageOptions) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(location, **options_for(location, storage_options))


def _full(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def resolve_inputs(inputs: str, storage_options: StorageOptions = None) -> tuple[list[ImageRef], list[str]]:
    """Expand ``inputs`` (an image, a folder, or a ``.txt`` list of paths/URLs; local or any fsspec URL).

    Relative entries of a list resolve against the list's folder. Returns the images and the names of
    files skipped from a folder because they are not images by their ending. Transient failures are retried
    (``pneumo.io.reading.Retries``, with the I/O limits of ``StorageSettings``).

    Raises:
        InputError: the location does not exist, or names no image.
        AccessDeniedError, StoreUnavailableError: ``pneumo.io.reading``'s, naming the location.
    """
    location = absolute_location(str(inputs))
    try:
        fs, path = _fs(location, storage_options)
    except Exception as err:  # unknown protocol, bad options: name the location
        raise translate_error(location, err, "inputs") from err
    refs, skipped = Retries.from_io(io_for(storage_options)).run(
        location, lambda timeout: _resolve(fs, path, timeout, inputs), key="inputs"
    )
    if not refs:
        raise InputError(
            f"inputs={inputs}: holds no image (looked for {', '.join(IMAGE_SUFFIXES)} files"
            f"{'; skipped ' + ', '.join(skipped[:5]) if skipped else ''})"
        )
    return refs, skipped


def _is_file(fs: fsspec.AbstractFileSystem, entry: Mapping) -> bool:
    """A listed file; a symbolic link counts when it points to a file or to nothing (fsspec lists links as
    ``other``)."""
    if entry["type"] == "file":
        return True
    # a link to nothing is listed too: its read fails naming it (a broken link), never dropped in silence
    return bool(entry.get("islink")) and (fs.isfile(entry["name"]) or not fs.exists(entry["name"]))


def _exists(call: Callable[..., Any], path: str) -> bool:
    """Whether ``path`` exists; an HTTP server's error other than 404 (a 500...) is no "no such file": it is
    raised (fsspec's HTTP ``exists`` says ``False`` to any error), so the message says what the server said."""
    try:
        call("info", path)
        return True
    except FileNotFoundError as err:
        cause = err.__cause__
        status = getattr(cause, "status", None)
        if cause is not None and isinstance(status, int) and status != 404:
            raise cause from None
        return False


def _resolve(
    fs: fsspec.AbstractFileSystem, path: str, timeout: float, inputs: str
) -> tuple[list[ImageRef], list[str]]:
    """One attempt of ``resolve_inputs`` (each request bounded by ``timeout`` on async filesystems)."""

    def call(method: str, target: str, **kwargs: Any) -> Any:
        return call_fs(fs, method, target, timeout, **kwargs)

    if not _exists(call, path):
        if os.path.islink(path) and "://" not in str(inputs):
            raise InputError(
                f"inputs={inputs}: a broken symbolic link (to {os.readlink(path)}, which does not exist)"
            )
        raise InputError(f"inputs={inputs}: no such file, folder or object")
    skipped: list[str] = []
    if call("isdir", path):
        # one listing with details: no per-entry stat (a request each on a bucket)
        files = sorted(
            e["name"]
            for e in call("ls", path, detail=True)
            if _is_file(fs, e) and not posixpath.basename(e["name"]).startswith(".")
        )
        images = [p for p in files if p.lower().endswith(IMAGE_SUFFIXES)]
        skipped = [posixpath.basename(p) for p in files if p not in images]
        refs = [ImageRef(posixpath.basename(p), _full(fs, p)) for p in images]
    elif path.lower().endswith(LIST_SUFFIXES):
        base = posixpath.dirname(_full(fs, path))
        text = call("cat_file", path).decode("utf-8", errors="replace")
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
    """The bytes at a path or URL through ``pneumo.io.reading.read_bytes`` (transient failures retried under
    the I/O limits of ``StorageSettings``); ``ObjectNotFoundError`` / ``AccessDeniedError`` /
    ``StoreUnavailableError`` / ``ReadError`` name it."""
    return read_location(location, options_for(location, storage_options), io=io_for(storage_options))


def load_image(
    ref: ImageRef, preprocess: Preprocessor, storage_options: StorageOptions = None
) -> LoadedImage:
    """Read and preprocess one image; raises ``FileNotFoundError``/``BadImageError``/``OSError`` naming it."""
    tensor, shape, display = preprocess.with_display(read_bytes(ref.location, storage_options), ref.location)
    return LoadedImage(ref, tensor, shape, display)
