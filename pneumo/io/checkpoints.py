"""``AtomicCheckpointIO``: Lightning checkpoints that are never left half-written.

Lightning's ``TorchCheckpointIO`` serializes a checkpoint into memory, writes it to a temporary file in the
system temp folder and moves that over the target. When the temp folder is on another file system than
the run folder (``/tmp`` on a node's local disk, logs on NFS/Lustre: the usual cluster layout), the move is
a copy: a job killed during the copy (SIGKILL, out of memory, preemption) leaves a truncated
``last.ckpt``, and the killed job's temp file stays in ``/tmp``. Nothing is synced to disk either, so a
node crash right after the move can leave an empty file.

This plugin writes the checkpoint to a temporary file **in the target's folder**, flushes and fsyncs it,
then ``os.replace``-s it over the target (atomic on POSIX file systems) and fsyncs the folder. A reader
sees the old checkpoint or the new one, never a mix. Leftover temp files of killed writers are removed by
the next successful save of the same checkpoint. Remote URLs (``gs://``, ``s3://``) go to Lightning's
own writer: an object store makes an upload visible whole.

Configured for every run in ``conf/trainer/default.yaml``::

    plugins:
      - _target_: pneumo.io.checkpoints.AtomicCheckpointIO

Example:
    >>> io = AtomicCheckpointIO()
    >>> io.save_checkpoint({"epoch": 3}, "/tmp/pneumo_doctest/last.ckpt")
    >>> io.load_checkpoint("/tmp/pneumo_doctest/last.ckpt")["epoch"]
    3
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from io import BytesIO
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from pneumo.errors import PneumoError
from pneumo.io.files import atomic_write_bytes
from pneumo.io.reading import ObjectNotFoundError, read_bytes


class CheckpointError(PneumoError, ValueError):
    """A checkpoint that is missing, unreadable or not what it should be; the message names it."""


def _is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def read_checkpoint(
    location: str,
    key: str = "ckpt_path",
    storage_options: Mapping | None = None,
    map_location: str | torch.device = "cpu",
    *,
    io: Mapping | None = None,
) -> Any:
    """Load a checkpoint or state-dict file (local path or fsspec URL) with ``weights_only=True``: tensors
    and plain containers only, no pickled code runs. The one place pneumo reads a checkpoint.

    Args:
        location: path or URL of the file.
        key: the config key that named it (for messages), e.g. ``ckpt_path`` or ``model.pretrained``.
        storage_options: fsspec options of ``location`` (``StorageSettings.options_for``).
        map_location: where tensors go.
        io: I/O limits of the read (``StorageSettings.io``): transient failures are retried
            (``pneumo.io.reading.read_bytes``).

    Raises:
        CheckpointError: missing, not a PyTorch file, or holding objects other than tensors (one line).
        AccessDeniedError, StoreUnavailableError: ``pneumo.io.reading``'s, naming ``key`` and the URL.

    Example:
        >>> atomic_torch_save({"w": torch.ones(1)}, "/tmp/pneumo_doctest/r.pt")
        >>> read_checkpoint("/tmp/pneumo_doctest/r.pt")["w"].tolist()
        [1.0]
        >>> read_checkpoint("/tmp/pneumo_doctest/none.pt")
        Traceback (most recent call last):
        ...
        pneumo.io.checkpoints.CheckpointError: ckpt_path=/tmp/pneumo_doctest/none.pt: no such file; give a .ckpt written by train.py (logs/train/runs/<timestamp>/checkpoints/)
    """
    try:
        data = read_bytes(location, storage_options, key=key, io=io)
    except ObjectNotFoundError as err:
        raise CheckpointError(
            f"{key}={location}: no such file; give a .ckpt written by train.py "
            "(logs/train/runs/<timestamp>/checkpoints/)"
        ) from err
    except IsADirectoryError as err:
        raise CheckpointError(f"{key}={location} is a folder; give the checkpoint file inside it") from err
    try:
        return torch.load(BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        what = f"it holds a {found.group(1)} object" if found else "it holds objects other than tensors"
        raise CheckpointError(
            f"{key}={location} cannot be loaded safely with weights_only=True: {what}; only checkpoints "
            "from train.py (or a source you trust, re-saved as tensors) are accepted"
        ) from err
    except Exception as err:  # torch raises RuntimeError, KeyError, EOFError... for non-checkpoint bytes
        raise CheckpointError(f"{key}={location} is not a PyTorch checkpoint ({type(err).__name__})") from err


#: Modules whose pickled classes are model code a conversion with ``weights_only=False`` may be offered for
#: (whole torchvision/MONAI modules, Lightning/argparse objects beside them); any other global, ``posix.system``
#: or ``builtins.eval`` above all, means code that runs on loading, and no such command is ever suggested.
MODEL_CODE_MODULES = frozenset(
    {"torch", "torchvision", "monai", "collections", "numpy", "lightning", "pytorch_lightning", "argparse",
     "timm", "torchxrayvision", "_codecs"}
)  # fmt: skip


def pickled_globals(data: bytes) -> list[str] | None:
    """The ``module.name`` of every global a PyTorch file's pickle would import (read with ``pickletools``,
    nothing executed), or ``None`` when that cannot be told for sure (``STACK_GLOBAL``/``INST``, whose
    names come from the stack, or bytes that do not parse): callers then assume the worst.

    Example:
        >>> import io, torch
        >>> buf = io.BytesIO(); torch.save({"w": torch.zeros(1)}, buf)
        >>> sorted(set(pickled_globals(buf.getvalue())))
        ['collections.OrderedDict', 'torch.FloatStorage', 'torch._utils._rebuild_tensor_v2']
    """
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(BytesIO(data)):
            with zipfile.ZipFile(BytesIO(data)) as archive:
                readers = [(BytesIO(archive.read(n)), 1) for n in archive.namelist() if n.endswith(".pkl")]
        else:  # torch's legacy format: magic number, protocol, system info, the object, storage keys
            readers = [(BytesIO(data), 5)]
        found: list[str] = []
        for reader, pickles in readers:
            for _ in range(pickles):
                for op, arg, _ in pickletools.genops(reader):
                    if op.name in ("STACK_GLOBAL", "INST"):
                        return None
                    if op.name == "GLOBAL":
                        found.append(str(arg).replace(" ", "."))
        return found
    except (
        ValueError,
        EOFError,
        KeyError,
        OSError,
        zipfile.BadZipFile,
    ):  # not a pickle read op by op: assume the worst
        return None


#: Builtins a pickled module needs (``nn.Module`` keeps sets of buffer names); no callable that runs code.
_SAFE_BUILTINS = frozenset({"set", "frozenset", "slice", "complex", "bytearray", "range"})


def is_model_code(names: list[str] | None) -> bool:
    """Every pickled global is a class of a model library (``MODEL_CODE_MODULES``): a file worth converting.

    Example:
        >>> is_model_code(["monai.networks.nets.densenet.DenseNet121"]), is_model_code(["posix.system"])
        (True, False)
    """
    return names is not None and all(_is_model_global(n) for n in names)


def _is_model_global(name: str) -> bool:
    module, _, attr = name.rpartition(".")
    if module in ("__builtin__", "builtins"):
        return attr in _SAFE_BUILTINS
    return name.split(".")[0] in MODEL_CODE_MODULES


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to ``path`` through a synced temp file in the same folder and ``os.replace``.

    The object is serialized in memory first, so that a full disk is reported with the size needed
    (``DiskFullError``) and never leaves a truncated checkpoint.

    Example:
        >>> atomic_torch_save({"w": torch.ones(2)}, "/tmp/pneumo_doctest/w.pt")
        >>> torch.load("/tmp/pneumo_doctest/w.pt")["w"].tolist()
        [1.0, 1.0]
    """
    buffer = BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(
        path,
        buffer.getbuffer(),
        durable=True,
        fix="free space there, or set paths.log_dir (or callbacks.model_checkpoint.dirpath) to a larger disk",
    )


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local saves are atomic and durable (see the module docstring)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"`Trainer.save_checkpoint(..., storage_options=...)` is not supported by {type(self).__name__}"
            )
        path = str(path)
        if _is_remote(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path.removeprefix("file://"))

    def load_checkpoint(
        self, path: Any, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Resume checkpoints go through ``read_checkpoint`` too: ``weights_only=True`` and one-line errors
        (``weights_only=False`` is refused: pneumo's checkpoints hold tensors and plain containers only)."""
        if weights_only is False:
            raise CheckpointError(
                f"ckpt_path={path}: loading with weights_only=False is not supported by pneumo"
            )
        return read_checkpoint(str(path), "ckpt_path", map_location=map_location)
