"""Explain a trained classifier's predictions with Grad-CAM: ``python explain.py ckpt_path=CKPT inputs=PATH``.

See ``conf/explain.yaml`` and docs/explanations.md. Exit status: 0 when every image was explained,
1 when some inputs could not be read (the others are still written), 2 when nothing could run (missing or
incompatible checkpoint, inputs that do not exist).
"""

from __future__ import annotations

import logging
import sys

from omegaconf import DictConfig

from pneumo.cli.app import hydra_command
from pneumo.console import user_errors
from pneumo.io.storage import protect_output

log = logging.getLogger("explain")
# Secrets are scrubbed from everything printed or logged from here on, Hydra's own messages included.
protect_output()


@hydra_command("explain.yaml", log)
def main(cfg: DictConfig) -> None:
    # A user error: one line on stderr, exit 2, traceback in explain.log only; a bug keeps its traceback.
    # torch, Lightning and MONAI load here, not at import: --help and a bad override answer in a second.
    from pneumo.pipelines.explain import ExplainSettings, explain_images, format_summary

    with user_errors(log):
        result = explain_images(ExplainSettings.from_config(cfg))
    n_ok, n_bad = len(result.predictions), len(result.failed)
    if not cfg.get("heatmaps", True):
        log.info("predicted %d image(s) -> %s (predictions.csv; heatmaps=false)", n_ok, result.out_dir)
        return
    log.info(
        "explained %d image(s) -> %s (predictions.csv, boxes.csv, overlays/, heatmaps/)", n_ok, result.out_dir
    )
    for line in format_summary(result.summary):
        log.info("%s", line)
    if n_bad:
        log.error(
            "%d input(s) could not be read: %s",
            n_bad,
            "; ".join(f"{loc} ({err})" for loc, err in result.failed),
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
