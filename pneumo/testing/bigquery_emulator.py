"""A BigQuery emulator (``bqemulator``, PyPI) on 127.0.0.1 for tests and for trying ``bq://`` offline.

``bqemulator`` runs as a subprocess from a virtual environment of its own (``.bqemu-venv`` in the
repository root by default, or ``$PNEUMO_BQEMU_PYTHON``): its pytest plugin breaks pytest in pneumo's own
environment. ``.ci/run`` creates that environment::

    python3 -m venv .bqemu-venv
    .bqemu-venv/bin/pip install bqemulator==1.4.0 duckdb==1.5.5 duckdb-extension-spatial==1.5.5 \\
        duckdb-extensions==1.5.5 numpy

The emulator loads DuckDB's ``spatial`` extension, which DuckDB would download: it is installed once from
the ``duckdb-extension-spatial`` wheel into a ``HOME`` of the emulator's own, so the start needs no network.
Ports are chosen by the emulator (``--rest-port 0 --grpc-port 0``) and read back from its JSON log; the
emulator is ready when ``/healthz`` answers (~2 s).

Example:
    >>> with BigQueryEmulator() as em:  # doctest: +SKIP
    ...     os.environ["BIGQUERY_EMULATOR_HOST"] = em.endpoint
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from pathlib import Path
from typing import Any

#: The emulator's packages (``.ci/run`` installs them into ``.bqemu-venv``).
PACKAGES = (
    "bqemulator==1.4.0",
    "duckdb==1.5.5",
    "duckdb-extension-spatial==1.5.5",
    "duckdb-extensions==1.5.5",
    "numpy",
)
#: The command that makes the emulator's environment (printed when it is missing).
INSTALL = f"python3 -m venv .bqemu-venv && .bqemu-venv/bin/pip install {' '.join(PACKAGES)}"
ROOT = Path(__file__).resolve().parents[2]


class EmulatorUnavailable(RuntimeError):
    """The emulator's environment is not installed, or the emulator did not start."""


def emulator_python() -> Path:
    """The interpreter of the emulator's environment (``$PNEUMO_BQEMU_PYTHON`` or ``.bqemu-venv``)."""
    configured = os.environ.get("PNEUMO_BQEMU_PYTHON")
    python = Path(configured) if configured else ROOT / ".bqemu-venv" / "bin" / "python"
    if not python.exists() or not (python.parent / "bqemulator").exists():
        raise EmulatorUnavailable(
            f"no bqemulator environment at {python.parent.parent}; create it: {INSTALL}"
        )
    return python


class BigQueryEmulator:
    """``bqemulator start`` as a subprocess on 127.0.0.1 with random ports.

    Args:
        project: the emulator's default project.
        start_timeout_s: how long to wait for ``/healthz``.
        rest_port: the REST port; 0 = a free one, chosen by the emulator.
    """

    def __init__(self, project: str = "test", start_timeout_s: float = 60.0, rest_port: int = 0) -> None:
        self.project = project
        self.rest_port = rest_port
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen | None = None
        self.port: int | None = None
        self.log: deque[str] = deque(maxlen=200)
        self._home = tempfile.mkdtemp(prefix="pneumo-bqemu-home-")

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` (the value of ``$BIGQUERY_EMULATOR_HOST``)."""
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        return {**os.environ, "HOME": self._home, "BQEMU_ENABLE_FORMAT_EXTENSIONS": "false"}

    def start(self) -> BigQueryEmulator:
        python = emulator_python()
        env = self._env()
        # DuckDB's spatial extension from its wheel into this HOME (DuckDB would download it otherwise).
        subprocess.run([str(python), "-c", "from duckdb_extensions import import_extension; import_extension('spatial')"],
                       env=env, check=True, capture_output=True, timeout=120)  # fmt: skip
        cmd = [str(python.parent / "bqemulator"), "start", "--rest-host", "127.0.0.1", "--grpc-host", "127.0.0.1",
               "--rest-port", str(self.rest_port), "--grpc-port", "0", "--project", self.project, "--log-format", "json"]  # fmt: skip
        self.process = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        deadline = time.monotonic() + self.start_timeout_s
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line.rstrip())
            if line.startswith("{"):
                event: dict[str, Any] = json.loads(line)
                if event.get("event") == "rest.listen":
                    self.port = int(event["port"])
                    break
            if time.monotonic() > deadline:
                break
        if self.port is None:
            self.stop()
            raise EmulatorUnavailable("bqemulator did not start: " + " | ".join(list(self.log)[-5:]))
        # Keep draining its log so the pipe never fills and blocks it.
        threading.Thread(target=self._drain, daemon=True).start()
        self._wait_healthy(deadline)
        return self

    def _drain(self) -> None:
        process = self.process
        if process is not None and process.stdout is not None:
            for line in process.stdout:
                self.log.append(line.rstrip())

    def _wait_healthy(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.endpoint + "/healthz", timeout=1) as answer:
                    answer.read()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise EmulatorUnavailable(f"bqemulator on {self.endpoint} did not answer /healthz")

    def stop(self) -> None:
        """SIGTERM (the emulator stops cleanly), then SIGKILL after 10 s."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    def client(self) -> Any:
        """A google-cloud-bigquery client of the emulator (anonymous credentials)."""
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import bigquery

        return bigquery.Client(project=self.project, credentials=AnonymousCredentials(),
                               client_options={"api_endpoint": self.endpoint})  # fmt: skip

    def __enter__(self) -> BigQueryEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m pneumo.testing.bigquery_emulator [--port N] [--project P]``: run the emulator until
    interrupted, printing the ``$BIGQUERY_EMULATOR_HOST`` value."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m pneumo.testing.bigquery_emulator", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--port", type=int, default=0, help="REST port (0: a free one, printed)")
    parser.add_argument("--project", default="test", help="the emulator's default project")
    args = parser.parse_args(argv)
    em = BigQueryEmulator(project=args.project, rest_port=args.port)
    try:
        em.start()
    except EmulatorUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"BIGQUERY_EMULATOR_HOST={em.endpoint}", flush=True)
    try:
        assert em.process is not None
        em.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        em.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
