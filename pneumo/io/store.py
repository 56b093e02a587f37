"""``ImageStore``: read image objects by name from a folder or any fsspec URL (``gs://``, ``file://``, ...).

One reader for every protocol. Reads retry transient failures (5xx, 408, 429, connection resets, timeouts)
with jittered exponential backoff under a total deadline per object, each attempt bounded by a per-request
timeout; many objects are fetched at once by a thread pool (``concurrency`` requests in flight), and the
work a caller passes along (decode, resize) runs in the same threads. Errors name the full object URL and,
for access problems on Google Cloud Storage, the setting to fix (``data.storage.project`` for Requester Pays).

Example:
    >>> store = ImageStore("data/nih_demo/images", concurrency=16)  # doctest: +SKIP
    >>> png = store.read("00000001_000.png")  # doctest: +SKIP
    >>> for position, result in store.map_unordered(["a.png", "b.png"], lambda name, data: len(data)):
    ...     print(position, result)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys

# gcsfs >= 2026 probes every bucket's layout over gRPC when this is on (GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT),
# which stalls every call against a storage emulator for seconds. It must be decided before gcsfs is imported.
if os.environ.get("STORAGE_EMULATOR_HOST") and "gcsfs" not in sys.modules:
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

import asyncio  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator, Mapping, Sequence  # noqa: E402
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait  # noqa: E402
from typing import Any, TypeVar  # noqa: E402

import fsspec  # noqa: E402
from fsspec.exceptions import FSTimeoutError  # noqa: E402

from pneumo.errors import PneumoError  # noqa: E402
from pneumo.io.storage import StorageSettings, check_io_limits, protocol_of, redact_url  # noqa: E402

log = logging.getLogger(__name__)

T = TypeVar("T")

#: HTTP statuses worth retrying (GCS guidance: 408, 429 and 5xx).
TRANSIENT_HTTP_CODES = frozenset({408, 429, 500, 502, 503, 504})


class ImageStoreError(OSError):
    """An object that cannot be read; the message names its full URL."""


class ObjectNotFoundError(PneumoError, ImageStoreError, FileNotFoundError):
    """The object does not exist (HTTP 404 / no such file)."""


class AccessDeniedError(PneumoError, ImageStoreError, PermissionError):
    """The credentials may not read the object (401/403, or a Requester Pays bucket without a project)."""


class StoreUnavailableError(PneumoError, ImageStoreError, TimeoutError):
    """Transient failures went on past the retry deadline (server down, network gone)."""


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


def location_exists(url: str, storage_options: Mapping | None = None) -> bool:
    """Whether a file, folder or object exists at a path or URL."""
    fs, path = fsspec.core.url_to_fs(absolute_location(url), **dict(storage_options or {}))
    return fs.exists(path)


def _http_code(err: BaseException) -> int | None:
    for attr in ("code", "status"):
        code = getattr(err, attr, None)
        if isinstance(code, int):
            return code
    return None


def is_transient(err: BaseException) -> bool:
    """Whether retrying ``err`` may succeed: timeouts, connection failures, 408/429/5xx."""
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(err, (TimeoutError, asyncio.TimeoutError, FSTimeoutError, ConnectionError)):
        return True
    code = _http_code(err)
    if code is not None:
        return code in TRANSIENT_HTTP_CODES
    kind = f"{type(err).__module__}.{type(err).__name__}"
    if kind.startswith("aiohttp.") or kind.startswith("requests.exceptions.") or kind.startswith("urllib3."):
        return "ClientResponseError" not in kind  # responses carry a code (handled above)
    if isinstance(err, OSError):
        text = str(err)
        return not (text.startswith("Forbidden") or "requester pays" in text.lower())
    return False


class ImageStore:
    """Reads objects under a root URL, with retries, timeouts and many requests in flight.

    Args:
        root: folder or fsspec URL holding the images (``gs://bucket/png``).
        storage_options: fsspec options for the root's protocol (e.g. gcsfs ``project``, ``token``); they may
            hold credentials and are never logged.
        concurrency: requests in flight in ``map_unordered`` / ``map_ordered``.
        request_timeout_s: limit of one attempt (async filesystems such as gcsfs; local reads are not cut).
        retry_deadline_s: total time one object may take, retries included, before ``StoreUnavailableError``.
        retry_backoff_s: first pause between attempts (doubles each time, jittered).
        retry_backoff_max_s: longest pause between attempts.
        suffix: objects are named by the image name's stem + ``suffix`` (``data.image_suffix``, e.g.
            ``.dcm``); ``None`` = by the image name itself.

    Example:
        >>> store = ImageStore("gs://gcs-public-data--healthcare-nih-chest-xray/png",
        ...                    {"project": "my-billing-project", "requester_pays": "my-billing-project"})  # doctest: +SKIP
        >>> store.url("00000001_000.png")  # doctest: +SKIP
        'gs://gcs-public-data--healthcare-nih-chest-xray/png/00000001_000.png'
    """

    def __init__(
        self,
        root: str,
        storage_options: Mapping | None = None,
        concurrency: int = 32,
        request_timeout_s: float = 60.0,
        retry_deadline_s: float = 300.0,
        retry_backoff_s: float = 0.5,
        retry_backoff_max_s: float = 16.0,
        suffix: str | None = None,
    ) -> None:
        io = check_io_limits(
            concurrency=concurrency,
            request_timeout_s=request_timeout_s,
            retry_deadline_s=retry_deadline_s,
            retry_backoff_s=retry_backoff_s,
            retry_backoff_max_s=retry_backoff_max_s,
        )
        self.root = absolute_location(root).rstrip("/")
        self.storage_options = dict(storage_options or {})
        for key, value in io.items():  # self.concurrency, self.request_timeout_s, ...
            setattr(self, key, value)
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
        return self._with_retries(
            name, lambda timeout: self._call("exists", self._full(name), timeout=timeout)
        )

    def read(self, name: str) -> bytes:
        """The bytes of one object.

        Raises:
            ObjectNotFoundError: the object does not exist.
            AccessDeniedError: 401/403, or a Requester Pays bucket read without a billing project.
            StoreUnavailableError: transient failures lasted past ``retry_deadline_s``.
        """
        return self._with_retries(
            name, lambda timeout: self._call("cat_file", self._full(name), timeout=timeout)
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
        listing = self._with_retries(
            "", lambda _: self._call("find", self._path, timeout=self.retry_deadline_s, detail=True)
        )
        prefix = self._path.rstrip("/") + "/"
        return {
            name[len(prefix) :]: ":".join(str(entry.get(k, "")) for k in _IDENTITY_FIELDS)
            for name, entry in listing.items()
            if name.startswith(prefix) and entry.get("type", "file") == "file"
        }

    def _call(self, method: str, path: str, timeout: float, **kwargs: Any) -> Any:
        fs = self.fs
        if getattr(fs, "async_impl", False):
            # gcsfs & co: run the coroutine on fsspec's IO loop, cancelled after `timeout` seconds.
            return fsspec.asyn.sync(fs.loop, getattr(fs, f"_{method}"), path, timeout=timeout, **kwargs)
        return getattr(fs, method)(path, **kwargs)

    def _with_retries(self, name: str, attempt: Callable[[float], T]) -> T:
        start = time.monotonic()
        deadline = start + self.retry_deadline_s
        pause = self.retry_backoff_s
        tries = 0
        while True:
            tries += 1
            timeout = max(0.05, min(self.request_timeout_s, deadline - time.monotonic()))
            try:
                return attempt(timeout)
            except Exception as err:  # noqa: BLE001 - classified below
                if not is_transient(err):
                    raise self._translate(name, err) from err
                last = err
            left = deadline - time.monotonic()
            if left <= 0:
                last_error = (
                    f"no answer within {timeout:.3g} s (data.storage.request_timeout_s)"
                    if isinstance(last, (FSTimeoutError, asyncio.TimeoutError))
                    else _describe(last)
                )
                raise StoreUnavailableError(
                    f"{self.url(name)}: unreachable: {tries} attempt(s) failed over {time.monotonic() - start:.1f} s "
                    f"(deadline data.storage.retry_deadline_s={self.retry_deadline_s:g}); last error: {last_error}"
                ) from last
            log.debug("retrying %s after %s", self.url(name), _describe(last))
            time.sleep(min(left, pause * (0.5 + random.random())))
            pause = min(pause * 2, self.retry_backoff_max_s)

    def _translate(self, name: str, err: BaseException) -> ImageStoreError:
        return translate_error(self.url(name), err)

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


def translate_error(url: str, err: BaseException) -> ImageStoreError:
    """An ``ImageStoreError`` naming ``url`` and, for access problems, the setting to fix."""
    code = _http_code(err)
    text = str(err)
    if isinstance(err, ImageStoreError):
        return err
    if isinstance(err, FileNotFoundError) or code == 404:
        return ObjectNotFoundError(f"{url}: object not found")
    if "requester pays" in text.lower():
        return AccessDeniedError(
            f"{url}: the bucket is Requester Pays: set data.storage.requester_pays=true and data.storage.project to a "
            "billing project your credentials may use (or export GOOGLE_CLOUD_PROJECT)"
        )
    if isinstance(err, PermissionError) or code == 403 or text.startswith("Forbidden"):
        hint = (
            " If this is a Requester Pays bucket (NIH's is), set data.storage.project (or GOOGLE_CLOUD_PROJECT) to a "
            "billing project your credentials may bill, with data.storage.requester_pays=true."
            if protocol_of(url) in ("gs", "gcs")
            else ""
        )
        return AccessDeniedError(f"{url}: access denied (403).{hint}")
    if code == 401:
        return AccessDeniedError(
            f"{url}: not authenticated (401): set up Application Default Credentials "
            "(`gcloud auth application-default login`) or export PNEUMO_GCS_TOKEN"
        )
    return ImageStoreError(f"{url}: {_describe(err)}")


def _describe(err: BaseException) -> str:
    text = " ".join(str(err).split()) or repr(err)
    return redact_url(f"{type(err).__name__}: {text}"[:400])
