"""``ImageCache``: every indexed image fetched, decoded and resized once into a memory-mapped uint8 array.

Decoding a 1024-px PNG and resizing it costs ~9 ms per core, so a GPU cannot be fed from PNGs; the cache
stores exactly the output of ``ResizeToUint8`` (``image_size x image_size`` uint8), so a cached item and a
streamed one give identical tensors. Later epochs only copy 50 KB (at 224 px) out of a memory map: no
network, no PNG.

Layout of one cache (a folder under ``cache_dir`` named by the fingerprint)::

    <cache_dir>/<size>px-<fingerprint[:16]>/
        meta.json       what the cache holds (images root, image size, count, fingerprint, format)
        names.txt       the image names, one per line, in array order
        pixels.u8       (count, size, size) uint8, C order; row i is image i
        status.u8       one byte per image: 0 = not done, 1 = cached, 2 = missing object, 3 = bad image
        identity.bin    16 bytes per image: hash of the object's identity when it was fetched
        manifest.json   written last (atomically) when every image has a final status: the cache is complete
        .lock           advisory lock: one builder at a time; other processes wait for it

The fingerprint hashes the images root URL, the ordered image names of the label index and the image
size (plus this format's version), so a change of any of them makes a new cache (the labels themselves do
not change pixels, so relabelling reuses the cache). Each entry also records the identity of the object it
came from (``ImageStore.identities``: GCS generation/etag/size, local size and mtime_ns): every build lists
the images root once and fetches again the entries whose object changed (or appeared, or vanished) since,
reusing the others; the log says how many were stale. A build is resumable: pixels and identities are
written and flushed before their status byte, so a build killed at any point (Ctrl-C, SIGKILL, power loss)
leaves no half-written entry marked valid, and the next build fetches only what is not done.

Example:
    >>> cache = ImageCache("data/cache", "gs://bucket/png", names, image_size=224)  # doctest: +SKIP
    >>> cache.build(ImageStore("gs://bucket/png"))  # doctest: +SKIP
    >>> pixels = cache.open()  # (n, 224, 224) read-only memory map  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import mmap
import multiprocessing
import os
import pickle
import sys
import time
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumo.data.settings import check_policy
from pneumo.errors import PneumoError
from pneumo.images.decode import BadImageError
from pneumo.images.preprocess import Preprocessor
from pneumo.io.files import atomic_write_bytes, disk_full
from pneumo.io.reading import AccessDeniedError, ObjectNotFoundError
from pneumo.io.storage import redact_url
from pneumo.io.store import ImageStore, object_name

log = logging.getLogger(__name__)

#: Bumped whenever the stored bytes of an image would change (layout, resize stage, per-entry identity).
FORMAT_VERSION = 3
#: Bytes of the identity hash stored per entry.
IDENTITY_BYTES = 16
TODO, CACHED, MISSING, BAD = 0, 1, 2, 3
STATUS_NAMES = {TODO: "not done", CACHED: "cached", MISSING: "missing", BAD: "bad image"}


_DISK_FULL_FIX = "free space there or set data.cache.dir to a disk with room for the whole cache"


class CacheError(PneumoError, RuntimeError):
    """A cache that cannot be built or used; the message names the folder and what to do."""


def cache_fingerprint(
    images_url: str,
    names: Sequence[str],
    image_size: int,
    image_suffix: str | None = None,
    dicom_voi: str = "auto",
) -> str:
    """SHA-256 of what determines the cached bytes: images root, ordered image names, image size, format,
    and (when not the defaults) the object names' suffix and the DICOM grey-level mode.

    Example:
        >>> a = cache_fingerprint("gs://b/png", ["1.png", "2.png"], 224)
        >>> a == cache_fingerprint("gs://b/png", ["1.png", "2.png"], 256)
        False
    """
    digest = hashlib.sha256()
    head = {"format": FORMAT_VERSION, "stage": "ResizeToUint8(box)", "images_url": redact_url(images_url)}
    # Added only when set, so the caches of PNG sources keep their fingerprints.
    decoding = {"image_suffix": image_suffix} if image_suffix else {}
    decoding.update({"dicom_voi": dicom_voi} if dicom_voi != "auto" else {})
    digest.update(json.dumps({**head, "image_size": int(image_size), **decoding}, sort_keys=True).encode())
    for name in names:
        digest.update(str(name).encode())
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class _FetchOptions:
    """How ``ImageCache.build`` treats what it fetches: the ``data.images.on_missing`` / ``data.images.on_bad_image``
    policies, the progress display and how often finished entries are committed."""

    on_missing: str
    on_bad_image: str
    progress: bool
    commit_every_s: float


class _Progress:
    """A tqdm bar (images/s, ETA) on a terminal, else a log line every ``every_s`` seconds."""

    def __init__(self, total: int, done: int, desc: str, enabled: bool = True, every_s: float = 30.0) -> None:
        self.total, self.done, self.start_done = total, done, done
        self.every_s, self.last_log = every_s, time.monotonic()
        self.t0 = time.monotonic()
        self.bar = None
        self.desc = desc
        if enabled and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=total, initial=done, desc=desc, unit="img", dynamic_ncols=True, smoothing=0.1
            )

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif time.monotonic() - self.last_log >= self.every_s:
            self.last_log = time.monotonic()
            rate = (self.done - self.start_done) / max(time.monotonic() - self.t0, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            log.info("%s: %d/%d images, %.0f img/s, ETA %.0f s", self.desc, self.done, self.total, rate, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class ImageCache:
    """A resumable, memory-mapped uint8 cache of the images of a label index.

    Args:
        cache_dir: parent folder of caches (``data.cache.dir``); each fingerprint gets a sub-folder.
        images_url: root the images are read from (part of the fingerprint).
        names: image names in array order (the label index's ``Image Index`` column).
        image_size: side of the stored images (``data.images.size``).
        image_suffix: the suffix of the objects' names (``data.images.suffix``), part of the fingerprint.
        dicom_voi: grey levels of DICOM images (``data.images.dicom_voi``, see ``pneumo.images.dicom``).
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        images_url: str,
        names: Sequence[str],
        image_size: int,
        image_suffix: str | None = None,
        dicom_voi: str = "auto",
    ) -> None:
        self.names = [str(n) for n in names]
        if not self.names:
            raise CacheError("no images to cache (the label index is empty)")
        self.images_url = images_url
        self.size = int(image_size)
        self.dicom_voi = dicom_voi
        self.fingerprint = cache_fingerprint(images_url, self.names, self.size, image_suffix, dicom_voi)
        self.dir = Path(cache_dir).expanduser().absolute() / f"{self.size}px-{self.fingerprint[:16]}"
        self.item_bytes = self.size * self.size

    # ------------------------------------------------------------------ paths and state
    @property
    def pixels_path(self) -> Path:
        return self.dir / "pixels.u8"

    @property
    def status_path(self) -> Path:
        return self.dir / "status.u8"

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.json"

    @property
    def identity_path(self) -> Path:
        return self.dir / "identity.bin"

    def identities_of(self, listed: dict[str, str], suffix: str | None = None) -> np.ndarray:
        """``(count, IDENTITY_BYTES)`` hashes of the listed identity of each image's object (named with
        ``suffix``, ``data.images.suffix``; absent: the hash of ``""``)."""
        out = np.empty((len(self), IDENTITY_BYTES), np.uint8)
        for i, name in enumerate(self.names):
            identity = listed.get(object_name(name, suffix), "")
            digest = hashlib.blake2b(identity.encode(), digest_size=IDENTITY_BYTES).digest()
            out[i] = np.frombuffer(digest, np.uint8)
        return out

    def stored_identities(self) -> np.ndarray:
        """The identity hashes recorded with the entries (zeros where nothing was recorded)."""
        try:
            raw = np.fromfile(self.identity_path, dtype=np.uint8)
        except FileNotFoundError:
            raw = np.zeros(0, np.uint8)
        if raw.size != len(self) * IDENTITY_BYTES:
            return np.zeros((len(self), IDENTITY_BYTES), np.uint8)
        return raw.reshape(len(self), IDENTITY_BYTES)

    def __len__(self) -> int:
        return len(self.names)

    def manifest(self) -> dict | None:
        """The completion manifest, or ``None`` while the cache is incomplete."""
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return manifest if manifest.get("fingerprint") == self.fingerprint else None

    def is_complete(self) -> bool:
        return self.manifest() is not None and self._files_have_expected_sizes()

    def status(self) -> np.ndarray:
        """Per-image status (``TODO``, ``CACHED``, ``MISSING``, ``BAD``) as a uint8 array."""
        if not self.status_path.exists():
            return np.zeros(len(self), np.uint8)
        status = np.fromfile(self.status_path, dtype=np.uint8)
        if status.size != len(self):
            raise CacheError(
                f"{self.status_path}: {status.size} entries, expected {len(self)}: delete {self.dir}"
            )
        return status

    def _files_have_expected_sizes(self) -> bool:
        try:
            return (
                self.pixels_path.stat().st_size == len(self) * self.item_bytes
                and self.status_path.stat().st_size == len(self)
                and self.identity_path.stat().st_size == len(self) * IDENTITY_BYTES
            )
        except FileNotFoundError:
            return False

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the folder's exclusive lock; another process building the same cache makes us wait."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("another process is building the cache in %s; waiting for it", self.dir)
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _initialise(self) -> None:
        """Create (or check) meta.json, names.txt, a sparse pixels.u8 and a zeroed status.u8."""
        meta = {
            "format": FORMAT_VERSION,
            "fingerprint": self.fingerprint,
            "images_url": redact_url(self.images_url),
            "image_size": self.size,
            "count": len(self),
            "dtype": "uint8",
            "shape": [len(self), self.size, self.size],
        }
        meta_path = self.dir / "meta.json"
        if meta_path.exists() and self._files_have_expected_sizes():
            try:
                if json.loads(meta_path.read_text()).get("fingerprint") == self.fingerprint:
                    return  # an interrupted build: resume it
            except json.JSONDecodeError:
                pass
            log.warning("cache folder %s holds something else; starting it again", self.dir)
        for path in (self.manifest_path, self.status_path, self.pixels_path, self.identity_path):
            path.unlink(missing_ok=True)
        _write_cache_file(self.dir / "names.txt", ("\n".join(self.names) + "\n").encode())
        with open(self.pixels_path, "wb") as fh:
            fh.truncate(len(self) * self.item_bytes)  # sparse: costs no disk until written
        with open(self.identity_path, "wb") as fh:
            fh.truncate(len(self) * IDENTITY_BYTES)
        with open(self.status_path, "wb") as fh:
            fh.write(bytes(len(self)))
            os.fsync(fh.fileno())
        _write_cache_file(meta_path, json.dumps(meta, indent=2).encode())

    # ------------------------------------------------------------------ build
    def build(
        self,
        store: ImageStore,
        on_missing: str = "error",
        on_bad_image: str = "error",
        progress: bool = True,
        commit_every_s: float = 1.0,
        workers: int = 0,
    ) -> dict:
        """Fetch, decode and resize every image not yet cached; return the completion manifest.

        Args:
            store: where the images are read (its ``concurrency`` sets the requests in flight).
            on_missing: ``error`` stops at the first missing object (naming it); ``skip`` marks it and goes on.
            on_bad_image: the same for objects that are not a usable image (see ``decode_grayscale``).
            progress: show a progress bar (images/s, ETA) on a terminal, or log lines otherwise.
            commit_every_s: how often finished entries are flushed and marked valid.
            workers: decode in this many processes (each with ``store.concurrency`` requests in flight);
                0 = threads of this process only (decoding then shares one interpreter lock).

        Raises:
            ObjectNotFoundError / BadImageError: with policy ``error``; finished entries stay valid.
            StoreUnavailableError, AccessDeniedError: whatever the policy (the build can resume later).
        """
        options = _FetchOptions(
            check_policy(on_missing, "data.images.on_missing"),
            check_policy(on_bad_image, "data.images.on_bad_image"),
            progress,
            commit_every_s,
        )
        with self._locked():
            current = self._current_identities(store)
            manifest = self.manifest()
            if (
                manifest is not None
                and self._files_have_expected_sizes()
                and not len(self._stale_rows(self.status(), current))
            ):
                return manifest
            self._initialise()
            status = self.status()
            stale = self._stale_rows(status, current)
            if len(stale):
                log.info(
                    "%d of %d cache entries are stale (their object changed, appeared or vanished since it was "
                    "cached, e.g. %s): fetching them again",
                    len(stale),
                    len(self),
                    ", ".join(self.names[i] for i in stale[:3]),
                )
                self._mark_not_done(stale, status)
            todo = np.flatnonzero(status == TODO)
            self._log_start(store, len(todo), workers)
            t0 = time.monotonic()
            # The sparse pixels file takes its disk space as images are written: a full disk shows here.
            with disk_full(self.pixels_path, len(todo) * self.item_bytes, _DISK_FULL_FIX):
                self._fetch(store, todo, status, current, options, workers)
            return self._finish(status, fetched=len(todo), seconds=time.monotonic() - t0, stale=len(stale))

    def _log_start(self, store: ImageStore, todo: int, workers: int) -> None:
        """Say whether the build starts or resumes, and how (requests in flight, decoding processes)."""
        if todo < len(self):
            log.info(
                "resuming the image cache in %s: %d of %d images already done",
                self.dir,
                len(self) - todo,
                len(self),
            )
            return
        log.info(
            "caching %d images of %s at %d px in %s (%d requests in flight, %s)",
            len(self),
            redact_url(self.images_url),
            self.size,
            self.dir,
            store.concurrency * max(1, workers),
            f"{workers} decode processes" if workers > 0 else "decoding in threads",
        )

    def _current_identities(self, store: ImageStore) -> np.ndarray:
        """Identity hashes of the objects now, from one listing of the images root; where the credentials may
        read objects but not list them, the recorded ones (nothing can be found stale: said in the log)."""
        try:
            return self.identities_of(store.identities(), store.suffix)
        except AccessDeniedError as err:
            log.warning(
                "cannot list %s (%s): cached entries are not checked against their objects; delete %s to "
                "fetch every image again",
                redact_url(self.images_url),
                err,
                self.dir,
            )
            stored = self.stored_identities()
            return np.where(self.status()[:, None] == TODO, self.identities_of({}), stored)

    def _stale_rows(self, status: np.ndarray, current: np.ndarray) -> np.ndarray:
        """Rows with a final status whose object's identity differs from the one recorded with them."""
        return np.flatnonzero((status != TODO) & (self.stored_identities() != current).any(axis=1))

    def _mark_not_done(self, rows: np.ndarray, status: np.ndarray) -> None:
        """Set ``rows`` back to not done (the cache is incomplete from here on until they are fetched)."""
        self.manifest_path.unlink(missing_ok=True)
        status[rows] = TODO
        fd = os.open(self.status_path, os.O_RDWR)
        try:
            for row in rows:
                os.pwrite(fd, bytes((TODO,)), int(row))
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _fetch(
        self,
        store: ImageStore,
        todo: np.ndarray,
        status: np.ndarray,
        identities: np.ndarray,
        options: _FetchOptions,
        workers: int,
    ) -> None:
        pixels_fd = os.open(self.pixels_path, os.O_RDWR)
        status_fd = os.open(self.status_path, os.O_RDWR)
        identity_fd = os.open(self.identity_path, os.O_RDWR)
        pending: list[tuple[int, int]] = []  # (row, status) written but not yet marked

        def commit() -> None:
            if not pending:
                return
            for row, _ in pending:  # the identity of the object each entry was fetched from
                os.pwrite(identity_fd, identities[row].tobytes(), row * IDENTITY_BYTES)
            # pixels and identities reach the disk before the status that vouches for them
            os.fdatasync(pixels_fd)
            os.fdatasync(identity_fd)
            for row, value in pending:
                os.pwrite(status_fd, bytes((value,)), row)
                status[row] = value
            os.fdatasync(status_fd)
            pending.clear()

        bar = _Progress(len(self), len(self) - len(todo), "caching images", enabled=options.progress)
        last_commit = time.monotonic()
        names = [self.names[i] for i in todo]
        if workers > 0:
            results = _results_from_processes(store, names, self.size, workers, self.dicom_voi)
        else:
            results = store.map_unordered(names, PixelDecoder(store, self.size, self.dicom_voi))
        try:
            for j, result in results:
                row = int(todo[j])
                if isinstance(result, np.ndarray):
                    os.pwrite(pixels_fd, result.tobytes(), row * self.item_bytes)
                    pending.append((row, CACHED))
                elif isinstance(result, ObjectNotFoundError) and options.on_missing == "skip":
                    pending.append((row, MISSING))
                elif isinstance(result, BadImageError) and options.on_bad_image == "skip":
                    pending.append((row, BAD))
                else:
                    raise result
                bar.update()
                if time.monotonic() - last_commit >= options.commit_every_s:
                    commit()
                    last_commit = time.monotonic()
        finally:
            results.close()  # cancel requests not yet started
            bar.close()
            commit()
            os.close(pixels_fd)
            os.close(status_fd)
            os.close(identity_fd)

    def _finish(self, status: np.ndarray, fetched: int, seconds: float, stale: int = 0) -> dict:
        counts = {STATUS_NAMES[k]: int((status == k).sum()) for k in (CACHED, MISSING, BAD)}
        skipped = {
            "missing": [self.names[i] for i in np.flatnonzero(status == MISSING)[:20]],
            "bad image": [self.names[i] for i in np.flatnonzero(status == BAD)[:20]],
        }
        if counts["cached"] == 0:
            raise CacheError(
                f"none of the {len(self)} images under {redact_url(self.images_url)} could be cached "
                f"({counts['missing']} missing, {counts['bad image']} bad): is data.images_url right? "
                f"(delete {self.dir} to try again)"
            )
        for kind, key in (("missing", "data.images.on_missing"), ("bad image", "data.images.on_bad_image")):
            if counts[kind]:
                log.warning(
                    "%d of %d images skipped as %s (%s=skip), first: %s",
                    counts[kind],
                    len(self),
                    kind,
                    key,
                    ", ".join(skipped[kind][:5]),
                )
        manifest = {
            "fingerprint": self.fingerprint,
            "format": FORMAT_VERSION,
            "images_url": redact_url(self.images_url),
            "image_size": self.size,
            "count": len(self),
            **counts,
            "first_skipped": skipped,
            "last_build": {"fetched": fetched, "stale": stale, "seconds": round(seconds, 3)},
        }
        _write_cache_file(self.manifest_path, json.dumps(manifest, indent=2).encode())
        if fetched:
            log.info(
                "image cache complete: %d cached (%d fetched, %d of them stale, in %.1f s, %.0f img/s) in %s",
                counts["cached"],
                fetched,
                stale,
                seconds,
                fetched / max(seconds, 1e-9),
                self.dir,
            )
        return manifest

    # ------------------------------------------------------------------ read
    def open(self) -> np.memmap:
        """The cached pixels as a read-only ``(count, size, size)`` memory map (nothing is loaded)."""
        if not self.is_complete():
            raise CacheError(
                f"the image cache in {self.dir} is not complete: run prepare_data() (or train.py) to build it"
            )
        return np.memmap(self.pixels_path, dtype=np.uint8, mode="r", shape=(len(self), self.size, self.size))

    def source(self, names: Sequence[str]) -> CachedSource:
        """A dataset source giving the cached pixels of ``names`` (which must be cached) by position."""
        position = {name: i for i, name in enumerate(self.names)}
        status = self.status()
        rows = np.fromiter((position[n] for n in names), dtype=np.int64, count=len(names))
        not_cached = [names[i] for i in np.flatnonzero(status[rows] != CACHED)[:5]]
        if not_cached:
            raise CacheError(f"images not in the cache {self.dir}: {not_cached}")
        return CachedSource(self.pixels_path, len(self), self.size, rows)


