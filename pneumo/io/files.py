"""Files: output files that are never half-written, disk-full errors that say what was needed, sha256.

``atomic_write_bytes`` (the one writer of every output file pneumo makes: reports, predictions, figures,
model cards, explain outputs, checkpoints, cache metadata) writes to a temporary file in the target's folder
and ``os.replace``-s it over the target (atomic on POSIX file systems): a reader, or a run killed mid-way,
sees the old file or the whole new one. Callers serialise into memory first, so an error while serialising
leaves the old file too. ``disk_full`` turns ``OSError(ENOSPC)`` into a ``DiskFullError`` naming the path,
the bytes needed and the bytes free there. ``check_writable`` is the one write check of an output folder
(a file created and removed: ``os.access`` says yes to root everywhere). ``sha256_of`` / ``sha256_bytes`` are pneumo's one content hash
(shipped NIH files, model cards, pretrained weights).

Example:
    >>> atomic_write_text("/tmp/pneumo_doctest/a.txt", "whole")
    >>> open("/tmp/pneumo_doctest/a.txt", "rb").read()
    b'whole'
    >>> sha256_of("/tmp/pneumo_doctest/a.txt") == sha256_bytes(b"whole")
    True
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pneumo.errors import ConfigError, PneumoError
from pneumo.io.reading import read_bytes
from pneumo.io.store import is_url


class DiskFullError(PneumoError, OSError):
    """No space left where pneumo writes; the message names the path, the space needed and the space free."""


def human_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``.

    Example:
        >>> human_bytes(3 * 1024**3), human_bytes(10)
        ('3.0 GiB', '10 B')
    """
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover - the loop returns


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes free to this user on the file system of ``path`` (its nearest existing folder), or ``None``."""
    here = Path(path).absolute()
    while not here.exists() and here != here.parent:
        here = here.parent
    try:
        return shutil.disk_usage(here).free
    except OSError:
        return None


def check_writable(
    path: str | os.PathLike | None, key: str, fix: str = "choose a folder you may write to"
) -> None:
    """The one write check of every output folder pneumo makes (run folders, ``out_dir``, the image cache):
    a file is created and removed in ``path`` (or, when it does not exist yet, in its nearest existing
    ancestor, so nothing is left behind), else a one-line ``ConfigError`` naming ``key``, the folder, what
    the file system said and ``fix``. ``os.access`` is not used: it says yes to root for anything (a
    read-only mount, ``/proc``). URLs and empty values are not checked (remote writes fail at the write).

    Example:
        >>> check_writable("/tmp/pneumo_doctest/new/run", "out_dir")
        >>> check_writable("/proc/x", "out_dir")
        Traceback (most recent call last):
        ...
        pneumo.errors.ConfigError: out_dir=/proc/x: cannot write in /proc (No such file or directory); choose a folder you may write to
    """
    if path is None or not str(path) or is_url(str(path)):
        return
    here = Path(str(path)).expanduser().absolute()
    while not os.path.lexists(here) and here != here.parent:
        here = here.parent
    if here.is_symlink() and not here.exists():
        raise ConfigError(f"{key}={path}: {here} is a broken symbolic link; {fix}")
    if not here.is_dir():
        raise ConfigError(f"{key}={path}: {here} is a file, not a folder; {fix}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".pneumo-write-check-", dir=here)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ConfigError(f"{key}={path}: cannot write in {here} ({err.strerror or err}); {fix}") from None


def prepare_out_dir(
    out_dir: str | os.PathLike,
    outputs: Sequence[str],
    overwrite: bool,
    command: str,
    key: str = "out_dir",
    create: bool = True,
) -> Path:
    """Make ``out_dir`` ready for one run of ``command`` (explain, evaluate): written-to (``check_writable``),
    created, and holding none of another run's ``outputs`` (names in the folder): a folder that does is
    refused (``ConfigError``) unless ``overwrite``, which deletes those outputs first, the first name first
    (list the file whose presence marks a whole run first), so that a folder never mixes two runs. Other
    files (Hydra's ``.hydra/``, the command's log) are left alone. ``create=False`` leaves a missing folder
    to the first write (a command that stops on a bad input then leaves nothing behind).

    Example:
        >>> out = prepare_out_dir("/tmp/pneumo_doctest/report", ["report.md", "roc.png"], True, "evaluate")
        >>> _ = (out / "report.md").write_text("a report")
        >>> prepare_out_dir(out, ["report.md", "roc.png"], False, "evaluate")
        Traceback (most recent call last):
        ...
        pneumo.errors.ConfigError: out_dir=/tmp/pneumo_doctest/report already holds the outputs of another evaluate run (report.md): choose a new out_dir, or pass overwrite=true to delete them first
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{key}={out} is a file; choose a folder")
    check_writable(out, key)
    found = [name for name in dict.fromkeys(outputs) if os.path.lexists(out / name)]
    if found and not overwrite:
        raise ConfigError(
            f"{key}={out} already holds the outputs of another {command} run ({', '.join(found)}): choose a new "
            f"{key}, or pass overwrite=true to delete them first"
        )
    for name in found:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    if create:
        out.mkdir(parents=True, exist_ok=True)
    return out


