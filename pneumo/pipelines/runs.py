"""``load_run``: a training run rebuilt from its checkpoint, the one way pneumo does it.

A ``.ckpt`` written by ``train.py`` holds the classifier's hyperparameters and weights, the data module's
hyperparameters (URLs, split settings, image size, cache and skip policies, storage settings without
credentials) and the data module's state (the images it left out as missing or bad). ``load_run`` gives back

- the model (eval mode, its operating point as saved, or re-chosen by another rule),
- its data module, not set up: the same split, the same skipped images (``data.images.on_missing=skip``) and the
  same preprocessing as the run, and
- its storage settings (the saved ones, with what this command overrides: credentials, emulator options).

``train.py train=false``, ``explain.py`` and the evaluation of a checkpoint use it. Everything is read with
``weights_only=True`` (``pneumo.io.checkpoints.read_checkpoint``).

Example:
    >>> run = load_run("logs/train/runs/<timestamp>/checkpoints/last.ckpt")  # doctest: +SKIP
    >>> run.datamodule.split_images("test")[:2], run.model.threshold  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from pneumo.data.datamodule import NIHDataModule
from pneumo.data.identity import RecordedData
from pneumo.data.settings import GROUPS, RUNTIME_KEYS, grouped, is_flat
from pneumo.io.checkpoints import CheckpointError, read_checkpoint
from pneumo.io.storage import StorageSettings, redact_url
from pneumo.io.store import absolute_location, object_name
from pneumo.models.classifier import PneumoniaClassifier

log = logging.getLogger(__name__)

#: Data-module settings a command may change without changing the data (how, not what, is read):
#: ``group.key`` of ``pneumo.data.settings``.
RUNTIME_DATA_KEYS = RUNTIME_KEYS


@dataclass
class Run:
    """A training run rebuilt from its checkpoint (see the module docstring)."""

    checkpoint: str
    model: PneumoniaClassifier
    datamodule: NIHDataModule
    storage: StorageSettings

    @property
    def image_size(self) -> int:
        """Side of the network input, pixels (the run's ``data.images.size``)."""
        return int(self.datamodule.image_settings.size)

    @property
    def dicom_voi(self) -> str:
        """Grey levels of DICOM images as the run read them (its ``data.images.dicom_voi``)."""
        return str(self.datamodule.image_settings.dicom_voi)

    def image_location(self, name: str) -> str:
        """URL or path of one image of the run's data set."""
        suffix = self.datamodule.image_settings.suffix
        return f"{str(self.datamodule.images_url).rstrip('/')}/{object_name(name, suffix)}"


def load_run(
    ckpt_path: str,
    storage: Mapping | None = None,
    data: Mapping | None = None,
    operating_point: str | float | None = None,
    map_location: str | torch.device = "cpu",
    storage_key: str = "data.storage",
) -> Run:
    """Rebuild the run of ``ckpt_path``.

    Args:
        ckpt_path: a ``.ckpt`` written by ``train.py`` (path or URL).
        storage: ``StorageSettings`` keys that replace the checkpoint's (``None`` values keep the saved
            ones): credentials and endpoints of this machine, never saved.
        data: data-module settings of this command (``data``, grouped); only ``RUNTIME_DATA_KEYS`` are
            taken (the others would change the data and are the checkpoint's).
        operating_point: a rule that replaces the saved one (``eval.threshold``); validation re-applies it.
        map_location: device of the weights.
        storage_key: this command's name of ``storage`` (``storage`` for explain.py), named in its errors.

    The data module checks what it reads against the data identity the checkpoint's model card recorded
    (``pneumo.data.identity``: the sha256 of the label file, split lists and split image lists): a data set
    changed since stops the command with one line instead of being used under the run's name.

    Raises:
        CheckpointError: missing, unreadable, or not a pneumo classifier's checkpoint (one line).
    """
    location = absolute_location(str(ckpt_path))
    given = {k: v for k, v in dict(storage or {}).items() if v is not None}
    reading = StorageSettings.from_config(
        given, key=storage_key
    )  # this machine's settings: the checkpoint's are inside it
    blob = read_checkpoint(location, "ckpt_path", reading.options_for(location), map_location, io=reading.io)
    hp = blob.get("hyper_parameters") if isinstance(blob, Mapping) else None
    dhp = blob.get("datamodule_hyper_parameters") if isinstance(blob, Mapping) else None
    if not isinstance(hp, Mapping) or "net" not in hp or "state_dict" not in blob:
        raise CheckpointError(
            f"ckpt_path={ckpt_path} is not a pneumo classifier checkpoint (no hyper_parameters.net/state_dict)"
        )
    # Checkpoints from before the settings groups (issue 21) saved every data setting flat.
    dhp = grouped(dhp) if isinstance(dhp, Mapping) and is_flat(dhp) else dhp
    if not isinstance(dhp, Mapping) or not (dhp.get("images") or {}).get("size"):
        raise CheckpointError(
            f"ckpt_path={ckpt_path} lacks datamodule_hyper_parameters.images.size (not written by train.py)"
        )
    # Checkpoints from before data.storage saved project / requester_pays at the top level.
    saved = dict(dhp.get("storage") or {k: dhp[k] for k in ("project", "requester_pays") if k in dhp})
    settings = StorageSettings.from_config({**saved, **given}, key=storage_key)
    model = _rebuild_model(ckpt_path, blob, hp, operating_point)
    datamodule = _rebuild_datamodule(dhp, settings, data)
    state = blob.get(type(datamodule).__qualname__)
    if isinstance(state, Mapping):
        datamodule.load_state_dict(dict(state))
    card = blob.get("model_card")
    datamodule.recorded = RecordedData.from_card(
        card.get("data") if isinstance(card, Mapping) else None, redact_url(str(ckpt_path))
    )
    return Run(checkpoint=str(ckpt_path), model=model, datamodule=datamodule, storage=settings)


def _rebuild_model(
    ckpt_path: str, blob: Mapping, hp: Mapping, operating_point: str | float | None
) -> PneumoniaClassifier:
    # The checkpoint holds the weights: pretrained ones are not read again (nor the retired init_weights key).
    overrides: dict[str, Any] = {"pretrained": None}
    if operating_point is not None:
        overrides["operating_point"] = operating_point
    try:
        rebuilt = {k: v for k, v in hp.items() if k != "init_weights"}
        model = PneumoniaClassifier(**{**rebuilt, **overrides})
    except Exception as err:
        raise CheckpointError(f"ckpt_path={ckpt_path}: its model cannot be rebuilt ({err})") from err
    try:
        missing, unexpected = model.load_state_dict(blob["state_dict"], strict=False)
    except RuntimeError as err:  # shape mismatches raise even with strict=False
        detail = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln), str(err)[:200])
        raise CheckpointError(
            f"ckpt_path={ckpt_path} does not fit the classifier it describes: {detail}"
        ) from err
    if "threshold" in missing:  # checkpoints from before the operating-point buffer existed
        log.warning("checkpoint %s has no threshold; using %.2f", ckpt_path, float(model.threshold))
        missing = [k for k in missing if k != "threshold"]
    if "temperature" in missing:  # from before temperature scaling: unscaled probabilities, as trained
        model.temperature.fill_(1.0)
        missing = [k for k in missing if k != "temperature"]
    if missing or unexpected:
        raise CheckpointError(
            f"ckpt_path={ckpt_path} does not fit the classifier it describes: "
            f"{len(missing)} missing tensor(s) {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}"
        )
    model.on_load_checkpoint(dict(blob))  # epoch and operating point (rule, validation figures)
    return model.eval()


