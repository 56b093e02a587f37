"""DICOM in: grey levels as a viewer shows them, bad files named, caches equal to PNG's, no patient data out.

The DICOMs are written by pydicom from the demo PNGs; every decoded image is compared with the PNG's.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG4HP41, JPEG2000Lossless, JPEGLossless, RLELossless

from pneumo.data.cache import ImageCache
from pneumo.data.inputs import Preprocessor
from pneumo.errors import ConfigError
from pneumo.images.decode import BadImageError, decode_grayscale, image_shape
from pneumo.images.dicom import dicom_bytes
from pneumo.io.store import ImageStore
from pneumo.synthetic.demo import ensure_synthetic_dataset, planted_identifiers
from tests.helpers import ROOT, TINY_DEMO, demo_datamodule, run_cli, tiny_overrides


def _openjpeg_installed() -> bool:
    from pydicom.pixels import get_decoder

    return "pylibjpeg" in get_decoder(JPEG2000Lossless)._available


@pytest.fixture(scope="module")
def dicom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo set (same seed and size as ``demo_root``) written as DICOM: images/<stem>.dcm."""
    root = tmp_path_factory.mktemp("nih_demo_dicom")
    ensure_synthetic_dataset(str(root), **TINY_DEMO, format="dicom")
    return root


@pytest.fixture(scope="module")
def png(demo_root: Path) -> tuple[str, np.ndarray]:
    """A demo PNG (one with the widest grey range among the first few) and its pixels."""
    paths = sorted((demo_root / "images").glob("*.png"))[:6]
    pixels = {p.name: np.asarray(Image.open(p)) for p in paths}
    name = max(pixels, key=lambda n: int(pixels[n].max()) - int(pixels[n].min()))
    return name, pixels[name]


def _variants(p: np.ndarray) -> dict[str, bytes]:
    """The same image as DICOMs of the kinds hospitals write (stored values computed here, from the PNG)."""
    twelve = np.rint(p.astype(np.float64) * 4095 / 255).astype(np.uint16)
    return {
        "monochrome2-8bit": dicom_bytes(p),
        "monochrome1-inverted": dicom_bytes(255 - p, photometric="MONOCHROME1"),
        # 12 bits stored, rescaled to -1024..1023.5: the full range maps back to the PNG's grey levels
        "12bit-rescale": dicom_bytes(twelve, bits_stored=12, rescale=(0.5, -1024)),
        # stored 1000..2020, window 1510.5/1021 spans exactly that: 0..255 again (DICOM's LINEAR function)
        "12bit-window": dicom_bytes((1000 + 4 * p.astype(np.uint16)), bits_stored=12, window=(1510.5, 1021)),
        "rle": dicom_bytes(p, transfer_syntax=RLELossless),
    }


@pytest.mark.parametrize(
    "kind", ["monochrome2-8bit", "monochrome1-inverted", "12bit-rescale", "12bit-window", "rle"]
)
def test_dicom_decodes_to_the_pngs_tensor(png: tuple[str, np.ndarray], kind: str, demo_root: Path) -> None:
    name, pixels = png
    data = _variants(pixels)[kind]
    assert data[128:132] == b"DICM"
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == (
        RLELossless if kind == "rle" else "1.2.840.10008.1.2.1"
    )
    decoded = decode_grayscale(data, f"{kind}.dcm")
    assert decoded.dtype == np.uint8 and decoded.shape == pixels.shape
    assert np.array_equal(decoded, pixels), np.abs(decoded.astype(int) - pixels).max()  # every mapping exact
    preprocess = Preprocessor(48)
    expected, _ = preprocess((demo_root / "images" / name).read_bytes(), name)
    got, shape = preprocess(data, f"{kind}.dcm")
    assert shape == pixels.shape and bool((got == expected).all())


@pytest.mark.skipif(not _openjpeg_installed(), reason='needs the dicom extra: pip install "pneumo[dicom]"')
def test_jpeg2000_lossless_decodes_to_the_pngs_pixels(png: tuple[str, np.ndarray]) -> None:
    _, pixels = png
    data = dicom_bytes(pixels, transfer_syntax=JPEG2000Lossless)
    assert pydicom.dcmread(io.BytesIO(data)).file_meta.TransferSyntaxUID == JPEG2000Lossless
    assert len(data) < pixels.size  # really compressed
    assert np.array_equal(decode_grayscale(data, "j2k.dcm"), pixels)


