"""A careless or hostile user's config (issue 25, faults 4-10): every command's config error is one line on
stderr and exit status 2, naming the key (and the closest valid value), before any work starts: no demo set
written, no cache, no checkpoint, no report; one real write check (a file created and removed: we run as
root, and ``os.access`` says yes to root for ``/proc``).

The probes of one family run in one subprocess (``PROBE_RUNNER``: each probe calls the command's entry
function with its own ``sys.argv``, as the console script does), so that two dozen probes cost seconds;
one probe per command also runs as a real CLI process, for its exit status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from pneumo.errors import ConfigError
from pneumo.io.files import check_writable, prepare_out_dir
from tests.helpers import ROOT, run_cli

#: Runs ``[command, args]`` probes through ``pneumo.cli.<command>.main`` in one process: one JSON record
#: (exit status, stderr, stdout) per probe. ``no-plugins`` hides the ``hydra_plugins`` package, as in an
#: install without the ``sweeps`` extra.
PROBE_RUNNER = r"""
import contextlib, importlib, io, json, sys, traceback
if sys.argv[1] == "no-plugins":
    class _NoPlugins:
        def find_spec(self, name, path=None, target=None):
            if name == "hydra_plugins" or name.startswith("hydra_plugins."):
                raise ModuleNotFoundError(name)
    sys.meta_path.insert(0, _NoPlugins())
from hydra.core.global_hydra import GlobalHydra
records = []
for command, args in json.loads(sys.argv[2]):
    main = importlib.import_module(f"pneumo.cli.{command}").main
    sys.argv = [f"{command}.py", *args]
    err, out, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            main()
        except SystemExit as e:
            code = e.code
        except BaseException:
            code, _ = "raised", traceback.print_exc()
    GlobalHydra.instance().clear()
    records.append({"args": args, "code": code, "stderr": err.getvalue(), "stdout": out.getvalue()})