class CachedSource:
    """Item ``i`` = the cached ``(size, size)`` uint8 pixels of row ``rows[i]``, read from a memory map;
    ``many(indices)`` = a whole batch as one ``(B, size, size)`` array (what the loaders use).

    Picklable for DataLoader workers (each process maps the file itself). After copying an item out, its
    pages are released from this process (``MADV_DONTNEED``; they stay in the OS page cache), so the resident
    memory of an epoch stays flat instead of growing by the whole array.
    """

    def __init__(
        self, path: str | os.PathLike, count: int, size: int, rows: np.ndarray, release_pages: bool = True
    ) -> None:
        self.path, self.count, self.size = str(path), int(count), int(size)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.release_pages = release_pages and hasattr(mmap, "MADV_DONTNEED")
        self._map: np.memmap | None = None
        self._pid: int | None = None
        self._file: int | None = None
        self._file_pid: int | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def _pixels(self) -> np.memmap:
        if self._map is None or self._pid != os.getpid():
            self._map = np.memmap(
                self.path, dtype=np.uint8, mode="r", shape=(self.count, self.size, self.size)
            )
            self._pid = os.getpid()
        return self._map

    def __call__(self, i: int) -> np.ndarray:
        pixels = self._pixels()
        row = int(self.rows[i])
        out = np.array(pixels[row])  # a private, writable copy
        if self.release_pages:
            item = self.size * self.size
            start = (row * item) // mmap.PAGESIZE * mmap.PAGESIZE
            end = -(-((row + 1) * item) // mmap.PAGESIZE) * mmap.PAGESIZE
            # numpy's memmap exposes its mmap (madvise) only as the private, untyped _mmap.
            pixels._mmap.madvise(  # type: ignore[attr-defined]  # noqa: SLF001
                mmap.MADV_DONTNEED, start, min(end, self.count * item) - start
            )
        return out

    def many(self, indices: Sequence[int]) -> np.ndarray:
        """The ``(len(indices), size, size)`` uint8 pixels of a whole batch, in the order of ``indices``.

        The rows are read in file order, one ``preadv`` per run of consecutive rows straight into the rows of
        the output (a shuffled batch of 32 is ~32 reads, an unshuffled one a single read): no per-item copy
        out of a memory map and no mapped pages, so the resident memory stays flat without ``madvise``.
        """
        rows = self.rows[np.asarray(indices, dtype=np.int64)]
        out = np.empty((len(rows), self.size, self.size), np.uint8)
        if not len(rows):
            return out
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        starts, ends = np.concatenate(([0], breaks)), np.concatenate((breaks, [len(ordered)]))
        item, fd = self.size * self.size, self._fd()
        for start, end in zip(starts.tolist(), ends.tolist()):
            offset = int(ordered[start]) * item
            buffers = [out[j] for j in order[start:end].tolist()]
            if os.preadv(fd, buffers, offset) != (end - start) * item:
                raise CacheError(f"{self.path}: short read at byte {offset}: delete its cache folder")
        return out

    def _fd(self) -> int:
        """A read-only descriptor of the pixels file, one per process (workers open their own)."""
        if self._file is None or self._file_pid != os.getpid():
            self._file = os.open(self.path, os.O_RDONLY)
            self._file_pid = os.getpid()
        return self._file

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_map": None, "_pid": None, "_file": None, "_file_pid": None}

    def __del__(self) -> None:
        if getattr(self, "_file", None) is not None and self._file_pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._file)  # type: ignore[arg-type]


