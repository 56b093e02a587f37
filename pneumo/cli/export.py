"""``pneumo-export ckpt_path=CKPT format=torchscript|onnx|bundle out_dir=DIR [heatmap=true] [overwrite=true]``.

See ``conf/export.yaml``, ``pneumo.pipelines.export`` and docs/export.md. A checkpoint, format or folder that
cannot be used stops with one line naming it (exit status 2); an export that does not reproduce the PyTorch
model stops the same way and writes nothing.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from pneumo.config import choice
from pneumo.console import user_errors
from pneumo.io.storage import protect_output

log = logging.getLogger("pneumo.export")
#: ``format=`` values (``pneumo.pipelines.export.FORMATS``; tests/test_export.py keeps them equal).
FORMATS = ("torchscript", "onnx", "bundle")
# Secrets are scrubbed from everything printed or logged from here on, Hydra's own messages included.
protect_output()


@hydra.main(version_base="1.3", config_path="pkg://pneumo.conf", config_name="export.yaml")
def main(cfg: DictConfig) -> None:
    with user_errors(log):
        # A format that does not exist answers before torch loads (FORMATS, pneumo.pipelines.export's own).
        choice(cfg.format, "format", FORMATS)
        # torch loads here, not at import: --help and a bad override answer in a second.
        from pneumo.pipelines.export import ExportSettings, export_model

        result = export_model(ExportSettings.from_config(cfg))
    if result.max_logit_difference is not None:
        heat = result.max_heatmap_difference
        log.info(
            "%s vs PyTorch on %d image(s): max abs logit difference %.3g%s", cfg.format, result.checked_images,
            result.max_logit_difference, "" if heat is None else f", max abs heatmap difference {heat:.3g}",
        )  # fmt: skip
    log.info("exported %s -> %s/%s (+ model_meta.json)", cfg.format, result.out_dir, result.model_file)


if __name__ == "__main__":
    main()
