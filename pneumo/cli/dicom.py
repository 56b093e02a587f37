"""``python -m pneumo dicom FILE... [--png PNG...] [--voi MODE]``: what pneumo sees in DICOM files."""

from __future__ import annotations

import argparse

import numpy as np

from pneumo.console import print_json, user_errors
from pneumo.errors import ConfigError
from pneumo.images.decode import decode_grayscale
from pneumo.images.dicom import VOI_MODES, describe
from pneumo.images.limits import BadImageError
from pneumo.io.reading import ObjectNotFoundError, read_bytes


def main(argv: list[str] | None = None) -> int:
    """``python -m pneumo dicom FILE... [--png PNG...] [--voi MODE]``: what pneumo sees in DICOM files."""
    parser = argparse.ArgumentParser(
        prog="python -m pneumo dicom",
        description="Pixel facts of DICOM files (no patient data), whether pneumo decodes them, and how far "
        "their grey levels are from PNGs of the same images.",
    )
    parser.add_argument("files", nargs="+", help="DICOM files (paths or fsspec URLs)")
    parser.add_argument("--png", nargs="*", default=[], help="PNGs of the same images, in the same order")
    parser.add_argument("--voi", default="auto", choices=VOI_MODES, help="data.dicom_voi to decode with")
    args = parser.parse_args(argv)
    if args.png and len(args.png) != len(args.files):
        parser.error(f"--png names {len(args.png)} file(s) for {len(args.files)} DICOM file(s)")
    with user_errors():
        return _describe_files(args.files, args.png, args.voi)


def _describe_files(files: list[str], pngs: list[str], voi: str) -> int:
    def read(location: str) -> bytes:
        try:
            return read_bytes(location)
        except ObjectNotFoundError as err:
            raise ConfigError(f"{location}: no such file") from err

    worst = 0
    for i, location in enumerate(files):
        data = read(location)
        facts = describe(data, location)
        try:
            pixels = decode_grayscale(data, location, voi)
            facts.update(decoded=True, grey_min_max=[int(pixels.min()), int(pixels.max())])
        except BadImageError as err:
            facts.update(decoded=False, error=str(err))
            worst = max(worst, 1)
        if pngs and facts["decoded"]:
            reference = decode_grayscale(read(pngs[i]), pngs[i])
            same_shape = reference.shape == pixels.shape
            diff = np.abs(reference.astype(int) - pixels.astype(int)) if same_shape else None
            facts["vs_png"] = (
                {
                    "png": pngs[i],
                    "max_grey_difference": int(diff.max()),
                    "mean": round(float(diff.mean()), 3),
                }
                if same_shape
                else {"png": pngs[i], "shape_differs": [list(reference.shape), list(pixels.shape)]}
            )
        print_json(facts)
    return worst


if __name__ == "__main__":
    raise SystemExit(main())
