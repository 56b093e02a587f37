"""``ImageStore``: read image objects by name from a folder or any fsspec URL (``gs://``, ``file://``, ...).

Example:
    >>> store = ImageStore("data/nih_demo/images")  # doctest: +SKIP
    >>> png = store.read("00000001_000.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import fsspec


class ImageStoreError(OSError):
    """An object that cannot be read; the message names its full URL."""


def is_url(path: str) -> bool:
    """True for ``scheme://...`` locations other than ``file://``."""
    return "://" in path and not path.startswith("file://")


def absolute_location(path: str) -> str:
    """Make a local path absolute (so it still resolves from another working directory); URLs unchanged."""
    return path if is_url(path) or path.startswith("file://") else os.path.abspath(os.path.expanduser(path))


def location_exists(url: str, storage_options: Mapping | None = None) -> bool:
    """Whether a file, folder or object exists at a path or URL."""
    fs, path = fsspec.core.url_to_fs(absolute_location(url), **dict(storage_options or {}))
    return fs.exists(path)


class ImageStore:
    """Reads objects under a root URL.

    Args:
        root: folder or fsspec URL holding the images (``gs://bucket/png``).
        storage_options: fsspec options for the root's protocol (e.g. gcsfs ``project``, ``token``).
    """

    def __init__(self, root: str, storage_options: Mapping | None = None) -> None:
        self.root = absolute_location(root).rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.fs, self._path = fsspec.core.url_to_fs(self.root, **self.storage_options)
        self.protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]

    def url(self, name: str) -> str:
        """Full URL of an object, for messages (``gs://bucket/png/00000001_000.png``)."""
        prefix = "" if self.protocol in ("file", "local") else f"{self.protocol}://"
        return f"{prefix}{self._path}/{name}"

    def exists(self, name: str = "") -> bool:
        return self.fs.exists(f"{self._path}/{name}" if name else self._path)

    def read(self, name: str) -> bytes:
        """The bytes of one object; a missing object raises ``ImageStoreError`` naming it."""
        try:
            return self.fs.cat_file(f"{self._path}/{name}")
        except FileNotFoundError as err:
            raise ImageStoreError(f"{self.url(name)}: object not found") from err
