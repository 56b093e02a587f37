"""The saliency report: per explainer a Markdown table of the checks, the warnings they raise and a plot of
the sanity check (``pneumo.pipelines.saliency`` computes them; docs/explanations.md says how to read them).

Example:
    >>> format_saliency({"n_images": 2, "explainers": {}})[0]
    '# Saliency checks'
    >>> warnings({"gradcam": {"lung_share": 0.2, "lung_area": 0.4}})[0][:40]
    '- **Shortcut warning (gradcam)**: 20% of'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: The report warns of a shortcut when the lung fields hold less than this many times the heat a uniform map
#: gives them (their share of the heat over their share of the image: 1.0 is a map spread evenly). On the
#: demo at 64 px (seeds 0-6, pneumonia images) clean models gave 1.4-1.9 and marker-trained ones 0.2-1.1,
#: leaving out one marker run that trained badly (1.65); at 96 px one marker model gave 1.29
#: (docs/explanations.md, docs/BENCHMARKS.md).
LUNG_CONCENTRATION_WARNING = 1.25


def _f(value: object, digits: int = 3) -> str:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return f"{value:.{digits}f}" if ok else "-"


def _ci(values: object) -> str:
    return (
        f" ({_f(values[0])}-{_f(values[1])})" if isinstance(values, list | tuple) and len(values) == 2 else ""
    )


def _first_localization(row: Mapping) -> tuple[str, Mapping]:
    """The first reference that boxes some image (the main table's mIoU and hit rate), and its scores."""
    for name, scores in (row.get("localization") or {}).items():
        if scores.get("n"):
            return name, scores
    return "", {}


def _row(name: str, row: Mapping) -> str:
    sanity = row.get("sanity") or {}
    faith = row.get("faithfulness") or {}
    reference, loc = _first_localization(row)
    lungs = f"{_f(row.get('lung_share'))} ({_f(row.get('lung_area'))})" if "lung_share" in row else "-"
    return (
        f"| {name} | {sanity.get('verdict', '-')} | {_f(faith.get('deletion'))} ({_f(faith.get('deletion_random'))}) "
        f"| {_f(faith.get('insertion'))} ({_f(faith.get('insertion_random'))}) "
        f"| {_f(loc.get('miou_otsu'))}{f' [{reference}]' if reference else ''} | {_f(loc.get('hit_rate'))} "
        f"| {lungs} | {_f(row.get('ms_per_image'), 1)} | {_f(row.get('cost_vs_gradcam'), 2)} |"
    )


def lung_concentration(row: Mapping) -> float:
    """An explainer's share of heat in the lung fields over the lungs' share of the image (``NaN`` when
    unknown): 1.0 is what a uniform map scores, above 1 the heat gathers in the lungs.

    Example:
        >>> lung_concentration({"lung_share": 0.5, "lung_area": 0.25}), lung_concentration({})
        (2.0, nan)
    """
    share, area = row.get("lung_share"), row.get("lung_area")
    if isinstance(share, float) and isinstance(area, float) and area > 0:
        return share / area
    return math.nan


def warnings(explainers: Mapping[str, Mapping]) -> list[str]:
    """The report's warnings: heat off the lung fields (a shortcut; not for an explainer that never runs the
    model), deletion no better than a random order, a failed sanity check. One Markdown bullet each.

    Example:
        >>> rows = {"gradcam": {"lung_share": 0.1, "lung_area": 0.25, "passes": 1.0},
        ...         "random": {"lung_share": 0.25, "lung_area": 0.25, "passes": 0.0}}
        >>> [line[:35] for line in warnings(rows)]
        ['- **Shortcut warning (gradcam)**: 1']
    """
    out = []
    for name, row in explainers.items():
        # an explainer that never runs the model (passes 0: the random floor) cannot reveal a shortcut
        if lung_concentration(row) < LUNG_CONCENTRATION_WARNING and row.get("passes") != 0:
            out.append(
                f"- **Shortcut warning ({name})**: {row['lung_share']:.0%} of the heat lies in the lung fields, "
                f"which cover {row['lung_area']:.0%} of the image ({lung_concentration(row):.2f}x a uniform map's "
                "share); the model may be reading something outside the lungs - a marker, a text label, the "
                "film's edge (Zech et al. 2018). Look at the overlays."
            )
        faith = row.get("faithfulness") or {}
        if faith and faith["deletion"] >= faith["deletion_random"]:
            out.append(
                f"- {name}: deletion AUC {faith['deletion']:.3f} is not below the random order's "
                f"{faith['deletion_random']:.3f}: the map does not rank what the model uses better than chance."
            )
        if (row.get("sanity") or {}).get("verdict") == "fail":
            out.append(
                f"- {name}: **fails the sanity check**: its maps stay similar to the trained ones when the "
                "model's weights are randomized, so they do not show what the model learned."
            )
    return out


def _sanity_lines(explainers: Mapping[str, Mapping]) -> list[str]:
    sanity = {n: r["sanity"] for n, r in explainers.items() if (r.get("sanity") or {}).get("steps")}
    if not sanity:
        return []
    lines = [
        "", "## Sanity check (cascading randomization)", "",
        "Similarity of each map to the trained model's map of the same image once every block is randomized, "
        "against the trained maps of random pairs of different images (mean ± standard error).", "",
        "| explainer | verdict | Spearman, randomized | Spearman, image pairs | SSIM, randomized | SSIM, image pairs "
        "| after the top block (Spearman / SSIM) |",
        "|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for n, s in sanity.items():
        lines.append(
            f"| {n} | **{s['verdict']}** | {s['spearman'][-1]:.3f} ± {s['spearman_se'][-1]:.3f} "
            f"| {s['baseline_spearman']:.3f} ± {s['baseline_spearman_se']:.3f} | {s['ssim'][-1]:.3f} ± "
            f"{s['ssim_se'][-1]:.3f} | {s['baseline_ssim']:.3f} ± {s['baseline_ssim_se']:.3f} "
            f"| {s['spearman'][0]:.3f} / {s['ssim'][0]:.3f} |"
        )
    return lines


def _localization_lines(explainers: Mapping[str, Mapping]) -> list[str]:
    rows = [
        f"| {n} | {ref} | {s['n']} | {_f(s['miou_otsu'])}{_ci(s.get('miou_otsu_ci'))} | {_f(s['miou_fixed'])}"
        f"{_ci(s.get('miou_fixed_ci'))} | {_f(s['hit_rate'])}{_ci(s.get('hit_rate_ci'))} | {_f(s['random_hit_rate'])} |"
        for n, r in explainers.items()
        for ref, s in (r.get("localization") or {}).items()
        if s.get("n")
    ]
    if not rows:
        return []
    return [
        "", "## Localization (CheXlocalize)", "",
        "Per box reference, on the images it boxes: mIoU of the map thresholded by Otsu's method after min-max "
        "normalisation, and at a fixed level; hit rate (pointing game) and a random point's; 95% patient-bootstrap "
        "intervals in brackets.", "",
        "| explainer | reference | images | mIoU (Otsu) | mIoU (fixed) | hit rate | random point |",
        "|---|---|---|---|---|---|---|",
        *rows,
    ]  # fmt: skip


def _captum_lines(explainers: Mapping[str, Mapping]) -> list[str]:
    rows = {n: r["captum"] for n, r in explainers.items() if r.get("captum")}
    if not rows:
        return []
    first = next(iter(rows.values()))
    lines = [
        "", "## Captum metrics (Yeh et al. 2019)", "",
        f"On {first['n']} pneumonia image(s), {first['perturbations']} perturbations each. Infidelity: how badly the "
        "map, best rescaled, predicts the output's change under Gaussian noise (lower is better). Max-sensitivity: "
        "the largest relative change of the map within a small ball around the image (lower is better; 0 for a "
        "map that ignores the image, so read it beside the other checks). Costs in ms per image, and as a "
        "multiple of one explanation.", "",
        "| explainer | infidelity | max-sensitivity | infidelity cost | max-sensitivity cost |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    for n, c in rows.items():
        one = explainers[n].get("ms_per_image") or math.nan
        lines.append(
            f"| {n} | {_f(c['infidelity'], 4)} | {_f(c['sensitivity_max'])} | {_f(c['infidelity_ms_per_image'], 1)} "
            f"({_f(c['infidelity_ms_per_image'] / one, 1)}x) | {_f(c['sensitivity_ms_per_image'], 1)} "
            f"({_f(c['sensitivity_ms_per_image'] / one, 1)}x) |"
        )
    return lines


def format_saliency(report: Mapping[str, Any]) -> list[str]:
    """The Markdown lines of a saliency report (``pneumo.pipelines.saliency.saliency_report`` or the sanity
    command's)."""
    explainers = report.get("explainers") or {}
    lines = [
        "# Saliency checks",
        "",
        f"{report.get('n_images', 0)} image(s), {report.get('positives', '-')} with pneumonia; maps of the "
        f"{report.get('target', 'pneumonia')} output. Sanity: cascading randomization (Adebayo et al. 2018); pass = "
        "fully randomized maps no more similar to the trained ones than the trained maps of two different images. "
        "Deletion (lower is better) and insertion (higher is better) AUCs on the pneumonia images, random patch "
        "order in brackets. mIoU: Otsu threshold of the min-max map (CheXlocalize). Lung-field share: on the "
        "pneumonia images, the heat inside the lungs (in brackets: the lungs' share of those images, what a "
        f"uniform map scores; under {LUNG_CONCENTRATION_WARNING}x that, a shortcut warning). Passing every check "
        "is necessary, not sufficient (docs/explanations.md).",
        "",
        "| explainer | sanity | deletion AUC (random) | insertion AUC (random) | mIoU (Otsu) | hit rate "
        "| lung-field share (area) | ms / image | cost vs Grad-CAM |",
        "|---|---|---|---|---|---|---|---|---|",
        *(_row(name, row) for name, row in explainers.items()),
    ]
    found = warnings(explainers)
    if found:
        lines += ["", "## Warnings", "", *found]
    return lines + _sanity_lines(explainers) + _localization_lines(explainers) + _captum_lines(explainers)


def plot_sanity(report: Mapping, path: Path) -> None:
    """Spearman and SSIM to the trained maps vs randomized depth (top block first), one line per explainer,
    each with its random-pairs baseline dashed; written as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    steps: list[str] = []
    for name, row in (report.get("explainers") or {}).items():
        s = row.get("sanity")
        if not s or not s["steps"]:
            continue
        steps = steps or s["steps"]
        for ax, key in zip(axes, ("spearman", "ssim")):
            (line,) = ax.plot(
                range(len(s[key]) + 1), [1.0, *s[key]], marker="o", label=f"{name} ({s['verdict']})"
            )
            ax.axhline(s[f"baseline_{key}"], color=line.get_color(), linestyle="--", linewidth=1)
    for ax, title in zip(axes, ("Spearman rank correlation (|map|)", "SSIM")):
        ax.set_xticks(range(len(steps) + 1), ["trained", *steps], rotation=60, ha="right", fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("randomized down to (cumulative); dashed: random image pairs")
    axes[0].set_ylabel("similarity to the trained map")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
