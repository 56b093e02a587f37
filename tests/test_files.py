"""Whole-or-nothing output files, and disk-full errors that name the path and the space needed."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch

from pneumo.errors import PneumoError
from pneumo.io.checkpoints import atomic_torch_save
from pneumo.io.files import DiskFullError, atomic_write_bytes, disk_full


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_real_enospc_becomes_one_line_naming_path_and_size(tmp_path: Path) -> None:
    payload = b"x" * 3 * 1024 * 1024
    target = tmp_path / "checkpoints" / "last.ckpt"
    # /dev/full fails every write with ENOSPC, as a full disk does.
    with (
        pytest.raises(DiskFullError) as caught,
        disk_full(target, len(payload), "free space there or set paths.log_dir to a larger disk"),
        open("/dev/full", "wb") as fh,
    ):
        fh.write(payload)
    err = caught.value
    assert isinstance(err, PneumoError) and err.errno == errno.ENOSPC
    assert isinstance(err.__cause__, OSError) and err.__cause__.errno == errno.ENOSPC
    message = str(err)
    assert "\n" not in message and str(target) in message
    assert "3.0 MiB" in message and "free there" in message and "paths.log_dir" in message


def test_other_os_errors_pass_through(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), disk_full(tmp_path / "x", 1, "free space"):
        (tmp_path / "missing" / "x").read_bytes()


def test_atomic_writes_replace_whole_files_and_leave_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out" / "predictions.csv"
    atomic_write_bytes(target, b"old\n")
    atomic_write_bytes(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "last.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["w"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["last.ckpt", "predictions.csv"]


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def test_an_error_while_serialising_leaves_the_earlier_predictions_and_report_whole(tmp_path: Path) -> None:
    import pandas as pd

    from pneumo.reporting.predictions import write_predictions
    from pneumo.reporting.report import EvalSettings, build_report, write_report

    class Unprintable:  # a value whose text fails half-way through the table
        def __str__(self) -> str:
            raise RuntimeError("serialisation failed")

    out = tmp_path / "eval"
    frame = pd.DataFrame(
        {"image": ["a.png", "b.png"], "patient": [1, 2], "probability": [0.25, 0.75], "label": [0, 1]}
    )
    write_predictions(frame, out / "predictions.csv")
    write_report(build_report(frame, 0.5, EvalSettings(resamples=20)), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    bad = pd.DataFrame({"image": ["a.png", "b.png", "c.png"], "probability": [0.1, 0.2, Unprintable()]})
    with pytest.raises(RuntimeError, match="serialisation failed"):
        write_predictions(bad, out / "predictions.csv")  # written in place, this left a header-only file
    with pytest.raises((KeyError, TypeError)):
        write_report({"counts": None}, out)  # report.json renders, report.md does not: neither is written
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _temp_files(tmp_path) == []


def test_a_failed_rename_leaves_no_partial_output_and_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import matplotlib.figure
    import pandas as pd

    from pneumo.reporting.figures import save_figures
    from pneumo.reporting.model_card import write_model_card
    from pneumo.reporting.predictions import write_predictions

    out = tmp_path / "run"
    frame = pd.DataFrame({"image": ["a.png"], "probability": [0.5]})
    write_predictions(frame, out / "predictions.csv")
    old = (out / "predictions.csv").read_bytes()

    def no_rename(src, dst) -> None:  # the crash between writing the temp file and moving it in place
        raise OSError(errno.EIO, "input/output error")

    monkeypatch.setattr("os.replace", no_rename)
    with pytest.raises(OSError, match="input/output error"):
        write_predictions(pd.DataFrame({"image": ["b.png"], "probability": [0.9]}), out / "predictions.csv")
    with pytest.raises(OSError, match="input/output error"):
        save_figures({"roc": matplotlib.figure.Figure()}, out)
    with pytest.raises(OSError, match="input/output error"):
        write_model_card({"pneumo": {"version": "0", "git_commit": None}, "seed": 1}, None, out)
    monkeypatch.undo()
    assert sorted(p.name for p in out.iterdir()) == ["predictions.csv"] and _temp_files(tmp_path) == []
    assert (out / "predictions.csv").read_bytes() == old
    save_figures({"roc": matplotlib.figure.Figure()}, out)  # and when the rename works: a whole PNG
    assert (out / "roc.png").read_bytes()[-8:] == b"IEND\xaeB`\x82"
    assert (out / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