print("PROBES " + json.dumps(records))
"""


def run_probes(probes: list[tuple[str, list[str]]], cwd: Path, plugins: bool = True) -> list[dict]:
    """The records of ``probes`` run by ``PROBE_RUNNER`` in one subprocess started in ``cwd``."""
    proc = subprocess.run(
        [sys.executable, "-c", PROBE_RUNNER, "plugins" if plugins else "no-plugins", json.dumps(probes)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBES ")]
    assert proc.returncode == 0 and lines, proc.stderr[-3000:]
    return json.loads(lines[-1][len("PROBES ") :])


def assert_one_line(record: dict, *named: str) -> str:
    """Exit status 2, no traceback, and exactly one ``error:`` line on stderr naming each of ``named``."""
    everything = record["stderr"] + record["stdout"]
    assert record["code"] == 2, (record["args"], everything[-3000:])
    assert "Traceback" not in everything, everything
    errors = [line for line in record["stderr"].splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), (record["args"], record["stderr"])
    for text in named:
        assert text in errors[0], (text, errors[0])
    return errors[0]


def _train(tmp_path: Path, *args: str) -> tuple[str, list[str]]:
    """A train probe whose data set, cache and logs would all go under ``tmp_path`` (none may appear)."""
    where = [f"data.synthetic.root={tmp_path}/demo", f"paths.data_dir={tmp_path}/data", "logger=none"]
    return ("train", [*where, f"paths.log_dir={tmp_path}/logs", *args])


#: Composition errors (Hydra's): the override, the valid options or keys, the closest one, the fix.
COMPOSITION = [
    (["model=densenet12"], ["model=densenet12", "densenet121_multilabel", "did you mean 'densenet121'"]),
    (["experiment=nonexistent"], ["experiment=nonexistent", "choose one of", "nih_pneumonia"]),
    (["trainer.limit_train_batches=0"], ["trainer.limit_train_batches", "+trainer.limit_train_batches=0"]),
    (["trainer.max_epoch=3"], ["did you mean 'trainer.max_epochs'"]),
    (["seed=[1"], ["'seed=[1'"]),
    (["hydra/launcher=jobli"], ["hydra/launcher=jobli", "did you mean 'joblib'"]),
    (["data.batch_size=8"], ["data.loader.batch_size=8"]),
]

#: Values checked in the task before anything is built: the key, what is valid.
VALUES = [
    (["trainer.devices=abc"], ["trainer.devices='abc'", "[0,1]"]),
    (["trainer.precision=17"], ["trainer.precision=17", "choose one of"]),
    (["seed=abc"], ["seed='abc'", "whole number"]),
    (["+trainer.limit_val_batches=0"], ["trainer.limit_val_batches=0", "threshold"]),
    (["trainer.check_val_every_n_epoch=5", "trainer.max_epochs=2"], ["never validate"]),
    (["eval.bootstrap.resamples=1000000000"], ["eval.bootstrap.resamples=1000000000", "<= 100000"]),
    (["data.cache.dir=/proc/x"], ["data.cache.dir=/proc/x", "cannot write in /proc"]),
]


def test_train_config_errors_are_one_line_before_anything_is_built(tmp_path: Path) -> None:
    probes = [_train(tmp_path, *args) for args, _ in COMPOSITION + VALUES]
    probes += [
        _train(tmp_path, "hydra.run.dir=/proc/x"),
        (
            "train",
            ["-m", f"data.synthetic.root={tmp_path}/demo", f"paths.log_dir={tmp_path}/ro/x", "seed=1,2"],
        ),
        ("explain", ["ckpt_pth=x.ckpt"]),
        ("evaluate", ["predictions=p.csv", "eval.bootstrap.resample=9"]),
    ]
    (tmp_path / "ro").write_text("a file where a folder is expected")
    records = run_probes(probes, tmp_path)
    for record, (_, named) in zip(records, COMPOSITION + VALUES, strict=False):
        assert_one_line(record, *named)
    run_dir, sweep_dir, explain, evaluate = records[len(COMPOSITION + VALUES) :]
    assert_one_line(run_dir, "hydra.run.dir=/proc/x", "cannot write in /proc", "paths.log_dir")
    assert_one_line(sweep_dir, "hydra.sweep.dir=", "is a file, not a folder")
    assert_one_line(explain, "ckpt_pth", "did you mean 'ckpt_path'")
    assert_one_line(evaluate, "eval.bootstrap.resample", "did you mean 'eval.bootstrap.resamples'")
    # before the first batch: no demo set, no cache, no checkpoint; composition errors leave no run folder
    assert not (tmp_path / "demo").exists() and not (tmp_path / "data").exists()
    assert not list(tmp_path.rglob("*.ckpt")) and not list(tmp_path.rglob("report.md"))
    assert not list(tmp_path.glob("logs/explain")) and not list(tmp_path.glob("logs/evaluate"))


def test_sweeps_without_the_plugins_name_the_extra(tmp_path: Path) -> None:
    """Without the ``sweeps`` extra (its ``hydra_plugins`` hidden): the install line, not Hydra's "Could not
    find"; a sweep over a config group stays a sweep (``hydra/launcher=basic`` needs no plugin)."""
    probes = [
        _train(tmp_path, a)
        for a in ("hparams_search=optuna", "hydra/launcher=joblib", "hydra/launcher=slurm")
    ]
    for record in run_probes(probes, tmp_path, plugins=False):
        line = assert_one_line(record, 'pip install "pneumo[sweeps]"')
        assert "joblib" in line or "submitit_slurm" in line or "optuna" in line, line


def test_the_cli_process_exits_2_with_one_line(tmp_path: Path) -> None:
    """The real console process: exit status 2 and one line (Hydra alone: exit 1 and a dozen lines)."""
    proc = run_cli(
        [str(ROOT / "train.py"), "model=densenet12", f"paths.log_dir={tmp_path}/logs"], cwd=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: model=densenet12: no such model config; choose one of densenet121, densenet121_multilabel "
        "(did you mean 'densenet121'?)"
    ]
    assert not (tmp_path / "logs").exists()


@pytest.mark.skipif(
    "__import__('torch').cuda.is_available()", reason="the machine has a GPU: trainer=gpu is valid here"
)
def test_trainer_gpu_without_a_gpu_is_one_line_with_the_fix(tmp_path: Path) -> None:
    (record,) = run_probes([_train(tmp_path, "trainer=gpu")], tmp_path)
    assert_one_line(record, "trainer.accelerator=gpu", "no CUDA GPU", "trainer=cpu")
    assert not (tmp_path / "demo").exists()


def test_the_write_check_creates_a_file_and_leaves_nothing(tmp_path: Path) -> None:
    """Root may write anywhere by ``os.access``; ``/proc`` and a file on the way still fail, and a folder
    that does not exist yet is checked in its nearest existing ancestor without being created."""
    check_writable(tmp_path / "new" / "deeper", "out_dir")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError, match=r"^out_dir=/proc/x: cannot write in /proc \("):
        check_writable("/proc/x", "out_dir")
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        check_writable(tmp_path / "f" / "run", "hydra.run.dir")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="broken symbolic link"):
        check_writable(tmp_path / "gone" / "run", "out_dir")


