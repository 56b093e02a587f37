"""A synthetic ChestX-ray14 look-alike in NIH's exact layout: the demo data set.

Grayscale PNGs with chest-like anatomy (torso, two lung fields with ribs, spine, heart shadow, diaphragm,
film noise, sometimes a side marker), a "pneumonia" opacity in one lung field for a configurable share of
images (boxes sized like NIH's pneumonia boxes: median ~22% x 27% of the image side), and other findings mixed
in (some visible: cardiomegaly, effusion, nodule, mass; the rest label-only) so ``Finding Labels`` has
``|``-joined rows and ``No Finding``. Written next to each other, as NIH publishes them::

    OUT/images/00000001_000.png ...
    OUT/Data_Entry_2017.csv        (the real 11 columns, bracket-split header)
    OUT/train_val_list.txt  OUT/test_list.txt   (split by patient)
    OUT/BBox_List_2017.csv         (real header; boxes in pixels of the written image)
    OUT/demo_manifest.json         (written last: parameters and counts; marks the set complete)

Unlike NIH (boxes only on test images) every opacity gets a box, so validation overlays can show them too.
With ``format="dicom"`` (``--format dicom``) each image is written as a DICOM file instead,
``OUT/images/00000001_000.dcm`` (8-bit MONOCHROME2, the same pixels), while the CSVs keep NIH's ``.png``
names, as in Google's bucket (``png/`` and ``dicom/``): train on it with ``data.image_suffix=.dcm``. Its
headers carry planted identifiers (``planted_identifiers``: patient name and ID, birth date, study date,
institution, referring physician), all starting with ``PLANTED``, to check that none leaves the file.
Output is deterministic per seed and may go to any fsspec URL (a local folder, ``gs://``, ``memory://``).

Example:
    >>> write_synthetic_dataset("data/nih_demo", n=600, size=128, seed=0)  # doctest: +SKIP

Command line (the second form: one image per row of NIH's real index, see ``pneumo.data.synthetic_like_index``)::

    python -m pneumo.data.synthetic OUT --n 600 --size 128 --seed 0
    python -m pneumo.data.synthetic OUT --like-index [Data_Entry CSV] [--bbox BBox CSV] --size 64
    python -m pneumo.data.synthetic OUT --format dicom                      # the same set as DICOM files
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import fsspec
import numpy as np
from PIL import Image

from pneumo.errors import ConfigError
from pneumo.data.findings import BBOX_HEADER, DATA_ENTRY_HEADER, FINDINGS, NO_FINDING, PNEUMONIA
from pneumo.data.store import object_name
from pneumo.utils.cli import print_json, user_errors

log = logging.getLogger(__name__)

MANIFEST = "demo_manifest.json"
#: Prevalence of the other findings in the demo set (pneumonia's is a parameter).
OTHER_FINDING_RATES = {
    "Infiltration": 0.15,
    "Effusion": 0.10,
    "Atelectasis": 0.08,
    "Cardiomegaly": 0.05,
    "Nodule": 0.05,
    "Mass": 0.03,
    "Pneumothorax": 0.03,
    "Consolidation": 0.03,
    "Edema": 0.02,
    "Emphysema": 0.02,
    "Fibrosis": 0.02,
    "Pleural_Thickening": 0.02,
    "Hernia": 0.01,
}


@dataclass(frozen=True)
class SyntheticConfig:
    """Parameters of a synthetic data set (all of them are recorded in the manifest)."""

    n: int = 600
    size: int = 128
    seed: int = 0
    pneumonia_fraction: float = 0.2
    test_fraction: float = 0.2
    max_images_per_patient: int = 5
    #: Standard deviation of the film grain, in grey levels; real-looking 1024-px files need ~6-10.
    noise: float = 6.0
    #: File format of the images: ``png`` or ``dicom`` (``.dcm`` files; the CSVs still name ``.png``).
    format: str = "png"


IMAGE_FORMATS = ("png", "dicom")


def planted_identifiers(patient: int) -> dict[str, str]:
    """Header values of a demo DICOM that identify no one but look like patient data (pydicom keywords).

    Example:
        >>> planted_identifiers(7)["PatientID"]
        'PLANTED-ID-00000007'
    """
    return {
        "PatientName": f"PLANTED^NAME{patient:08d}",
        "PatientID": f"PLANTED-ID-{patient:08d}",
        "PatientBirthDate": "19010101",
        "StudyDate": "20990101",
        "InstitutionName": "PLANTED DEMO INSTITUTION",
        "ReferringPhysicianName": "PLANTED^DOCTOR",
    }


@dataclass(frozen=True)
class _Anatomy:
    """Per-patient geometry, shared by a patient's follow-up images (normalised coordinates)."""

    lung_dx: float
    lung_rx: float
    lung_ry: float
    lung_cy: float
    heart_r: float
    brightness: float


