"""``index.html``: the gallery of an explain run, one self-contained page to look at its images.

One row per explained image: the original, its overlay(s) (one per explainer), the reference boxes, the
probability, the decision at the threshold, the label where known and the localization score. The page sorts
by probability or by error (how far the probability is from the label), filters true/false positives/negatives,
and opens the full-size original and overlay side by side on a click (or Enter). It is plain HTML, CSS and a
little JavaScript: no network, no library, images linked relatively, so it works from a ``file://`` URL, a zip
of the folder or any static server. The URL's fragment sets the view: ``index.html#filter=FN&sort=error``.

Example:
    >>> rows = [{"image": "a.png", "probability": "0.91", "predicted_label": 1, "true_label": 0,
    ...          "overlay": "overlays/a.png"}]
    >>> html = gallery_html(rows, {}, threshold=0.5, title="demo")
    >>> 'data-outcome="FP"' in html and 'src="originals/a.png"' in html
    True
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pneumo.io.files import atomic_write_bytes
from pneumo.xai.overlay import COLOR_NAMES, box_legend, reference_color

#: Outcome of a labelled image at the threshold (``""`` without a label).
OUTCOMES = {(1, 1): "TP", (1, 0): "FP", (0, 0): "TN", (0, 1): "FN"}
#: Folder of the original images (display copies) next to ``overlays/``.
ORIGINALS = "originals"


def outcome(predicted: int, truth: Any) -> str:
    """``TP``/``FP``/``TN``/``FN`` of a prediction and a label (``""`` when the label is unknown).

    Example:
        >>> outcome(0, 1), outcome(1, ""), outcome(1, "1")
        ('FN', '', 'TP')
    """
    if truth in (None, ""):
        return ""
    return OUTCOMES[(int(predicted), int(truth))]


def original_of(overlay: str) -> str:
    """The original image's path beside an overlay: ``overlays/x.png`` -> ``originals/x.png``."""
    return f"{ORIGINALS}/{Path(overlay).name}"


def _overlays(row: Mapping[str, Any], explainers: Sequence[str] = ()) -> list[tuple[str, str]]:
    """``(explainer, path)`` of each overlay of a row: ``overlay`` (the explainers side by side, named by
    ``explainers``) and any ``overlay_<explainer>`` column."""
    first = " | ".join(explainers) or "gradcam"
    found = [(k.removeprefix("overlay").lstrip("_") or first, str(v)) for k, v in row.items()
             if k.startswith("overlay") and v]  # fmt: skip
    return found


def boxes_text(counts: Mapping[str, int]) -> str:
    """The reference boxes column: each reference's number of boxes and their outline colour.

    Example:
        >>> boxes_text({"nih": 1, "rsna": 2})
        'nih 1 (green), rsna 2 (orange)'
        >>> boxes_text({})
        'none'
    """
    parts = [f"{name} {n} ({COLOR_NAMES[reference_color(name)]})" for name, n in counts.items() if n]
    return ", ".join(parts) or "none"


def _score(loc: Mapping[str, Any] | None) -> str:
    if not loc:
        return "no reference box"
    hit = "hit" if str(loc.get("hit")) in ("1", "True", "true") else "miss"
    return f"{hit}, IoU {float(loc.get('iou', 'nan')):.2f}, IoBB {float(loc.get('iobb', 'nan')):.2f}"


