"""Issue 25's data-integrity probes: a token left on disk, a read that hangs, a silent wrong split, runs that
do not repeat (real Hydra CLI runs, a real loopback server that never answers, real files)."""

from __future__ import annotations

import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pneumo.data.inputs import read_bytes, resolve_inputs
from pneumo.io.reading import StoreUnavailableError
from pneumo.io.storage import StorageSettings
from tests.helpers import ROOT, run_cli, tiny_overrides

#: Small I/O limits of the hang probes: each read gives up after ~2 s.
SHORT_IO = {"request_timeout_s": 1, "retry_deadline_s": 2, "retry_backoff_s": 0.1}


def _files_holding(folder: Path, secret: str) -> list[str]:
    """``grep -rl secret folder``: every file (text or binary) under ``folder`` holding ``secret``."""
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


@pytest.fixture()
def silent_server() -> Iterator[str]:
    """``http://127.0.0.1:PORT``: a server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])  # kept open, never read from nor written to
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in held:
        conn.close()
    server.close()


# ---------------------------------------------------------------------------------------------- fault 1
@pytest.mark.slow
@pytest.mark.parametrize("command", ["train", "explain", "evaluate"])
def test_a_token_under_any_key_is_in_no_file_of_the_run(
    command: str, tiny_ckpt: Path, demo_root: Path, tmp_path: Path
) -> None:
    """Fault 1: a token typed under a key the storage settings refuse (``*.storage.options.token``) and one
    under a key nothing reads (``+notes.api_key``): refused or not, neither is in any file the run leaves
    (Hydra's ``.hydra/*.yaml`` included) nor in what it printed."""
    refused, ignored = "ya29.PLANTED-refused-0123456789", "opaque-PLANTED-ignored-0123456789"
    run_dir = tmp_path / "run"
    common = [f"hydra.run.dir={run_dir}", f"+notes.api_key={ignored}"]
    args = {
        "train": [
            str(ROOT / "train.py"),
            *tiny_overrides(demo_root, tmp_path),
            f"+data.storage.options.token={refused}",
        ],
        "explain": [
            str(ROOT / "explain.py"),
            f"ckpt_path={tiny_ckpt}",
            "split=test",
            f"+storage.options.token={refused}",
        ],
        "evaluate": [
            "-m",
            "pneumo.evaluation",
            f"predictions={demo_root / 'test_list.txt'}",
            f"+storage.options.token={refused}",
        ],
    }[command]
    proc = run_cli([*args, *common], cwd=tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines  # one line: the first key refused
    assert refused not in proc.stdout + proc.stderr and ignored not in proc.stdout + proc.stderr
    saved = sorted(p.name for p in (run_dir / ".hydra").iterdir())
    # Hydra wrote them, then they were scrubbed
    assert saved == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert "storage.options.token=***" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    for secret in (refused, ignored):
        assert not _files_holding(tmp_path, secret), secret


# ---------------------------------------------------------------------------------------------- fault 3
def test_reads_from_a_server_that_never_answers_end_with_the_url(silent_server: str) -> None:
    """Fault 3: an image URL and a list URL of explain's inputs end after the retry deadline, naming the URL."""
    storage = StorageSettings(**SHORT_IO)
    for url, read in (
        (f"{silent_server}/hang.png", lambda u: read_bytes(u, storage)),
        (f"{silent_server}/list.txt", lambda u: resolve_inputs(u, storage)),
    ):
        with pytest.raises(StoreUnavailableError) as err:
            read(url)
        assert url in str(err.value) and "retry_deadline_s=2" in str(err.value)


@pytest.mark.slow
def test_explain_a_list_of_urls_from_a_server_that_never_answers_ends(
    silent_server: str, tiny_ckpt: Path, tmp_path: Path
) -> None:
    """Fault 3 through the command: a ``.txt`` list naming an image on the silent server (with a token in its
    query) ends within the storage deadline (bounded here by the subprocess timeout: a hang fails the test),
    names the URL, and the token is in no file nor line."""
    token = "ya29.PLANTED-in-a-url-0123456789"
    url = f"{silent_server}/hang.png"
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"{url}?access_token={token}\n")
    try:
        proc = run_cli(
            [
                str(ROOT / "explain.py"),
                f"ckpt_path={tiny_ckpt}",
                f"inputs={listing}",
                f"out_dir={tmp_path / 'out'}",
                f"hydra.run.dir={tmp_path / 'run'}",
                *(f"storage.{k}={v}" for k, v in SHORT_IO.items()),
            ],
            cwd=tmp_path,
            timeout=120,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("explain.py waited on a server that never answers past the storage deadline")
    assert proc.returncode == 1, proc.stderr[-2000:]  # the one input could not be read; the run ended
    printed = proc.stdout + proc.stderr
    assert f"{url}?access_token=***" in printed and "unreachable" in printed, printed[-2000:]
    assert token not in printed
    assert not _files_holding(tmp_path / "run", token) and not _files_holding(tmp_path / "out", token)
