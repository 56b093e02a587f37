"""ImageStore: errors that name the object, retries through a restarted server, a deadline for a dead one."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from pneumo.io.reading import AccessDeniedError, ObjectNotFoundError, StoreUnavailableError, is_transient
from pneumo.io.storage import StorageSettings, redact_secrets, redact_url
from pneumo.io.store import ImageStore
from tests.helpers import BILLING_PROJECT, closed_port

# Fault tests: short per-request timeouts and deadlines so that they finish in seconds.
FAST_IO = {
    "request_timeout_s": 1.0,
    "retry_deadline_s": 20.0,
    "retry_backoff_s": 0.05,
    "retry_backoff_max_s": 0.5,
}


def gs_store(em, bucket: str, project: str | None = BILLING_PROJECT, **io) -> ImageStore:
    settings = StorageSettings(
        project=project, requester_pays=True, token="anon", options={"endpoint_url": em.endpoint}, **FAST_IO
    )
    return ImageStore(
        f"gs://{bucket}/png", settings.options_for(f"gs://{bucket}/png"), **{**settings.io, **io}
    )


def test_gcs_options_apply_to_gs_urls_only() -> None:
    settings = StorageSettings(project="p", requester_pays=True, token="anon", options={"x": 1})
    assert settings.options_for("gs://b/png") == {
        "requester_pays": "p",
        "project": "p",
        "token": "anon",
        "x": 1,
    }
    assert settings.options_for("/local/png") == {"x": 1}
    assert StorageSettings(requester_pays=True).options_for("gs://b/png")["requester_pays"] is True


def test_redaction_of_tokens_and_signed_urls() -> None:
    cfg = {
        "data": {
            "token": "ya29.secret",
            "images_url": "gs://b/png",
            "labels_url": "https://h/o.csv?X-Goog-Signature=abc123&X-Goog-Credential=me%40x&alt=media",
            "storage_options": {"client_secret": "s3cr3t", "token": "anon", "project": "p"},
        },
        "seed": 1,
    }
    out = redact_secrets(cfg)
    text = repr(out)
    for secret in ("ya29.secret", "abc123", "me%40x", "s3cr3t"):
        assert secret not in text
    assert (
        out["data"]["storage_options"]["token"] == "anon" and out["data"]["storage_options"]["project"] == "p"
    )
    assert out["data"]["images_url"] == "gs://b/png" and out["seed"] == 1
    assert redact_url("gs://b/png/x.png") == "gs://b/png/x.png"


def test_transient_classification() -> None:
    class HttpError(Exception):
        def __init__(self, code: int) -> None:
            self.code = code

    assert is_transient(TimeoutError()) and is_transient(ConnectionResetError())
    assert is_transient(HttpError(503)) and is_transient(HttpError(429)) and is_transient(HttpError(408))
    assert not is_transient(HttpError(400)) and not is_transient(HttpError(403))
    assert not is_transient(FileNotFoundError("x")) and not is_transient(OSError("Forbidden: b/o"))


def test_missing_local_object_is_named(tmp_path: Path) -> None:
    store = ImageStore(str(tmp_path))
    with pytest.raises(ObjectNotFoundError, match=f"{tmp_path}/nope.png: object not found"):
        store.read("nope.png")


def test_missing_gs_object_is_named_without_retries(gcs_emulator, nih_bucket: str) -> None:
    store = gs_store(gcs_emulator, nih_bucket)
    with pytest.raises(
        ObjectNotFoundError, match=f"gs://{nih_bucket}/png/00999999_000.png: object not found"
    ):
        store.read("00999999_000.png")
    assert len(gcs_emulator.requests_for(nih_bucket)) == 1  # a 404 is final


def test_requester_pays_errors_say_what_to_set(gcs_emulator, nih_bucket: str, demo_root: Path) -> None:
    name = sorted(p.name for p in (demo_root / "images").iterdir())[0]
    # No billing project: GCS answers 400 "requester pays bucket but no user project provided".
    no_project = ImageStore(
        f"gs://{nih_bucket}/png", {"endpoint_url": gcs_emulator.endpoint, "token": "anon"}, **FAST_IO
    )
    with pytest.raises(
        AccessDeniedError, match=rf"gs://{nih_bucket}/png/{name}: .*Requester Pays.*data\.storage\.project"
    ):
        no_project.read(name)
    # A project the caller may not bill: 403, with the hint.
    wrong = gs_store(gcs_emulator, nih_bucket, project="not-mine")
    with pytest.raises(AccessDeniedError, match=r"access denied \(403\).*data\.storage\.project"):
        wrong.read(name)
    assert gs_store(gcs_emulator, nih_bucket).read(name) == (demo_root / "images" / name).read_bytes()


def test_transient_5xx_are_retried(gcs_emulator, nih_bucket: str, demo_root: Path) -> None:
    failures = gcs_emulator.fail_requests(r"\.png$", times=2)
    name = sorted(p.name for p in (demo_root / "images").iterdir())[1]
    assert gs_store(gcs_emulator, nih_bucket).read(name) == (demo_root / "images" / name).read_bytes()
    assert failures.hits == 2


def test_server_stopped_and_restarted_mid_pass_completes(
    gcs_emulator, nih_bucket: str, demo_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pneumo.io.reading")
    names = sorted(p.name for p in (demo_root / "images").iterdir())
    gcs_emulator.latency_s = 0.01
    store = gs_store(gcs_emulator, nih_bucket, concurrency=4)
    got: dict[int, bytes | BaseException] = {}
    for i, result in store.map_unordered(names, lambda name, data: data):
        got[i] = result
        if len(got) == 20:
            gcs_emulator.stop()  # mid-pass: the next requests are refused...
            gcs_emulator.restart_after(1.0)  # ...until the server comes back
    errors = [r for r in got.values() if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert [got[i] for i in range(len(names))] == [(demo_root / "images" / n).read_bytes() for n in names]
    assert gcs_emulator.running
    assert any("retrying gs://" in r.getMessage() for r in caplog.records)  # requests did fail meanwhile


def test_server_gone_for_good_fails_after_the_deadline(
    gcs_emulator, nih_bucket: str, demo_root: Path
) -> None:
    name = sorted(p.name for p in (demo_root / "images").iterdir())[2]
    store = gs_store(gcs_emulator, nih_bucket, request_timeout_s=0.5, retry_deadline_s=2.0)
    gcs_emulator.stop()
    with pytest.raises(StoreUnavailableError, match=rf"gs://{nih_bucket}/png/{name}: unreachable") as err:
        store.read(name)
    message = str(err.value)
    assert "retry_deadline_s=2" in message and "request_timeout_s" in message
    assert int(message.split(": unreachable: ")[1].split(" attempt")[0]) >= 2  # it did retry


def test_an_unreachable_endpoint_stops_the_data_module_at_its_one_probe(
    gcs_emulator, nih_bucket: str
) -> None:
    from pneumo.data.datamodule import NIHDataModule
    from pneumo.errors import PneumoError
    from pneumo.io.storage import StorageUnreachableError
    from pneumo.testing.gcs_emulator import nih_urls

    settings = StorageSettings(BILLING_PROJECT, True, "anon", {"endpoint_url": gcs_emulator.endpoint})
    for _ in range(3):
        settings.probe(f"gs://{nih_bucket}/png")
    assert [(r.method, r.path) for r in gcs_emulator.requests] == [("HEAD", "/")]  # once, no credentials
    assert "authorization" not in gcs_emulator.requests[0].headers

    port = closed_port()
    dm = NIHDataModule(
        **nih_urls(nih_bucket),
        storage={"token": "anon", "options": {"endpoint_url": f"http://127.0.0.1:{port}"}},
        cache=True,
        cache_dir="unused",
    )
    with pytest.raises(StorageUnreachableError) as err:
        dm.prepare_data()  # not 300 s of retries of the label file: the probe answers first
    message = str(err.value)
    assert isinstance(err.value, PneumoError) and "\n" not in message
    assert f"http://127.0.0.1:{port}" in message and "connection refused" in message
    assert "STORAGE_EMULATOR_HOST" in message and "data.storage.options.endpoint_url" in message


SCRUB_SCRIPT = """
import logging, sys
from pneumo.io.storage import StorageSettings
logging.basicConfig(filename=sys.argv[1], level=logging.INFO)
StorageSettings().options_for("gs://b/png")  # reads $PNEUMO_GCS_TOKEN, scrubs output from now on
token = "{token}"
logging.getLogger("gcsfs").error("GET /tokeninfo?access_token=%s failed", token)
print("header Authorization: Bearer " + token)
try:
    raise ConnectionError("url: /tokeninfo?access_token=" + token)
