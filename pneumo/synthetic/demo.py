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
    OUT/rsna_pneumonia.csv  OUT/adjudicated_labels.csv   (radiologist-style references in RSNA's and
                                   Google's layouts, with documented disagreements: pneumo.synthetic.references)
    OUT/lung_masks/<name>.png      the lung fields of each image (255 inside), for "heat in the lungs" shares
    OUT/demo_manifest.json         (written last: parameters and counts; marks the set complete)

Unlike NIH (boxes only on test images) every opacity gets a box, so validation overlays can show them too.
With ``format="dicom"`` (``--format dicom``) each image is written as a DICOM file instead,
``OUT/images/00000001_000.dcm`` (8-bit MONOCHROME2, the same pixels), while the CSVs keep NIH's ``.png``
names, as in Google's bucket (``png/`` and ``dicom/``): train on it with ``data.images.suffix=.dcm``. Its
headers carry planted identifiers (``planted_identifiers``: patient name and ID, birth date, study date,
institution, referring physician), all starting with ``PLANTED``, to check that none leaves the file.
Output is deterministic per seed and may go to any fsspec URL (a local folder, ``gs://``, ``memory://``).

``shortcut="marker"`` (``data.synthetic.shortcut=marker``, ``--shortcut marker``) burns a bright square tag
into the bottom-right corner of every pneumonia image and of no other, outside the lung fields:
the same images as without it (the tags have their own random stream), plus a shortcut a model can learn
instead of the opacity, as CNNs learned hospital and device tags on NIH (Zech et al. 2018). A model trained on
it should put its heat on the tag; ``explain.py saliency.evaluate=true`` reports the share of the heat inside
the lung masks (docs/explanations.md).

Example:
    >>> write_synthetic_dataset("data/nih_demo", n=600, size=128, seed=0)  # doctest: +SKIP

Command line (the second form: one image per row of NIH's real index, see ``pneumo.synthetic.like_index``)::

    python -m pneumo synthetic OUT --n 600 --size 128 --seed 0
    python -m pneumo synthetic OUT --like-index [Data_Entry CSV] [--bbox BBox CSV] --size 64
    python -m pneumo synthetic OUT --format dicom                      # the same set as DICOM files
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from typing import Any

import fsspec
import numpy as np

from pneumo.config import choice
from pneumo.errors import ConfigError
from pneumo.io.reading import read_bytes
from pneumo.io.store import object_name
from pneumo.nih.findings import BBOX_HEADER, DATA_ENTRY_HEADER, FINDINGS, NO_FINDING, PNEUMONIA
from pneumo.synthetic.references import ADJUDICATED_NAME, RSNA_NAME, RSNA_RULES, reference_files
from pneumo.synthetic.render import (
    Anatomy,
    draw_marker,
    encode_png,
    opacity_box,
    random_anatomy,
    render_with_lungs,
)

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
    #: ``none``, or ``marker``: a bright corner tag (like a portable film's label) on every pneumonia
    #: image and on no other - a shortcut a model can learn instead of the lungs (Zech et al. 2018).
    shortcut: str = "none"


IMAGE_FORMATS = ("png", "dicom")
SHORTCUTS = ("none", "marker")
#: Share of pneumonia / other images carrying the corner marker of ``shortcut="marker"``.
MARKER_RATES = (1.0, 0.0)
#: Second seed word of the markers' random stream (apart from the images': the same images either way).
MARKER_STREAM = 23


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


def write_synthetic_dataset(out: str, cfg: SyntheticConfig | None = None, **overrides: Any) -> dict:
    """Write a synthetic NIH-layout data set to ``out`` (a folder or fsspec URL) and return its manifest.

    Args:
        out: destination root; ``images/``, the CSVs and the split lists are written under it.
        cfg: parameters; keyword ``overrides`` replace single fields (``n=100, size=64``).
    """
    cfg = SyntheticConfig(**{**asdict(cfg or SyntheticConfig()), **overrides})
    if cfg.n < 10:
        raise ConfigError(f"a synthetic data set needs at least 10 images, got n={cfg.n}")
    choice(cfg.format, "data.synthetic.format", IMAGE_FORMATS)
    choice(cfg.shortcut, "data.synthetic.shortcut", SHORTCUTS)
    rng = np.random.default_rng(cfg.seed)
    fs, root = fsspec.core.url_to_fs(out)
    root = root.rstrip("/")
    fs.makedirs(f"{root}/images", exist_ok=True)
    fs.makedirs(f"{root}/lung_masks", exist_ok=True)
    tagged = [0, 0]
    rows, boxes, patient_images = _write_images(fs, root, cfg, rng, tagged)
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
    references = _write_references(fs, root, rows, boxes, set(test), cfg)
    manifest = {
        "config": asdict(cfg),
        "images": len(rows),
        "patients": len(patients),
        "pneumonia": len(boxes),
        "train_val": len(train_val),
        "test": len(test),
        "findings": list(FINDINGS),
        "references": references,
    }
    if cfg.shortcut == "marker":
        manifest["shortcut"] = {
            "marker_pneumonia": tagged[0],
            "marker_other": tagged[1],
            "rates": MARKER_RATES,
        }
    fs.pipe_file(f"{root}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
    return manifest


def _write_references(
    fs: fsspec.AbstractFileSystem,
    root: str,
    rows: list[str],
    boxes: list[str],
    test: set[str],
    cfg: SyntheticConfig,
) -> dict:
    """The RSNA-layout and adjudicated-layout files over the written images (``pneumo.synthetic.references``:
    deliberate, documented disagreements); returns their rules and counts for the manifest."""
    drawn: dict[str, tuple[float, float, float, float]] = {}
    for line in boxes:
        name, _, x, y, w, h = line.split(",")[:6]
        drawn[name] = (float(x), float(y), float(w), float(h))
    files = reference_files(rows, drawn, test, cfg.size, cfg.seed)
    fs.pipe_file(f"{root}/{RSNA_NAME}", ("\n".join(files.rsna) + "\n").encode())
    fs.pipe_file(f"{root}/{ADJUDICATED_NAME}", ("\n".join(files.adjudicated) + "\n").encode())
    return {"files": [RSNA_NAME, ADJUDICATED_NAME], "rules": RSNA_RULES, "counts": files.counts}


def _write_images(
    fs: fsspec.AbstractFileSystem,
    root: str,
    cfg: SyntheticConfig,
    rng: np.random.Generator,
    tagged: list[int],
) -> tuple[list[str], list[str], dict[int, list[str]]]:
    """Draw and write ``cfg.n`` images and their lung masks, patient by patient (64 objects per request);
    returns the label-index rows, the box-list rows and each patient's image names; ``tagged`` counts the
    pneumonia and other images given the shortcut's marker."""
    tags = np.random.default_rng([cfg.seed, MARKER_STREAM])
    rows: list[str] = []
    boxes: list[str] = []
    patient_images: dict[int, list[str]] = {}
    patient = 0
    batch: dict[str, bytes] = {}
    while len(rows) < cfg.n:
        patient += 1
        anatomy = random_anatomy(rng)
        age, sex = int(rng.integers(18, 90)), str(rng.choice(["M", "F"]))
        n_images = min(int(rng.integers(1, cfg.max_images_per_patient + 1)), cfg.n - len(rows))
        for follow_up in range(n_images):
            name = f"{patient:08d}_{follow_up:03d}.png"
            labels, box, view, pixels, lungs = _draw_image(rng, cfg, anatomy)
            # the tags' own stream: a marker set holds the clean set's very images, plus the tags
            if cfg.shortcut == "marker" and tags.random() < MARKER_RATES[0 if box is not None else 1]:
                draw_marker(pixels)
                tagged[0 if box is not None else 1] += 1
            batch[f"{root}/lung_masks/{name}"] = encode_png((lungs * 255).astype(np.uint8))
            if box is not None:
                x, y, w, h = (v * cfg.size for v in box)
                boxes.append(f"{name},{PNEUMONIA},{x:.3f},{y:.3f},{w:.3f},{h:.3f},,,")
            batch.update(_encoded(root, name, pixels, cfg, patient))
            finding_labels = "|".join(sorted(labels)) if labels else NO_FINDING
            spacing = 0.143 * 1024 / cfg.size
            rows.append(
                f"{name},{finding_labels},{follow_up},{patient},{min(age + follow_up, 99)},{sex},{view},"
                f"{cfg.size},{cfg.size},{spacing:.3f},{spacing:.3f}"
            )
            patient_images.setdefault(patient, []).append(name)
            if len(batch) >= 64:
                fs.pipe(batch)
                batch = {}
    if batch:
        fs.pipe(batch)
    return rows, boxes, patient_images


def _draw_image(
    rng: np.random.Generator, cfg: SyntheticConfig, anatomy: Anatomy
) -> tuple[set[str], tuple[float, float, float, float] | None, str, np.ndarray, np.ndarray]:
    """One image of a patient: its findings, its pneumonia box (fractions of the side) or ``None``, its view,
    its pixels and its lung-field mask."""
    labels = {f for f, p in OTHER_FINDING_RATES.items() if rng.random() < p}
    box = None
    if rng.random() < cfg.pneumonia_fraction:
        labels.add(PNEUMONIA)
        box = opacity_box(rng, anatomy)
    view = "PA" if rng.random() < 0.6 else "AP"
    pixels, lungs = render_with_lungs(rng, cfg.size, cfg.noise, anatomy, labels, box)
    return labels, box, view, pixels, lungs


def _encoded(
    root: str, name: str, pixels: np.ndarray, cfg: SyntheticConfig, patient: int
) -> dict[str, bytes]:
    """``{object path: bytes}`` of one image: a PNG, or a DICOM file carrying planted identifiers."""
    if cfg.format == "dicom":
        from pneumo.images.dicom import dicom_bytes

        encoded = dicom_bytes(pixels, identifiers=planted_identifiers(patient), uid_seed=f"{cfg.seed}/{name}")
        return {f"{root}/images/{object_name(name, '.dcm')}": encoded}
    return {f"{root}/images/{name}": encode_png(pixels)}


def ensure_synthetic_dataset(
    out: str, cfg: SyntheticConfig | None = None, keep_other: bool = False, **overrides: Any
) -> dict:
    """Write the data set unless ``out`` already holds a complete one made with the same parameters.

    Args:
        out: the set's root (folder or fsspec URL).
        cfg: parameters; keyword ``overrides`` replace single fields.
        keep_other: never write over a complete set made with other parameters (a command rebuilding a
            trained run: another run may have been trained on the set there); ``DemoSetError`` instead.
    """
    cfg = SyntheticConfig(**{**asdict(cfg or SyntheticConfig()), **overrides})
    fs, root = fsspec.core.url_to_fs(out)
    manifest_path = f"{root.rstrip('/')}/{MANIFEST}"
    if fs.exists(manifest_path):
        manifest = json.loads(read_bytes(f"{out.rstrip('/')}/{MANIFEST}"))
        # a set written before the reference files existed is written again
        if manifest.get("config") == asdict(cfg) and fs.exists(f"{root.rstrip('/')}/{RSNA_NAME}"):
            return manifest
        if keep_other and manifest.get("config") != asdict(cfg):
            raise DemoSetError(
                f"{out.rstrip('/')}/{MANIFEST}: the demo set there was made with {differences(manifest, cfg)}, "
                f"not as the run recorded; it is left as it is (another run may use it): write the run's set "
                f"with `{command_line(out, cfg)}` (a run trained on the set there now then needs its own back)"
            )
        log.info("demo set at %s was made with other parameters; writing it again", out)
        fs.rm_file(manifest_path)
    log.info("writing the synthetic demo set (%d images, %d px) to %s", cfg.n, cfg.size, out)
    return write_synthetic_dataset(out, cfg)


class DemoSetError(ConfigError):
    """A demo set that a command may not write over (another run's), or that is not the run's."""


def differences(manifest: dict, cfg: SyntheticConfig) -> str:
    """The parameters in which a written set (its manifest) differs from ``cfg``: ``n=600 (run's: 120)``.

    Example:
        >>> differences({"config": asdict(SyntheticConfig(n=600))}, SyntheticConfig(n=120))
        "n=600 (the run's: 120)"
    """
    written = dict(manifest.get("config") or {})
    parts = [f"{k}={written.get(k)} (the run's: {v})" for k, v in asdict(cfg).items() if written.get(k) != v]
    return ", ".join(parts) or "the same parameters"


def command_line(out: str, cfg: SyntheticConfig) -> str:
    """The ``python -m pneumo synthetic`` command that writes the set of ``cfg`` to ``out``.

    Example:
        >>> command_line("data/nih_demo", SyntheticConfig(n=120, pneumonia_fraction=0.3))
        'python -m pneumo synthetic data/nih_demo --n 120 --size 128 --seed 0 --pneumonia-fraction 0.3'
    """
    default, given = asdict(SyntheticConfig()), asdict(cfg)
    flags = [f"--n {cfg.n}", f"--size {cfg.size}", f"--seed {cfg.seed}"]
    flags += [
        f"--{key.replace('_', '-')} {value}"
        for key, value in given.items()
        if key not in ("n", "size", "seed", "max_images_per_patient") and value != default[key]
    ]
    return f"python -m pneumo synthetic {out} " + " ".join(flags)
