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
    if command == "train":  # explain and evaluate refuse the unknown key first (storage: the test below)
        assert lines[0].startswith("error: data.storage.options may not hold credentials"), lines
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


# ---------------------------------------------------------------------------------------------- fault 2
def _moved(value: object, old: str, new: str) -> object:
    """``value`` with every string starting with ``old`` starting with ``new`` instead (nested)."""
    if isinstance(value, dict):
        return {k: _moved(v, old, new) for k, v in value.items()}
    if isinstance(value, str) and value.startswith(old):
        return new + value[len(old) :]
    return value


def _run_on_a_copy(tiny_ckpt: Path, demo_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    """``tiny_ckpt`` as if trained on a copy of its demo set (its data locations moved there; the copy is
    byte-identical, so its model card's hashes hold): the copy can be written over without touching the
    session's set. Returns the checkpoint and the copy's root."""
    import shutil

    import torch

    root = tmp_path / "nih_demo"
    shutil.copytree(demo_root, root)
    blob = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    dhp = _moved(blob["datamodule_hyper_parameters"], str(demo_root), str(root))
    assert isinstance(dhp, dict)
    dhp["cache"]["dir"] = str(tmp_path / "cache")
    blob["datamodule_hyper_parameters"] = dhp
    ckpt = tmp_path / "run.ckpt"
    torch.save(blob, ckpt)
    return ckpt, root


@pytest.mark.slow
def test_a_rewritten_demo_set_stops_explain_and_train_false_leaves_it(
    compose_train, tiny_ckpt: Path, demo_root: Path, tmp_path: Path
) -> None:
    """Fault 2: the run's demo set is written again with another n (as another run's default demo does);
    ``explain split=test`` stops with one line naming the label file, both sha256 and the command that writes
    the run's set back, writing nothing; ``train=false`` refuses to write over the other run's set, which
    stays byte for byte as it was."""
    from omegaconf import open_dict

    from pneumo.data.identity import DataIdentityError
    from pneumo.io.files import sha256_of
    from pneumo.pipelines.explain import ExplainSettings, explain_images
    from pneumo.pipelines.runs import load_run
    from pneumo.pipelines.train import train
    from pneumo.synthetic.demo import DemoSetError, ensure_synthetic_dataset

    ckpt, root = _run_on_a_copy(tiny_ckpt, demo_root, tmp_path)
    labels = root / "Data_Entry_2017.csv"
    recorded = sha256_of(labels)
    assert load_run(str(ckpt)).datamodule.split_images("test")  # the set as trained: no complaint
    ensure_synthetic_dataset(str(root), n=40, size=64, seed=0)  # another run's demo, over the same folder
    other = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()}

    out = tmp_path / "explain"
    with pytest.raises(DataIdentityError) as err:
        explain_images(ExplainSettings(str(ckpt), str(out), split="test", progress=False))
    message = str(err.value)
    assert "\n" not in message and str(labels) in message, message
    assert recorded in message and sha256_of(labels) in message
    assert f"python -m pneumo synthetic {root} --n 80 --size 64 --seed 0" in message and "n=40" in message
    assert not [p for p in out.rglob("*") if p.is_file()]  # no output written

    cfg = compose_train([f"ckpt_path={ckpt}", "train=false", "logger=none", "trainer.accelerator=cpu"])
    with open_dict(cfg):
        cfg.callbacks.gradcam_overlay = None
        cfg.callbacks.lr_monitor = None
    with pytest.raises(DemoSetError, match=r"demo_manifest.json.*n=40 \(the run's: 80\)"):
        train(cfg)
    assert {p.name: p.read_bytes() for p in root.iterdir() if p.is_file()} == other  # left as it was


# ---------------------------------------------------------------------------------------------- fault 11
def _tiny_fit(compose_train, demo_root: Path, out: Path) -> Path:
    """A two-epoch run at 32 px with two loader workers, in this process; returns its run folder."""
    from omegaconf import open_dict

    from pneumo.pipelines.train import train

    overrides = [
        *tiny_overrides(demo_root, out),
        "data.images.size=32",
        "data.loader.num_workers=2",
        "trainer.max_epochs=2",
        "logger=none",
    ]
    cfg = compose_train(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out / "run")
        cfg.callbacks.gradcam_overlay = None
        cfg.callbacks.lr_monitor = None
    train(cfg)
    return out / "run"


