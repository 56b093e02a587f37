"""``ScrubRunFiles``: no credential in any file a Hydra run leaves, whichever key it was given under.

Hydra saves the composed config, its own config and the command-line overrides (``.hydra/config.yaml``,
``hydra.yaml``, ``overrides.yaml``; ``multirun.yaml`` of a sweep) before any pneumo code runs, so a token
typed under any key (``+data.storage.options.token=...``, refused later or not) would stay on disk. This Hydra
callback (``hydra.callbacks.scrub_secrets`` in ``conf/hydra/default.yaml``, used by ``train.py``,
``explain.py`` and ``python -m pneumo.evaluation``) is the one scrub over what a run writes, with the patterns
and registered secrets of ``pneumo.io.storage.scrub`` (the log filter's):

- when a job starts: every credential of its config (``register_config_secrets``: values under secret-looking
  keys, override strings) is registered, the log handlers Hydra just made get the scrubbing filter
  (``protect_output``), and Hydra's saved files are scrubbed;
- when a job ends (and at exit, for a job that ended with ``sys.exit``): every text file of the run folder and
  of its ``out_dir`` is scrubbed (``scrub_folder``); binary outputs (checkpoints, TensorBoard events) hold the
  config only through ``redact_secrets``, which removes registered secrets too.

Example:
    >>> ScrubRunFiles().folders_of({"out_dir": "/tmp/x", "hydra": {"runtime": {"output_dir": "/tmp/r"}}})
    ['/tmp/r', '/tmp/x']
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Mapping
from typing import Any

from pneumo.io.storage import protect_output, register_config_secrets, scrub_folder

log = logging.getLogger(__name__)


class ScrubRunFiles:
    """A Hydra callback (``hydra.experimental.callback.Callback``'s methods) scrubbing credentials from
    everything a run writes; see the module docstring."""

    def __init__(self) -> None:
        self._pending: set[str] = set()
        self._atexit = False

    @staticmethod
    def folders_of(config: Mapping) -> list[str]:
        """The run folder (``hydra.runtime.output_dir``) and the command's ``out_dir``, where set."""
        runtime = ((config.get("hydra") or {}).get("runtime") or {}) if isinstance(config, Mapping) else {}
        found = [runtime.get("output_dir"), config.get("out_dir") if isinstance(config, Mapping) else None]
        return sorted({str(f) for f in found if isinstance(f, str) and f})

    @staticmethod
    def _plain(config: Any) -> dict:
        from omegaconf import OmegaConf

        try:
            return dict(OmegaConf.to_container(config, resolve=True))  # type: ignore[arg-type]
        except Exception:  # noqa: BLE001 - an interpolation that cannot resolve yet: the values as written
            return dict(OmegaConf.to_container(config, resolve=False))  # type: ignore[arg-type]

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        plain = self._plain(config)
        register_config_secrets(plain)
        protect_output()  # the file handlers Hydra made for this job (train.log, ...) get the filter
        hydra_cfg = plain.get("hydra") or {}
        output_dir = (hydra_cfg.get("runtime") or {}).get("output_dir")
        if output_dir:
            scrub_folder(
                os.path.join(output_dir, hydra_cfg.get("output_subdir") or ".hydra"), recursive=False
            )
        sweep_dir = (hydra_cfg.get("sweep") or {}).get("dir")
        if hydra_cfg.get("mode") == "MULTIRUN" and sweep_dir:
            scrub_folder(sweep_dir, recursive=False)  # multirun.yaml
        self._pending.update(self.folders_of(plain))
        if not self._atexit:  # a job that ends in sys.exit (a user error) skips on_job_end
            atexit.register(self.scrub_pending)
            self._atexit = True

    def on_job_end(self, config: Any, **kwargs: Any) -> None:
        self.scrub_pending()

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = ((self._plain(config).get("hydra") or {}).get("sweep") or {}).get("dir")
        if sweep_dir:
            scrub_folder(sweep_dir, recursive=False)  # sweep_summary.csv, multirun.yaml

    def scrub_pending(self) -> None:
        """Scrub the folders of the jobs seen so far (idempotent)."""
        for folder in sorted(self._pending):
            changed = scrub_folder(folder)
            if changed:
                log.info("removed credentials from %d file(s) under %s", len(changed), folder)
        self._pending.clear()

    # the other hooks of hydra.experimental.callback.Callback
    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        """Nothing to do before a single run."""

    def on_run_end(self, config: Any, **kwargs: Any) -> None:
        """Nothing to do after a single run (its job was scrubbed)."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """Nothing to do before a sweep."""