def disk_full_error(path: str | os.PathLike, needed: int | None, fix: str) -> DiskFullError:
    """The one-line error of a write of ``needed`` bytes to ``path`` that found no space; ``fix`` says what
    to do (e.g. ``"free space there or set data.cache.dir to a larger disk"``).

    Example:
        >>> str(disk_full_error("/data/x.ckpt", 3 * 1024**2, "free space"))  # doctest: +ELLIPSIS
        'no space left on device writing /data/x.ckpt: it needs 3.0 MiB and ... free there; free space'
    """
    free = free_bytes(path)
    need = f"it needs {human_bytes(needed)}" if needed is not None else "it needs more space"
    have = f"{human_bytes(free)} are" if free is not None else "too little is"
    err = DiskFullError(f"no space left on device writing {path}: {need} and {have} free there; {fix}")
    err.errno = errno.ENOSPC
    return err


@contextlib.contextmanager
def disk_full(path: str | os.PathLike, needed: int | None, fix: str) -> Iterator[None]:
    """Turn ``OSError(ENOSPC)`` (and ``EDQUOT``, a full quota) raised inside into ``disk_full_error``."""
    try:
        yield
    except OSError as err:
        if _is_disk_full(err) and not isinstance(err, DiskFullError):
            raise disk_full_error(path, needed, fix) from err
        raise


def _is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)


def atomic_write_bytes(
    path: str | os.PathLike,
    data: bytes | bytearray | memoryview,
    durable: bool = False,
    fix: str = "free space there or write elsewhere",
) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    Args:
        path: the target (its folder is created).
        data: the whole content.
        durable: also ``fsync`` the file and the folder (checkpoints, caches: survive a power cut); outputs
            that can be made again skip it.
        fix: what the disk-full message tells the user to do.

    Raises:
        DiskFullError: no space for ``data`` (the target is left as it was).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    # pid + random suffix: unique per writer; "x" mode never reuses a file; permissions follow the umask.
    tmp = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            if durable:
                os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if _is_disk_full(err):  # measured after the partial file is gone: what is free for a new try
            raise disk_full_error(target, len(data), fix) from err
        raise
    if durable:
        with contextlib.suppress(OSError):  # not every OS / file system lets a folder be opened and synced
            fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by writers that were killed
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()


def atomic_write_text(
    path: str | os.PathLike,
    text: str,
    durable: bool = False,
    fix: str = "free space there or write elsewhere",
) -> None:
    """``atomic_write_bytes`` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable, fix=fix)


# ---------------------------------------------------------------------------------------------- sha256
def sha256_bytes(data: bytes | memoryview) -> str:
    """The sha256 (hex) of ``data``.

    Example:
        >>> sha256_bytes(b"")[:12]
        'e3b0c44298fc'
    """
    return hashlib.sha256(data).hexdigest()


def sha256_of(
    location: str | os.PathLike,
    storage_options: Mapping | None = None,
    *,
    io: Mapping[str, Any] | None = None,
) -> str:
    """The sha256 (hex) of the bytes at a path or fsspec URL, as stored (compressed files are not
    decompressed): local files are read in 1 MiB blocks, URLs through ``pneumo.io.reading.read_bytes``
    (transient failures retried under the I/O limits ``io``)."""
    location = os.fspath(location)
    if is_url(location):
        return sha256_bytes(read_bytes(location, storage_options, io=io))
    digest = hashlib.sha256()
    with open(location.removeprefix("file://"), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