def _rebuild_datamodule(dhp: Mapping, settings: StorageSettings, data: Mapping | None) -> NIHDataModule:
    args = {k: v for k, v in dict(dhp).items() if k not in ("project", "requester_pays", "storage", "io")}
    return NIHDataModule(**with_runtime(args, data), storage=settings)


def with_runtime(saved: Mapping, data: Mapping | None) -> dict[str, Any]:
    """The saved (grouped) data-module arguments with this command's ``RUNTIME_DATA_KEYS`` (those not
    ``None``) in place of the saved ones.

    Example:
        >>> with_runtime({"loader": {"batch_size": 32, "num_workers": 4}, "images": {"size": 64}},
        ...              {"loader": {"batch_size": 8}, "images": {"size": 224}})
        {'loader': {'batch_size': 8, 'num_workers': 4}, 'images': {'size': 64}}
    """
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in dict(saved).items()}
    given = grouped(data) if data and is_flat(data) else dict(data or {})
    for path in RUNTIME_DATA_KEYS:
        group, key = path.split(".")
        value = (given.get(group) or {}).get(key) if isinstance(given.get(group), Mapping) else None
        if value is not None:
            out.setdefault(group, {})[key] = value
    return out


def setting_paths(data: Mapping) -> dict[str, Any]:
    """A data config or saved hyperparameters as ``{"images.size": 64, "images_url": ..., ...}``: the
    settings groups' keys as ``group.key``, every other key as it is (for comparing two of them)."""
    out: dict[str, Any] = {}
    for key, value in dict(data).items():
        if key in GROUPS and isinstance(value, Mapping):
            out.update({f"{key}.{name}": v for name, v in value.items()})
        else:
            out[key] = value
    return out
