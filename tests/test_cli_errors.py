"""User errors of ``train.py``: one line on stderr, exit 2, nothing built; the traceback only in train.log."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.helpers import ROOT, run_cli, tiny_overrides

BAD_VALUES = [
    ("data.batch_size=0", "data.batch_size=0"),
    ("data.batch_size=abc", "data.batch_size='abc'"),
    ("data.image_size=7", "data.image_size=7 is too small"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 trains nothing"),
    ("model.class_weights=[1,2,3]", "model.class_weights"),
    # every option that takes a name: one format (pneumo.config.choice), with the closest name
    ("data.on_missing=skp", "data.on_missing='skp': choose one of 'error', 'skip' (did you mean 'skip'?)"),
    ("model.task=multilable", "model.task='multilable': choose one of 'binary', 'multilabel' (did you mean"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("override", "named"), BAD_VALUES, ids=[v[0] for v in BAD_VALUES])
def test_a_bad_value_stops_before_any_data_work_with_one_line(
    override: str, named: str, tmp_path: Path
) -> None:
    data_root = tmp_path / "nih_demo"  # not written yet: the run must stop before generating or caching it
    proc = run_cli(["train.py", *tiny_overrides(data_root, tmp_path), override, "logger=none"], cwd=ROOT)
    stderr_lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(stderr_lines) == 1 and stderr_lines[0].startswith("error: "), proc.stderr
    assert named in stderr_lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not data_root.exists(), "the demo set was generated before the config was checked"
    assert not (tmp_path / "data" / "cache").exists(), (
        "an image cache was built before the config was checked"
    )
    (log_file,) = (tmp_path / "train" / "runs").glob("*/train.log")
    log_text = log_file.read_text()
    assert "Traceback" in log_text and named in log_text  # the detail is kept, in the run's log only


@pytest.mark.slow
def test_a_batch_of_only_skipped_images_in_a_loader_worker_is_one_line(
    demo_root: Path, tmp_path: Path
) -> None:
    """Streamed (`data.cache=false`) from a folder holding one of the images (enough for the early check that
    the folder is the right one), the others skipped (`data.on_missing=skip`): a batch with none of them stops
    the run, and the loader worker's error reaches the user as one line, not a worker traceback."""
    empty = tmp_path / "one_image"
    empty.mkdir()
    shutil.copy(demo_root / "images" / "00000001_000.png", empty)
    proc = run_cli(
        [
            "train.py",
            *tiny_overrides(demo_root, tmp_path),
            f"data.images_url={empty}",
            "data.cache=false",
            "data.on_missing=skip",
            "data.num_workers=1",
            "logger=none",
        ],
        cwd=ROOT,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr and "worker process" not in proc.stderr
    # stderr also has Lightning's INFO lines (device summary) from before the first batch
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert re.fullmatch(
        r"error: all \d+ images of a batch were skipped as missing or bad \(first: \d{8}_\d{3}\.png\): "
        r"check data\.images_url and the label index",
        error,
    ), error
