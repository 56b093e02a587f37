"""benchmarks/demo_seeds.py: issue 10's acceptance rule over seeds and the median row of its table."""

from __future__ import annotations

import importlib.util

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("demo_seeds", ROOT / "benchmarks" / "demo_seeds.py")
demo_seeds = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo_seeds)


def row(seed: int, auroc: float, pointing: float, random_rate: float = 0.05) -> dict:
    return {
        "seed": seed, "best_epoch": 6, "epochs_trained": 7, "test_auroc": auroc, "pointing_game": pointing,
        "random_hit_rate": random_rate, "vs_random": pointing / random_rate, "train_s": 100.0, "explain_s": 10.0,
    }  # fmt: skip


def test_four_of_five_pointing_games_and_every_auroc() -> None:
    good = [row(s, 0.95, 0.8) for s in range(4)]
    assert demo_seeds.acceptance([*good, row(4, 0.95, 0.3)], 5)[0]  # one weak pointing game is allowed
    assert not demo_seeds.acceptance([*good[:3], row(3, 0.95, 0.3), row(4, 0.95, 0.3)], 5)[0]
    assert not demo_seeds.acceptance([*good, row(4, 0.89, 0.8)], 5)[0]  # every AUROC must reach 0.90
    # 0.6 but under 10x random (a large box) does not count
    assert not demo_seeds.acceptance([*good[:3], row(3, 0.95, 0.65, 0.1), row(4, 0.95, 0.3)], 5)[0]
    ok, verdict = demo_seeds.acceptance(good[:2], 5)
    assert not ok and verdict.endswith("-> partial")


def test_table_has_the_median_row() -> None:
    rows = [row(1, 0.91, 0.5), row(2, 0.99, 0.9), row(3, 0.95, 0.7)]
    median = demo_seeds.table(rows).splitlines()[-1]
    assert median.startswith("| **median** |") and "**0.9500**" in median and "**0.700**" in median