def _row_html(
    row: Mapping[str, Any],
    loc: Mapping[str, Any] | None,
    boxes: Mapping[str, int],
    threshold: float,
    index: int,
    explainers: Sequence[str] = (),
) -> str:
    name, p = str(row["image"]), float(row["probability"])
    predicted, truth = int(row["predicted_label"]), row.get("true_label", "")
    kind = outcome(predicted, truth)
    label = {"": "unknown", None: "unknown"}.get(truth, "pneumonia" if str(truth) == "1" else "no pneumonia")
    error = abs(int(truth) - p) if kind else -1.0
    overlays = _overlays(row, explainers)
    drawn = [n for n, c in boxes.items() if c]
    legend = box_legend(drawn, predicted=bool(predicted)) if drawn or predicted else "no boxes"
    original = original_of(overlays[0][1]) if overlays else ""
    esc = html.escape
    pictures = [
        f'<td><button class="pic" data-full="{esc(original)}" data-pair="{esc(overlays[0][1] if overlays else "")}" '
        f'aria-label="open {esc(name)} full size"><img src="{esc(original)}" alt="original X-ray {esc(name)}" '
        'loading="lazy"></button></td>'
    ]
    for explainer, path in overlays:
        pictures.append(
            f'<td><button class="pic" data-full="{esc(path)}" data-pair="{esc(original)}" aria-label="open the '
            f'{esc(explainer)} overlay of {esc(name)} full size"><img src="{esc(path)}" alt="{esc(explainer)} heatmap '
            f'over {esc(name)}; {esc(legend)}" loading="lazy"></button><br>{esc(explainer)}</td>'
        )
    decision = "pneumonia" if predicted else "no pneumonia"
    return (
        f'<tr data-outcome="{kind}" data-probability="{p!r}" data-error="{error!r}" data-name="{esc(name)}" '
        f'data-index="{index}"><th scope="row">{esc(name)}</th>{"".join(pictures)}'
        f"<td>{esc(boxes_text(boxes))}</td>"
        f'<td class="num">{p:.3f}</td><td>{decision} (p {"≥" if predicted else "<"} {threshold:.3f})</td>'
        f'<td>{esc(label)}</td><td class="outcome {kind}">{kind or "–"}</td><td>{esc(_score(loc))}</td></tr>'
    )


def gallery_html(
    predictions: Sequence[Mapping[str, Any]],
    localization: Mapping[str, Mapping[str, Any]],
    threshold: float,
    title: str = "explain",
    boxes: Mapping[str, Mapping[str, int]] | None = None,
    explainers: Sequence[str] = (),
) -> str:
    """The page (module docstring) for ``predictions.csv``'s rows and ``localization.csv``'s rows by image;
    ``boxes``: image -> {reference: its number of boxes} (else the NIH boxes ``localization`` counts)."""
    n_overlays = max((len(_overlays(r)) for r in predictions), default=1)
    heads = ["image", "original", *(["overlay"] * max(1, n_overlays)), "reference boxes", "probability",
             "decision", "label", "outcome", "localization"]  # fmt: skip
    rows = "\n".join(
        _row_html(
            r, localization.get(str(r["image"])), _counts(r, localization, boxes), threshold, i, explainers
        )
        for i, r in enumerate(predictions)
    )
    counts = {k: sum(outcome(int(r["predicted_label"]), r.get("true_label", "")) == k for r in predictions)
              for k in OUTCOMES.values()}  # fmt: skip
    options = "".join(f'<option value="{k}">{k} ({n})</option>' for k, n in counts.items())
    return PAGE.format(
        title=html.escape(title),
        threshold=f"{threshold:.3f}",
        n=len(predictions),
        options=options,
        heads="".join(f'<th scope="col">{h}</th>' for h in heads),
        rows=rows,
        script=SCRIPT,
        counts=html.escape(json.dumps(counts)),
    )


def _counts(
    row: Mapping[str, Any],
    localization: Mapping[str, Mapping[str, Any]],
    boxes: Mapping[str, Mapping[str, int]] | None,
) -> Mapping[str, int]:
    name = str(row["image"])
    if boxes is not None:
        return boxes.get(name, {})
    loc = localization.get(name)
    return {"nih": int(loc.get("n_boxes") or 0)} if loc else {}


def gallery_link(predictions: str, out_dir: str | Path) -> str | None:
    """The gallery beside a local predictions file (an explain run's ``index.html`` next to its
    ``predictions.csv``) as a link relative to ``out_dir`` (where the report is written); ``None`` without one.

    Example:
        >>> gallery_link("gs://bucket/predictions.csv", "report") is None
        True
    """
    if "://" in predictions and not predictions.startswith("file://"):
        return None
    page = Path(predictions.removeprefix("file://")).parent / "index.html"
    if not page.is_file():
        return None
    return Path(os.path.relpath(page.resolve(), Path(out_dir).resolve())).as_posix()


