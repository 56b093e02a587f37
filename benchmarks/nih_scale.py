"""A full-size rehearsal: pneumo's real pipeline over 112,120 synthetic images named and labelled like NIH's.

The images are drawn by ``python -m pneumo synthetic OUT --like-index`` (one per row of NIH's shipped
index: same names, patients, views, ages, labels; NIH's pneumonia boxes drawn where NIH drew them). Then, with
the shipped index and the official split (``data=nih``, only ``data.images_url`` and ``data.bbox_url``
pointing at the synthetic set):

    generate   the synthetic set (skipped when OUT already holds a complete one of the same settings)
    index      NIHLabelIndex.from_csv of the shipped Data_Entry_2017_v2020.csv.gz
    split      make_splits with the official lists (validation carved by patient)
    cache      NIHDataModule.prepare_data: every image fetched, decoded, resized into the uint8 cache
               (data.loader.num_workers decode processes)
    train      a fixed number of optimizer steps from the cache (data.loader.num_workers loader processes)
    test       inference over the whole official test split (25,596 images)
    report     the evaluation report with 1,000 patient resamples and its three reference standards (NIH's
               label, Google's adjudicated labels, RSNA's radiologists from the set's ``rsna_pneumonia.csv``:
               ``data.references.rsna.url``), after the same report without references (``report_no_refs``,
               ``eval.references=[]``: the report before issue 22) for the ratio of the two
    explain    ``python explain.py`` on NIH's boxed test images (Grad-CAM, localization on NIH's pneumonia
               boxes and on RSNA's boxes of those images: the pointing game per reference)

Per stage: wall and CPU time (this process and every descendant: loader workers, decode pools, explain.py),
the peak memory of the whole process tree (sum of RSS, and of PSS, which counts pages shared between processes,
such as the memory-mapped cache, once; sampled every 0.2 s from /proc), and the time per image after 10k, 50k
and all images (flat = nothing grows faster than linearly). The table goes to stdout (markdown) and JSON.

    python benchmarks/nih_scale.py [--out data/nih_like64] [--image-size 32] [--net small] [--steps 20] [--rows N]

The subject is the pipeline (every image through index, split, cache, loaders, the Lightning loops, the
report and explain.py), not the network: by default the network is a small 4-block MONAI DenseNet at a 32-px
input (``--net densenet121`` for the real one: on 2 CPU cores its forward pass over the test split alone
takes over an hour). DenseNet121's own cost on a GPU is ``benchmarks/gpu_throughput.py``'s subject.
``--rows N`` uses only the first N rows of NIH's index (a smoke test; the index and lists are then the
synthetic set's copies).
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CLK_TCK = os.sysconf("SC_CLK_TCK")
MARKS = (10_000, 50_000)
#: Network overrides: the pipeline is the subject here; DenseNet121's cost on a GPU comes from its own benchmark.
NETS = {
    "densenet121": [],
    "small": [
        "model.net._target_=monai.networks.nets.DenseNet",
        "+model.net.init_features=16",
        "+model.net.growth_rate=8",
        "+model.net.block_config=[2,2,2,2]",
    ],
}


# ------------------------------------------------------------------ the process tree, from /proc
def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def _rss_pss(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def _cpu_of(pid: int) -> float:
    """utime + stime of ``pid`` and of the children it has reaped, seconds."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK


def tree_cpu_seconds() -> float:
    """CPU of this process, its reaped children and every live descendant: continuous across reaping."""
    me = os.getpid()
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    live = sum(_cpu_of(pid) for pid in _descendants(me) if pid != me)
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime + live


