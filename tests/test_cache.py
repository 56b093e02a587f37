"""The image cache: equal to streaming, keyed by fingerprint, resumable after SIGKILL, never corrupt, policies."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import torch
from PIL import Image

import pneumo.images.preprocess
from pneumo.data.cache import BAD, CACHED, MISSING, ImageCache
from pneumo.data.datamodule import NIHDataModule
from pneumo.images.decode import BadImageError, decode_grayscale
from pneumo.images.preprocess import ResizeToUint8
from pneumo.io.reading import ObjectNotFoundError, StoreUnavailableError
from pneumo.io.store import ImageStore
from pneumo.nih.index import NIHLabelIndex
from tests.helpers import BILLING_PROJECT, ROOT, demo_datamodule, emulator_datamodule

FAST_IO = {
    "request_timeout_s": 1.0,
    "retry_deadline_s": 20.0,
    "retry_backoff_s": 0.05,
    "retry_backoff_max_s": 0.5,
}


def local_dm(demo_root: Path, cache_dir: Path | None, **kw) -> NIHDataModule:
    return demo_datamodule(
        demo_root,
        batch_size=16,
        cache=cache_dir is not None,
        cache_dir=str(cache_dir) if cache_dir else None,
        **kw,
    )


def gs_dm(em, bucket: str, cache_dir: Path | None, **kw) -> NIHDataModule:
    cache = {"cache": cache_dir is not None, "cache_dir": str(cache_dir) if cache_dir else None}
    return emulator_datamodule(
        em, bucket, **{"batch_size": 16, "storage": {**FAST_IO, "concurrency": 8}, **cache, **kw}
    )


def expected_pixels(path: Path, size: int) -> np.ndarray:
    return ResizeToUint8(size)(decode_grayscale(path.read_bytes(), str(path)))


def digest(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in folder.iterdir()
    }


def demo_names(demo_root: Path) -> list[str]:
    return list(NIHLabelIndex.from_csv(str(demo_root / "Data_Entry_2017.csv")).images)


def test_cached_items_equal_streamed_items_and_the_files(demo_root: Path, tmp_path: Path) -> None:
    cached, streamed = local_dm(demo_root, tmp_path / "cache"), local_dm(demo_root, None)
    cached.prepare_data()
    cached.setup("fit")
    streamed.setup("fit")
    pixels = cached.image_cache.open()
    for i, name in enumerate(cached.image_cache.names):
        assert np.array_equal(pixels[i], expected_pixels(demo_root / "images" / name, 48)), name
    for split in ("val", "test"):
        for a, b in zip(getattr(cached, f"{split}_dataloader")(), getattr(streamed, f"{split}_dataloader")()):
            assert a["image_id"] == b["image_id"] and torch.equal(a["image"], b["image"])


def test_an_epoch_from_cache_needs_no_network_and_no_png(
    gcs_emulator, nih_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dm = gs_dm(gcs_emulator, nih_bucket, tmp_path / "cache")
    dm.prepare_data()
    dm.setup("fit")
    gcs_emulator.stop()  # any request now fails

    def no_decoding(*args, **kwargs):
        raise AssertionError("a PNG was decoded during a cached epoch")

    monkeypatch.setattr(pneumo.images.preprocess, "decode_grayscale", no_decoding)  # every path decodes there
    seen = sum(
        len(batch["image_id"]) for loader in (dm.train_dataloader(), dm.val_dataloader()) for batch in loader
    )
    assert seen == len(dm.split.train) + len(dm.split.val)


def test_a_new_image_size_makes_a_new_cache_and_keeps_the_old(demo_root: Path, tmp_path: Path) -> None:
    first = local_dm(demo_root, tmp_path / "cache", image_size=48)
    first.prepare_data()
    old_dir = first._image_cache(first._read_index()).dir
    before = digest(old_dir)
    second = local_dm(demo_root, tmp_path / "cache", image_size=32)
    second.prepare_data()
    second.setup("fit")
    new_dir = second.image_cache.dir
    assert new_dir != old_dir and new_dir.parent == old_dir.parent
    assert digest(old_dir) == before  # not a byte (nor a timestamp) changed
    assert second.image_cache.open().shape[1:] == (32, 32)
    # the same inputs find the same cache again (nothing is fetched)
    again = local_dm(demo_root, tmp_path / "cache", image_size=48)
    again.prepare_data()
    assert digest(old_dir) == before


# The build of prepare_data() (ImageCache.build), without importing Lightning (slow on a busy machine).
BUILD_SCRIPT = """
import json, sys
from pneumo.data.cache import ImageCache
from pneumo.io.store import ImageStore
a = json.loads(sys.argv[1])
store = ImageStore(a["images_url"], a["options"], **a["io"])
ImageCache(a["cache_dir"], a["images_url"], a["names"], 48).build(store, progress=False)
"""


def test_build_killed_with_sigkill_resumes_to_the_clean_result(
    gcs_emulator, nih_bucket: str, demo_root: Path, tmp_path: Path
) -> None:
    names = demo_names(demo_root)
    store = gs_dm(gcs_emulator, nih_bucket, None, storage={**FAST_IO, "concurrency": 1}).store
    kwargs = {
        "images_url": store.root,
        "options": store.storage_options,
        "io": {**FAST_IO, "concurrency": 1},
        "cache_dir": str(tmp_path / "cache"),
        "names": names,
    }
    cache = ImageCache(tmp_path / "cache", kwargs["images_url"], names, 48)
    gcs_emulator.latency_s = 0.05  # 80 images one at a time: ~4 s, so the kill lands mid-build
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # with conftest's prepare_gcsfs(emulator=True)
    proc = subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, json.dumps(kwargs)], cwd=ROOT, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (
            # the child may be creating status.u8 right now: read it only once it has its full size
            cache.status_path.exists()
            and cache.status_path.stat().st_size == len(cache)
            and (cache.status() == CACHED).sum() >= 5
        ):
            assert proc.poll() is None, "the build ended before it could be killed"
            assert time.monotonic() < deadline, "the build never committed an image"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = int((cache.status() == CACHED).sum())
    assert 5 <= done_before < len(names) and not cache.manifest_path.exists()

    gcs_emulator.latency_s = 0.0
    gcs_emulator.requests.clear()
    resumed = ImageCache(tmp_path / "cache", kwargs["images_url"], names, 48)
    manifest = resumed.build(store, progress=False)
    assert manifest["last_build"]["fetched"] == len(names) - done_before  # only what was not done
    fetched = [r for r in gcs_emulator.requests_for(nih_bucket) if r.path.endswith(".png")]
    assert len(fetched) == len(names) - done_before

    clean = ImageCache(tmp_path / "clean", kwargs["images_url"], names, 48)
    clean.build(store, progress=False)
    for part in ("pixels.u8", "status.u8", "names.txt"):
        assert (resumed.dir / part).read_bytes() == (clean.dir / part).read_bytes(), part


def test_server_gone_for_good_leaves_a_valid_partial_cache(
    gcs_emulator, nih_bucket: str, demo_root: Path, tmp_path: Path
) -> None:
    names = demo_names(demo_root)
    dm = gs_dm(
        gcs_emulator,
        nih_bucket,
        tmp_path / "cache",
        storage={**FAST_IO, "concurrency": 2, "retry_deadline_s": 2.0},
    )
    cache = ImageCache(tmp_path / "cache", dm.images_url, names, 48)
    served = {"n": 0}

    def die_after_30(req) -> int | None:
        served["n"] += req.path.endswith(".png")
        if served["n"] == 30:
            threading.Thread(target=gcs_emulator.stop).start()  # the server goes away for good
        return None

    gcs_emulator.fault = die_after_30
    with pytest.raises(
        StoreUnavailableError, match=rf"gs://{nih_bucket}/png/\d+_\d+\.png: unreachable.*retry_deadline_s=2"
    ):
        dm.prepare_data()
    status = cache.status()
    assert 0 < (status == CACHED).sum() < len(names) and not cache.manifest_path.exists()
    pixels = np.fromfile(cache.pixels_path, np.uint8).reshape(len(names), 48, 48)
    for i in np.flatnonzero(status == CACHED):  # every entry marked valid is exactly right
        assert np.array_equal(pixels[i], expected_pixels(demo_root / "images" / names[i], 48))
    gcs_emulator.start()
    gcs_emulator.fault = None
    dm.prepare_data()  # resumes and completes
    assert (cache.status() == CACHED).all() and cache.is_complete()


@pytest.fixture()
def holey_bucket(gcs_emulator, demo_root: Path) -> tuple[str, dict[str, str]]:
    """A Requester Pays copy of the demo set with one object deleted and six bad ones (by kind)."""
    bucket = "nih-holey"
    if bucket not in gcs_emulator.requester_pays:
        gcs_emulator.create_bucket(bucket, requester_pays_projects={BILLING_PROJECT})
        gcs_emulator.upload_nih_layout(demo_root, bucket)
    names = sorted(demo_names(demo_root))
    kinds = ["missing", "truncated", "zero_bytes", "not_an_image", "bomb", "rgb", "16_bit"]
    chosen = dict(zip(kinds, names[5::11]))
    fs = gcs_emulator.gcsfs()
    good = (demo_root / "images" / chosen["truncated"]).read_bytes()
    gray = np.asarray(Image.open(demo_root / "images" / chosen["rgb"]))
    blobs = {
        "truncated": good[: len(good) // 2],
        "zero_bytes": b"",
        "not_an_image": b"<html>503 Service Unavailable</html>",
        "bomb": png_bomb(),
        "rgb": encode(np.stack([gray] * 3, axis=-1)),
        "16_bit": encode(
            np.asarray(Image.open(demo_root / "images" / chosen["16_bit"])).astype(np.uint16) * 257
        ),
    }
    with gcs_emulator.billing_checks_off():
        if fs.exists(f"{bucket}/png/{chosen['missing']}"):
            fs.rm(f"{bucket}/png/{chosen['missing']}")
        fs.pipe({f"{bucket}/png/{chosen[k]}": v for k, v in blobs.items()})
    gcs_emulator.requests.clear()
    return bucket, chosen


def encode(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def png_bomb(side: int = 100_000) -> bytes:
    """A valid PNG header announcing side x side pixels (10 gigapixels) with almost no data."""
    data = bytearray(encode(np.zeros((8, 8), np.uint8)))
    ihdr = struct.pack(">II", side, side) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def test_missing_and_bad_objects_error_by_name(gcs_emulator, holey_bucket, tmp_path: Path) -> None:
    bucket, chosen = holey_bucket
    dm = gs_dm(gcs_emulator, bucket, tmp_path / "c1", on_bad_image="skip")
    with pytest.raises(ObjectNotFoundError, match=f"gs://{bucket}/png/{chosen['missing']}: object not found"):
        dm.prepare_data()
    dm = gs_dm(gcs_emulator, bucket, tmp_path / "c2", on_missing="skip")
    with pytest.raises(BadImageError, match=rf"gs://{bucket}/png/\d+_\d+\.png: "):
        dm.prepare_data()


def test_missing_and_bad_objects_skipped_and_counted(
    gcs_emulator, holey_bucket, demo_root: Path, tmp_path: Path, caplog
) -> None:
    bucket, chosen = holey_bucket
    dm = gs_dm(gcs_emulator, bucket, tmp_path / "cache", on_missing="skip", on_bad_image="skip")
    dm.prepare_data()
    dm.setup("fit")
    manifest = dm.image_cache.manifest()
    assert (manifest["missing"], manifest["bad image"]) == (1, 4)
    assert manifest["first_skipped"]["missing"] == [chosen["missing"]]
    assert sorted(manifest["first_skipped"]["bad image"]) == sorted(
        chosen[k] for k in ("truncated", "zero_bytes", "not_an_image", "bomb")
    )
    assert "1 of 80 images skipped as missing" in caplog.text and chosen["missing"] in caplog.text
    status = dm.image_cache.status()
    names = dm.image_cache.names
    assert status[names.index(chosen["missing"])] == MISSING and status[names.index(chosen["bomb"])] == BAD
    used = {x for part in dm.split.as_dict().values() for x in part}
    assert len(used) == 75 and not {chosen[k] for k in ("missing", "truncated", "bomb")} & used
    # RGB and 16-bit objects are converted, not skipped: grayscale of the same picture
    pixels = dm.image_cache.open()
    rgb = pixels[names.index(chosen["rgb"])]
    assert np.array_equal(rgb, expected_pixels(demo_root / "images" / chosen["rgb"], 48))
    deep = pixels[names.index(chosen["16_bit"])].astype(float)  # scaled to 8 bits over its own range
    expected = expected_pixels(demo_root / "images" / chosen["16_bit"], 48).astype(float)
    normalised = [(x - x.min()) / (x.max() - x.min()) for x in (deep, expected)]
    assert np.abs(normalised[0] - normalised[1]).max() < 0.02
    # a later run with policy "error" refuses the skipped images by name
    strict = gs_dm(gcs_emulator, bucket, tmp_path / "cache")
    with pytest.raises(
        FileNotFoundError, match=f"1 image.*missing.*{chosen['missing']}.*data.on_missing=error"
    ):
        strict.setup("fit")


def test_streaming_skips_bad_objects_inside_batches(gcs_emulator, holey_bucket, tmp_path: Path) -> None:
    bucket, chosen = holey_bucket
    dm = gs_dm(gcs_emulator, bucket, None, on_missing="skip", on_bad_image="skip", batch_size=80)
    dm.setup("fit")
    ids = [
        x
        for split in ("train", "val", "test")
        for b in getattr(dm, f"{split}_dataloader")()
        for x in b["image_id"]
    ]
    assert len(ids) == 75 and chosen["missing"] not in ids and chosen["rgb"] in ids
    strict = gs_dm(gcs_emulator, bucket, None, batch_size=80)
    strict.setup("fit")
    with pytest.raises((ObjectNotFoundError, BadImageError), match=f"gs://{bucket}/png/"):
        for split in ("train", "val", "test"):
            list(getattr(strict, f"{split}_dataloader")())


def test_store_reads_local_and_gs_the_same(gcs_emulator, nih_bucket: str, demo_root: Path) -> None:
    names = demo_names(demo_root)[:10]
    local = ImageStore(str(demo_root / "images")).map_ordered(names, lambda n, d: d)
    remote = gs_dm(gcs_emulator, nih_bucket, None).store.map_ordered(names, lambda n, d: d)
    assert local == remote == [(demo_root / "images" / n).read_bytes() for n in names]


def test_cache_build_through_a_server_restart(
    gcs_emulator, nih_bucket: str, demo_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pneumo.io.reading")
    names = demo_names(demo_root)
    dm = gs_dm(gcs_emulator, nih_bucket, tmp_path / "cache", storage={**FAST_IO, "concurrency": 4})
    served = {"n": 0}

    def restart_after_20(req) -> int | None:
        served["n"] += req.path.endswith(".png")
        if served["n"] == 20:  # mid-pass the server goes away for a second, then comes back
            threading.Thread(
                target=lambda: (gcs_emulator.stop(), time.sleep(1.0), gcs_emulator.start())
            ).start()
        return None

    gcs_emulator.fault = restart_after_20
    dm.prepare_data()
    dm.setup("fit")
    assert served["n"] > 20 and gcs_emulator.running
    assert any("retrying gs://" in r.getMessage() for r in caplog.records)  # requests failed meanwhile
    pixels = dm.image_cache.open()
    assert (dm.image_cache.status() == CACHED).all()
    for i, name in enumerate(names):
        assert np.array_equal(pixels[i], expected_pixels(demo_root / "images" / name, 48)), name


def test_concurrent_builders_fetch_once_the_others_wait(
    gcs_emulator, nih_bucket: str, demo_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What DDP ranks (or two runs) sharing a cache folder do: one builds, the others wait on its lock."""
    caplog.set_level(logging.INFO, logger="pneumo.data.cache")
    names = demo_names(demo_root)
    gcs_emulator.latency_s = 0.005
    store = gs_dm(gcs_emulator, nih_bucket, None, storage={**FAST_IO, "concurrency": 2}).store
    results: list[dict] = []
    first = threading.Thread(
        target=lambda: results.append(
            ImageCache(tmp_path, store.root, names, 48).build(store, progress=False)
        )
    )
    first.start()
    cache = ImageCache(tmp_path, store.root, names, 48)
    while not cache.status_path.exists():
        time.sleep(0.01)
    results.append(cache.build(store, progress=False))  # blocks until the first build is complete
    first.join()
    fetched = [r.path for r in gcs_emulator.requests_for(nih_bucket) if r.path.startswith("/download/")]
    assert len(fetched) == len(set(fetched)) == len(names)  # every image fetched exactly once
    assert results[0] == results[1] and results[0]["cached"] == len(names)
    assert "another process is building the cache" in caplog.text