def test_voi_modes(png: tuple[str, np.ndarray]) -> None:
    _, pixels = png
    windowed = _variants(pixels)["12bit-window"]
    # full-range ignores the window: 1000 + 4p over 0..4095 is a dim, flat picture
    flat = decode_grayscale(windowed, "w.dcm", dicom_voi="full-range").astype(int)
    expected = np.rint((1000 + 4 * pixels.astype(float)) * 255 / 4095).astype(int)
    assert np.abs(flat - expected).max() <= 1 and np.abs(flat - pixels).mean() > 30
    assert np.array_equal(decode_grayscale(windowed, "w.dcm", dicom_voi="window"), pixels)
    with pytest.raises(BadImageError, match=r"nowin\.dcm: DICOM file without Window Center/Width.*window"):
        decode_grayscale(dicom_bytes(pixels), "nowin.dcm", dicom_voi="window")


def test_voi_lut_sequence_is_applied_in_auto_mode(png: tuple[str, np.ndarray]) -> None:
    """A VOI LUT Sequence (stored 1000 + 4p -> p, 8-bit entries) gives the PNG back; the window beside it
    (deliberately wrong) is what ``window`` uses, and ``full-range`` ignores both."""
    from pydicom.dataset import Dataset

    _, pixels = png
    stored = 1000 + 4 * pixels.astype(np.uint16)

    def add_lut(ds) -> None:
        item = Dataset()
        item.LUTDescriptor = [1021, 1000, 8]
        item.add_new("LUTData", "US", [round(i / 4) for i in range(1021)])
        ds.VOILUTSequence = [item]

    data = _modified(dicom_bytes(stored, bits_stored=12, window=(3000, 100)), add_lut)
    assert np.array_equal(decode_grayscale(data, "lut.dcm"), pixels)
    assert (decode_grayscale(data, "lut.dcm", dicom_voi="window") == 0).all()  # all below the window
    flat = decode_grayscale(data, "lut.dcm", dicom_voi="full-range").astype(int)
    assert np.abs(flat - np.rint(stored.astype(float) * 255 / 4095)).max() <= 1


def _modified(data: bytes, change) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    change(ds)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _multi_frame(ds) -> None:
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2


def _colour(ds) -> None:
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.PixelData = ds.PixelData * 3


def _no_pixels(ds) -> None:
    del ds.PixelData


def _video(ds) -> None:
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.PixelData = encapsulate([bytes(64)])