class TreeMemory(threading.Thread):
    """Peak sum of RSS and of PSS over this process and its descendants, sampled every ``every_s``."""

    def __init__(self, every_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.every_s, self.peak_rss, self.peak_pss = every_s, 0, 0
        self.watch: tuple[Path, int] | None = None  # (status.u8 of a cache being built, its length)
        self.cached_at: dict[int, float] = {}  # images done -> time.monotonic(), while watching a cache
        self._halt = threading.Event()

    def reset(self) -> None:
        self.peak_rss = self.peak_pss = 0

    def sample(self) -> None:
        rss = pss = 0
        for pid in _descendants(os.getpid()):
            r, p = _rss_pss(pid)
            rss, pss = rss + r, pss + p
        self.peak_rss, self.peak_pss = max(self.peak_rss, rss), max(self.peak_pss, pss)
        if self.watch is not None and self.watch[0].exists():
            done = int(np.count_nonzero(np.fromfile(self.watch[0], dtype=np.uint8)))
            self.cached_at.setdefault(done, time.monotonic())

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()


# ------------------------------------------------------------------ stages
class Stages:
    """Times, CPU, peak tree memory and per-image marks of each stage."""

    def __init__(self, memory: TreeMemory) -> None:
        self.memory, self.rows = memory, []

    @contextmanager
    def stage(self, name: str, images: int) -> Iterator[dict]:
        self.memory.reset()
        self.memory.sample()
        row = {"stage": name, "images": images, "per_image_ms": {}}
        cpu0, t0 = tree_cpu_seconds(), time.monotonic()
        row["t0"] = t0
        yield row
        self.memory.sample()
        row["wall_s"] = time.monotonic() - t0
        row["cpu_s"] = tree_cpu_seconds() - cpu0
        row["peak_rss_mib"] = self.memory.peak_rss / 2**20
        row["peak_pss_mib"] = self.memory.peak_pss / 2**20
        row["per_image_ms"].setdefault("all", 1e3 * row["wall_s"] / max(images, 1))
        del row["t0"]
        self.rows.append(row)
        print(
            f"[nih_scale] {name}: {row['wall_s']:.1f} s wall, {row['cpu_s']:.1f} s CPU, "
            f"peak tree RSS {row['peak_rss_mib']:.0f} MiB / PSS {row['peak_pss_mib']:.0f} MiB",
            flush=True,
        )


def marks_from(times: dict[int, float], t0: float, total: int) -> dict[str, float]:
    """ms per image at the first moment >= 10k, >= 50k and all images were done (cumulative)."""
    out = {}
    for mark in (*MARKS, total):
        if mark > total:
            continue
        reached = [t for n, t in sorted(times.items()) if n >= mark]
        if reached:
            out["all" if mark == total else f"{mark // 1000}k"] = 1e3 * (reached[0] - t0) / mark
    return out


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def first_rows_csv(path: Path, rows: int) -> None:
    from pneumo.nih.shipped import shipped_path

    with gzip.open(shipped_path("Data_Entry_2017_v2020.csv.gz"), "rt") as fh:
        path.write_text("".join(line for _, line in zip(range(rows + 1), fh)))


# ------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="data/nih_like64", help="the synthetic set (written if absent)")
    parser.add_argument("--size", type=int, default=64, help="side of the synthetic PNGs")
    parser.add_argument("--image-size", type=int, default=32, help="network input side (data.images.size)")
    parser.add_argument(
        "--workers", type=int, default=4, help="data.loader.num_workers (decode and loader processes)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="training steps")
    parser.add_argument(
        "--net",
        choices=sorted(NETS),
        default="small",
        help="small: a 4-block MONAI DenseNet (growth 8), the model stages then cost the pipeline, not the "
        "network; densenet121: the real network (its forward pass alone takes over an hour of 2 CPU cores "
        "for the test split)",
    )
    parser.add_argument("--resamples", type=int, default=1000, help="patient resamples of the report")
    parser.add_argument("--rows", type=int, help="only the first ROWS rows of NIH's index (smoke test)")
    parser.add_argument("--work", help="folder of the cache, checkpoint and outputs (default: a temp folder)")
    parser.add_argument("--json", help="also write the table as JSON here")
    args = parser.parse_args(argv)

    import lightning as L
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from pneumo.nih.boxes import BoxList
    from pneumo.nih.index import NIHLabelIndex
    from pneumo.nih.shipped import location, shipped_path
    from pneumo.nih.splits import make_splits, read_image_list
    from pneumo.reporting.outputs import write_evaluation
    from pneumo.reporting.report import EvalSettings
    from pneumo.synthetic.demo import MANIFEST
    from pneumo.synthetic.like_index import write_like_index

    torch.set_num_threads(len(os.sched_getaffinity(0)))
    memory = TreeMemory()
    memory.start()
    stages = Stages(memory)
    out = Path(args.out).absolute()
    work = Path(args.work or tempfile.mkdtemp(prefix="nih_scale_")).absolute()
    work.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    t_start = time.monotonic()

    # ---- the synthetic set
    index_csv = None
    if args.rows:
        index_csv = str(work / f"first_{args.rows}.csv")
        first_rows_csv(Path(index_csv), args.rows)
    wanted = {"size": args.size, "like_index": index_csv or location("Data_Entry_2017_v2020.csv.gz")}
    manifest_path = out / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if all(manifest.get("config", {}).get(k) == v for k, v in wanted.items()):
        print(f"[nih_scale] reusing {out} ({manifest['images']} images)", flush=True)
    else:
        progress: dict[int, float] = {}
        n = args.rows or len(read_image_list(location("train_val_list.txt"))) + len(
            read_image_list(location("test_list.txt"))
        )
        with stages.stage("generate", n) as row:
            manifest = write_like_index(
                str(out),
                index_csv=index_csv,
                size=args.size,
                workers=len(os.sched_getaffinity(0)),
                on_progress=lambda k: progress.setdefault(k, time.monotonic()),
            )
            row["per_image_ms"] = marks_from(progress, row["t0"], manifest["images"])

    # ---- index and split (and how they scale: the first 10k, 50k rows)
    labels = index_csv or shipped_path("Data_Entry_2017_v2020.csv.gz")
    lists = (
        (str(out / "train_val_list.txt"), str(out / "test_list.txt"))
        if args.rows
        else (shipped_path("train_val_list.txt"), shipped_path("test_list.txt"))
    )
    full = NIHLabelIndex.from_csv(labels)
    n_all = len(full)
    scaled = [m for m in MARKS if m < n_all]
    for m in scaled:
        first_rows_csv(work / f"first_{m}.csv", m)
    with stages.stage("index", n_all) as row:
        for m in scaled:
            t = time.monotonic()
            NIHLabelIndex.from_csv(str(work / f"first_{m}.csv"))
            row["per_image_ms"][f"{m // 1000}k"] = 1e3 * (time.monotonic() - t) / m
        t = time.monotonic()
        index = NIHLabelIndex.from_csv(labels)
        row["per_image_ms"]["all"] = 1e3 * (time.monotonic() - t) / n_all
    train_val, test = read_image_list(lists[0]), read_image_list(lists[1])
    with stages.stage("split", n_all) as row:
        for m in scaled:
            sub = index.subset(index.images[:m])
            t = time.monotonic()
            make_splits(sub, train_val, test, val_fraction=0.1, seed=0)
            row["per_image_ms"][f"{m // 1000}k"] = 1e3 * (time.monotonic() - t) / m
        t = time.monotonic()
        split = make_splits(index, train_val, test, val_fraction=0.1, seed=0)
        row["per_image_ms"]["all"] = 1e3 * (time.monotonic() - t) / n_all

    # ---- the data module of data=nih, images from the synthetic set
    overrides = [
        "data=nih",
        f"data.images_url={out / 'images'}",
        f"data.bbox_url={out / 'BBox_List_2017.csv'}",
        # RSNA's labels with boxes in the written images' pixels (pneumo.synthetic.like_index)
        f"data.references.rsna.url={out / 'rsna_pneumonia.csv'}",
        f"data.images.size={args.image_size}",
        f"data.loader.batch_size={args.batch_size}",
        f"data.loader.num_workers={args.workers}",
        f"data.cache.dir={work / 'cache'}",
        "data.storage.requester_pays=false",
        "data.cache.progress=false",
        f"eval.bootstrap.resamples={args.resamples}",
        "seed=0",
        *NETS[args.net],
    ]
    if args.rows:
        overrides += [
            f"data.labels_url={index_csv}",
            f"data.split_lists.train_val={lists[0]}",
            f"data.split_lists.test={lists[1]}",
        ]
    cfg = compose(overrides)
    L.seed_everything(0, workers=True)
    dm = instantiate(cfg.data)
    with stages.stage("cache", n_all) as row:
        from pneumo.data.cache import ImageCache

        cache = ImageCache(dm.cache_settings.dir, dm.images_url, list(full.images), args.image_size)
        memory.cached_at, memory.watch = {}, (cache.status_path, n_all)
        dm.prepare_data()
        memory.watch = None
        memory.cached_at.setdefault(n_all, time.monotonic())
        row["per_image_ms"] = marks_from(memory.cached_at, row["t0"], n_all)
    dm.setup("fit")
    assert len(dm.split.test) == len(split.test), "the data module's test split differs from make_splits'"

    # ---- training steps
    model = instantiate(cfg.model, _recursive_=False)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=args.steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    images = args.steps * args.batch_size
    step_ends: list[float] = []

    class StepTimes(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            step_ends.append(time.monotonic())

    trainer.callbacks.append(StepTimes())
    with stages.stage("train", images) as row:
        trainer.fit(model, datamodule=dm)
        row["throughput_img_s"] = round(images / (time.monotonic() - row["t0"]), 2)
        if len(step_ends) > 1:  # after the first step: without worker start-up and the first batch's wait
            steady = (len(step_ends) - 1) * args.batch_size / (step_ends[-1] - step_ends[0])
            row["steady_img_s"] = round(steady, 2)

    # ---- inference over the whole test split
    seen = {"n": 0, "at": {}}

    class Marks(L.Callback):
        def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
            seen["n"] += len(batch["image_id"])
            seen["at"].setdefault(seen["n"], time.monotonic())

    tester = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, callbacks=[Marks()])
    n_test = len(dm.split.test)
    with stages.stage("test", n_test) as row:
        tester.test(model, datamodule=dm, verbose=False)
        row["per_image_ms"] = marks_from(seen["at"], row["t0"], n_test)

    # ---- the report: without references (as before issue 22), then with the three of eval.references
    settings = EvalSettings.from_config(OmegaConf.to_container(cfg.eval, resolve=True))
    with stages.stage("report_no_refs", n_test) as row:
        bare = dataclasses.replace(settings, references=())
        row["auroc"] = write_evaluation(model, dm, tester, bare, work / "report_no_refs")["metrics"]["auroc"][
            "value"
        ]
    with stages.stage("report", n_test) as row:
        report = write_evaluation(model, dm, tester, settings, work / "report")
        row["auroc"] = report["metrics"]["auroc"]["value"]
        row["references"] = {
            r["name"]: [r["images"], r.get("counts", {}).get("positives")]
            for r in report["reference_standards"]["references"]
        }
    stages.rows[-1]["vs_no_refs"] = round(stages.rows[-1]["wall_s"] / stages.rows[-2]["wall_s"], 2)

    # ---- explain.py on NIH's boxed test images
    ckpt = work / "rehearsal.ckpt"
    tester.save_checkpoint(ckpt, weights_only=False)  # the full checkpoint, as train.py writes it
    boxed = sorted(BoxList.from_csv(shipped_path("BBox_List_2017.csv.gz")).images & set(dm.split.test))
    inputs = work / "boxed_test_images.txt"
    inputs.write_text("".join(f"{out / 'images' / name}\n" for name in boxed))
    with stages.stage("explain", len(boxed)) as row:
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "explain.py"),
                f"ckpt_path={ckpt}",
                f"inputs={inputs}",
                f"out_dir={work / 'explain'}",
                f"bbox_url={out / 'BBox_List_2017.csv'}",
                "device=cpu",
                f"num_workers={args.workers}",
                "progress=false",
                f"hydra.run.dir={work / 'explain_run'}",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"explain.py failed with status {proc.returncode}")
    summary = json.loads((work / "explain" / "summary.json").read_text())
    flat = {**summary, **(summary.get("localization") or {})}
    row["summary"] = {k: v for k, v in flat.items() if isinstance(v, (int, float, str)) and k != "checkpoint"}
    row["pointing_game"] = {
        name: [s.get("n"), s.get("hit_rate")] for name, s in (flat.get("references") or {}).items()
    }
    memory.stop()

    total = time.monotonic() - t_start
    result = {
        "machine": f"{len(os.sched_getaffinity(0))} CPUs; load average at start {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f}, at end {os.getloadavg()[0]:.2f}",
        "settings": vars(args),
        "total_s": total,
        "stages": stages.rows,
    }
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


def print_table(result: dict) -> None:
    print(f"\nnih_scale: {result['machine']}; total {result['total_s'] / 60:.1f} min\n")
    print(
        "| stage | images | wall s | CPU s | peak tree RSS MiB | peak tree PSS MiB | ms/image @10k | @50k | @all |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in result["stages"]:
        per = r["per_image_ms"]
        cells = [f"{per[k]:.3f}" if k in per else "–" for k in ("10k", "50k", "all")]
        print(
            f"| {r['stage']} | {r['images']:,} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_rss_mib']:.0f} | "
            f"{r['peak_pss_mib']:.0f} | {' | '.join(cells)} |"
        )
    for r in result["stages"]:
        keys = (
            "throughput_img_s",
            "steady_img_s",
            "auroc",
            "references",
            "vs_no_refs",
            "summary",
            "pointing_game",
        )
        extra = {k: r[k] for k in keys if k in r}
        if extra:
            print(f"- {r['stage']}: {extra}")


if __name__ == "__main__":
    sys.exit(main())
