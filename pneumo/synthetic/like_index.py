"""A synthetic image for every row of a real NIH index: NIH's size and structure, no NIH pixels.

``write_like_index`` renders one synthetic chest X-ray (the demo set's drawing, ``pneumo.synthetic.demo``)
per row of a ``Data_Entry_2017*.csv``: the same file names, patients (one anatomy per patient, shared by
their follow-ups), views, ages, sexes and finding labels. The pneumonia opacity is drawn on exactly the rows
whose labels say Pneumonia; where NIH boxed a pneumonia (``BBox_List_2017.csv``, 1024-px coordinates) the
opacity fills NIH's box scaled to the image, else, where the RSNA radiologists boxed an opacity on that image
(the shipped RSNA labels, ``pneumo.nih.rsna``), RSNA's first box, elsewhere a box drawn at random in a lung
field. The result is written in NIH's layout (``images/``, ``Data_Entry_2017.csv``, ``BBox_List_2017.csv``
with NIH's boxes in pixels of the written image, NIH's official split lists restricted to the index) so
pneumo's real pipeline can run at NIH's full size (``benchmarks/nih_scale.py``) without downloading 42 GB.

It also writes ``rsna_pneumonia.csv``: the shipped RSNA labels of the index's images in RSNA's layout, boxes
scaled to the written image (``pneumo.synthetic.references.rsna_like_index``). Its disagreements with the
NIH-style label are RSNA's real ones (on the official test list: both positive 174, NIH only 132, RSNA only
2,409; ``files/ATTRIBUTION.md``); the manifest's ``rsna`` records them per split (``images``, ``positives``,
``boxes``, ``both_positive``, ``nih_only``, ``rsna_only``, ``both_negative``), so a report's cross-tab can
be checked against what was written. Data sets point ``data.references.rsna`` at it (``url``, with
``index_url`` the set's ``Data_Entry_2017.csv``).

Defaults are the NIH files shipped with pneumo. Rendering runs in worker processes; each image depends only
on the seed and its row (patient, follow-up), so the output does not depend on the number of processes.

Example:
    >>> write_like_index("data/nih_like", size=64)  # doctest: +SKIP

Command line::

    python -m pneumo synthetic OUT --like-index [Data_Entry CSV] [--bbox BBox CSV] --size 64
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

import fsspec
import numpy as np

from pneumo.nih.boxes import BoxList, scaled_to
from pneumo.nih.findings import BBOX_HEADER, DATA_ENTRY_HEADER, FINDINGS, NO_FINDING, PNEUMONIA
from pneumo.nih.index import NIHLabelIndex
from pneumo.nih.rsna import RSNALabels
from pneumo.nih.shipped import location
from pneumo.nih.splits import read_image_list
from pneumo.synthetic.demo import MANIFEST, SyntheticConfig
from pneumo.synthetic.references import RSNA_NAME, rsna_like_index
from pneumo.synthetic.render import encode_png, opacity_box, random_anatomy, render

log = logging.getLogger(__name__)

#: Side of NIH's PNGs, the coordinate space of ``BBox_List_2017.csv``.
NIH_SIDE = 1024
#: How a look-alike set is drawn unless told: 64-px images (NIH's full size in rows, not in pixels), seed 0.
LIKE_INDEX = SyntheticConfig(n=1, size=64)
#: Rows rendered per task of a worker process.
CHUNK = 500

# One row to draw: name, patient, follow-up, labels, box (x, y, w, h normalised) or None.
_Row = tuple[str, int, int, tuple[str, ...], "tuple[float, float, float, float] | None"]


def _draw_chunk(root: str, cfg: SyntheticConfig, rows: list[_Row]) -> int:
    """In a worker: render and write ``rows``; return how many were written."""
    fs, _ = fsspec.core.url_to_fs(root)
    batch = {}
    for name, patient, follow_up, labels, nih_box in rows:
        rng = np.random.default_rng([cfg.seed, patient, follow_up, 1])
        anatomy = random_anatomy(np.random.default_rng([cfg.seed, patient]))  # one per patient
        box = nih_box
        if PNEUMONIA in labels and box is None:  # labelled but not boxed by NIH: a lung field at random
            box = opacity_box(rng, anatomy)
        batch[f"{root}/images/{name}"] = encode_png(
            render(rng, cfg.size, cfg.noise, anatomy, set(labels), box)
        )
    fs.pipe(batch)
    return len(rows)


def _first_boxes(boxes: BoxList | None) -> dict[str, tuple[float, float, float, float]]:
    """The first box of each image of ``boxes`` (1024-px coordinates), normalised to [0, 1] of the side."""
    out: dict[str, tuple[float, float, float, float]] = {}
    if boxes is not None:
        for image, group in boxes.table.groupby("image"):
            xywh = scaled_to(group[["x", "y", "w", "h"]].to_numpy()[:1], (NIH_SIDE, NIH_SIDE), (1, 1))[0]
            x, y, w, h = (float(v) for v in xywh)
            out[str(image)] = (x, y, w, h)
    return out


def _rows(index: NIHLabelIndex, boxes: BoxList | None, rsna: RSNALabels | None = None) -> list[_Row]:
    """What to draw per row: NIH's pneumonia box, else (a Pneumonia row) RSNA's first opacity box, normalised
    to [0, 1] of the image side."""
    nih_box = _first_boxes(boxes.subset(PNEUMONIA) if boxes is not None else None)
    rsna_box = _first_boxes(rsna.boxes if rsna is not None else None)
    t = index.table
    names = [str(x) for x in t["image"]]
    rows = []
    for name, p, f, row in zip(names, t["patient"], t["follow_up"], index.findings):
        labels = tuple(FINDINGS[j] for j in np.flatnonzero(row))
        box = nih_box.get(name) or (rsna_box.get(name) if PNEUMONIA in labels else None)
        rows.append((name, int(p), int(f), labels, box))
    return rows


def write_like_index(
    out: str,
    index_csv: str | None = None,
    bbox_csv: str | None = None,
    split_lists: Sequence[str] | None = None,
    cfg: SyntheticConfig = LIKE_INDEX,
    workers: int | None = None,
    on_progress: Callable[[int], None] | None = None,
    **overrides: Any,
) -> dict:
    """Write one synthetic image per row of ``index_csv`` to ``out`` in NIH's layout; return the manifest.

    Args:
        out: destination folder or fsspec URL (``images/`` and the CSVs go under it).
        index_csv: a ``Data_Entry_2017*.csv``; default: the shipped ``Data_Entry_2017_v2020.csv.gz``.
        bbox_csv: NIH's ``BBox_List_2017.csv`` (1024-px boxes); default: the shipped file when
            ``index_csv`` is also the default, else none (every opacity then placed at random).
        split_lists: ``(train_val, test)`` lists copied (restricted to the index) next to the images;
            default: NIH's official lists shipped with pneumo.
        cfg: how to draw: ``size`` (image side, pixels), ``seed`` (of everything random: anatomy, opacity
            texture, unboxed opacity positions) and ``noise`` (film grain, grey levels); the demo set's other
            fields do not apply. Keyword ``overrides`` replace single fields (``size=48, seed=1``).
        workers: rendering processes (default: the CPUs available; 0 renders in this process).
        on_progress: called in this process with the number of images written so far, after each chunk.
    """
    if index_csv is None:
        index_csv = location("Data_Entry_2017_v2020.csv.gz")
        bbox_csv = bbox_csv or location("BBox_List_2017.csv.gz")
    lists = split_lists or (location("train_val_list.txt"), location("test_list.txt"))
    cfg = dataclasses.replace(cfg, **overrides)
    index = NIHLabelIndex.from_csv(index_csv)
    boxes = BoxList.from_csv(bbox_csv) if bbox_csv else None
    rsna = RSNALabels.from_csv()
    rows = _rows(index, boxes, rsna)
    fs, root, root_url = _open_output(out)
    workers = len(os.sched_getaffinity(0)) if workers is None else workers
    log.info("drawing %d images (%d px) like %s in %d process(es)", len(rows), cfg.size, index_csv, workers)
    seconds = _draw_all(root_url, cfg, rows, workers, on_progress)
    nih_boxed = boxes.subset(PNEUMONIA).images if boxes is not None else set()
    box_lines, split = _write_tables(fs, root, index, rows, cfg.size, lists, nih_boxed)
    rsna_counts = _write_rsna(fs, root, index, rsna, cfg.size, split)
    manifest = {
        "config": {
            "size": cfg.size,
            "seed": cfg.seed,
            "noise": cfg.noise,
            "like_index": str(index_csv),
            "bbox": bbox_csv,
        },
        "images": len(rows),
        "patients": int(index.table["patient"].nunique()),
        "pneumonia": int(index.pneumonia.sum()),
        "boxed_pneumonia": box_lines,
        "train_val": len(split["train_val"]),
        "test": len(split["test"]),
        "rsna": rsna_counts,
        "seconds": round(seconds, 1),
        "workers": workers,
    }
    fs.pipe_file(f"{root}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
    log.info("wrote %d images in %.1f s (%.2f ms per image)", len(rows), seconds, 1e3 * seconds / len(rows))
    return manifest


def _open_output(out: str) -> tuple[fsspec.AbstractFileSystem, str, str]:
    """The filesystem, path and URL of ``out``, with ``images/`` made and any old manifest removed (the
    manifest is written last: its absence marks an incomplete set)."""
    fs, root = fsspec.core.url_to_fs(out)
    root = root.rstrip("/")
    fs.makedirs(f"{root}/images", exist_ok=True)
    if fs.exists(f"{root}/{MANIFEST}"):
        fs.rm_file(f"{root}/{MANIFEST}")
    return fs, root, out.rstrip("/") if "://" in out else root


def _draw_all(
    root: str, cfg: SyntheticConfig, rows: list[_Row], workers: int, on_progress: Callable[[int], None] | None
) -> float:
    """Render and write every row's image in chunks (``workers`` processes); returns the seconds taken."""
    chunks = [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]
    t0, written = time.monotonic(), 0
    for n in _run_chunks(root, cfg, chunks, workers):
        written += n
        if on_progress:
            on_progress(written)
    return time.monotonic() - t0


