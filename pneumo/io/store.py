"""``ImageStore``: read image objects by name from a folder or any fsspec URL (``gs://``, ``file://``, ...).

One reader for every protocol. Each object is read through pneumo's one retry core
(``pneumo.io.reading.Retries``: transient failures retried with jittered exponential backoff under a total
deadline per object, each attempt bounded by a per-request timeout); many objects are fetched at once by a
thread pool (``concurrency`` requests in flight), and the work a caller passes along (decode, resize) runs in
the same threads. Errors (``pneumo.io.reading.ReadError`` and its subclasses) name the full object URL and,
for access problems on Google Cloud Storage, the setting to fix (``data.storage.project`` for Requester Pays).

Example:
    >>> store = ImageStore("data/nih_demo/images", concurrency=16)  # doctest: +SKIP
    >>> png = store.read("00000001_000.png")  # doctest: +SKIP
    >>> for position, result in store.map_unordered(["a.png", "b.png"], lambda name, data: len(data)):
    ...     print(position, result)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

import fsspec

from pneumo.io.reading import Retries, call_fs
from pneumo.io.storage import StorageSettings, check_io_limits, protocol_of, redact_url

T = TypeVar("T")


#: Listing fields that make an object's identity (GCS: generation and etag; S3/HTTP: ETag, LastModified).
_IDENTITY_FIELDS = ("size", "generation", "etag", "ETag", "LastModified", "mtime")


def is_url(path: str) -> bool:
    """True for ``scheme://...`` locations other than ``file://``."""
    return "://" in path and not path.startswith("file://")


def object_name(name: str, suffix: str | None = None) -> str:
    """The object holding the image ``name`` of a label index: ``name`` itself, or its stem + ``suffix``
    (``data.image_suffix``: the bucket's ``dicom/`` copy names NIH's ``x.png`` as ``x.dcm``).

    Example:
        >>> object_name("00000001_000.png", ".dcm"), object_name("00000001_000.png")
        ('00000001_000.dcm', '00000001_000.png')
    """
    if not suffix:
        return name
    stem, _ = os.path.splitext(name)
    return f"{stem}{suffix}"


def absolute_location(path: str) -> str:
    """Make a local path absolute (so it still resolves from another working directory); URLs unchanged."""
    return path if is_url(path) or path.startswith("file://") else os.path.abspath(os.path.expanduser(path))


def location_exists(url: str, storage_options: Mapping | None = None, io: Mapping | None = None) -> bool:
    """Whether a file, folder or object exists at a path or URL (transient failures retried under the I/O
    limits ``io``, ``StorageSettings.io``)."""
    location = absolute_location(url)
    fs, path = fsspec.core.url_to_fs(location, **dict(storage_options or {}))
    return Retries.from_io(io).run(location, lambda timeout: call_fs(fs, "exists", path, timeout))


