"""A Google Cloud Storage emulator on 127.0.0.1 for tests, benchmarks and trying the GCS path offline.

It serves the real ``gcp-storage-emulator`` (``pip install "pneumo[dev]"``): its request handler and its
in-memory storage, behind a socket server of ours that fixes what makes the bare emulator unfit for
concurrency and fault tests:

- a listen backlog of 1024 (the emulator's ``HTTPServer`` keeps 5, and concurrent reads stall for seconds);
- optionally one thread per request plus a fixed delay per request, modelling cloud latency (the emulator
  serves one request at a time, so parallel reads could not look faster than sequential ones);
- stop / restart on the same port (fault tests), a log of every request that reached it (method, path,
  query, headers) and, because the emulator has no billing, a model of Requester Pays buckets: requests
  without ``userProject`` get GCS's 400, requests billing a project not allowed get GCS's 403;
- injected HTTP errors: ``fail_requests(pattern, times, status)`` answers the next ``times`` requests for
  matching objects with ``status`` (503 by default; ``times=None``: every one, a permanent failure), and
  ``fault`` takes any per-request rule.

Importing it turns gcsfs's experimental gRPC probe off before gcsfs is imported
(``pneumo.io.environment.prepare_gcsfs``: the probe stalls every call against an emulator). Clients are pointed at it explicitly (gcsfs ``endpoint_url``,
google-cloud-storage ``client_options``), never at the real service.

Command line, from any directory (an emulator holding a demo set in NIH's layout: ``png/...``, CSVs and
split lists)::

    python -m pneumo.testing.gcs_emulator --port 9023 --bucket nih-demo --n 200 --size 128 &
    python -m pneumo.testing.gcs_emulator --port 9023 --bucket nih-demo --wait    # returns once it serves
"""

from __future__ import annotations

from pneumo.io.environment import prepare_gcsfs

prepare_gcsfs(emulator=True)  # before gcsfs is imported, by this module or a caller

import argparse  # noqa: E402
import contextlib  # noqa: E402
import http.server  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import socketserver  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402
from urllib.parse import parse_qs, unquote, urlparse  # noqa: E402

from gcp_storage_emulator.handlers import buckets  # noqa: E402
from gcp_storage_emulator.server import RequestHandler  # noqa: E402
from gcp_storage_emulator.storage import Storage  # noqa: E402

if TYPE_CHECKING:
    from gcsfs import GCSFileSystem
    from google.cloud.storage import Client

# For code that starts the emulator's own server (gcp_storage_emulator.server.create_server).
http.server.HTTPServer.request_queue_size = 1024

#: Files of the demo set uploaded next to png/ (NIH publishes them next to the images).
NIH_SIDE_FILES = ("Data_Entry_2017.csv", "train_val_list.txt", "test_list.txt", "BBox_List_2017.csv")


