"""Resume after a crash: SIGKILL mid-epoch, restart from last.ckpt, finish the planned epochs and steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from pneumo.io.checkpoints import AtomicCheckpointIO
from tests.helpers import ROOT, run_cli, start_cli, tiny_overrides


class StallMidEpoch(L.Callback):
    """Test probe: after batch ``batch`` of epoch ``epoch``, write ``marker`` and hang until killed."""

    def __init__(self, epoch: int, batch: int, marker: str) -> None:
        self.epoch, self.batch, self.marker = epoch, batch, Path(marker)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            self.marker.write_text(json.dumps({"global_step": trainer.global_step}))
            time.sleep(3600)


class EpochRecorder(L.Callback):
    """Test probe: the epochs this process trained and the global step each started at."""

    def __init__(self, out: str) -> None:
        self.out, self.started = Path(out), {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.started[trainer.current_epoch] = trainer.global_step
        self.out.write_text(json.dumps(self.started))


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_from_last_ckpt(demo_root: Path, tmp_path: Path) -> None:
    epochs, batches, lr = 2, 2, 1e-3
    run_dir = tmp_path / "run"
    args = [
        *[
            o
            for o in tiny_overrides(demo_root, tmp_path)
            if not o.startswith(("+trainer.limit_", "data.batch"))
        ],
        "data.loader.batch_size=4",
        f"trainer.max_epochs={epochs}",
        f"+trainer.limit_train_batches={batches}",
        "+trainer.num_sanity_val_steps=0",
        "test=false",
        f"model.optimizer.lr={lr}",
        "+model.scheduler._target_=torch.optim.lr_scheduler.StepLR",
        "+model.scheduler._partial_=true",
        "+model.scheduler.step_size=1",
        "+model.scheduler.gamma=0.5",
        f"hydra.run.dir={run_dir}",
    ]
    marker = tmp_path / "stalled.json"
    proc = start_cli(
        [
            "train.py",
            *args,
            "+callbacks.stall._target_=tests.test_resume.StallMidEpoch",
            "+callbacks.stall.epoch=1",
            "+callbacks.stall.batch=0",
            f"+callbacks.stall.marker={marker}",
        ]
    )
    try:
        deadline = time.monotonic() + 300
        while not marker.exists():
            assert proc.poll() is None, f"training ended before the kill: {proc.output()[1][-3000:]}"
            assert time.monotonic() < deadline, "the run never reached epoch 1"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert json.loads(marker.read_text())["global_step"] == batches + 1  # killed in the middle of epoch 1

    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    crashed = torch.load(last, map_location="cpu", weights_only=True)
    assert (crashed["epoch"], crashed["global_step"]) == (0, batches)  # the end of epoch 0, intact
    assert not list(ckpt_dir.glob(".*.tmp"))

    # resume in place, from the run's own saved config (docs/scaling-and-sweeps.md, "Resume"), without the stalling probe
    epochs_seen = tmp_path / "epochs.json"
    resumed = run_cli(
        [
            "train.py",
            "-cp",
            str(run_dir / ".hydra"),
            "-cn",
            "config",
            f"ckpt_path={last}",
            f"hydra.run.dir={run_dir}",
            "~callbacks.stall",
            "+callbacks.epochs._target_=tests.test_resume.EpochRecorder",
            f"+callbacks.epochs.out={epochs_seen}",
        ]
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # only the unfinished epochs ran, continuing the step count
    assert json.loads(epochs_seen.read_text()) == {"1": batches}

    final = torch.load(last, map_location="cpu", weights_only=True)
    assert (final["epoch"], final["global_step"]) == (epochs - 1, epochs * batches)
    # optimizer and scheduler states continued from the checkpoint, not from scratch
    # (last.ckpt is written at the end of the epoch, after the epoch's scheduler step: StepLR halved the lr
    # once per finished epoch; restarted from scratch it would have stepped only once)
    assert crashed["lr_schedulers"][0]["last_epoch"] == 1
    [sched] = final["lr_schedulers"]
    assert sched["last_epoch"] == epochs
    assert final["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(lr * 0.5**epochs)
    adam_steps = {float(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {float(epochs * batches)}
    # the checkpoint callback kept its state too: one best checkpoint plus last.ckpt
    assert len([p for p in ckpt_dir.iterdir() if p.name.startswith("epoch_")]) == 1


def test_atomic_checkpoint_survives_a_kill_during_the_write(tmp_path: Path) -> None:
    """A writer killed while writing last.ckpt leaves the previous one whole; the next save tidies up."""
    target = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1, "w": torch.arange(4.0)}, target)
    marker = tmp_path / "writing"
    script = f"""
import pickle, time
from pathlib import Path
import torch
from pneumo.io.checkpoints import AtomicCheckpointIO

class Stall:  # pickling it marks the file and hangs: the kill lands in the middle of the write
    def __reduce__(self):
        Path({str(marker)!r}).write_text("x")
        time.sleep(3600)

AtomicCheckpointIO().save_checkpoint({{"epoch": 2, "w": torch.zeros(10**6), "x": Stall()}}, {str(target)!r})
"""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # The new checkpoint is serialized in memory, then written to a temp file beside the target ...
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    blob = io.load_checkpoint(target, weights_only=True)  # ... so the old one is still whole
    assert blob["epoch"] == 1 and torch.equal(blob["w"], torch.arange(4.0))
    stale = tmp_path / ".last.ckpt.999.deadbeef.tmp"  # as left by a writer killed during the file write
    stale.write_bytes(b"partial")
    io.save_checkpoint({"epoch": 3}, target)
    assert io.load_checkpoint(target)["epoch"] == 3
    assert not list(tmp_path.glob(".last.ckpt.*.tmp"))
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
