"""Loader benchmark: seed-style loader vs pneumo streaming vs pneumo cache, at 224 px, side by side.

Images are realistic 1024 x 1024 chest-like PNGs (``pneumo.synthetic.demo`` at 1024 px with film grain
``--noise``, ~380 KB each like NIH's ~375 KB) served from a GCS emulator in a separate process that answers
requests concurrently, each after a modelled latency (``--latency-ms``, default 40 ms). Loaders:

(a) seed-style: one google-cloud-storage blob download per ``__getitem__``, PIL decode, MONAI
    ScaleIntensity / Resize / EnsureType on the full image, ``num_workers=0`` (one request at a time);
(b) pneumo streaming (``data.cache.enabled=false``): ``NIHImageDataset`` + ``StreamingSource``, each batch fetched
    with ``--concurrency`` requests in flight, in ``--workers`` DataLoader worker processes;
(c) pneumo cache build (``prepare_data``, the first epoch with ``data.cache.enabled=true``), decoding in
    ``--workers`` processes with ``--concurrency`` requests in flight each, then
(d) pneumo from cache: an epoch from the memory-mapped uint8 cache, ``num_workers=0``;
(e) MONAI's ``PersistentDataset`` in place of (c)+(d) (one ``torch.save`` file per image), for comparison;
(f) the data module's path since issue 27: whole uint8 batches from the cache (``UInt8Batches``), finished per
    batch as ``on_after_batch_transfer`` does (on the CPU here): scaled only, and scaled + augmented (the
    ``data=nih`` augmentation); and the bytes per image that cross to the device.

(a), (d), (e)'s read and (f) run in one process with ``torch.set_num_threads(1)``: their images/s are per core. A last part
measures the peak RSS of a process reading a cached epoch of ``--rss-images`` images at 224 px (the cache
array is written directly from the resized benchmark images, tiled, instead of being built from PNGs).

Decode cost, DICOM next to PNG (first, in this process, one thread): each distinct benchmark PNG, and each
PNG of ``--decode-folder`` (e.g. real NIH radiographs), is also written as DICOM (8-bit MONOCHROME2:
uncompressed, RLE Lossless, and JPEG 2000 Lossless when the ``dicom`` extra is installed) and decoded by
``decode_grayscale``, the one decode step of every reader: CPU milliseconds per image (thread CPU time, so
other jobs on a shared machine do not inflate it; median over images of the median of ``--decode-repeats``
runs), file sizes, and whether every DICOM decodes to the PNG's pixels.

Usage::

    python benchmarks/loader.py                      # ~3-5 minutes on 2 cores
    python benchmarks/loader.py --images 128 --rss-images 2000 --seed-images 32   # a quick look
    python benchmarks/loader.py --decode-only --decode-folder DIR_OF_PNGS   # decode cost only (~1 minute)
    python benchmarks/loader.py --reads-only         # cache build and the reads (d), (e), (f) only (~1 minute)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pneumo.io.environment import prepare_gcsfs

prepare_gcsfs(emulator=True)  # before gcsfs is imported: the benchmark reads from the emulator

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from pneumo.nih.findings import DATA_ENTRY_HEADER  # noqa: E402

BUCKET, PROJECT = "nih-bench", "bench-billing"


# ---------------------------------------------------------------------------------------------- data
def write_benchmark_set(out: Path, n_images: int, distinct: int, noise: float) -> dict:
    """``distinct`` realistic 1024-px PNGs, linked under ``n_images`` NIH-style names, plus a label CSV."""
    from pneumo.synthetic.demo import write_synthetic_dataset

    src = out / "distinct"
    write_synthetic_dataset(str(src), n=distinct, size=1024, seed=0, noise=noise, pneumonia_fraction=0.3)
    pngs = sorted((src / "images").glob("*.png"))
    (out / "images").mkdir(parents=True)
    rows = []
    for i in range(n_images):
        name = f"{i + 1:08d}_000.png"
        os.link(pngs[i % len(pngs)], out / "images" / name)
        label = "Pneumonia" if i % 7 == 0 else "No Finding"
        rows.append(f"{name},{label},0,{i + 1},50,M,PA,1024,1024,0.143,0.143")
    (out / "Data_Entry_2017.csv").write_text("\n".join([DATA_ENTRY_HEADER, *rows]) + "\n")
    sizes = [p.stat().st_size for p in pngs]
    return {"distinct_pngs": len(pngs), "mean_png_kb": round(float(np.mean(sizes)) / 1024, 1)}


class EmulatorProcess:
    """``python -m pneumo.testing.gcs_emulator`` serving a folder with a per-request latency, in its own process."""

    def __init__(self, folder: Path, latency_ms: float) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "pneumo.testing.gcs_emulator", "--port", str(port), "--bucket", BUCKET]
        cmd += ["--from-dir", str(folder), "--latency-ms", str(latency_ms)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if "serving" not in line:
            raise RuntimeError(f"emulator did not start: {line!r}")
        self.endpoint = f"http://127.0.0.1:{port}"

    def cpu_seconds(self) -> float:
        """CPU time the emulator process has used (it shares this machine's cores with the loaders)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


# ---------------------------------------------------------------------------------------------- loaders
class SeedStyleDataset(Dataset):
    """The seed's loader: one blob download per item, PIL decode, MONAI transforms on the full image."""

    def __init__(self, endpoint: str, names: list[str], labels: np.ndarray, size: int) -> None:
        from monai.transforms import Compose, EnsureType, Resize, ScaleIntensity

        self.endpoint, self.names, self.labels = endpoint, names, labels
        self.transform = Compose([ScaleIntensity(), Resize((size, size)), EnsureType()])
        self._bucket = None

    def bucket(self):
        if self._bucket is None:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            client = storage.Client(
                project=PROJECT,
                credentials=AnonymousCredentials(),
                client_options={"api_endpoint": self.endpoint},
            )
            self._bucket = client.bucket(BUCKET, user_project=PROJECT)
        return self._bucket

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        data = self.bucket().blob(f"png/{self.names[i]}").download_as_bytes()
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float32)[None]
        return {"image": self.transform(pixels), "label": torch.tensor(int(self.labels[i]))}


