"""``SweepSummary``: a Hydra callback that keeps ``sweep_summary.csv`` in a multirun's sweep directory.

One row per job: its number, status (``RUNNING`` while it runs, then ``COMPLETED`` or ``FAILED``), the
optimized metric, one column per swept key (an override whose value differs between jobs), the overrides, the best checkpoint, the
job's folder and, for a failed job, the error. The file is rewritten (atomically, under a lock) whenever a
job starts or ends, so it is current while the sweep runs, stays right when jobs run in parallel
(joblib, submitit) and survives a sweep that dies: a job still ``RUNNING`` after the sweep ended crashed
without a Python exception (killed, out of memory).

With ``continue_on_failure`` (default) a job that raises is recorded as ``FAILED`` and handed back to the
sweeper as a ``nan`` metric, so the sweep goes on (Hydra's sweepers otherwise re-raise the first failure
and stop; Optuna marks a ``nan`` trial as failed and samples on). Outside multiruns the callback does
nothing and errors propagate as usual.

Registered in ``conf/hydra/default.yaml``::

    callbacks:
      sweep_summary:
        _target_: pneumo.pipelines.sweep_summary.SweepSummary

Example:
    >>> import pandas as pd
    >>> table = pd.read_csv("logs/train/multiruns/2026-01-01_00-00-00_000000/sweep_summary.csv")  # doctest: +SKIP
    >>> table.sort_values("metric", ascending=False).head()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pneumo.io.files import atomic_write_bytes

log = logging.getLogger(__name__)

# The overridden keys whose values differ between jobs get a column each, after LEAD.
LEAD = ["job", "status", "metric_name", "metric"]
TAIL = ["best_checkpoint", "best_score", "overrides", "output_dir", "started", "finished", "error"]
RECORDS = ".sweep_jobs"


def _global_rank() -> int:
    """This process's rank in a multi-task job (torchrun ``RANK``, SLURM ``SLURM_PROCID``), else 0."""
    for name in ("RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_path`` (no-op where ``fcntl`` does not exist)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def best_checkpoint(config: DictConfig) -> tuple[str, float | None]:
    """The best checkpoint of a finished job and its score ("", None when there is none).

    Read from the state of the monitoring ``ModelCheckpoint`` (``callbacks.model_checkpoint``) stored in
    ``last.ckpt`` (memory-mapped, tensors only), else the only non-``last`` checkpoint in its folder.
    """
    spec = OmegaConf.select(config, "callbacks.model_checkpoint", default=None)
    dirpath = OmegaConf.select(spec, "dirpath", default=None) if spec is not None else None
    if not dirpath or not Path(dirpath).is_dir():
        return "", None
    folder, monitor = Path(dirpath), OmegaConf.select(spec, "monitor", default=None)
    last = folder / "last.ckpt"
    if last.is_file():
        try:
            from pneumo.io.checkpoints import read_checkpoint

            blob = read_checkpoint(str(last), key="last.ckpt")
            for key, state in (blob.get("callbacks") or {}).items():
                if (
                    str(key).startswith("ModelCheckpoint")
                    and state.get("monitor") == monitor
                    and state.get("best_model_path")
                ):
                    score = state.get("best_model_score")
                    return str(state["best_model_path"]), (None if score is None else float(score))
        except Exception as err:  # a damaged last.ckpt must not hide the sweep's other results
            log.warning("could not read the checkpoint state in %s: %s", last, err)
    others = sorted(p for p in folder.glob("*.ckpt") if p.name != "last.ckpt")
    return (str(others[0]), None) if len(others) == 1 else ("", None)


class SweepSummary(Callback):
    """Write ``<sweep dir>/<filename>`` during and after a Hydra multirun (see the module docstring).

    Args:
        filename: name of the CSV in the sweep directory.
        continue_on_failure: record a failed job and give the sweeper ``nan`` instead of its exception.
    """

    def __init__(self, filename: str = "sweep_summary.csv", continue_on_failure: bool = True) -> None:
        self.filename = filename
        self.continue_on_failure = continue_on_failure

    # ------------------------------------------------------------------ hydra hooks
    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self._active(config):
            return
        record = self._base_record(config)
        record.update(status="RUNNING", started=datetime.now().isoformat(timespec="seconds"))
        self._save(config, record)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not self._is_multirun(config):
            return
        failed = job_return.status == JobStatus.FAILED
        if _global_rank() == 0:
            record = self._load(config) or self._base_record(config)
            record["finished"] = datetime.now().isoformat(timespec="seconds")
            if failed:
                err = job_return._return_value
                message = " ".join(f"{type(err).__name__}: {err}".split())  # one line
                record.update(status="FAILED", error=message)
            else:
                value = job_return._return_value
                record.update(status="COMPLETED", metric=_as_float(value))
            try:
                record["best_checkpoint"], record["best_score"] = best_checkpoint(config)
            except Exception as err:  # the configured folder may not resolve in a broken job
                log.warning("job %s: no best checkpoint (%s)", record["job"], err)
            self._save(config, record)
        if failed and self.continue_on_failure:
            log.error(
                "job %s failed (%s); recorded in %s, the sweep goes on",
                config.hydra.job.num,
                job_return._return_value,
                self.filename,
            )
            # Hand the sweeper a failed metric instead of the exception it would re-raise.
            job_return.status = JobStatus.COMPLETED
            job_return.return_value = math.nan

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not (sweep_dir / RECORDS).is_dir():
            return
        rows = self._write_table(sweep_dir)
        failed = [r["job"] for r in rows if r["status"] != "COMPLETED"]
        log.info("sweep summary: %s (%d jobs)", sweep_dir / self.filename, len(rows))
        if failed:
            log.warning("%d of %d jobs did not complete: %s", len(failed), len(rows), ", ".join(failed))

    # ------------------------------------------------------------------ records
    @staticmethod
    def _is_multirun(config: DictConfig) -> bool:
        return OmegaConf.select(config, "hydra.mode") == RunMode.MULTIRUN

    def _active(self, config: DictConfig) -> bool:
        return self._is_multirun(config) and _global_rank() == 0

    @staticmethod
    def _base_record(config: DictConfig) -> dict[str, Any]:
        overrides = list(OmegaConf.to_container(config.hydra.overrides.task))
        return {
            "job": str(config.hydra.job.num),
            "status": "",
            "overrides": " ".join(overrides),
            "override_values": {k.lstrip("+~"): v for k, _, v in (o.partition("=") for o in overrides)},
            "metric_name": OmegaConf.select(config, "optimized_metric", default=None) or "",
            "metric": None,
            "best_checkpoint": "",
            "best_score": None,
            "output_dir": str(config.hydra.runtime.output_dir),
            "started": "",
            "finished": "",
            "error": "",
        }

    @staticmethod
    def _record_path(config: DictConfig) -> Path:
        return Path(str(config.hydra.sweep.dir)) / RECORDS / f"{config.hydra.job.num}.json"

    def _load(self, config: DictConfig) -> dict[str, Any] | None:
        path = self._record_path(config)
        return json.loads(path.read_text()) if path.is_file() else None

    def _save(self, config: DictConfig, record: dict[str, Any]) -> None:
        path = self._record_path(config)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(record).encode())
        self._write_table(Path(str(config.hydra.sweep.dir)))

    def _write_table(self, sweep_dir: Path) -> list[dict[str, Any]]:
        records_dir = sweep_dir / RECORDS
        with _locked(records_dir / ".lock"):
            rows = [json.loads(p.read_text()) for p in records_dir.glob("*.json")]
            rows.sort(key=lambda r: int(r["job"]) if r["job"].isdigit() else r["job"])
            values = [r.get("override_values", {}) for r in rows]
            keys = [
                k for k in dict.fromkeys(k for v in values for k in v) if len({v.get(k) for v in values}) > 1
            ]
            lines: list[list[Any]] = [[*LEAD, *keys, *TAIL]]
            for r, v in zip(rows, values):
                lines.append(
                    [_cell(r.get(c)) for c in LEAD]
                    + [v.get(k, "") for k in keys]
                    + [_cell(r.get(c)) for c in TAIL]
                )
            atomic_write_bytes(sweep_dir / self.filename, _to_csv(lines).encode())
        return rows


def _as_float(value: Any) -> float | None:
    try:
        return float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        return None


def _cell(value: Any) -> Any:
    return "" if value is None else value


def _to_csv(lines: list[list[Any]]) -> str:
    import io

    buf = io.StringIO()
    csv.writer(buf).writerows(lines)
    return buf.getvalue()
