"""Reading a path or URL: the one retry core of every read pneumo makes, and the readers built on it.

Every read of a user location goes through ``Retries.run``: labels, split lists, boxes, predictions files,
checkpoints, pretrained weights, explain inputs and the images of ``ImageStore``. Transient failures
(5xx, 408, 429, connection resets, timeouts) are retried with jittered exponential backoff under a total
deadline, each attempt bounded by a per-request timeout; the limits are the ``data.storage`` I/O settings
(``StorageSettings.io``, defaults ``IO_DEFAULTS``). Other failures are not retried: they become one-line
``PneumoError``-s naming the URL (and the config key that named it, when the caller says) and, for access
problems on Google Cloud Storage, the setting to fix.

``read_bytes`` reads a whole object, so a retried read starts again from its first byte and nothing torn is
ever returned; ``read_text`` and ``read_csv`` decompress by suffix (``.gz``, ``.bz2``, ``.zip``, ...) first.

Example:
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "list.txt"
    >>> _ = path.write_text("a.png\\nb.png\\n")
    >>> read_text(str(path), io={"retry_deadline_s": 5}).split()
    ['a.png', 'b.png']
    >>> read_bytes(str(path.parent / "none.txt"), key="data.labels_url")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pneumo.io.reading.ObjectNotFoundError: data.labels_url=/...none.txt: object not found
"""

from __future__ import annotations

import asyncio
import io as _io
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, TypeVar

import fsspec
import fsspec.compression
import fsspec.utils
from fsspec.exceptions import FSTimeoutError

from pneumo.errors import PneumoError
from pneumo.io.storage import check_io_limits, protocol_of, redact_url

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

T = TypeVar("T")

#: HTTP statuses worth retrying (GCS guidance: 408, 429 and 5xx).
TRANSIENT_HTTP_CODES = frozenset({408, 429, 500, 502, 503, 504})


class ReadError(OSError):
    """A path or object that cannot be read; the message names its full URL."""


class ObjectNotFoundError(PneumoError, ReadError, FileNotFoundError):
    """The object does not exist (HTTP 404 / no such file)."""


class AccessDeniedError(PneumoError, ReadError, PermissionError):
    """The credentials may not read the object (401/403, or a Requester Pays bucket without a project)."""


class StoreUnavailableError(PneumoError, ReadError, TimeoutError):
    """Transient failures went on past the retry deadline (server down, network gone)."""


class IsAFolderError(PneumoError, ReadError, IsADirectoryError):
    """A folder where a file was expected."""


# ---------------------------------------------------------------------------------------------- errors
def _http_code(err: BaseException) -> int | None:
    for attr in ("code", "status"):
        code = getattr(err, attr, None)
        if isinstance(code, int):
            return code
    return None