@dataclass
class RecordedRequest:
    """One request that reached the emulator."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names in lower case
    bucket: str | None = None
    time: float = field(default_factory=time.monotonic)


@dataclass
class InjectedFailure:
    """Requests whose path (URL-decoded, e.g. ``/download/storage/v1/b/B/o/png/x.png``) matches the regular
    expression ``pattern`` are answered with HTTP ``status``: the next ``times`` of them, or every one when
    ``times`` is ``None``. ``hits`` counts the requests it answered."""

    pattern: str
    status: int = 503
    times: int | None = 1
    hits: int = 0

    def takes(self, rec: RecordedRequest) -> bool:
        """Whether this rule answers ``rec`` (counted when it does)."""
        if self.times is not None and self.hits >= self.times:
            return False
        if re.search(self.pattern, unquote(rec.path)) is None:
            return False
        self.hits += 1
        return True


def _bucket_of(path: str) -> str | None:
    parts = [unquote(p) for p in path.split("/") if p]
    for i, part in enumerate(parts[:-1]):
        if part == "b":
            return parts[i + 1]
    if parts and parts[0] not in ("storage", "upload", "download", "batch", "wipe"):
        return parts[0]  # public / XML-style URL: /<bucket>/<object>
    return None


class _Handler(RequestHandler):
    emulator: GCSEmulator  # set on a per-emulator subclass

    def parse_request(self) -> bool:
        if not super().parse_request():
            return False
        em = self.emulator
        url = urlparse(self.path)
        rec = RecordedRequest(
            method=self.command,
            path=url.path,
            query=parse_qs(url.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            bucket=_bucket_of(url.path),
        )
        refusal = em.admit(rec)
        if refusal is None:
            return True
        status, message = refusal
        body = json.dumps(
            {"error": {"code": status, "message": message, "errors": [{"message": message}]}}
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True
        return False

    def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
        pass


class _QuietErrors(socketserver.BaseServer):
    """Count clients that hung up before their answer was written (timeouts, a SIGKILLed process) rather
    than printing a traceback for each; other errors are printed as usual."""

    hung_up: int

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        err = sys.exc_info()[1]
        if isinstance(err, (BrokenPipeError, ConnectionResetError)):
            self.hung_up += 1
        else:
            super().handle_error(request, client_address)


class _Server(_QuietErrors, http.server.HTTPServer):
    request_queue_size = 1024
    allow_reuse_address = True
    hung_up = 0


class _ThreadingServer(_QuietErrors, http.server.ThreadingHTTPServer):
    request_queue_size = 1024
    allow_reuse_address = True
    daemon_threads = True
    hung_up = 0


class GCSEmulator:
    """gcp-storage-emulator in this process on ``127.0.0.1``, with the extras tests need.

    Args:
        threaded: one thread per request (needed for concurrency benchmarks); the emulator's own server
            handles one request at a time.
        latency_s: delay added to every request (modelled time to first byte of a cloud object store).

    Example:
        >>> em = GCSEmulator().start()  # doctest: +SKIP
        >>> em.create_bucket("b"); fs = em.gcsfs(); fs.pipe("b/x", b"1")  # doctest: +SKIP
        >>> em.stop()  # doctest: +SKIP
    """

    def __init__(self, threaded: bool = False, latency_s: float = 0.0) -> None:
        self.storage = Storage(use_memory_fs=True)
        self.threaded = threaded
        self.latency_s = latency_s
        self.requests: list[RecordedRequest] = []
        #: Requester Pays buckets: name -> billing projects allowed (GCS checks the caller may bill them).
        self.requester_pays: dict[str, set[str]] = {}
        #: fault hook: called with each request, returns an HTTP status to answer instead, or ``(status,
        #: message)`` to choose the error message too (or None to serve the request).
        self.fault: Callable[[RecordedRequest], int | tuple[int, str] | None] | None = None
        #: failures injected by ``fail_requests``, tried in order before ``fault``
        self.failures: list[InjectedFailure] = []
        self.port = 0
        self._server: http.server.HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle
    def start(self, port: int | None = None) -> GCSEmulator:
        """Listen on ``port`` (default: the previous port, or a free one) and serve in a thread."""
        handler = type("Handler", (_Handler,), {"emulator": self})
        server_cls = _ThreadingServer if self.threaded else _Server
        port = self.port if port is None else port
        deadline = time.monotonic() + 10
        while True:
            try:
                self._server = server_cls(("127.0.0.1", port), lambda *a: handler(self.storage, *a))
                break
            except OSError:  # the old socket of a restart may linger for a moment
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: new connections are refused until ``start`` (the stored objects are kept)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = None

    def restart_after(self, seconds: float) -> threading.Timer:
        """Start again on the same port after ``seconds`` (from a timer thread)."""
        timer = threading.Timer(seconds, self.start)
        timer.daemon = True
        timer.start()
        return timer

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wipe(self) -> None:
        """Forget every bucket, object, recorded request and fault."""
        self.storage.wipe()
        self.requests.clear()
        self.requester_pays.clear()
        self.clear_faults()

    def clear_faults(self) -> None:
        """Serve every request again: no injected failures, no ``fault`` rule."""
        with self._lock:
            self.failures.clear()
        self.fault = None

    # ------------------------------------------------------------------ behaviour
    def fail_requests(self, pattern: str, times: int | None = 1, status: int = 503) -> InjectedFailure:
        """Answer the next ``times`` requests whose URL-decoded path matches the regular expression ``pattern``
        with HTTP ``status`` (``times=None``: every one, a permanent failure); returns the rule, whose ``hits``
        count the requests it failed.

        Example:
            >>> em = GCSEmulator().start()  # doctest: +SKIP
            >>> rule = em.fail_requests("/o/png/", times=2)  # the next 2 image reads: 503  # doctest: +SKIP
        """
        rule = InjectedFailure(pattern, status, times)
        with self._lock:
            self.failures.append(rule)
        return rule

    def admit(self, rec: RecordedRequest) -> tuple[int, str] | None:
        """Record a request the server received (after ``latency_s``); the ``(status, message)`` that refuses
        it (an injected failure, a fault, Requester Pays without a project), or ``None`` to serve it."""
        with self._lock:
            self.requests.append(rec)
        if self.latency_s > 0:
            time.sleep(self.latency_s)
        return self._refusal(rec)

    def _refusal(self, rec: RecordedRequest) -> tuple[int, str] | None:
        with self._lock:
            rule = next((r for r in self.failures if r.takes(rec)), None)
        if rule is not None:
            return rule.status, f"injected fault {rule.status}"
        if self.fault is not None:
            answer = self.fault(rec)
            if isinstance(answer, tuple):
                return answer
            if answer:
                return answer, f"injected fault {answer}"
        if rec.bucket in self.requester_pays:
            project = (rec.query.get("userProject") or [""])[0]
            if not project:
                return 400, "Bucket is a requester pays bucket but no user project provided."
            if project not in self.requester_pays[rec.bucket]:
                return 403, (
                    f"caller does not have serviceusage.services.use access to the Google Cloud project {project}."
                )
        return None

    def requests_for(self, bucket: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.bucket == bucket]

    # ------------------------------------------------------------------ content
    def create_bucket(self, name: str, requester_pays_projects: set[str] | None = None) -> None:
        """Create a bucket; with ``requester_pays_projects`` it behaves as a Requester Pays bucket."""
        buckets.create_bucket(name, self.storage)
        if requester_pays_projects is not None:
            self.requester_pays[name] = set(requester_pays_projects)

    @contextlib.contextmanager
    def billing_checks_off(self) -> Iterator[None]:
        """Lift the Requester Pays checks for a while (to set up bucket content as its owner would)."""
        saved, self.requester_pays = self.requester_pays, {}
        try:
            yield
        finally:
            self.requester_pays = saved

    def gcsfs(self, **options: Any) -> GCSFileSystem:
        """A gcsfs filesystem talking to this emulator only (no instance cache, anonymous unless told)."""
        import gcsfs

        options = {"token": "anon", **options}
        return gcsfs.GCSFileSystem(endpoint_url=self.endpoint, skip_instance_cache=True, **options)

    def storage_client(self, project: str = "test-project") -> Client:
        """A google-cloud-storage client pointed at this emulator by explicit endpoint."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        return storage.Client(
            project=project,
            credentials=AnonymousCredentials(),
            client_options={"api_endpoint": self.endpoint},
        )

    def upload_nih_layout(self, local_root: Path, bucket: str, prefix: str = "") -> list[str]:
        """Upload a demo set written by ``pneumo.synthetic.demo`` in NIH's bucket layout.

        ``images/<name>`` goes to ``gs://bucket/<prefix>png/<name>``; the CSVs and split lists beside it.
        Uploads happen with requester-pays checks off. Returns the image names.
        """
        local_root = Path(local_root)
        with self.billing_checks_off():
            fs = self.gcsfs()
            names = sorted(p.name for p in (local_root / "images").glob("*.png"))
            blobs = {f"{bucket}/{prefix}png/{n}": (local_root / "images" / n).read_bytes() for n in names}
            for side in NIH_SIDE_FILES:
                if (local_root / side).exists():
                    blobs[f"{bucket}/{prefix}{side}"] = (local_root / side).read_bytes()
            for path, data in blobs.items():  # one at a time: the emulator's storage is not thread-safe
                fs.pipe_file(path, data)
        with self._lock:
            self.requests.clear()
        return names


