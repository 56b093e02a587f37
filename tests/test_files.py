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
    with pytest.raises(DiskFullError) as caught:
        # /dev/full fails every write with ENOSPC, as a full disk does.
        with disk_full(target, len(payload), "free space there or set paths.log_dir to a larger disk"):
            with open("/dev/full", "wb") as fh:
                fh.write(payload)
    err = caught.value
    assert isinstance(err, PneumoError) and err.errno == errno.ENOSPC
    assert isinstance(err.__cause__, OSError) and err.__cause__.errno == errno.ENOSPC
    message = str(err)
    assert "\n" not in message and str(target) in message
    assert "3.0 MiB" in message and "free there" in message and "paths.log_dir" in message


def test_other_os_errors_pass_through(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError), disk_full(tmp_path / "x", 1, "free space"):
        open(tmp_path / "missing" / "x", "rb")


def test_atomic_writes_replace_whole_files_and_leave_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out" / "predictions.csv"
    atomic_write_bytes(target, b"old\n")
    atomic_write_bytes(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "last.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["w"].tolist() == [0, 1, 2]
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["last.ckpt", "predictions.csv"]