def is_transient(err: BaseException) -> bool:
    """Whether retrying ``err`` may succeed: timeouts, connection failures, 408/429/5xx.

    Example:
        >>> is_transient(TimeoutError()), is_transient(FileNotFoundError("x"))
        (True, False)
    """
    if isinstance(err, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    if isinstance(err, (TimeoutError, asyncio.TimeoutError, FSTimeoutError, ConnectionError)):
        return True
    code = _http_code(err)
    if code is not None:
        return code in TRANSIENT_HTTP_CODES
    kind = f"{type(err).__module__}.{type(err).__name__}"
    if kind.startswith(("aiohttp.", "requests.exceptions.", "urllib3.")):
        return "ClientResponseError" not in kind  # responses carry a code (handled above)
    if isinstance(err, OSError):
        text = str(err)
        return not (text.startswith("Forbidden") or "requester pays" in text.lower())
    return False


def describe_error(err: BaseException) -> str:
    """``Type: message`` of an exception on one line, at most 400 characters, secrets scrubbed.

    Example:
        >>> describe_error(OSError("disk\\n  gone"))
        'OSError: disk gone'
    """
    text = " ".join(str(err).split()) or repr(err)
    return redact_url(f"{type(err).__name__}: {text}"[:400])


def _local(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


def _is_broken_link(url: str) -> bool:
    """A local path that is a symbolic link to nothing (reported as such, not as "object not found")."""
    path = _local(url)
    return "://" not in path and os.path.islink(path) and not os.path.exists(path)


def translate_error(url: str, err: BaseException, key: str | None = None) -> ReadError:
    """A ``ReadError`` naming ``url`` (as ``key=url`` when a config ``key`` named it) and, for access
    problems, the setting to fix.

    Example:
        >>> str(translate_error("gs://b/x.csv", FileNotFoundError("x"), key="data.labels_url"))
        'data.labels_url=gs://b/x.csv: object not found'
    """
    if isinstance(err, ReadError):
        return err
    code = _http_code(err)
    text = str(err)
    where = f"{key}={url}" if key else url
    if isinstance(err, FileNotFoundError) and _is_broken_link(url):
        return ObjectNotFoundError(
            f"{where}: a broken symbolic link (to {os.readlink(_local(url))}, which does not exist)"
        )
    if isinstance(err, FileNotFoundError) or code == 404:
        return ObjectNotFoundError(f"{where}: object not found")
    if isinstance(err, IsADirectoryError):
        return IsAFolderError(f"{where} is a folder; give a file")
    if "requester pays" in text.lower():
        return AccessDeniedError(
            f"{where}: the bucket is Requester Pays: set data.storage.requester_pays=true and data.storage.project "
            "to a billing project your credentials may use (or export GOOGLE_CLOUD_PROJECT)"
        )
    if isinstance(err, PermissionError) or code == 403 or text.startswith("Forbidden"):
        hint = (
            " If this is a Requester Pays bucket (NIH's is), set data.storage.project (or GOOGLE_CLOUD_PROJECT) to a "
            "billing project your credentials may bill, with data.storage.requester_pays=true."
            if protocol_of(url) in ("gs", "gcs")
            else ""
        )
        return AccessDeniedError(f"{where}: access denied (403).{hint}")
    if code == 401:
        return AccessDeniedError(
            f"{where}: not authenticated (401): set up Application Default Credentials "
            "(`gcloud auth application-default login`) or export PNEUMO_GCS_TOKEN"
        )
    return ReadError(f"{where}: {describe_error(err)}")


# ---------------------------------------------------------------------------------------------- retries
@dataclass(frozen=True)
class Retries:
    """How one read is retried: per-attempt timeout, backoff and total deadline (``data.storage.*``).

    Attributes:
        request_timeout_s: limit of one attempt (async filesystems such as gcsfs; local reads are not cut).
        retry_deadline_s: total time one read may take, retries included, before ``StoreUnavailableError``.
        retry_backoff_s: first pause between attempts (doubles each time, jittered).
        retry_backoff_max_s: longest pause between attempts.

    Example:
        >>> Retries.from_io({"retry_deadline_s": 2}).run("x", lambda timeout: "read")
        'read'
    """

    request_timeout_s: float
    retry_deadline_s: float
    retry_backoff_s: float
    retry_backoff_max_s: float

    @classmethod
    def from_io(cls, io: Mapping[str, Any] | None = None) -> Retries:
        """The retries of I/O limits (``StorageSettings.io`` or some of its keys; ``IO_DEFAULTS`` for the rest)."""
        limits = check_io_limits(**dict(io or {}))
        return cls(**{f.name: limits[f.name] for f in fields(cls)})

    def run(self, url: str, attempt: Callable[[float], T], key: str | None = None) -> T:
        """``attempt(timeout)`` until it succeeds, a failure is not transient, or the deadline passes.

        Args:
            url: what is read, for messages (already free of secrets or not: it is redacted here).
            attempt: one try, given the seconds it may take.
            key: the config key that named ``url``, for messages.

        Raises:
            StoreUnavailableError: transient failures lasted past ``retry_deadline_s``.
            ReadError: a failure that is not transient (its subclasses name the cause); a ``PneumoError``
                raised by ``attempt`` passes unchanged.
        """
        url = redact_url(url)
        start = time.monotonic()
        deadline = start + self.retry_deadline_s
        pause = self.retry_backoff_s
        tries = 0
        answered: BaseException | None = None  # the last failure the server answered (an HTTP status)
        while True:
            tries += 1
            timeout = max(0.05, min(self.request_timeout_s, deadline - time.monotonic()))
            try:
                return attempt(timeout)
            except PneumoError:
                raise
            except Exception as err:  # classified below
                if not is_transient(err):
                    raise translate_error(url, err, key) from err
                last = err
                answered = err if _http_code(err) is not None else answered
            left = deadline - time.monotonic()
            if left <= 0:
                last_error = (
                    f"no answer within {timeout:.3g} s (data.storage.request_timeout_s)"
                    if isinstance(last, (FSTimeoutError, asyncio.TimeoutError))
                    else describe_error(last)
                )
                if (
                    answered is not None and answered is not last
                ):  # say what the server said, not only the cut
                    last_error += f"; the server's last answer: {describe_error(answered)}"
                where = f"{key}={url}" if key else url
                raise StoreUnavailableError(
                    f"{where}: unreachable: {tries} attempt(s) failed over {time.monotonic() - start:.1f} s "
                    f"(deadline data.storage.retry_deadline_s={self.retry_deadline_s:g}); last error: {last_error}"
                ) from last
            log.debug("retrying %s after %s", url, describe_error(last))
            time.sleep(min(left, pause * (0.5 + random.random())))
            pause = min(pause * 2, self.retry_backoff_max_s)


def call_fs(fs: fsspec.AbstractFileSystem, method: str, path: str, timeout: float, **kwargs: Any) -> Any:
    """``fs.<method>(path, **kwargs)``, cancelled after ``timeout`` seconds on async filesystems (gcsfs & co:
    the coroutine runs on fsspec's IO loop); local and other sync filesystems are called as they are."""
    if getattr(fs, "async_impl", False):
        return fsspec.asyn.sync(fs.loop, getattr(fs, f"_{method}"), path, timeout=timeout, **kwargs)
    return getattr(fs, method)(path, **kwargs)


# ---------------------------------------------------------------------------------------------- readers
def read_bytes(
    url: str,
    storage_options: Mapping | None = None,
    *,
    key: str | None = None,
    io: Mapping[str, Any] | None = None,
) -> bytes:
    """The bytes at a path or fsspec URL, transient failures retried (the one reader of user locations).

    Args:
        url: local path or URL (``gs://``, ``https://``, ``memory://``, ``file://``).
        storage_options: fsspec options of ``url`` (``StorageSettings.options_for``).
        key: the config key that named ``url`` (``ckpt_path``, ``data.labels_url``), for messages.
        io: I/O limits (``StorageSettings.io``); ``IO_DEFAULTS`` for those not given.

    Raises:
        ObjectNotFoundError, IsAFolderError, AccessDeniedError: at once, naming ``url``.
        StoreUnavailableError: transient failures lasted past ``retry_deadline_s``.
    """
    retries = Retries.from_io(io)
    try:
        fs, path = fsspec.core.url_to_fs(url, **dict(storage_options or {}))
    except Exception as err:  # unknown protocol, bad options: name the URL
        raise translate_error(redact_url(url), err, key) from err
    return retries.run(url, lambda timeout: call_fs(fs, "cat_file", path, timeout), key)


def decompress(url: str, data: bytes) -> bytes:
    """``data`` decompressed by the suffix of ``url`` (``.gz``, ``.bz2``, ``.xz``, ``.zip``, ...; else as is).

    Example:
        >>> import gzip
        >>> decompress("labels.csv.gz", gzip.compress(b"a,b")), decompress("labels.csv", b"a,b")
        (b'a,b', b'a,b')
    """
    compression = fsspec.utils.infer_compression(url)
    if compression is None:
        return data
    with fsspec.compression.compr[compression](_io.BytesIO(data), mode="rb") as fh:
        return fh.read()


def read_text(
    url: str,
    storage_options: Mapping | None = None,
    *,
    key: str | None = None,
    io: Mapping[str, Any] | None = None,
    encoding: str = "utf-8",
) -> str:
    """The text at a path or URL (``read_bytes``, decompressed by suffix, decoded).

    Raises:
        UnicodeDecodeError: not text in ``encoding``; the errors of ``read_bytes``.
    """
    return decompress(url, read_bytes(url, storage_options, key=key, io=io)).decode(encoding)


def read_csv(
    url: str,
    storage_options: Mapping | None = None,
    *,
    key: str | None = None,
    io: Mapping[str, Any] | None = None,
    **pandas_options: Any,
) -> pd.DataFrame:
    """A CSV file at a path or URL as a ``DataFrame`` (``read_bytes``, decompressed by suffix,
    ``pandas.read_csv(**pandas_options)``).

    Raises:
        pandas.errors.ParserError, pandas.errors.EmptyDataError, UnicodeDecodeError: not a CSV; the
            errors of ``read_bytes``.
    """
    import pandas as pd  # here: the image store, which imports this module, needs no pandas

    data = decompress(url, read_bytes(url, storage_options, key=key, io=io))
    return pd.read_csv(_io.BytesIO(data), **pandas_options)