def nih_urls(bucket: str, prefix: str = "") -> dict:
    """``NIHDataModule`` location arguments for a bucket written by ``upload_nih_layout``."""
    root = f"gs://{bucket}/{prefix}"
    return {
        "images_url": f"{root}png",
        "labels_url": f"{root}Data_Entry_2017.csv",
        "split_lists": {"train_val": f"{root}train_val_list.txt", "test": f"{root}test_list.txt"},
    }


def wait_until_served(port: int, bucket: str, timeout_s: float = 300.0) -> int:
    """Poll ``http://127.0.0.1:port/<bucket>/Data_Entry_2017.csv`` (uploaded last) until it answers 200."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/{bucket}/Data_Entry_2017.csv", timeout=5
            ) as r:
                if r.status == 200:
                    return 0
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    print(f"no emulator served gs://{bucket} on port {port} within {timeout_s:.0f} s", flush=True)
    return 1


def main(argv: list[str] | None = None) -> int:
    """Serve an in-memory emulator with a demo set in NIH's layout until interrupted."""
    import tempfile

    from pneumo.synthetic.demo import write_synthetic_dataset

    parser = argparse.ArgumentParser(prog="python -m pneumo.testing.gcs_emulator", description=main.__doc__)
    parser.add_argument("--port", type=int, default=9023)
    parser.add_argument("--bucket", default="nih-demo")
    parser.add_argument("--n", type=int, default=200, help="demo images")
    parser.add_argument("--size", type=int, default=128, help="demo image side, pixels")
    parser.add_argument(
        "--latency-ms", type=float, default=0.0, help="delay added to every request (after upload)"
    )
    parser.add_argument(
        "--from-dir", help="upload this NIH-layout folder (images/, CSVs) instead of a new demo set"
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="do not serve: wait until an emulator on --port serves --bucket, then exit",
    )
    args = parser.parse_args(argv)
    if args.wait:
        return wait_until_served(args.port, args.bucket)
    em = GCSEmulator(threaded=True).start(args.port)
    em.create_bucket(args.bucket)
    if args.from_dir:
        names = em.upload_nih_layout(Path(args.from_dir), args.bucket)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            write_synthetic_dataset(tmp, n=args.n, size=args.size, seed=0)
            names = em.upload_nih_layout(Path(tmp), args.bucket)
    em.latency_s = args.latency_ms / 1000
    print(f"serving gs://{args.bucket} ({len(names)} images under png/) at {em.endpoint}", flush=True)
    print(f"export STORAGE_EMULATOR_HOST={em.endpoint}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        em.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