class PixelDecoder:
    """Object bytes -> decoded, resized ``(size, size)`` uint8 pixels (``Preprocessor.pixels``): what the cache
    stores and what streaming yields (the ``work`` of ``ImageStore.map_unordered``); bad images raise
    ``BadImageError`` naming the URL. PNG, JPEG and DICOM alike (``dicom_voi`` sets DICOM's grey levels)."""

    def __init__(self, store: ImageStore, size: int, dicom_voi: str = "auto") -> None:
        self.store, self.preprocess = store, Preprocessor(size, dicom_voi=dicom_voi)

    def __call__(self, name: str, data: bytes) -> np.ndarray:
        return self.preprocess.pixels(data, self.store.url(name))


_worker_decoder: PixelDecoder | None = None


def _init_worker(store: ImageStore, size: int, dicom_voi: str) -> None:
    global _worker_decoder
    import torch

    torch.set_num_threads(1)  # one core per process: the pool is the parallelism
    _worker_decoder = PixelDecoder(store, size, dicom_voi)


def _decode_chunk(names: list[str]) -> list[tuple[int, np.ndarray | BaseException]]:
    """In a worker process: fetch and decode ``names`` (concurrently), results by position in ``names``."""
    decoder = _worker_decoder
    assert decoder is not None  # set by _init_worker, the pool's initializer
    out: list[tuple[int, np.ndarray | BaseException]] = []
    for j, result in decoder.store.map_unordered(names, decoder):
        if isinstance(result, BaseException):
            try:
                pickle.dumps(result)
            except Exception:  # noqa: BLE001 - an exception that cannot cross the process boundary
                out.append((j, RuntimeError(f"{names[j]}: {type(result).__name__}: {result}")))
                continue
        out.append((j, result))
    return out


