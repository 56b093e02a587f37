"""Decoding, transforms, dataset items and the data module's input checks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumo.data.datamodule import DataRootError, NIHDataModule
from pneumo.images.decode import BadImageError, decode_grayscale
from pneumo.images.preprocess import ResizeToUint8
from tests.helpers import demo_datamodule


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_converts_rgb_and_16_bit() -> None:
    gray = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    assert np.array_equal(decode_grayscale(png(gray), "g.png"), gray)
    rgb = np.stack([gray] * 3, axis=-1)
    assert np.array_equal(decode_grayscale(png(rgb), "rgb.png"), gray)
    deep = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    out = decode_grayscale(png(deep), "deep.png")
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)  # order of grey levels kept


@pytest.mark.parametrize(
    "data,pattern",
    [
        (b"", "empty"),
        (b"not an image at all", "not a readable image"),
        (png(np.zeros((8, 8), np.uint8))[:30], "not a readable"),
    ],
    ids=["zero_bytes", "text", "truncated"],
)
def test_decode_rejects_bad_bytes_by_name(data: bytes, pattern: str) -> None:
    with pytest.raises(BadImageError, match=f"gs://b/png/x.png: {pattern}"):
        decode_grayscale(data, "gs://b/png/x.png")


def test_resize_is_area_average() -> None:
    x = np.zeros((128, 128), np.uint8)
    x[:, 64:] = 200
    y = ResizeToUint8(64)(x)
    assert y.shape == (64, 64) and y.dtype == np.uint8
    assert y[:, :32].max() == 0 and y[:, 32:].min() == 200


def test_resize_matches_monai_area_on_a_radiograph_sized_image() -> None:
    """Pillow's box filter (the fast path) against MONAI's area Resize on a 1024 -> 224 downsample."""
    import torch
    from monai.transforms import Resize

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:1024, 0:1024] / 1024.0
    smooth = 60 + 120 * np.exp(-((xx - 0.3) ** 2 + (yy - 0.5) ** 2) / 0.05) + 40 * yy  # radiograph-like
    x = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
    x[300:500, 200:450] = 230  # a bright "opacity" with sharp edges
    y = ResizeToUint8(224)(x)
    monai = Resize((224, 224), mode="area")(torch.from_numpy(x.astype(np.float32))[None])[0].numpy()
    diff = np.abs(y.astype(np.float32) - monai)
    assert y.shape == (224, 224) and y.dtype == np.uint8 and y.flags.writeable
    assert abs(float(y.mean()) - float(x.mean())) < 0.5  # area averaging keeps the mean
    assert float(diff.mean()) < 1.0 and float(np.percentile(diff, 99)) < 5.0


def make_dm(demo_root: Path, **kw) -> NIHDataModule:
    return demo_datamodule(demo_root, **kw)


def test_items_shapes_dtypes_ranges(demo_root: Path) -> None:
    dm = make_dm(
        demo_root,
        images={
            "augment": {"enabled": True, "prob": 1.0, "rotate_degrees": 5, "scale": 0.05, "translate": 0.03}
        },
    )
    dm.setup("fit")
    sizes = {k: len(v) for k, v in dm.datasets.items()}
    assert sum(sizes.values()) == 80 and min(sizes.values()) > 0
    for step, loader in (
        (0, dm.train_dataloader()),
        (None, dm.val_dataloader()),
        (None, dm.test_dataloader()),
    ):
        raw = next(iter(loader))  # the loaders give uint8; the data module's per-batch step finishes them
        assert raw["image"].shape == (8, 1, 48, 48) and raw["image"].dtype == torch.uint8
        batch = dm.finish_batch(raw, step=step)
        x = batch["image"]
        assert x.shape == (8, 1, 48, 48) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.std()) > 0.05
        assert batch["label"].dtype == torch.int64 and set(batch["label"].tolist()) <= {0, 1}
        assert batch["findings"].shape == (8, 14)
        assert len(batch["image_id"]) == 8 and batch["image_id"][0].endswith(".png")
    # label of an item is the index's pneumonia flag for that image
    ds = dm.datasets["test"]
    item = ds[0]
    assert int(item["label"]) == int(dm.index.subset([item["image_id"]]).pneumonia[0])


def test_eval_items_are_deterministic_and_match_the_file(demo_root: Path) -> None:
    dm = make_dm(demo_root, images={"size": 64})
    dm.setup("test")
    item = dm.datasets["test"][3]
    again = dm.datasets["test"][3]
    assert torch.equal(item["image"], again["image"])
    raw = np.asarray(Image.open(demo_root / "images" / item["image_id"]), dtype=np.float32)
    expected = (raw - raw.min()) / (raw.max() - raw.min())
    assert torch.allclose(item["image"][0], torch.from_numpy(expected), atol=1e-6)


def test_class_counts(demo_root: Path) -> None:
    dm = make_dm(demo_root)
    counts = dm.train_class_counts()
    assert (
        counts.sum() == len(dm.split.train) and counts[1] == dm.index.subset(dm.split.train).pneumonia.sum()
    )


def test_missing_image_root_names_path_and_fix(demo_root: Path, tmp_path: Path) -> None:
    dm = make_dm(demo_root, images_url=str(tmp_path / "nowhere"))
    with pytest.raises(
        DataRootError, match=f"{tmp_path / 'nowhere'} does not exist.*python -m pneumo synthetic"
    ):
        dm.setup("fit")


def test_root_without_images(demo_root: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    dm = make_dm(demo_root, images_url=str(tmp_path / "empty"))
    with pytest.raises(DataRootError, match=r"holds none of the indexed images.*python -m pneumo synthetic"):
        dm.setup("fit")


def test_missing_labels(demo_root: Path, tmp_path: Path) -> None:
    dm = make_dm(demo_root, labels_url=str(tmp_path / "labels.csv"))
    with pytest.raises(DataRootError, match=r"labels\.csv does not exist"):
        dm.setup("fit")


@pytest.mark.parametrize("workers", [0, 2])
def test_augmented_batches_repeat_with_the_seed(demo_root: Path, workers: int) -> None:
    """The per-batch augmentation follows the run's seed (loader worker processes or not): same seed, same
    batches; and so do MONAI's per-item random transforms of the train dataset (its item contract)."""
    import lightning as L

    augment = {"enabled": True, "prob": 1.0, "rotate_degrees": 10, "scale": 0.1, "translate": 0.05}

    def first_batch(seed: int) -> torch.Tensor:
        L.seed_everything(seed, workers=True, verbose=False)
        dm = make_dm(demo_root, images={"augment": augment}, loader={"num_workers": workers})
        dm.setup("fit")
        batches = iter(dm.train_dataloader())
        images = [dm.finish_batch(next(batches), step=k)["image"] for k in range(2)]
        return torch.cat([*images, dm.datasets["train"][0]["image"][None]])

    a, b, other = first_batch(7), first_batch(7), first_batch(8)
    assert torch.equal(a, b)
    assert not torch.equal(a, other)
