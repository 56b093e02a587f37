"""Train a chest X-ray pneumonia classifier: ``python train.py [overrides]`` (see README and conf/)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from pneumo.cli.app import hydra_command
from pneumo.console import user_errors
from pneumo.io.storage import protect_output
from pneumo.pipelines.preflight import check_overrides, check_train_config

log = logging.getLogger("train")
# Secrets are scrubbed from everything printed or logged from here on, Hydra's own messages included.
protect_output()


# A key of the flat data layout (data.batch_size): one line saying where it went, not Hydra's refusal.
@hydra_command("train.yaml", log, check_args=check_overrides)
def main(cfg: DictConfig) -> float | None:
    """``python train.py``, ``pneumo-train``, ``python -m pneumo train``: the overrides in ``sys.argv``."""
    # A user error: one line on stderr, exit 2, traceback in train.log only; a bug: its traceback, once.
    with user_errors(log):
        # Before torch, Lightning and MONAI are even imported: a typo fails in seconds.
        check_train_config(cfg)
        from pneumo.pipelines.train import metric_value, train

        metrics, _ = train(cfg)
        value = metric_value(metrics, cfg.get("optimized_metric"))
    for name in ("val/auroc", "test/auroc", "test/auprc"):
        if name in metrics:
            log.info("%s = %.4f", name, float(metrics[name]))
    return value


if __name__ == "__main__":
    main()