@pytest.mark.slow
def test_two_runs_with_one_seed_give_the_same_bits(compose_train, demo_root: Path, tmp_path: Path) -> None:
    """Fault 11: the same seed and config twice (loader workers included, the cache shared as in the issue's
    three runs): ``predictions.csv`` byte for byte and every tensor of the checkpoints bit for bit."""
    import torch

    first, second = (_tiny_fit(compose_train, demo_root, tmp_path / name) for name in ("a", "b"))
    assert (first / "predictions.csv").read_bytes() == (second / "predictions.csv").read_bytes()
    assert (
        "| repeatable | bitwise on CPU" in (first / "model_card.md").read_text()
    )  # the card states the mode
    assert "Data: the **synthetic demo set**" in (first / "report.md").read_text()  # the report its source
    for name in ("last.ckpt",):
        a, b = (
            torch.load(r / "checkpoints" / name, map_location="cpu", weights_only=True)
            for r in (first, second)
        )
        assert a["state_dict"].keys() == b["state_dict"].keys()
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), name


def test_pooling_under_deterministic_algorithms_is_a_mean_of_the_same_values() -> None:
    """Fault 11 on GPU: ``trainer.deterministic=true`` swaps ``AdaptiveAvgPool2d(1)`` (no deterministic CUDA
    backward) for a mean over height and width, which gives the same values and gradients."""
    import torch
    from torch import nn

    from pneumo.models.classifier import GlobalAveragePool, deterministic_pooling

    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Sequential(nn.AdaptiveAvgPool2d(2)))
    x = torch.randn(2, 1, 9, 7, requires_grad=True)
    pooled = nn.AdaptiveAvgPool2d(1)(x)
    mean = GlobalAveragePool()(x)
    assert torch.allclose(pooled, mean, atol=1e-7)
    (g1,) = torch.autograd.grad(pooled.sum(), x)
    (g2,) = torch.autograd.grad(mean.sum(), x)
    assert torch.allclose(g1, g2)
    assert deterministic_pooling(net) == 1 and isinstance(net[1], GlobalAveragePool)
    assert isinstance(net[2][0], nn.AdaptiveAvgPool2d)  # pools to other sizes are left alone


# ---------------------------------------------------------------------------------------------- smaller ones
def test_the_users_own_files_write_no_demo_and_are_not_called_synthetic(
    demo_root: Path, tmp_path: Path
) -> None:
    """Every data location the user's own (the demo config's ``synthetic`` left in place): nothing is written
    under the demo root, the saved settings (model card) hold no synthetic set, the report says "your files"."""
    from pneumo.reporting.report import describe_data
    from tests.helpers import demo_datamodule

    demo = tmp_path / "nih_demo"
    dm = demo_datamodule(
        demo_root, synthetic={"root": str(demo), "n": 80, "size": 64, "seed": 0}, cache={"enabled": False}
    )
    dm.prepare_data()
    assert not demo.exists()
    assert dm.synthetic is None and dm.hparams["synthetic"] is None
    assert describe_data(dm.images_url, dm.labels_url, bool(dm.synthetic))["kind"] == "user"


def test_split_list_names_the_label_file_lacks_are_counted_and_named(
    demo_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from pneumo.data.datamodule import DataRootError
    from tests.helpers import demo_datamodule

    train_val = str(demo_root / "train_val_list.txt")
    extra = tmp_path / "test_list.txt"
    extra.write_text((demo_root / "test_list.txt").read_text() + "99999999_000.png\n99999998_000.png\n")
    dm = demo_datamodule(demo_root, split_lists={"train_val": train_val, "test": str(extra)})
    with caplog.at_level(logging.WARNING, logger="pneumo.data.datamodule"):
        split = dm.planned_split()
    assert "2 image name(s) of the split lists are not in the label index" in caplog.text
    assert "99999999_000.png, 99999998_000.png" in caplog.text and "99999999_000.png" not in split.test
    other = tmp_path / "other_list.txt"
    other.write_text("99999999_000.png\n")
    dm = demo_datamodule(demo_root, split_lists={"train_val": train_val, "test": str(other)})
    with pytest.raises(DataRootError, match=r"none of the 1 image.*split list test.*99999999_000.png"):
        dm.planned_split()


def test_explain_and_evaluate_name_their_own_storage_key(tiny_ckpt: Path, tmp_path: Path) -> None:
    """A credential under ``storage.options`` of explain/evaluate: the refusal names ``storage.options`` and
    ``storage.token`` (not the training config's ``data.storage``)."""
    from pneumo.io.storage import StorageSettingsError
    from pneumo.pipelines.evaluate import EvaluateSettings
    from pneumo.pipelines.explain import ExplainSettings, explain_images

    options = {"options": {"token": "ya29.PLANTED-0123456789"}}
    for call in (
        lambda: explain_images(
            ExplainSettings(str(tiny_ckpt), str(tmp_path / "x"), split="test", storage=options)
        ),
        lambda: EvaluateSettings(predictions="p.csv", out_dir=str(tmp_path / "e"), storage=options),
    ):
        with pytest.raises(StorageSettingsError) as err:
            call()
        assert str(err.value).startswith(
            "storage.options may not hold credentials (token): use storage.token"
        )