def rewrite_with_other_pixels(path: Path) -> bytes:
    """The image at ``path`` drawn again under the same name: the same size, inverted pixels."""
    return encode(255 - np.asarray(Image.open(path)))


def test_images_rewritten_under_their_names_are_fetched_again_the_others_reused(
    demo_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import shutil

    root = tmp_path / "demo"
    shutil.copytree(demo_root, root)
    first = local_dm(root, tmp_path / "cache")
    first.prepare_data()
    names = demo_names(root)
    changed = names[3:6]
    for name in changed:  # the demo regenerated with other pixels, same names
        (root / "images" / name).write_bytes(rewrite_with_other_pixels(root / "images" / name))
    with caplog.at_level(logging.INFO, logger="pneumo.data.cache"):
        again = local_dm(root, tmp_path / "cache")
        again.prepare_data()
        again.setup("fit")
    cache = again.image_cache
    assert cache.dir == first._image_cache(first._read_index()).dir  # the same cache, updated in place
    assert cache.manifest()["last_build"] == {**cache.manifest()["last_build"], "fetched": 3, "stale": 3}
    assert "3 of 80 cache entries are stale" in caplog.text
    pixels = cache.open()
    for i, name in enumerate(names):  # every entry holds the pixels of the file as it is now
        assert np.array_equal(pixels[i], expected_pixels(root / "images" / name, 48)), name


def test_objects_rewritten_in_a_bucket_are_fetched_again_the_others_not(
    gcs_emulator, demo_root: Path, tmp_path: Path
) -> None:
    bucket = "nih-rewritten"
    if bucket not in gcs_emulator.requester_pays:
        gcs_emulator.create_bucket(bucket, requester_pays_projects={BILLING_PROJECT})
    gcs_emulator.upload_nih_layout(demo_root, bucket)
    gs_dm(gcs_emulator, bucket, tmp_path / "cache").prepare_data()
    names = demo_names(demo_root)
    changed = names[10:12]
    new = {name: rewrite_with_other_pixels(demo_root / "images" / name) for name in changed}
    with gcs_emulator.billing_checks_off():
        gcs_emulator.gcsfs().pipe({f"{bucket}/png/{name}": data for name, data in new.items()})
    gcs_emulator.requests.clear()
    dm = gs_dm(gcs_emulator, bucket, tmp_path / "cache")
    dm.prepare_data()
    dm.setup("fit")
    downloads = sorted(
        unquote(r.path).rsplit("/", 1)[-1]
        for r in gcs_emulator.requests_for(bucket)
        if r.path.startswith("/download/") and r.path.endswith(".png")
    )
    assert downloads == sorted(changed)  # only the rewritten objects were fetched again
    pixels = dm.image_cache.open()
    for name in changed:
        fresh = ResizeToUint8(48)(decode_grayscale(new[name], name))
        assert np.array_equal(pixels[names.index(name)], fresh), name