def _monai_transform_base():
    from monai.transforms import Transform

    return Transform


class FetchDecodeResize(_monai_transform_base()):
    """A deterministic MONAI dict transform: ``{"name"}`` -> ``{"image": (1, S, S) uint8}`` via pneumo's store
    (a ``Transform`` subclass, so that ``PersistentDataset`` caches its output)."""

    def __init__(self, store, size: int) -> None:
        from pneumo.data.cache import PixelDecoder

        self.store, self.decode = store, PixelDecoder(store, size)

    def __call__(self, item: dict) -> dict:
        pixels = self.decode(item["name"], self.store.read(item["name"]))
        return {"image": pixels[None], "label": torch.tensor(item["label"])}


def monai_persistent(store, names: list[str], labels: np.ndarray, cache_dir: Path, workers: int) -> dict:
    """MONAI ``PersistentDataset`` (one ``torch.save`` file per image) in place of pneumo's cache: its first
    epoch (building) with ``workers`` processes, then an epoch from its files in one process, one thread."""
    from monai.data import PersistentDataset
    from monai.transforms import Compose, EnsureTyped, Resized, ScaleIntensityd

    transform = Compose(
        [
            FetchDecodeResize(store, 224),
            ScaleIntensityd(keys="image", minv=0.0, maxv=1.0),
            Resized(keys="image", spatial_size=(224, 224), mode="area"),
            EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
        ]
    )
    data = [{"name": n, "label": int(y)} for n, y in zip(names, labels)]
    ds = PersistentDataset(data, transform, cache_dir=cache_dir)
    t = time.perf_counter()
    for _ in DataLoader(ds, batch_size=32, num_workers=workers):
        pass
    build = time.perf_counter() - t
    read = throughput(DataLoader(torch.utils.data.ConcatDataset([ds] * 2), batch_size=32, num_workers=0))
    disk = sum(p.stat().st_size for p in cache_dir.iterdir())
    return {"build_img_per_s": round(len(names) / build, 1), "read": read, "disk_mb": round(disk / 2**20, 1)}


