"""``python -m pneumo <command> [args]``: every pneumo command under one name.

Commands: ``train``, ``explain``, ``evaluate``, ``export``, ``sanity`` (Hydra: ``key=value`` overrides, ``--help``,
``--cfg job``),
``index``, ``synthetic``, ``dicom`` (``--help`` for their options).

Example:
    >>> main(["--help"])  # doctest: +ELLIPSIS
    usage: python -m pneumo <command> [args]
    ...
    0
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: Command -> (module under pneumo.cli, one line about it).
COMMANDS = {
    "train": ("train", "train a classifier (same as pneumo-train, python train.py)"),
    "explain": ("explain", "predictions and Grad-CAM heatmaps of a checkpoint (same as pneumo-explain)"),
    "evaluate": ("evaluate", "the evaluation report of a predictions file (same as pneumo-evaluate)"),
    "export": ("export", "a checkpoint as TorchScript, ONNX or a MONAI bundle (same as pneumo-export)"),
    "sanity": ("sanity", "the sanity check of a checkpoint's saliency maps (cascading randomization)"),
    "index": ("index", "summarise an NIH label index and its splits (the shipped one by default)"),
    "synthetic": ("synthetic", "write a synthetic set in NIH's layout (the demo set, or a look-alike)"),
    "dicom": ("dicom", "what pneumo sees in DICOM files (no patient data is read)"),
}


def usage() -> str:
    """The help text listing the commands."""
    lines = ["usage: python -m pneumo <command> [args]", "", "commands:"]
    lines += [f"  {name:<10} {about}" for name, (_, about) in COMMANDS.items()]
    lines += ["", "python -m pneumo <command> --help: the command's own options"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``argv[0]``'s command with the rest of ``argv``; exit status 2 for an unknown command."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        from pneumo.config import suggestion

        sys.stderr.write(f"error: no pneumo command {name!r}{suggestion(name, COMMANDS)}; "
                         f"choose one of {', '.join(COMMANDS)}\n")  # fmt: skip
        return 2
    module = importlib.import_module(f"pneumo.cli.{COMMANDS[name][0]}")
    sys.argv = [f"python -m pneumo {name}", *rest]  # Hydra and argparse read sys.argv
    result = module.main(rest) if name in ("index", "synthetic", "dicom") else module.main()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
