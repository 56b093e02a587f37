"""uint8 batches from the loaders and the per-batch step after the transfer (issue 27)."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from pneumo.data.settings import AUTO_CACHED_WORKERS, AUTO_STREAMING_WORKERS, LoaderSettings, usable_cores
from pneumo.errors import ConfigError
from pneumo.images.batch import BatchAugment, affine_theta, scale_batch
from tests.helpers import demo_datamodule

AUGMENT = {"enabled": True, "prob": 0.5, "rotate_degrees": 10, "scale": 0.1, "translate": 0.05}


def per_item_batch(dm, split: str, image_ids: list[str]) -> dict:
    """Today's batch: the per-item dataset's items of ``image_ids`` (float32, transforms applied), collated."""
    dataset = dm.make_dataset(split, augment=False)
    position = {str(name): i for i, name in enumerate(dataset.index.images)}
    return default_collate([dataset[position[name]] for name in image_ids])


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "streaming"])
def test_batches_without_augmentation_equal_the_per_item_path_exactly(
    demo_root: Path, tmp_path: Path, cached: bool
) -> None:
    cache = {"enabled": True, "dir": str(tmp_path / "cache")} if cached else {"enabled": False}
    # The train loader shuffles: its batches are compared with the items of the same images.
    dm = demo_datamodule(demo_root, cache=cache, images={"augment": {"enabled": False}})
    dm.setup("fit")
    for split, loader in (("train", dm.train_dataloader()), ("val", dm.val_dataloader())):
        for raw in loader:
            assert raw["image"].dtype == torch.uint8 and raw["image"].shape[1:] == (1, 48, 48)
            batch = dm.finish_batch(raw, step=0 if split == "train" else None)
            old = per_item_batch(dm, split, batch["image_id"])
            assert batch["image"].dtype == old["image"].dtype == torch.float32
            assert torch.equal(batch["image"], old["image"]), split
            assert torch.equal(batch["label"], old["label"]) and batch["label"].dtype == torch.int64
            assert torch.equal(batch["findings"], old["findings"])
            assert batch["image_id"] == list(old["image_id"])
    # the train batches come in the shuffled order, the val batches in the split's order
    order = [name for raw in dm.val_dataloader() for name in raw["image_id"]]
    assert order == [str(x) for x in dm.datasets["val"].index.images]


def test_cached_source_reads_a_batch_in_the_order_asked(demo_root: Path, tmp_path: Path) -> None:
    dm = demo_datamodule(demo_root, cache={"enabled": True, "dir": str(tmp_path / "cache")})
    dm.setup("fit")
    source = dm.datasets["train"].source
    indices = [5, 3, 4, 0, 9, 10, 11, 3, 1]  # shuffled, runs of consecutive rows, a repeat
    many = source.many(indices)
    assert many.dtype == np.uint8 and many.shape == (len(indices), 48, 48)
    assert np.array_equal(many, np.stack([source(i) for i in indices]))
    copy = pickle.loads(pickle.dumps(source))  # what a loader worker gets: it opens the file itself
    assert np.array_equal(copy.many(indices[::-1]), many[::-1])


class BatchProbe(L.LightningModule):
    """A one-weight model that keeps the batches it is given (after the data module's per-batch step)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: dict[str, list[dict]] = {"train": [], "val": []}

    def _keep(self, batch: dict, split: str) -> torch.Tensor:
        self.seen[split].append({k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()})
        return (batch["image"].mean() * self.weight).sum()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._keep(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._keep(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit_batches(demo_root: Path, cache_dir: Path, seed: int) -> tuple[BatchProbe, object]:
    L.seed_everything(seed, verbose=False)
    dm = demo_datamodule(
        demo_root,
        cache={"enabled": True, "dir": str(cache_dir)},
        images={"augment": {**AUGMENT, "prob": 1.0}},
    )
    probe = BatchProbe()
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=2, limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(probe, datamodule=dm)
    return probe, dm


def test_a_fit_augments_per_batch_after_the_transfer_repeatably_with_its_seed(
    demo_root: Path, tmp_path: Path
) -> None:
    a, dm = fit_batches(demo_root, tmp_path / "cache", seed=7)
    b, _ = fit_batches(demo_root, tmp_path / "cache", seed=7)
    other, _ = fit_batches(demo_root, tmp_path / "cache", seed=8)
    assert len(a.seen["train"]) == 4
    for x, y in zip(a.seen["train"], b.seen["train"]):
        assert x["image"].dtype == torch.float32 and x["image_id"] == y["image_id"]
        assert torch.equal(x["image"], y["image"])
    # every batch of the run has its own draws: augmented, unlike the same images scaled only
    for x in a.seen["train"]:
        plain = per_item_batch(dm, "train", x["image_id"])["image"]
        assert not torch.equal(x["image"], plain)
    images = [x["image"] for x in other.seen["train"]]
    assert not all(torch.equal(x, y["image"]) for x, y in zip(images, a.seen["train"]))
    # validation batches are not augmented: today's tensors
    val = a.seen["val"][0]
    assert torch.equal(val["image"], per_item_batch(dm, "val", val["image_id"])["image"])


def test_the_batch_affine_is_monais_affine() -> None:
    from monai.transforms import Affine

    torch.manual_seed(0)
    x = torch.rand(1, 1, 40, 36)
    x[0, 0, 5:15, 20:30] = 3.0
    for angle, shift, scale in ((0.3, 0.0, 1.0), (0.0, 4.0, 1.0), (0.0, 0.0, 1.2), (-0.2, -3.0, 0.9)):
        monai = Affine(
            rotate_params=angle, translate_params=shift, scale_params=scale, padding_mode="border",
            image_only=True,
        )(x[0])  # fmt: skip
        theta = affine_theta(torch.tensor([angle]), torch.tensor([shift]), torch.tensor([scale]), (40, 36))
        grid = F.affine_grid(theta.float(), [1, 1, 40, 36], align_corners=False)
        ours = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        assert torch.allclose(ours[0], torch.as_tensor(monai), atol=1e-4), (angle, shift, scale)


def test_the_batch_draws_follow_the_per_item_distributions() -> None:
    augment = BatchAugment.from_settings({**AUGMENT, "noise_std": 0.2}, 64)
    assert augment is not None and augment.translate == pytest.approx(3.2)
    draws = augment.draw(40_000, torch.Generator().manual_seed(0))
    assert abs(float(draws["affine"].double().mean()) - 0.5) < 0.01
    for name, low, high in (
        ("angle", -math.radians(10), math.radians(10)),
        ("shift", -3.2, 3.2),
        ("scale", 0.9, 1.1),
        ("noise_std", 0.0, 0.2),
    ):
        values = draws[name]
        assert low <= float(values.min()) and float(values.max()) <= high, name
        # uniform: mean in the middle, standard deviation (high - low) / sqrt(12)
        assert abs(float(values.mean()) - (low + high) / 2) < 0.01 * (high - low), name
        assert float(values.std()) == pytest.approx((high - low) / math.sqrt(12), rel=0.02), name
    # noise on the chosen images only, each image its own standard deviation
    x = torch.full((64, 1, 16, 16), 0.5)
    out = augment.__class__(prob=0.5, noise_std=0.2)(x, torch.Generator().manual_seed(1))
    changed = (out != x).flatten(1).any(dim=1)
    assert 10 < int(changed.sum()) < 54
    assert BatchAugment.from_settings({"enabled": False, "prob": 1.0}, 64) is None


def test_scale_batch_is_scale_intensity_bit_for_bit() -> None:
    from monai.transforms import ScaleIntensity

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 1, 20, 20), dtype=np.uint8)
    images[2] = 77  # constant
    images[3] = rng.integers(100, 103, (1, 20, 20))  # a narrow range
    monai = torch.stack([torch.as_tensor(ScaleIntensity(minv=0.0, maxv=1.0)(im)) for im in images])
    assert torch.equal(scale_batch(torch.from_numpy(images)), monai.float())


def test_num_workers_auto_follows_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    spare = usable_cores() - 1
    auto = LoaderSettings(num_workers="auto")
    assert auto.workers() == min(spare, AUTO_CACHED_WORKERS)
    assert auto.workers(decoding=True) == min(spare, AUTO_STREAMING_WORKERS)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(usable_cores()))  # one core per training process
    assert auto.workers() == 0 and auto.workers(decoding=True) == 0
    assert LoaderSettings(num_workers=3).workers() == 3
    assert LoaderSettings(pin_memory="auto").pinned() == torch.cuda.is_available()
    with pytest.raises(ConfigError, match=r"^data.loader.num_workers='many': must be .* or auto"):
        LoaderSettings(num_workers="many")
    with pytest.raises(
        ConfigError, match=r"^data.loader.pin_memory='yes': choose one of True, False, 'auto'"
    ):
        LoaderSettings(pin_memory="yes")