def _write_tables(
    fs: fsspec.AbstractFileSystem,
    root: str,
    index: NIHLabelIndex,
    rows: list[_Row],
    size: int,
    lists: Sequence[str],
    nih_boxed: set[str],
) -> tuple[int, dict[str, list[str]]]:
    """Write the label index, the box list (the drawn boxes of ``nih_boxed``: NIH's own) and the split lists
    (restricted to the index) in NIH's layout; returns the number of boxes listed and the split lists."""
    t = index.table
    labels = ["|".join(r[3]) or NO_FINDING for r in rows]
    ages = ["" if np.isnan(a) else str(int(a)) for a in t["age"]]
    spacing = f"{0.143 * NIH_SIDE / size:.3f}"
    entries = [
        f"{r[0]},{lab},{r[2]},{r[1]},{age},{sex},{view},{size},{size},{spacing},{spacing}"
        for r, lab, age, sex, view in zip(rows, labels, ages, t["sex"], t["view"])
    ]
    # Only NIH's boxes are listed (as NIH lists only some pneumonia images), in pixels of the written image.
    box_lines = [
        f"{r[0]},{PNEUMONIA},{r[4][0] * size:.3f},{r[4][1] * size:.3f},{r[4][2] * size:.3f},{r[4][3] * size:.3f},,,"
        for r in rows
        if r[4] is not None and r[0] in nih_boxed
    ]
    known = set(t["image"])
    split = {
        key: [x for x in read_image_list(url) if x in known] for key, url in zip(("train_val", "test"), lists)
    }
    fs.pipe_file(f"{root}/Data_Entry_2017.csv", ("\n".join([DATA_ENTRY_HEADER, *entries]) + "\n").encode())
    fs.pipe_file(f"{root}/BBox_List_2017.csv", ("\n".join([BBOX_HEADER, *box_lines]) + "\n").encode())
    for key, names in split.items():
        fs.pipe_file(f"{root}/{key}_list.txt", ("\n".join(names) + "\n").encode())
    return len(box_lines), split