class ImageStore:
    """Reads objects under a root URL, with retries, timeouts and many requests in flight.

    Args:
        root: folder or fsspec URL holding the images (``gs://bucket/png``).
        storage_options: fsspec options for the root's protocol (e.g. gcsfs ``project``, ``token``); they may
            hold credentials and are never logged.
        concurrency: requests in flight in ``map_unordered`` / ``map_ordered``.
        request_timeout_s, retry_deadline_s, retry_backoff_s, retry_backoff_max_s: how each object's read is
            retried (``pneumo.io.reading.Retries``).
        suffix: objects are named by the image name's stem + ``suffix`` (``data.image_suffix``, e.g.
            ``.dcm``); ``None`` = by the image name itself.

    Example:
        >>> store = ImageStore("gs://gcs-public-data--healthcare-nih-chest-xray/png",
        ...                    {"project": "my-billing-project", "requester_pays": "my-billing-project"})  # doctest: +SKIP
        >>> store.url("00000001_000.png")  # doctest: +SKIP
        'gs://gcs-public-data--healthcare-nih-chest-xray/png/00000001_000.png'
    """

    # The I/O limits, set in __init__ from check_io_limits() (one loop over IO_DEFAULTS' keys).
    concurrency: int
    request_timeout_s: float
    retry_deadline_s: float
    retry_backoff_s: float
    retry_backoff_max_s: float

    def __init__(
        self,
        root: str,
        storage_options: Mapping | None = None,
        concurrency: int | None = None,
        request_timeout_s: float | None = None,
        retry_deadline_s: float | None = None,
        retry_backoff_s: float | None = None,
        retry_backoff_max_s: float | None = None,
        suffix: str | None = None,
    ) -> None:
        given = {
            "concurrency": concurrency,
            "request_timeout_s": request_timeout_s,
            "retry_deadline_s": retry_deadline_s,
            "retry_backoff_s": retry_backoff_s,
            "retry_backoff_max_s": retry_backoff_max_s,
        }
        # None = the default of IO_DEFAULTS (pneumo.io.storage), the one copy of the defaults
        io = check_io_limits(**{k: v for k, v in given.items() if v is not None})
        self.root = absolute_location(root).rstrip("/")
        self.storage_options = dict(storage_options or {})
        self.concurrency: int = io["concurrency"]
        self.retries = Retries.from_io(io)
        self.suffix = suffix or None
        self.protocol = protocol_of(self.root)
        self._state_pid: int | None = None
        self._lock = threading.Lock()
        self._connect()

    @classmethod
    def from_settings(cls, settings: StorageSettings, root: str, suffix: str | None = None) -> ImageStore:
        """An ``ImageStore`` reading ``root`` with ``settings``' options and I/O limits (``suffix``: objects
        named by the image name's stem + ``suffix``, ``data.image_suffix``)."""
        return cls(root, settings.options_for(root), suffix=suffix, **settings.io)

    # ------------------------------------------------------------------ process-local state
    def _connect(self) -> None:
        """(Re)create the filesystem and thread pool for this process (async filesystems are not fork-safe)."""
        self._fs, self._path = fsspec.core.url_to_fs(self.root, **self.storage_options)
        self._pool: ThreadPoolExecutor | None = None
        self._state_pid = os.getpid()

    @property
    def fs(self) -> fsspec.AbstractFileSystem:
        if self._state_pid != os.getpid():
            with self._lock:
                if self._state_pid != os.getpid():
                    self._connect()
        return self._fs

    def _executor(self) -> ThreadPoolExecutor:
        self.fs  # noqa: B018 - refreshes process-local state after a fork
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="pneumo-store")
        return self._pool

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        for key in ("_fs", "_pool", "_lock"):
            state.pop(key, None)
        state["_state_pid"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._connect()

    def close(self) -> None:
        """Stop the thread pool (idle threads would otherwise live until exit)."""
        if self._pool is not None and self._state_pid == os.getpid():
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    # ------------------------------------------------------------------ names
    def url(self, name: str) -> str:
        """Full URL of an object, for messages (``gs://bucket/png/00000001_000.png``)."""
        prefix = "" if self.protocol in ("file", "local") else f"{self.protocol}://"
        return redact_url(f"{prefix}{self._path}/{object_name(name, self.suffix)}")

    def _full(self, name: str) -> str:
        return f"{self._path}/{object_name(name, self.suffix)}" if name else self._path

    # ------------------------------------------------------------------ single reads
    def exists(self, name: str = "") -> bool:
        """Whether the root (``name=""``) or an object exists; transient errors are retried."""
        return self.retries.run(
            self.url(name), lambda timeout: call_fs(self.fs, "exists", self._full(name), timeout)
        )

    def read(self, name: str) -> bytes:
        """The bytes of one object.

        Raises:
            ObjectNotFoundError: the object does not exist.
            AccessDeniedError: 401/403, or a Requester Pays bucket read without a billing project.
            StoreUnavailableError: transient failures lasted past ``retry_deadline_s``.
            (``pneumo.io.reading``'s errors.)
        """
        return self.retries.run(
            self.url(name), lambda timeout: call_fs(self.fs, "cat_file", self._full(name), timeout)
        )

    def identities(self) -> dict[str, str]:
        """Each object's identity under the root, by name, from one listing: ``size:generation:etag`` on
        Google Cloud Storage (any listed version/etag fields elsewhere), ``size:mtime_ns`` of local files
        (symbolic links followed). An object rewritten under the same name gets a new identity.

        Example:
            >>> import tempfile, pathlib
            >>> root = pathlib.Path(tempfile.mkdtemp()); _ = (root / "a.png").write_bytes(b"12345")
            >>> ImageStore(str(root)).identities()["a.png"].startswith("5:")
            True
        """
        if self.protocol in ("file", "local"):
            out = {}
            for folder, _, files in os.walk(self._path, followlinks=True):
                for file in files:
                    full = os.path.join(folder, file)
                    try:
                        st = os.stat(full)  # follows symbolic links: the identity of what is read
                    except FileNotFoundError:
                        continue  # a dangling link: the object is missing
                    out[os.path.relpath(full, self._path).replace(os.sep, "/")] = (
                        f"{st.st_size}:{st.st_mtime_ns}"
                    )
            return out
        # one listing (paginated by the filesystem), bounded by the retry deadline as a whole
        listing = self.retries.run(
            self.url(""),
            lambda _: call_fs(self.fs, "find", self._path, self.retries.retry_deadline_s, detail=True),
        )
        prefix = self._path.rstrip("/") + "/"
        return {
            name[len(prefix) :]: ":".join(str(entry.get(k, "")) for k in _IDENTITY_FIELDS)
            for name, entry in listing.items()
            if name.startswith(prefix) and entry.get("type", "file") == "file"
        }

    # ------------------------------------------------------------------ many reads
    def map_unordered(
        self, names: Sequence[str], work: Callable[[str, bytes], T]
    ) -> Iterator[tuple[int, T | BaseException]]:
        """Fetch ``names`` with ``concurrency`` requests in flight; yield ``(position, result)`` as they finish.

        ``work(name, data)`` runs in the fetching thread (decode and resize there, in parallel). A failure of
        one object does not stop the others: its exception is yielded in place of the result, for the caller's
        policy (``on_missing`` / ``on_bad_image``). Closing the iterator early cancels what has not started.
        """
        pool = self._executor()

        def job(name: str) -> T:
            return work(name, self.read(name))

        pending: dict[Future, int] = {}
        position = 0
        window = 2 * self.concurrency
        try:
            while pending or position < len(names):
                while position < len(names) and len(pending) < window:
                    pending[pool.submit(job, names[position])] = position
                    position += 1
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    i = pending.pop(future)
                    err = future.exception()
                    yield i, (err if err is not None else future.result())
        finally:
            for future in pending:
                future.cancel()

    def map_ordered(self, names: Sequence[str], work: Callable[[str, bytes], T]) -> list[T | BaseException]:
        """``map_unordered`` collected in the order of ``names``."""
        out: list = [None] * len(names)
        for i, result in self.map_unordered(names, work):
            out[i] = result
        return out