def decode_costs(pngs: list[Path], repeats: int) -> dict:
    """Per-image decode time of each PNG and of its DICOM copies (see the module docstring)."""
    from pydicom.uid import JPEG2000Lossless, RLELossless

    from pneumo.images.decode import decode_grayscale
    from pneumo.images.dicom import dicom_bytes

    variants: dict[str, dict] = {"png": {}, "dicom": {}, "dicom_rle": {}}
    syntaxes = {"dicom": None, "dicom_rle": RLELossless}
    try:
        dicom_bytes(np.zeros((64, 64), np.uint8), transfer_syntax=JPEG2000Lossless)
        syntaxes["dicom_j2k_lossless"] = JPEG2000Lossless
        variants["dicom_j2k_lossless"] = {}
    except Exception as err:  # noqa: BLE001 - no JPEG 2000 encoder without the dicom extra
        print(f"JPEG 2000 left out ({type(err).__name__}): pip install 'pneumo[dicom]'", flush=True)
    times: dict[str, list[float]] = {k: [] for k in variants}
    sizes: dict[str, list[int]] = {k: [] for k in variants}
    identical = {k: True for k in variants if k != "png"}
    for path in pngs:
        files = {"png": path.read_bytes()}
        pixels = decode_grayscale(files["png"], path.name)
        for kind, syntax in syntaxes.items():
            files[kind] = (
                dicom_bytes(pixels) if syntax is None else dicom_bytes(pixels, transfer_syntax=syntax)
            )
        for kind, data in files.items():
            runs = []
            for _ in range(repeats):
                t = time.thread_time()  # CPU time of this thread: other jobs on the machine do not count
                out = decode_grayscale(data, f"{path.stem}.{'png' if kind == 'png' else 'dcm'}")
                runs.append(time.thread_time() - t)
            times[kind].append(float(np.median(runs)) * 1000)
            sizes[kind].append(len(data))
            if kind != "png":
                identical[kind] &= bool(np.array_equal(out, pixels))
    result = {
        kind: {
            "cpu_ms_per_image": round(float(np.median(times[kind])), 2),
            "mean_kb": round(float(np.mean(sizes[kind])) / 1024, 1),
            **(
                {"vs_png": round(float(np.median(times[kind])) / float(np.median(times["png"])), 2)}
                if kind != "png"
                else {}
            ),
            **({"identical_to_png": identical[kind]} if kind != "png" else {}),
        }
        for kind in variants
    }
    side = decode_grayscale(pngs[0].read_bytes(), pngs[0].name).shape
    return {"images": len(pngs), "first_shape": list(side), "repeats": repeats, **result}


def children_cpu_seconds() -> float:
    """CPU time of finished child processes (DataLoader / cache-build workers once they have exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def throughput(loader: DataLoader, limit: int | None = None, epochs: int = 1, finish=None) -> dict:
    """Images/s over ``epochs`` whole passes (worker start-up and the first batch included), CPU seconds of
    this process; ``finish(batch, k)`` is applied to the ``k``-th batch (the per-batch step) and timed with it."""
    n, k, t0, c0 = 0, 0, time.perf_counter(), time.process_time()
    for _ in range(epochs):
        for raw in loader:
            batch = raw if finish is None else finish(raw, k)
            assert finish is None or batch["image"].dtype == torch.float32
            n, k = n + len(batch["label"]), k + 1
            assert batch["image"].shape[-2:] == (224, 224)
            if limit is not None and n >= limit:
                break
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"images": n, "seconds": round(wall, 2), "img_per_s": round(n / wall, 1), "cpu_s": round(cpu, 2)}


#: The train augmentation of ``conf/data/nih.yaml`` (224 px), which (d') and (d'') use.
NIH_AUGMENT = {"enabled": True, "prob": 0.5, "rotate_degrees": 7, "scale": 0.1, "translate": 0.05}


def cached_batches(cache, index, names: list[str], epochs: int) -> dict:
    """(f) The data module's path from the cache: whole uint8 batches (``UInt8Batches``, shuffled, one process,
    one thread), finished per batch as ``on_after_batch_transfer`` does (here on the CPU): scaled only, and
    scaled + augmented; and the bytes per image that would cross to the device, uint8 and float32."""
    from pneumo.data.dataset import NIHImageDataset, UInt8Batches, collated
    from pneumo.images.batch import BatchTransform
    from pneumo.images.preprocess import build_tensor_transforms

    dataset = NIHImageDataset(index, cache.source(names), build_tensor_transforms(224))
    loader = DataLoader(
        UInt8Batches(dataset), batch_size=32, shuffle=True, num_workers=0, collate_fn=collated
    )
    plain, augmented = BatchTransform(224), BatchTransform(224, NIH_AUGMENT)
    out = {
        "read_scaled": throughput(
            loader, epochs=epochs, finish=lambda b, k: {**b, "image": plain(b["image"])}
        ),
        "read_augmented": throughput(
            loader, epochs=epochs, finish=lambda b, k: {**b, "image": augmented(b["image"], seed=k)}
        ),
        "read_uint8_only": throughput(loader, epochs=epochs),
    }
    batch = next(iter(loader))
    per_image = batch["image"].nbytes / len(batch["label"])
    out["bytes_to_device_per_image"] = {"uint8": int(per_image), "float32_before": int(per_image * 4)}
    return out


# ---------------------------------------------------------------------------------------------- rss
RSS_SCRIPT = r"""
import json, resource, sys, time
import numpy as np, pandas as pd, torch
from torch.utils.data import DataLoader
from pneumo.data.cache import ImageCache
from pneumo.data.dataset import NIHImageDataset, UInt8Batches, collated
from pneumo.nih.index import NIHLabelIndex
from pneumo.images.preprocess import build_tensor_transforms
torch.set_num_threads(1)
cache_dir, n, release, batches = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4] == "batches"
names = [f"{i + 1:08d}_000.png" for i in range(n)]
cache = ImageCache(cache_dir, "gs://nih-bench/png", names, 224)
raw = pd.DataFrame({"Image Index": names, "Finding Labels": "No Finding", "Follow-up #": "0",
                    "Patient ID": [str(i + 1) for i in range(n)], "Patient Age": "50", "Patient Gender": "M",
                    "View Position": "PA"})
