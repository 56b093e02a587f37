"""Issue 26: the gallery of an explain run (``index.html`` loaded in headless Chromium from ``file://``) and
report figures a reader can read."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from pneumo.pipelines.explain import ExplainSettings, explain_images
from pneumo.reporting.figures import report_figures

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
INSTALL = "the gallery test needs Debian's chromium: apt-get install -y chromium (.ci/run does it)"


def _chromium(*args: str) -> subprocess.CompletedProcess:
    assert CHROMIUM is not None
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason=INSTALL)
def test_the_gallery_loads_from_file_and_its_fn_filter_leaves_the_false_negatives(
    tiny_ckpt: Path, tmp_path: Path
) -> None:
    out = tmp_path / "explained"
    explain_images(ExplainSettings(ckpt_path=str(tiny_ckpt), out_dir=str(out), split="test", progress=False))
    table = pd.read_csv(out / "predictions.csv")
    fn = set(table.image[(table.true_label == 1) & (table.predicted_label == 0)])
    assert fn, "the tiny model has no false negative on the test split: the filter would test nothing"
    for view, expected in (("#filter=all", set(table.image)), ("#filter=FN&sort=error", fn)):
        page = _chromium("--dump-dom", (out / "index.html").as_uri() + view)
        assert page.returncode == 0, page.stderr[-2000:]
        console = [ln for ln in page.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
        assert console == [], console
        dom = page.stdout
        assert 'data-state="ready"' in dom  # the script ran to its end
        rows = re.findall(r"<tr data-outcome=[^>]*>", dom)
        assert len(rows) == len(table)  # one row per explained image
        shown = {re.search(r'data-name="([^"]+)"', r).group(1) for r in rows if "hidden" not in r}
        assert shown == expected
    # every picture the page links exists beside it (relative links: the folder can move or be zipped)
    html = (out / "index.html").read_text()
    links = set(re.findall(r'(?:src|data-full|data-pair)="([^"]+)"', html))
    assert links and all((out / link).is_file() for link in links)
    assert "http://" not in html and "https://" not in html


def test_report_figures_are_readable(tmp_path: Path) -> None:
    """Issue 26: the confusion matrix's title fits the figure, the reliability line does not cross empty bins,
    the ROC curve has a confidence band."""
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(60), np.ones(40)]
    p = np.clip(np.r_[rng.uniform(0, 0.3, 60), rng.uniform(0.7, 1.0, 40)], 0, 1)  # bins 0.3-0.7 stay empty
    frame = pd.DataFrame({"probability": p, "label": y})
    figs = report_figures(frame, 0.5, target="Airspace opacity (RSNA reference)")
    confusion = figs["confusion_matrix"]
    FigureCanvasAgg(confusion).draw()  # lays the figure out as savefig does
    box = confusion.axes[0].title.get_window_extent()
    assert box.x0 >= 0 and box.x1 <= confusion.bbox.width and box.y1 <= confusion.bbox.height
    line = next(ln for ln in figs["reliability"].axes[0].lines if ln.get_marker() == "o")
    assert np.isnan(line.get_ydata()).any()  # the empty bins break the line
    roc = figs["roc"].axes[0]
    assert any("95% band" in t.get_text() for t in roc.get_legend().get_texts())
    assert roc.collections, "no band drawn"
