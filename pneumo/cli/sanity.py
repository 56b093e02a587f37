"""The sanity check of saliency maps: ``python -m pneumo sanity ckpt_path=CKPT split=test n=16``.

See ``conf/sanity.yaml`` and docs/explanations.md. Writes ``sanity.json``, ``sanity.md`` and ``sanity.png``
and prints the verdict of each explainer. Exit status 0 (also when an explainer fails: that is a finding, not
an error), 2 when nothing could run.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from pneumo.cli.app import hydra_command
from pneumo.console import user_errors
from pneumo.io.storage import protect_output

log = logging.getLogger("sanity")
protect_output()


@hydra_command("sanity.yaml", log)
def main(cfg: DictConfig) -> None:
    # torch loads here, not at import: --help and a bad override answer in a second.
    from pneumo.pipelines.saliency import SanitySettings, run_sanity

    with user_errors(log):
        settings = SanitySettings.from_config(cfg)
        run_sanity(settings)  # logs one line per explainer: verdict, similarities, baselines
    log.info("sanity.md, sanity.json, sanity.png -> %s", settings.out_dir)


if __name__ == "__main__":
    main()