def test_evaluate_out_dir_follows_explains_overwrite_rule(demo_root: Path, tmp_path: Path) -> None:
    """Fault 10: a second evaluate into the same out_dir is refused; ``overwrite=true`` deletes the first
    report (its figures included) so that the folder never mixes two runs; an unwritable out_dir is refused
    before any file is read."""
    from pneumo.pipelines.evaluate import EvaluateSettings, evaluate_files

    predictions = tmp_path / "preds.csv"
    labels = demo_root / "Data_Entry_2017.csv"
    names = pd.read_csv(labels)["Image Index"].head(12)
    probabilities = [i / 13 for i in range(1, 13)]
    pd.DataFrame({"image": names, "probability": probabilities}).to_csv(predictions, index=False)
    out = tmp_path / "report"
    common = {"predictions": str(predictions), "out_dir": str(out), "labels_url": str(labels)}
    quick = {"threshold": 0.5, "bootstrap": {"resamples": 20}, "figures": True}
    evaluate_files(EvaluateSettings(**common, eval=quick))
    assert (out / "roc.png").exists()
    before = (out / "report.md").read_text()
    with pytest.raises(ConfigError, match=r"already holds the outputs of another evaluate run \(report.md"):
        evaluate_files(EvaluateSettings(**common, eval={**quick, "figures": False}))
    assert (out / "report.md").read_text() == before  # refused: nothing overwritten
    evaluate_files(EvaluateSettings(**common, eval={**quick, "figures": False}, overwrite=True))
    assert not list(out.glob("*.png")), "figures of the first report stayed beside the second"
    with pytest.raises(ConfigError, match="out_dir=/proc/x: cannot write in /proc"):
        evaluate_files(EvaluateSettings(**{**common, "predictions": "missing.csv", "out_dir": "/proc/x"}))


def test_prepare_out_dir_deletes_only_the_listed_outputs(tmp_path: Path) -> None:
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "evaluate.log").write_text("log")
    (tmp_path / "report.md").write_text("old")
    prepare_out_dir(tmp_path, ["report.md"], True, "evaluate")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hydra", "evaluate.log"]


def test_smaller_input_faults_are_named(tmp_path: Path) -> None:
    """A view given as a string is a list of one; a 1 x 1 image is refused naming the file and the minimum;
    a broken symbolic link in an input folder is an input whose read names the link, never dropped."""
    import io

    from PIL import Image

    from pneumo.data.inputs import read_bytes, resolve_inputs
    from pneumo.data.settings import SplitSettings
    from pneumo.images.decode import BadImageError, decode_grayscale

    assert SplitSettings(views="PA").views == ["PA"]
    with pytest.raises(ConfigError, match=r"data.split.views=\{'a': 1\}: give a list of view positions"):
        SplitSettings(views={"a": 1})
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    with pytest.raises(BadImageError, match=r"^x/one.png: 1x1 pixels, under the minimum side of 8 px"):
        decode_grayscale(buf.getvalue(), "x/one.png")
    (tmp_path / "a.png").write_bytes(buf.getvalue())
    (tmp_path / "gone.png").symlink_to(tmp_path / "nothing.png")
    refs, _ = resolve_inputs(str(tmp_path))
    assert [r.name for r in refs] == ["a.png", "gone.png"]
    with pytest.raises(OSError, match=r"gone\.png: a broken symbolic link"):
        read_bytes(str(tmp_path / "gone.png"))


def test_a_pretrained_file_that_runs_code_gets_no_weights_only_false_command(tmp_path: Path) -> None:
    import torch

    from pneumo.models.pretrained import PretrainedWeights, PretrainedWeightsError

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path}/ran",))

    torch.save({"model": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(PretrainedWeightsError) as caught:
        PretrainedWeights.read(str(tmp_path / "evil.pt"))
    assert "system" in str(caught.value) and "weights_only=False" not in str(caught.value)
    assert not (tmp_path / "ran").exists()


def test_an_http_500_input_says_what_the_server_said(tmp_path: Path) -> None:
    """A loopback server answering 500: the error names the URL and the 500, not "no such file"."""
    import http.server
    import threading

    from pneumo.data.inputs import resolve_inputs
    from pneumo.io.reading import ReadError
    from pneumo.io.storage import StorageSettings

    class Failing(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(500)
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/x.png"
    try:
        with pytest.raises(ReadError) as caught:
            resolve_inputs(url, StorageSettings(retry_deadline_s=1, request_timeout_s=1, retry_backoff_s=0.1))
    finally:
        server.shutdown()
    assert url in str(caught.value) and "500" in str(caught.value) and "no such" not in str(caught.value)