def _results_from_processes(
    store: ImageStore, names: list[str], size: int, workers: int, dicom_voi: str = "auto"
) -> Generator[tuple[int, np.ndarray | BaseException], None, None]:
    """``(position, pixels or exception)`` for ``names``, decoded in ``workers`` processes (chunks in flight)."""
    chunk = max(8, 2 * store.concurrency)
    starts = list(range(0, len(names), chunk))
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(store, size, dicom_voi)
    )
    pending: dict[Future, int] = {}
    next_chunk = 0
    finished = False
    try:
        while pending or next_chunk < len(starts):
            while next_chunk < len(starts) and len(pending) < 2 * workers:
                start = starts[next_chunk]
                pending[pool.submit(_decode_chunk, names[start : start + chunk])] = start
                next_chunk += 1
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                start = pending.pop(future)
                for j, result in future.result():
                    yield start + j, result
        finished = True
    finally:
        # On an early stop, chunks still running are abandoned (their results are not needed).
        pool.shutdown(wait=finished, cancel_futures=True)


def _write_cache_file(path: Path, data: bytes) -> None:
    """A small cache file (names, meta, manifest), written whole and synced (``atomic_write_bytes``)."""
    atomic_write_bytes(path, data, durable=True, fix=_DISK_FULL_FIX)