BAD = {
    "multi-frame": (_multi_frame, r"multi-frame DICOM \(2 frames\)"),
    "colour": (_colour, r"colour DICOM \(RGB, 3 sample\(s\) per pixel\)"),
    "no-pixels": (_no_pixels, r"DICOM file with no pixel data"),
    "video": (_video, r"transfer syntax MPEG-4 AVC/H.264 .* has no pixel decoder in pydicom"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_unsupported_dicoms_are_named_in_one_line(png: tuple[str, np.ndarray], kind: str) -> None:
    change, message = BAD[kind]
    identifiers = planted_identifiers(3)
    data = _modified(dicom_bytes(png[1], identifiers=identifiers), change)
    with pytest.raises(BadImageError, match=message) as err:
        decode_grayscale(data, f"gs://b/dicom/{kind}.dcm")
    text = str(err.value)
    assert text.startswith(f"gs://b/dicom/{kind}.dcm: ") and "\n" not in text
    assert not any(value in text for value in identifiers.values())


def test_truncated_dicom_is_a_bad_image(png: tuple[str, np.ndarray]) -> None:
    data = dicom_bytes(png[1])
    with pytest.raises(BadImageError, match=r"cut\.dcm: DICOM pixel data cannot be decoded"):
        decode_grayscale(data[: len(data) // 2], "cut.dcm")


def test_missing_decoder_names_the_extra(png: tuple[str, np.ndarray], tmp_path: Path) -> None:
    """JPEG Lossless without the extra (its packages' imports blocked in a fresh interpreter, as if never
    installed): the message says what to install."""
    path = tmp_path / "jpegll.dcm"
    path.write_bytes(_modified(dicom_bytes(png[1]), _as_jpeg_lossless))
    script = (
        "import sys\n"
        "for extra in ('pylibjpeg', 'libjpeg', 'openjpeg', 'rle'):\n    sys.modules[extra] = None\n"
        "from pneumo.images.decode import BadImageError, decode_grayscale\n"
        f"try:\n    decode_grayscale(open({str(path)!r}, 'rb').read(), 'jpegll.dcm')\n"
        "except BadImageError as err:\n    print(err)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.stdout.strip() == (
        "jpegll.dcm: DICOM transfer syntax JPEG Lossless, Non-Hierarchical (Process 14) "
        '(1.2.840.10008.1.2.4.57) needs a decoder that is not installed: pip install "pneumo[dicom]"'
    ), out.stderr[-2000:]


def _as_jpeg_lossless(ds) -> None:
    ds.file_meta.TransferSyntaxUID = JPEGLossless
    ds.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])


def test_describe_command(png: tuple[str, np.ndarray], demo_root: Path, tmp_path: Path, capsys) -> None:
    from pneumo.cli.dicom import main

    name, pixels = png
    windowed = tmp_path / "w.dcm"
    windowed.write_bytes(_variants(pixels)["12bit-window"])
    (tmp_path / "cut.dcm").write_bytes(windowed.read_bytes()[:300])
    assert main([str(windowed), "--png", str(demo_root / "images" / name)]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["window"] == [1510.5, 1021.0] and facts["bits_allocated_stored"] == [16, 12]
    assert facts["vs_png"]["max_grey_difference"] == 0
    assert main([str(windowed), "--voi", "full-range", "--png", str(demo_root / "images" / name)]) == 0
    assert json.loads(capsys.readouterr().out)["vs_png"]["max_grey_difference"] > 30
    assert main([str(tmp_path / "cut.dcm")]) == 1
    assert "cut.dcm: DICOM file with no pixel data" in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ({"dicom_voi": "lung"}, "data.dicom_voi='lung': choose one of 'auto', 'window', 'full-range'"),
        ({"image_suffix": "dcm"}, "data.image_suffix='dcm': give a file ending such as .dcm, or null"),
    ],
)
def test_dicom_settings_are_checked_before_any_read(demo_root: Path, setting: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        demo_datamodule(demo_root / "absent", **setting)
    assert str(err.value) == message


def test_header_only_shape(png: tuple[str, np.ndarray]) -> None:
    pixels = np.zeros((5, 7), np.uint8)
    assert image_shape(dicom_bytes(pixels), "a.dcm") == (5, 7)


def test_cache_from_dicom_equals_cache_from_png_byte_for_byte(
    demo_root: Path, dicom_root: Path, tmp_path: Path
) -> None:
    """The demo as DICOM (index names .png, objects .dcm, data.image_suffix=.dcm) caches the PNGs' bytes."""
    from_png = demo_datamodule(demo_root, cache=True, cache_dir=str(tmp_path / "c"))
    from_dicom = demo_datamodule(dicom_root, cache=True, cache_dir=str(tmp_path / "c"), image_suffix=".dcm")
    assert not list((dicom_root / "images").glob("*.png"))
    for dm in (from_png, from_dicom):
        dm.prepare_data()
        dm.setup("fit")
    a, b = from_png.image_cache, from_dicom.image_cache
    assert a.dir != b.dir and a.names == b.names  # the suffix is part of the fingerprint
    assert a.pixels_path.read_bytes() == b.pixels_path.read_bytes()
    assert json.loads(b.manifest_path.read_text())["cached"] == TINY_DEMO["n"]
    # streaming reads the same .dcm objects and gives the same pixels
    streamed = demo_datamodule(dicom_root, image_suffix=".dcm")
    streamed.setup("fit")
    item = streamed.datasets["val"][0]
    cached = from_dicom.datasets["val"][0]
    assert item["image_id"].endswith(".png") and bool((item["image"] == cached["image"]).all())
    # a rewritten .dcm is a stale entry (identities are those of the objects read, not of the index names)
    first = sorted((dicom_root / "images").glob("*.dcm"))[0]
    original = first.read_bytes()
    try:
        first.write_bytes(dicom_bytes(np.full((64, 64), 7, np.uint8)))
        rebuilt = demo_datamodule(dicom_root, cache=True, cache_dir=str(tmp_path / "c"), image_suffix=".dcm")
        rebuilt.prepare_data()
        rebuilt.setup("fit")
        assert rebuilt.image_cache.manifest()["last_build"]["stale"] == 1
        row = rebuilt.image_cache.names.index(first.stem + ".png")
        assert (rebuilt.image_cache.open()[row] == 7).all()
    finally:
        first.write_bytes(original)
    # another grey-level mode is another cache
    assert ImageCache(tmp_path, "x", a.names, 48, ".dcm", "full-range").dir != b.dir
    store = ImageStore(str(dicom_root / "images"), suffix=".dcm")
    assert store.url("00000001_000.png").endswith("/images/00000001_000.dcm")


@pytest.mark.slow
def test_no_patient_data_leaves_the_files(dicom_root: Path, demo_root: Path, tmp_path: Path) -> None:
    """train.py on the DICOM demo (TensorBoard, overlays, checkpoints, report), then explain.py on a folder
    mixing DICOM, PNG and a broken DICOM: the planted identifiers are nowhere in what they write."""
    out = tmp_path / "train"
    args = [
        *tiny_overrides(dicom_root, out),
        "data.synthetic.format=dicom",
        "data.image_suffix=.dcm",
        "callbacks.gradcam_overlay.every_n_epochs=1",
        "eval.bootstrap.resamples=50",
    ]
    proc = run_cli(["train.py", *args])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    ckpt = next(out.rglob("last.ckpt"))
    events = list(out.rglob("events.out.tfevents.*"))
    assert events and any(b"val/gradcam" in p.read_bytes() for p in events)

    folder = tmp_path / "in"
    folder.mkdir()
    dicoms = sorted((dicom_root / "images").glob("*.dcm"))[:3]
    for path in dicoms:
        (folder / path.name).write_bytes(path.read_bytes())
    png_name = sorted((demo_root / "images").glob("*.png"))[10].name
    (folder / png_name).write_bytes((demo_root / "images" / png_name).read_bytes())
    broken = dicoms[0].read_bytes()
    (folder / "broken.dcm").write_bytes(broken[: len(broken) // 2])
    explained = tmp_path / "explain"
    proc = run_cli(
        ["explain.py", f"ckpt_path={ckpt}", f"inputs={folder}", f"out_dir={explained}", "progress=false"]
        + [f"paths.log_dir={tmp_path}/explain_logs"]
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    assert "broken.dcm: DICOM pixel data cannot be decoded" in log and "could not be read" in log
    stems = sorted([p.stem for p in dicoms] + [png_name[:-4]])
    assert sorted(p.stem for p in (explained / "overlays").iterdir()) == stems
    assert sorted(p.stem for p in (explained / "heatmaps").iterdir()) == stems
    with open(explained / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["image"] for r in rows) == sorted([p.name for p in dicoms] + [png_name])
    assert all(r["true_label"] in ("0", "1") for r in rows)  # x.dcm finds the labels of x.png by stem

    planted = set()
    for path in dicoms:
        ds = pydicom.dcmread(path)
        planted |= {str(ds.PatientName), str(ds.PatientID), str(ds.InstitutionName)}
    planted |= set(planted_identifiers(1).values())
    outputs = [p for p in [*out.rglob("*"), *tmp_path.glob("explain*/**/*")] if p.is_file()]
    assert len(outputs) > 10 and ckpt in outputs and set(events) <= set(outputs)
    planted = {v for value in planted for v in (value, value.replace("^", " "))} | {"PLANTED"}
    for path in outputs:
        if "data" in path.relative_to(tmp_path).parts[:2]:
            continue  # the image cache (pixels only) under paths.data_dir
        blob = path.read_bytes()
        assert not [v for v in planted if v.encode() in blob], path
    assert not [v for v in planted if v in log]