index = NIHLabelIndex.from_frame(raw)
source = cache.source(names)
source.release_pages = release
ds = NIHImageDataset(index, source, build_tensor_transforms(224))
def rss_mb():
    with open("/proc/self/status") as fh:
        fields = dict(line.split(":", 1) for line in fh)
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}
before = rss_mb()
t0, seen = time.perf_counter(), 0
loader = (DataLoader(UInt8Batches(ds), batch_size=64, shuffle=True, num_workers=0, collate_fn=collated) if batches
          else DataLoader(ds, batch_size=64, shuffle=True, num_workers=0))
for batch in loader:
    seen += len(batch["label"])
wall = time.perf_counter() - t0
after = rss_mb()
print(json.dumps({"images": seen, "img_per_s": round(seen / wall, 1), "rss_before_mb": round(before["VmRSS"]),
                  "peak_rss_mb": round(after["VmHWM"]), "rss_file_end_mb": round(after["RssFile"]),
                  "rss_anon_end_mb": round(after["RssAnon"]), "release_pages": release,
                  "path": "uint8 batches (preadv)" if batches else "items (memory map)"}))
"""


def write_rss_cache(cache_dir: Path, n: int, tiles: np.ndarray) -> None:
    """A complete 224-px cache of ``n`` images, written directly (tiling ``tiles``), not built from PNGs."""
    from pneumo.data.cache import CACHED, ImageCache

    names = [f"{i + 1:08d}_000.png" for i in range(n)]
    cache = ImageCache(cache_dir, "gs://nih-bench/png", names, 224)
    cache.dir.mkdir(parents=True, exist_ok=True)
    cache._initialise()
    pixels = np.memmap(cache.pixels_path, dtype=np.uint8, mode="r+", shape=(n, 224, 224))
    for start in range(0, n, 1000):
        stop = min(n, start + 1000)
        pixels[start:stop] = tiles[np.arange(start, stop) % len(tiles)]
    pixels.flush()
    del pixels
    status = np.full(n, CACHED, np.uint8)
    status.tofile(cache.status_path)
    cache._finish(status, fetched=0, seconds=0.0)


def measure_rss(cache_dir: Path, n: int, release: bool, batches: bool = False) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            RSS_SCRIPT,
            str(cache_dir),
            str(n),
            "1" if release else "0",
            "batches" if batches else "items",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------- main
def remote_loaders(results: dict, emulator, storage, index, names: list[str], args) -> None:
    """(a) the seed-style loader and (b) pneumo streaming, both from the emulator (figures into ``results``)."""
    from pneumo.data.dataset import NIHImageDataset, StreamingSource
    from pneumo.images.preprocess import build_tensor_transforms
    from pneumo.io.store import ImageStore

    eval_tf = build_tensor_transforms(224)
    # (a) seed-style, one process, one request at a time
    seed = SeedStyleDataset(emulator.endpoint, names, index.pneumonia, 224)
    server_cpu = emulator.cpu_seconds()
    results["seed_style"] = throughput(DataLoader(seed, batch_size=16, num_workers=0), limit=args.seed_images)
    results["seed_style"]["server_cpu_s"] = round(emulator.cpu_seconds() - server_cpu, 2)
    print("seed-style:", results["seed_style"], flush=True)

    # (b) pneumo streaming: concurrent fetch per batch, in worker processes
    torch.set_num_threads(1)
    store = ImageStore.from_settings(storage, f"gs://{BUCKET}/png")
    stream_ds = NIHImageDataset(index, StreamingSource(store, index.images, 224), eval_tf)
    loader = DataLoader(stream_ds, batch_size=32, num_workers=args.workers, persistent_workers=False)
    server_cpu, workers_cpu = emulator.cpu_seconds(), children_cpu_seconds()
    results["streaming"] = throughput(loader)
    results["streaming"]["server_cpu_s"] = round(emulator.cpu_seconds() - server_cpu, 2)
    results["streaming"]["workers_cpu_s"] = round(children_cpu_seconds() - workers_cpu, 2)  # incl. warm-up
    print("streaming:", results["streaming"], flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="images in the benchmark bucket")
    parser.add_argument("--distinct", type=int, default=64, help="distinct PNGs among them")
    parser.add_argument(
        "--noise", type=float, default=1.0, help="film grain of the 1024-px PNGs (size ~380 KB)"
    )
    parser.add_argument("--latency-ms", type=float, default=40.0, help="modelled time to first byte")
    parser.add_argument("--seed-images", type=int, default=96, help="images timed for the seed-style loader")
    parser.add_argument(
        "--workers", type=int, default=4, help="worker processes of pneumo streaming / cache build"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight per streaming worker")
    parser.add_argument("--rss-images", type=int, default=20_000, help="images in the RSS test's cache")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--decode-folder", help="a folder of PNGs whose DICOM decode cost is measured too")
    parser.add_argument("--decode-repeats", type=int, default=5, help="timed decodes of each file")
    parser.add_argument("--decode-only", action="store_true", help="measure the decode cost only")
    parser.add_argument(
        "--reads-only",
        action="store_true",
        help="only the cache build and the reads (d), (f) and (e): no decode costs, (a), (b) or RSS test",
    )
    args = parser.parse_args(argv)

    from pneumo.data.cache import ImageCache
    from pneumo.data.dataset import NIHImageDataset
    from pneumo.images.preprocess import build_tensor_transforms
    from pneumo.io.storage import StorageSettings
    from pneumo.io.store import ImageStore
    from pneumo.nih.index import NIHLabelIndex

    results: dict = {
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
        "load_average_start": os.getloadavg(),
        "args": vars(args),
    }
    tmp = Path(tempfile.mkdtemp(prefix="pneumo-bench-"))
    emulator = None
    try:
        t = time.perf_counter()
        results["data"] = write_benchmark_set(tmp / "set", args.images, args.distinct, args.noise)
        torch.set_num_threads(1)
        results["decode"] = (
            {}
            if args.reads_only
            else {
                "synthetic_1024": decode_costs(
                    sorted((tmp / "set" / "distinct" / "images").glob("*.png")), args.decode_repeats
                )
            }
        )
        print("decode cost, synthetic:", results["decode"].get("synthetic_1024"), flush=True)
        if args.decode_folder:
            folder = sorted(Path(args.decode_folder).glob("*.png"))
            if not folder:
                raise SystemExit(f"--decode-folder {args.decode_folder}: no .png files there")
            results["decode"]["folder"] = {
                "png_files": len(folder),
                **decode_costs(folder, args.decode_repeats),
            }
            print("decode cost, --decode-folder:", results["decode"]["folder"], flush=True)
        if args.decode_only:
            results["load_average_end"] = os.getloadavg()
            print(json.dumps(results, indent=2))
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=2))
            return 0
        emulator = EmulatorProcess(tmp / "set", args.latency_ms)
        results["data"]["setup_s"] = round(time.perf_counter() - t, 1)
        print("data:", results["data"], flush=True)
        index = NIHLabelIndex.from_csv(str(tmp / "set" / "Data_Entry_2017.csv"))
        names = list(index.images)
        storage = StorageSettings(
            project=PROJECT,
            requester_pays=True,
            token="anon",
            options={"endpoint_url": emulator.endpoint},
            concurrency=args.concurrency,
        )
        eval_tf = build_tensor_transforms(224)
        torch.set_num_threads(1)

        if not args.reads_only:
            remote_loaders(results, emulator, storage, index, names, args)

        # (c) pneumo cache build = the first epoch with data.cache.enabled=true
        build_store = ImageStore.from_settings(storage, f"gs://{BUCKET}/png")
        cache = ImageCache(tmp / "cache", build_store.root, names, 224)
        t, c, w = time.perf_counter(), time.process_time(), children_cpu_seconds()
        cache.build(build_store, progress=False, workers=args.workers)
        wall = time.perf_counter() - t
        results["cache_build"] = {
            "images": len(names),
            "seconds": round(wall, 2),
            "img_per_s": round(len(names) / wall, 1),
            "cpu_s": round(time.process_time() - c, 2),
            "workers_cpu_s": round(children_cpu_seconds() - w, 2),
        }
        print("cache build:", results["cache_build"], flush=True)

        # (d) pneumo from cache, one process, one thread (per core); eval transforms as the seed's
        cached_ds = NIHImageDataset(index, cache.source(names), eval_tf)
        epochs = DataLoader(torch.utils.data.ConcatDataset([cached_ds] * 4), batch_size=32, num_workers=0)
        results["cached"] = throughput(epochs)
        train_tf = build_tensor_transforms(224, NIH_AUGMENT)
        aug_ds = NIHImageDataset(index, cache.source(names), train_tf)
        results["cached_train_aug"] = throughput(
            DataLoader(aug_ds, batch_size=32, num_workers=0, shuffle=True)
        )
        print(
            "cached:", results["cached"], "with train augmentation:", results["cached_train_aug"], flush=True
        )

        # (f) the data module's path now: uint8 batches, per-batch scaling / augmentation (issue 27)
        results["cached_batches"] = cached_batches(cache, index, names, epochs=4)
        print("cached uint8 batches:", results["cached_batches"], flush=True)

        # (e) the MONAI alternative to (c)+(d): PersistentDataset, one torch.save file per image
        results["monai_persistent"] = monai_persistent(
            build_store, names, index.pneumonia, tmp / "persistent", args.workers
        )
        results["monai_persistent"]["pneumo_cache_disk_mb"] = round(
            cache.pixels_path.stat().st_size / 2**20, 1
        )
        print("MONAI PersistentDataset:", results["monai_persistent"], flush=True)
        emulator.close()
        emulator = None

        # RSS of a cached epoch over --rss-images images (cache written directly, tiled)
        if args.reads_only:
            return finish(results, args)
        tiles = cache.open()[: args.distinct]
        t = time.perf_counter()
        write_rss_cache(tmp / "rss", args.rss_images, np.asarray(tiles))
        results["rss_cache_write_s"] = round(time.perf_counter() - t, 1)
        results["rss"] = measure_rss(tmp / "rss", args.rss_images, release=True)
        results["rss_without_page_release"] = measure_rss(tmp / "rss", args.rss_images, release=False)
        results["rss_uint8_batches"] = measure_rss(tmp / "rss", args.rss_images, release=True, batches=True)
        print("rss, uint8 batches:", results["rss_uint8_batches"])
        print("rss:", results["rss"], "\nrss without page release:", results["rss_without_page_release"])
    finally:
        if emulator is not None:
            emulator.close()
        shutil.rmtree(tmp, ignore_errors=True)

    return finish(results, args)


def finish(results: dict, args: argparse.Namespace) -> int:
    """Add the ratios of the parts that ran, print the figures as JSON (and write them to ``--json``)."""
    batches, monai_read = results["cached_batches"], results["monai_persistent"]["read"]["img_per_s"]
    ratios = {
        "cached_vs_monai_persistent_read": round(results["cached"]["img_per_s"] / monai_read, 2),
        "cached_batches_vs_monai_persistent_read": round(batches["read_scaled"]["img_per_s"] / monai_read, 2),
        "cached_batches_augmented_vs_per_item_augmented": round(
            batches["read_augmented"]["img_per_s"] / results["cached_train_aug"]["img_per_s"], 2
        ),
        "cached_batches_augmented_vs_678": round(batches["read_augmented"]["img_per_s"] / 678, 2),
    }
    if "seed_style" in results:
        seed_rate, seed_cpu = results["seed_style"]["img_per_s"], results["seed_style"]["cpu_s"]
        ratios.update({
            "cached_vs_seed_per_core": round(results["cached"]["img_per_s"] / seed_rate, 1),
            "cached_vs_seed_per_cpu_second": round(
                (results["cached"]["images"] / results["cached"]["cpu_s"])
                / (results["seed_style"]["images"] / seed_cpu),
                1,
            ),
            "streaming_vs_seed": round(results["streaming"]["img_per_s"] / seed_rate, 1),
            "cache_build_vs_seed": round(results["cache_build"]["img_per_s"] / seed_rate, 1),
        })  # fmt: skip
    results["ratios"] = ratios
    results["load_average_end"] = os.getloadavg()
    results["peak_rss_this_process_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
