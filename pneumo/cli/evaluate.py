"""``python -m pneumo.evaluation predictions=PATH out_dir=DIR [val_predictions=PATH] [labels_url=URL]
[eval.threshold=...] [recalibrate=true]``: the evaluation report of any predictions file.

See ``conf/evaluate.yaml``, ``pneumo.pipelines.evaluate`` and docs/evaluation.md, "Evaluate any predictions". A file or a
setting that cannot be used stops with one line naming it (exit status 2).
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from pneumo.cli.app import hydra_command
from pneumo.console import user_errors
from pneumo.io.storage import protect_output

log = logging.getLogger("pneumo.evaluation")
# Secrets are scrubbed from everything printed or logged from here on, Hydra's own messages included.
protect_output()


@hydra_command("evaluate.yaml", log)
def main(cfg: DictConfig) -> None:
    # torch and Lightning load here, not at import: --help answers in a second.
    from pneumo.pipelines.evaluate import EvaluateSettings, evaluate_files

    with user_errors(log):
        report = evaluate_files(EvaluateSettings.from_config(cfg))
    m, t = report["metrics"]["auroc"], report["threshold"]
    ci = f" (95% CI {m['ci'][0]:.4f}-{m['ci'][1]:.4f})" if m["ci"] else ""
    value = "n/a" if m["value"] is None else f"{m['value']:.4f}"
    log.info("%s images: %s AUROC %s%s; threshold %.4f (%s)", report["counts"]["images"], report["target"],
             value, ci, t["value"], t["rule"])  # fmt: skip
    for ref in (report.get("reference_standards") or {}).get("references", []):
        a = (ref.get("metrics") or {}).get("auroc") or {}
        log.info("reference %s: AUROC on %d covered images: %s", ref["title"], ref["images"],
                 "n/a" if a.get("value") is None else f"{a['value']:.4f}")  # fmt: skip
    for message in report["messages"]:
        log.warning("report: %s", message)
    log.info("report: %s/report.md", cfg.out_dir)


if __name__ == "__main__":
    main()