def _random_anatomy(rng: np.random.Generator) -> _Anatomy:
    """A patient's geometry, drawn once and shared by all their images."""
    return _Anatomy(
        lung_dx=rng.uniform(0.18, 0.22),
        lung_rx=rng.uniform(0.13, 0.16),
        lung_ry=rng.uniform(0.25, 0.3),
        lung_cy=rng.uniform(0.42, 0.47),
        heart_r=rng.uniform(0.1, 0.12),
        brightness=rng.uniform(0.85, 1.1),
    )


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a random ``cells x cells`` grid upsampled bicubically."""
    grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BICUBIC))


def _ellipse(
    xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, rx: float, ry: float, soft: float
) -> np.ndarray:
    """A soft-edged filled ellipse in [0, 1]."""
    r = np.sqrt(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2)
    return 1.0 / (1.0 + np.exp((r - 1.0) / soft))


def _render(
    rng: np.random.Generator,
    cfg: SyntheticConfig,
    anatomy: _Anatomy,
    labels: set[str],
    box: tuple[float, float, float, float] | None,
) -> np.ndarray:
    """Draw one chest radiograph as uint8 (``size x size``); ``box`` = opacity (x, y, w, h), normalised."""
    s = cfg.size
    yy, xx = (np.mgrid[0:s, 0:s].astype(np.float32) + 0.5) / s
    shift_x, shift_y = rng.normal(0, 0.01, 2)
    xx, yy = xx - shift_x, yy - shift_y
    a = anatomy
    img = 0.06 + 0.5 * _ellipse(xx, yy, 0.5, 0.58, 0.46, 0.56, 0.04)
    lungs = np.maximum(
        _ellipse(xx, yy, 0.5 - a.lung_dx, a.lung_cy, a.lung_rx, a.lung_ry, 0.06),
        _ellipse(xx, yy, 0.5 + a.lung_dx, a.lung_cy, a.lung_rx, a.lung_ry, 0.06),
    )
    ribs = np.clip(np.cos(2 * np.pi * (yy * 9 - 3 * (xx - 0.5) ** 2)), 0, 1) ** 6
    img = img - lungs * (0.3 - 0.07 * ribs)
    img = img + 0.18 * np.exp(-(((xx - 0.5) / 0.035) ** 2))  # spine / mediastinum
    heart_r = a.heart_r * (1.35 if "Cardiomegaly" in labels else 1.0)
    img = img + 0.25 * _ellipse(xx, yy, 0.55, a.lung_cy + 0.17, heart_r * 1.15, heart_r, 0.08)
    img = img + 0.2 * (yy > a.lung_cy + a.lung_ry * 0.92) * _ellipse(xx, yy, 0.5, 0.8, 0.45, 0.2, 0.1)
    if "Effusion" in labels:
        side = 0.5 + a.lung_dx * rng.choice([-1, 1])
        base = 1.0 / (1.0 + np.exp(-(yy - (a.lung_cy + a.lung_ry * 0.55)) / 0.015))
        img = img + 0.22 * base * _ellipse(xx, yy, side, a.lung_cy, a.lung_rx, a.lung_ry, 0.06)
    for finding, radius in (("Nodule", 0.02), ("Mass", 0.05)):
        if finding in labels:
            cx = 0.5 + a.lung_dx * rng.choice([-1, 1]) + rng.uniform(-0.5, 0.5) * a.lung_rx
            cy = a.lung_cy + rng.uniform(-0.5, 0.5) * a.lung_ry
            img = img + 0.3 * _ellipse(xx, yy, cx, cy, radius, radius, 0.15)
    if box is not None:
        bx, by, bw, bh = box
        r2 = ((xx - bx - bw / 2) / (bw / 2)) ** 2 + ((yy - by - bh / 2) / (bh / 2)) ** 2
        blob = np.clip(1.0 - r2, 0, 1) ** 1.5 * (0.75 + 0.25 * _smooth_noise(rng, s, 6))
        img = img + rng.uniform(0.26, 0.36) * blob * (0.3 + 0.7 * lungs)
    img = img * a.brightness + 0.04 * _smooth_noise(rng, s, 4)
    if rng.random() < 0.3:  # a side marker, unrelated to any label (models must not key on it)
        m = max(2, s // 24)
        y0, x0 = int(rng.uniform(0.03, 0.1) * s), int(rng.choice([0.05, 0.85]) * s)
        img[y0 : y0 + 2 * m, x0 : x0 + m] = 0.95
    img = img * 255.0 + rng.normal(0, cfg.noise, (s, s))
    return np.clip(img, 0, 255).astype(np.uint8)


def _opacity_box(rng: np.random.Generator, a: _Anatomy) -> tuple[float, float, float, float]:
    """A pneumonia box (x, y, w, h), normalised, inside one lung field; median ~0.22 x 0.27 of the side."""
    w = float(np.clip(np.exp(rng.normal(np.log(0.22), 0.2)), 0.12, 0.32))
    h = float(np.clip(np.exp(rng.normal(np.log(0.27), 0.2)), 0.14, 0.40))
    cx = 0.5 + a.lung_dx * rng.choice([-1, 1]) + rng.uniform(-0.3, 0.3) * max(a.lung_rx - w / 2, 0)
    cy = a.lung_cy + rng.uniform(-0.6, 0.6) * max(a.lung_ry - h / 2, 0)
    return cx - w / 2, cy - h / 2, w, h


def _encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def write_synthetic_dataset(out: str, cfg: SyntheticConfig | None = None, **overrides) -> dict:
    """Write a synthetic NIH-layout data set to ``out`` (a folder or fsspec URL) and return its manifest.

    Args:
        out: destination root; ``images/``, the CSVs and the split lists are written under it.
        cfg: parameters; keyword ``overrides`` replace single fields (``n=100, size=64``).
    """
    cfg = SyntheticConfig(**{**asdict(cfg or SyntheticConfig()), **overrides})
    if cfg.n < 10:
        raise ConfigError(f"a synthetic data set needs at least 10 images, got n={cfg.n}")
    if cfg.format not in IMAGE_FORMATS:
        raise ConfigError(f"data.synthetic.format={cfg.format!r}: choose one of {', '.join(IMAGE_FORMATS)}")
    rng = np.random.default_rng(cfg.seed)
    fs, root = fsspec.core.url_to_fs(out)
    root = root.rstrip("/")
    fs.makedirs(f"{root}/images", exist_ok=True)

    rows, boxes, patient_images = [], [], {}
    patient, written = 0, 0
    batch: dict[str, bytes] = {}
    while written < cfg.n:
        patient += 1
        anatomy = _random_anatomy(rng)
        age, sex = int(rng.integers(18, 90)), str(rng.choice(["M", "F"]))
        n_images = min(int(rng.integers(1, cfg.max_images_per_patient + 1)), cfg.n - written)
        for follow_up in range(n_images):
            name = f"{patient:08d}_{follow_up:03d}.png"
            labels = {f for f, p in OTHER_FINDING_RATES.items() if rng.random() < p}
            box = None
            if rng.random() < cfg.pneumonia_fraction:
                labels.add(PNEUMONIA)
                box = _opacity_box(rng, anatomy)
                boxes.append(
                    f"{name},{PNEUMONIA},{box[0] * cfg.size:.3f},{box[1] * cfg.size:.3f},"
                    f"{box[2] * cfg.size:.3f},{box[3] * cfg.size:.3f},,,"
                )
            view = "PA" if rng.random() < 0.6 else "AP"
            pixels = _render(rng, cfg, anatomy, labels, box)
            if cfg.format == "dicom":
                from pneumo.data.dicom import dicom_bytes

                encoded = dicom_bytes(pixels, identifiers=planted_identifiers(patient), uid_seed=f"{cfg.seed}/{name}")
                batch[f"{root}/images/{object_name(name, '.dcm')}"] = encoded
            else:
                batch[f"{root}/images/{name}"] = _encode_png(pixels)
            finding_labels = "|".join(sorted(labels)) if labels else NO_FINDING
            spacing = 0.143 * 1024 / cfg.size
            rows.append(
                f"{name},{finding_labels},{follow_up},{patient},{min(age + follow_up, 99)},{sex},{view},"
                f"{cfg.size},{cfg.size},{spacing:.3f},{spacing:.3f}"
            )
            patient_images.setdefault(patient, []).append(name)
            written += 1
            if len(batch) >= 64:
                fs.pipe(batch)
                batch = {}
    if batch:
        fs.pipe(batch)

    patients = np.array(sorted(patient_images))
    test_patients = set(
        rng.choice(patients, size=max(1, int(round(cfg.test_fraction * len(patients)))), replace=False)
    )
    test = sorted(x for p in patients if p in test_patients for x in patient_images[p])
    train_val = sorted(x for p in patients if p not in test_patients for x in patient_images[p])

    fs.pipe_file(f"{root}/Data_Entry_2017.csv", ("\n".join([DATA_ENTRY_HEADER, *rows]) + "\n").encode())
    fs.pipe_file(f"{root}/BBox_List_2017.csv", ("\n".join([BBOX_HEADER, *boxes]) + "\n").encode())
    fs.pipe_file(f"{root}/train_val_list.txt", ("\n".join(train_val) + "\n").encode())
    fs.pipe_file(f"{root}/test_list.txt", ("\n".join(test) + "\n").encode())
    manifest = {
        "config": asdict(cfg),
        "images": written,
        "patients": len(patients),
        "pneumonia": len(boxes),
        "train_val": len(train_val),
        "test": len(test),
        "findings": list(FINDINGS),
    }
    fs.pipe_file(f"{root}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
    return manifest


def ensure_synthetic_dataset(out: str, cfg: SyntheticConfig | None = None, **overrides) -> dict:
    """Write the data set unless ``out`` already holds a complete one made with the same parameters."""
    cfg = SyntheticConfig(**{**asdict(cfg or SyntheticConfig()), **overrides})
    fs, root = fsspec.core.url_to_fs(out)
    manifest_path = f"{root.rstrip('/')}/{MANIFEST}"
    if fs.exists(manifest_path):
        manifest = json.loads(fs.cat_file(manifest_path))
        if manifest.get("config") == asdict(cfg):
            return manifest
        log.info("demo set at %s was made with other parameters; writing it again", out)
        fs.rm_file(manifest_path)
    log.info("writing the synthetic demo set (%d images, %d px) to %s", cfg.n, cfg.size, out)
    return write_synthetic_dataset(out, cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pneumo.data.synthetic OUT [--n N] [--size S] ...`` or ``OUT --like-index [CSV] [--bbox CSV]``."""
    parser = argparse.ArgumentParser(
        prog="python -m pneumo.data.synthetic", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out", help="output folder or fsspec URL")
    defaults = SyntheticConfig()
    parser.add_argument("--n", type=int, default=defaults.n, help="number of images")
    parser.add_argument("--size", type=int, default=defaults.size, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--pneumonia-fraction", type=float, default=defaults.pneumonia_fraction)
    parser.add_argument("--test-fraction", type=float, default=defaults.test_fraction)
    parser.add_argument("--noise", type=float, default=defaults.noise, help="film grain, grey levels")
    parser.add_argument(
        "--format", choices=IMAGE_FORMATS, default=defaults.format, help="png, or dicom (.dcm files)"
    )
    like = parser.add_argument_group("one image per row of a real index (--n and the fractions do not apply)")
    like.add_argument(
        "--like-index",
        nargs="?",
        const="",
        metavar="CSV",
        help="a Data_Entry_2017*.csv; without CSV, NIH's file shipped with pneumo (and its boxes)",
    )
    like.add_argument(
        "--bbox", help="NIH's BBox_List_2017.csv (1024-px boxes) whose pneumonia boxes are drawn"
    )
    like.add_argument("--workers", type=int, help="rendering processes (default: the CPUs available)")
    args = parser.parse_args(argv)
    if args.like_index is not None and args.format != "png":
        parser.error("--format dicom writes the --n demo set; --like-index writes PNGs only")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    with user_errors():
        if args.like_index is not None:
            from pneumo.data.synthetic_like_index import write_like_index

            manifest = write_like_index(
                args.out,
                index_csv=args.like_index or None,
                bbox_csv=args.bbox,
                size=args.size,
                seed=args.seed,
                noise=args.noise,
                workers=args.workers,
            )
        else:
            manifest = write_synthetic_dataset(
                args.out,
                n=args.n,
                size=args.size,
                seed=args.seed,
                pneumonia_fraction=args.pneumonia_fraction,
                test_fraction=args.test_fraction,
                noise=args.noise,
                format=args.format,
            )
    print_json({k: v for k, v in manifest.items() if k != "findings"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