def write_gallery(
    out_dir: str | Path,
    predictions: Sequence[Mapping[str, Any]],
    localization: Sequence[Mapping[str, Any]],
    threshold: float,
    title: str = "explain",
    boxes: Mapping[str, Mapping[str, int]] | None = None,
    explainers: Sequence[str] = (),
) -> Path:
    """Write ``out_dir/index.html`` (originals in ``out_dir/originals/``, overlays as ``predictions.csv`` names
    them; ``boxes`` and ``explainers`` as in ``gallery_html``); returns its path."""
    by_image = {str(row["image"]): row for row in localization}
    path = Path(out_dir) / "index.html"
    page = gallery_html(predictions, by_image, threshold, title, boxes=boxes, explainers=explainers)
    atomic_write_bytes(path, page.encode())
    return path


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pneumo explanations: {title}</title>
<style>
body {{ font: 15px/1.4 system-ui, sans-serif; margin: 1rem; color: #111; background: #fafafa; }}
.warn {{ background: #fee; border: 1px solid #c00; padding: .4rem .6rem; }}
table {{ border-collapse: collapse; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .3rem .5rem; vertical-align: middle; text-align: left; }}
td.num {{ font-variant-numeric: tabular-nums; }}
.pic {{ padding: 0; border: 2px solid transparent; background: none; cursor: zoom-in; }}
.pic:focus-visible {{ border-color: #06c; outline: 2px solid #06c; }}
.pic img {{ height: 128px; display: block; }}
.outcome.FN, .outcome.FP {{ color: #a00; font-weight: bold; }}
.controls {{ display: flex; gap: 1rem; margin: .6rem 0; align-items: center; flex-wrap: wrap; }}
dialog {{ max-width: 96vw; }} dialog img {{ max-height: 85vh; max-width: 46vw; }}
tr[hidden] {{ display: none; }}
</style>
</head>
<body data-state="loading">
<h1>Explanations: {title}</h1>
<p class="warn">Research use only, not for clinical use. A heatmap shows where the model looked, not whether
it is right; each heatmap is normalised on its own, so a confident negative still has a hottest spot.</p>
<p>{n} image(s); decision threshold {threshold} on the pneumonia probability. Outcomes where the label is
known: <span id="counts" data-counts="{counts}"></span></p>
<div class="controls" role="group" aria-label="view">
<label>Show <select id="filter"><option value="all">all</option>{options}</select></label>
<label>Sort by <select id="sort"><option value="index">input order</option>
<option value="probability">probability, highest first</option><option value="probability-asc">probability, lowest first</option>
<option value="error">error (|label - probability|), largest first</option><option value="name">image name</option></select></label>
<span id="shown" aria-live="polite"></span>
</div>
<table>
<thead><tr>{heads}</tr></thead>
<tbody id="rows">
{rows}
</tbody>
</table>
<dialog id="full" aria-label="full-size image pair"><form method="dialog"><button>Close (Esc)</button></form>
<div id="pair"></div></dialog>
<script>
{script}
</script>
</body>
</html>
"""

SCRIPT = """
"use strict";
const body = document.getElementById("rows");
const rows = Array.from(body.querySelectorAll("tr"));
const filter = document.getElementById("filter"), sort = document.getElementById("sort");
const keys = {
  index: (r) => Number(r.dataset.index),
  probability: (r) => -Number(r.dataset.probability),
  "probability-asc": (r) => Number(r.dataset.probability),
  error: (r) => -Number(r.dataset.error),
  name: (r) => r.dataset.name,
};
function apply() {
  const key = keys[sort.value] || keys.index;
  const sorted = rows.slice().sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
  let shown = 0;
  for (const r of sorted) {
    r.hidden = filter.value !== "all" && r.dataset.outcome !== filter.value;
    if (!r.hidden) shown += 1;
    body.appendChild(r);
  }
  document.getElementById("shown").textContent = shown + " of " + rows.length + " shown";
  try {
    history.replaceState(null, "", "#filter=" + filter.value + "&sort=" + sort.value);
  } catch (e) {
    // some browsers refuse history changes on file:// pages: the view works without it
  }
}
function fromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (params.get("filter")) filter.value = params.get("filter");
  if (params.get("sort")) sort.value = params.get("sort");
}
function openPair(button) {
  const pair = document.getElementById("pair");
  pair.replaceChildren();
  for (const src of [button.dataset.full, button.dataset.pair]) {
    if (!src) continue;
    const img = document.createElement("img");
    img.src = src;
    img.alt = button.querySelector("img").alt + (src === button.dataset.full ? "" : " (paired image)");
    pair.appendChild(img);
  }
  document.getElementById("full").showModal();
}
document.querySelectorAll(".pic").forEach((b) => b.addEventListener("click", () => openPair(b)));
filter.addEventListener("change", apply);
sort.addEventListener("change", apply);
const counts = JSON.parse(document.getElementById("counts").dataset.counts);
document.getElementById("counts").textContent =
  Object.entries(counts).map(([k, v]) => k + " " + v).join(", ");
fromHash();
apply();
document.body.dataset.state = "ready";
"""