def _write_rsna(
    fs: fsspec.AbstractFileSystem,
    root: str,
    index: NIHLabelIndex,
    rsna: RSNALabels,
    size: int,
    split: dict[str, list[str]],
) -> dict[str, dict[str, int]]:
    """Write ``rsna_pneumonia.csv`` (the RSNA labels of the index's images, boxes in written pixels); return
    its counts and its agreement with the index's Pneumonia, in all and per split."""
    lines, _ = rsna_like_index(index.images, size, NIH_SIDE, rsna)
    fs.pipe_file(f"{root}/{RSNA_NAME}", ("\n".join(lines) + "\n").encode())
    ours = index.table.set_index("image")["pneumonia"]
    images = rsna.images[rsna.images["image"].isin(set(ours.index))]
    boxes = rsna.boxes.table["image"].value_counts()
    out = {}
    for part, names in {"all": None, **split}.items():
        rows = images if names is None else images[images["image"].isin(set(names))]
        nih, theirs = ours.reindex(rows["image"]).to_numpy(), rows["opacity"].to_numpy()
        out[part] = {
            "images": len(rows),
            "positives": int(theirs.sum()),
            "boxes": int(boxes.reindex(rows["image"]).fillna(0).sum()),
            "both_positive": int(((nih == 1) & (theirs == 1)).sum()),
            "nih_only": int(((nih == 1) & (theirs == 0)).sum()),
            "rsna_only": int(((nih == 0) & (theirs == 1)).sum()),
            "both_negative": int(((nih == 0) & (theirs == 0)).sum()),
        }
    return out


def _run_chunks(root: str, cfg: SyntheticConfig, chunks: list[list[_Row]], workers: int) -> Iterator[int]:
    """Yield the image count of each chunk as it is written (in ``workers`` processes; 0 = here)."""
    if workers == 0:
        for chunk in chunks:
            yield _draw_chunk(root, cfg, chunk)
        return
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending: set[Future[int]] = set()
        next_chunk = 0
        while pending or next_chunk < len(chunks):
            while (
                next_chunk < len(chunks) and len(pending) < 2 * workers
            ):  # few chunks in flight: bounded memory
                pending.add(pool.submit(_draw_chunk, root, cfg, chunks[next_chunk]))
                next_chunk += 1
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
