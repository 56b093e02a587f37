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

from pneumo.pipelines.evaluate import EvaluateSettings, evaluate_files
from pneumo.reporting.figures import report_figures
from pneumo.reporting.report import EvalSettings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
INSTALL = "the gallery test needs Debian's chromium: apt-get install -y chromium (.ci/run does it)"


def _chromium(*args: str) -> subprocess.CompletedProcess:
    assert CHROMIUM is not None
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason=INSTALL)
def test_the_gallery_loads_from_file_and_its_fn_filter_leaves_the_false_negatives(
    moved_threshold_explain: tuple[Path, float], demo_root: Path
) -> None:
    out, _ = moved_threshold_explain  # explain.py's outputs, with false negatives (conftest.py)
    table = pd.read_csv(out / "predictions.csv")
    fn = table[(table.true_label == 1) & (table.predicted_label == 0)]
    assert len(fn), "no false negative: the filter would test nothing"
    # one browser launch: the page opened on the false negatives, worst first, from a file:// URL
    page = _chromium("--dump-dom", (out / "index.html").as_uri() + "#filter=FN&sort=error")
    assert page.returncode == 0, page.stderr[-2000:]
    console = [ln for ln in page.stderr.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
    assert console == [], console
    dom = page.stdout
    assert 'data-state="ready"' in dom  # the script ran to its end
    rows = re.findall(r"<tr data-outcome=[^>]*>", dom)
    assert sorted(_attr(r, "name") for r in rows) == sorted(table.image)  # one row per explained image
    shown = [r for r in rows if "hidden" not in r]
    assert {_attr(r, "name") for r in shown} == set(fn.image)  # exactly the false negatives
    errors = [float(_attr(r, "error")) for r in shown]
    assert errors == sorted(errors, reverse=True)  # sorted by error, largest first
    assert f"{len(fn)} of {len(table)} shown" in dom
    # every picture has alt text and sits in a button (keyboard: Tab + Enter opens the full-size pair)
    pictures = re.findall(r"<button class=\"pic\"[^>]*><img [^>]*>", dom)
    assert len(pictures) == 2 * len(table) and all(re.search(r'alt="[^"]{10,}"', p) for p in pictures)
    # the reference boxes column names each reference's boxes where localization.csv scored them
    boxed = pd.read_csv(out / "localization.csv")
    for name, n in zip(boxed.image, boxed.n_boxes):
        row = dom[dom.index(f'data-name="{name}"') :]
        assert f"nih {n} (green)" in row[: row.index("</tr>")]
    # every picture the page links exists beside it (relative links: the folder can move or be zipped)
    html = (out / "index.html").read_text()
    links = set(re.findall(r'(?:src|data-full|data-pair)="([^"]+)"', html))
    assert links and all((out / link).is_file() for link in links)
    assert "http://" not in html and "https://" not in html
    # the report of these predictions (python -m pneumo.evaluation) links to the gallery
    report = out.parent / "report"
    settings = EvaluateSettings(str(out / "predictions.csv"), str(report), EvalSettings(threshold=0.5, resamples=50, figures=False),
                                labels_url=str(demo_root / "Data_Entry_2017.csv"))  # fmt: skip
    assert evaluate_files(settings)["gallery"] == "../b/index.html"
    link = re.search(r"\[the gallery\]\(([^)]+)\)", (report / "report.md").read_text())
    assert link and (report / link.group(1)).resolve() == (out / "index.html").resolve()


def _attr(tag: str, name: str) -> str:
    found = re.search(rf'data-{name}="([^"]*)"', tag)
    assert found, (name, tag)
    return found.group(1)


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