except ConnectionError:
    logging.getLogger("aiohttp").exception("request failed")
raise RuntimeError("a bug that quotes " + token)
"""


def test_secrets_are_scrubbed_from_logs_stdout_and_tracebacks(tmp_path: Path) -> None:
    import subprocess
    import sys

    token = "opaque-SECRET-7f3a9c"  # not shaped like a token: found because it was registered
    log_file = tmp_path / "run.log"
    proc = subprocess.run(
        [sys.executable, "-c", SCRUB_SCRIPT.replace("{token}", token), str(log_file)],
        capture_output=True,
        text=True,
        env={**os.environ, "PNEUMO_GCS_TOKEN": token},
        timeout=120,
    )
    text = proc.stdout + proc.stderr + log_file.read_text()
    assert proc.returncode == 1 and "a bug that quotes ***" in proc.stderr  # the bug keeps its traceback
    assert "Bearer ***" in proc.stdout and "access_token=***" in text and "Traceback" in text
    assert token not in text


def test_raw_tokens_are_refused_in_configs(tmp_path: Path) -> None:
    from pneumo.io.storage import StorageSettingsError

    with pytest.raises(StorageSettingsError, match="PNEUMO_GCS_TOKEN") as err:
        StorageSettings(token="ya29.pasted-into-a-config")
    assert "ya29" not in str(err.value)
    key = tmp_path / "key.json"
    key.write_text("{}")
    assert StorageSettings(token=str(key)).to_config()["token"] == str(key)  # a key file's path is no secret
    with pytest.raises(StorageSettingsError, match="credentials"):
        StorageSettings(options={"token": "abc"})
