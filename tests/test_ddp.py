"""DDP: exact per-rank shards, metrics synced over ranks, rank 0 alone writes; 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import binary_auroc

from pneumo.data.distributed import ShardedDDPStrategy, shard_sampler
from pneumo.pipelines.batch_predict import predict_images
from pneumo.pipelines.explain import ExplainSettings, explain_images
from pneumo.pipelines.train import train
from tests.helpers import ROOT, read_scalars, run_cli, tiny_overrides


class ShardRecorder(L.Callback):
    """Test probe: every rank writes the image ids it saw, per stage and epoch, to ``out``."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.seen: dict[str, list[str]] = defaultdict(list)

    def _add(self, trainer: L.Trainer, stage: str, batch: dict) -> None:
        if not trainer.sanity_checking:
            key = stage if stage == "test" else f"{stage}/{trainer.current_epoch}"
            self.seen[key].extend(batch["image_id"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._add(trainer, "train", batch)

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._add(trainer, "val", batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._add(trainer, "test", batch)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.seen["predict"].extend(batch["image_id"])

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "world_size": trainer.world_size, "seen": self.seen}
        (self.out / f"{getattr(stage, 'value', stage)}_rank{trainer.global_rank}.json").write_text(
            json.dumps(record)
        )


@pytest.mark.parametrize("n", [1, 2, 5, 21, 50])
@pytest.mark.parametrize("world", [2, 3])
def test_shards_are_disjoint_train_equal_eval_exact(n: int, world: int) -> None:
    data = list(range(n))
    if n < world:
        with pytest.raises(ValueError, match=f"{n} images cannot be shared by {world} ranks"):
            shard_sampler(DataLoader(data, shuffle=False), world, 0)
        return
    for epoch in (0, 1):
        train_shards, eval_shards = [], []
        for rank in range(world):
            s = shard_sampler(DataLoader(data, shuffle=True), world, rank, seed=7)
            s.set_epoch(epoch)
            train_shards.append(list(s))
            eval_shards.append(list(shard_sampler(DataLoader(data, shuffle=False), world, rank)))
        flat = [i for shard in train_shards for i in shard]
        assert len(flat) == len(set(flat)) and len(flat) == n - n % world  # disjoint, < world left out
        assert {len(s) for s in train_shards} == {n // world}  # equal: no rank waits in all-reduce
        flat = [i for shard in eval_shards for i in shard]
        assert sorted(flat) == data  # an exact partition: no repeats, nothing left out
    assert train_shards[0] != list(range(0, n - n % world, world)) or n < 5  # shuffled


def test_a_users_own_sampler_is_kept() -> None:
    """A weighted sampler, as Lightning wraps it with use_distributed_sampler=True, is not replaced."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
    from torch.utils.data import WeightedRandomSampler

    weighted = WeightedRandomSampler([1.0] * 10, num_samples=10)
    for sampler in (weighted, DistributedSamplerWrapper(weighted, num_replicas=2, rank=0, shuffle=False)):
        assert shard_sampler(DataLoader(list(range(10)), sampler=sampler), 2, 0) is None


@pytest.mark.slow
def test_ddp_two_cpu_processes(demo_root: Path, tmp_path: Path, compose_train) -> None:
    # A patient split with odd val (9) and test (21) sizes; batch 5 gives the ranks 3 and 2 test batches.
    data = [
        "data.split_lists=null",
        "data.split.test_fraction=0.25",
        "data.split.seed=0",
        "data.loader.batch_size=5",
    ]
    base = [
        o
        for o in tiny_overrides(demo_root, tmp_path)
        if not o.startswith(("+trainer.limit_", "data.loader.batch_size"))
    ] + data
    probe = tmp_path / "shards"
    proc = run_cli(
        [
            "train.py",
            *base,
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.max_epochs=2",
            "+callbacks.shards._target_=tests.test_ddp.ShardRecorder",
            f"+callbacks.shards.out={probe}",
        ],
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [run] = list((tmp_path / "train" / "runs").iterdir())

    fit = [json.loads((probe / f"fit_rank{r}.json").read_text()) for r in (0, 1)]
    test = [json.loads((probe / f"test_rank{r}.json").read_text()) for r in (0, 1)]
    assert fit[0]["world_size"] == 2 and fit[0]["pid"] != fit[1]["pid"]

    # a single-process evaluation of the DDP run's best checkpoint on the same split
    [best] = [p for p in (run / "checkpoints").iterdir() if p.name.startswith("epoch_")]
    metrics, objects = train(compose_train([*base, "train=false", f"ckpt_path={best}", "logger=none"]))
    dm = objects["datamodule"]
    split = {k: set(v) for k, v in dm.split.as_dict().items()}
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (50, 9, 21)
    for epoch in (0, 1):
        a, b = (set(f["seen"][f"train/{epoch}"]) for f in fit)
        assert len(a) == len(b) == 25 and not a & b and a | b == split["train"]
        a, b = (f["seen"][f"val/{epoch}"] for f in fit)
        assert sorted(a + b) == sorted(split["val"])  # no padding repeats
    assert fit[0]["seen"]["train/0"] != fit[0]["seen"]["train/1"]  # reshuffled each epoch
    a, b = (t["seen"]["test"] for t in test)
    assert (len(a), len(b)) == (11, 10) and sorted(a + b) == sorted(split["test"])

    # rank 0 alone writes TensorBoard events; rank 1 logs to its own text file
    event_pids = {p.name.split(".")[-2] for p in (run / "tensorboard").glob("events.out.tfevents.*")}
    assert event_pids == {str(fit[0]["pid"])}
    assert (run / "train.log").exists() and (run / "train_ddp_process_1.log").exists()
    assert "testing with" in (run / "train.log").read_text()

    # the synced test AUROC equals the single-process one ...
    ddp_auroc = read_scalars(run / "tensorboard")["test/auroc"][-1]
    single = float(metrics["test/auroc"])
    assert abs(ddp_auroc - single) < 1e-6, (ddp_auroc, single)
    # ... and differs from what rank 0 alone saw: the figure really is gathered over the ranks
    model = objects["model"].eval()
    test_set = dm.datasets["test"]
    rank0 = set(test[0]["seen"]["test"])
    items = [test_set[i] for i in range(len(test_set)) if test_set[i]["image_id"] in rank0]
    with torch.no_grad():
        prob = model.predict_proba(torch.stack([it["image"] for it in items]))
    rank0_auroc = binary_auroc(prob, torch.stack([it["label"] for it in items])).item()
    assert abs(rank0_auroc - single) > 1e-3, (rank0_auroc, single)


def test_prediction_writer_two_processes_write_each_image_once_with_single_process_scores(
    tiny_ckpt: Path, demo_root: Path, tmp_path: Path
) -> None:
    """Issue 26: ``Trainer.predict`` + ``PredictionWriter`` on 2 CPU processes (gloo) of the project's DDP
    strategy. The ranks are forked from this process (``start_method="fork"``): the same strategy, sampler
    and writer as ``trainer=ddp``, without a second interpreter importing torch (train.py's DDP run above
    covers the command-line launch)."""
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted((demo_root / "images").iterdir())[:11]:  # odd: the shards differ by one image
        shutil.copy(path, images / path.name)
    probe = tmp_path / "shards"
    ddp = {
        "strategy": ShardedDDPStrategy(start_method="fork", process_group_backend="gloo"),
        "accelerator": "cpu",
        "devices": 2,
        "use_distributed_sampler": False,  # as conf/trainer/ddp.yaml: the strategy shards the loader
    }
    # explain.py heatmaps=false: Trainer.predict on every process of `predict`
    ddp_run = explain_images(ExplainSettings(
        ckpt_path=str(tiny_ckpt), out_dir=str(tmp_path / "ddp"), inputs=str(images), batch_size=4, progress=False,
        heatmaps=False, predict={**ddp, "callbacks": [ShardRecorder(str(probe))]},
    ))  # fmt: skip
    path = tmp_path / "ddp" / "predictions.csv"
    assert [row["image"] for row in ddp_run.predictions] == sorted(p.name for p in images.iterdir())
    seen = [json.loads((probe / f"predict_rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[0]["world_size"] == 2 and seen[0]["pid"] != seen[1]["pid"] != os.getpid()
    a, b = (s["seen"]["predict"] for s in seen)
    names = sorted(p.name for p in images.iterdir())
    assert sorted((len(a), len(b))) == [5, 6] and not set(a) & set(b) and sorted(a + b) == names
    written = pd.read_csv(path)
    assert written.image.tolist() == names and written["index"].tolist() == list(range(len(names)))
    # each rank's part file is merged and gone; rank 0 wrote the summary
    assert sorted(p.name for p in path.parent.iterdir()) == ["predictions.csv", "summary.json"]
    single = pd.read_csv(
        predict_images(str(tiny_ckpt), str(images), tmp_path / "one", trainer={"accelerator": "cpu"})
    )
    assert (written.probability - single.probability).abs().max() <= 1e-6
    assert (written.predicted_label == single.predicted_label).all()
    # and they are explain's probabilities (same reading, temperature and threshold)
    explained = explain_images(ExplainSettings(ckpt_path=str(tiny_ckpt), out_dir=str(tmp_path / "ex"),
                                               inputs=str(images), progress=False))  # fmt: skip
    by_name = {row["image"]: float(row["probability"]) for row in explained.predictions}
    assert max(abs(by_name[n] - p) for n, p in zip(written.image, written.probability)) <= 1e-6


def test_ddp_inside_a_local_multirun_fails_fast(compose_train) -> None:
    import hydra

    cfg = compose_train(
        ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "hydra.mode=MULTIRUN"]
    )
    with pytest.raises(Exception, match="cannot run inside a local multirun"):
        hydra.utils.instantiate(cfg.trainer)
    cfg = compose_train(["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"])
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False)  # a single run may spawn its ranks
    assert trainer.world_size == 2 and type(trainer.strategy).__name__ == "ShardedDDPStrategy"
