"""Pretrained initialisation of MONAI's DenseNet121: ImageNet weights, CheXNet-style checkpoints, pneumo runs.

``model.pretrained`` names where the first weights come from:

- ``imagenet``: torchvision's ImageNet DenseNet121 (``densenet121-a639ec97.pth``), fetched once with
  ``torch.hub.load_state_dict_from_url`` (hash-checked after a download, cached under
  ``$TORCH_HOME/hub/checkpoints``; torchvision is not needed).
- a path or URL of a checkpoint: any torchvision-layout DenseNet121 state dict (the CheXNet reproductions),
  bare or under ``state_dict`` / ``model_state_dict``, with wrapper prefixes such as ``module.``,
  ``densenet121.``, ``model.``; or a pneumo checkpoint (``.ckpt`` of ``train.py``, keys under ``net.``).

Keys are renamed onto MONAI's DenseNet121 (torchvision's old ``norm.1``/``conv.2`` and new ``norm1``/``conv2``
styles both become ``layers.norm1``/``layers.conv2``), and every tensor is accounted for: each backbone
tensor of the file must land on a network tensor of the same shape and every network tensor must get one,
or loading stops with an error naming them (never a silent skip). The head is used where it fits: a 14-output
head in NIH's finding order (``pneumo.nih.findings.FINDINGS``) seeds a multi-label model, and its Pneumonia
row the binary model's pneumonia logit (the other logit starts at 0, so the binary model starts with exactly
the source's pneumonia probability); ImageNet's 1000-class head is left out, and said so.

Files are read with ``torch.load(weights_only=True)``: a file that needs pickled code (jrzech/reproduce-chexnet
and torchxrayvision save whole modules) is refused with the three lines that convert it in a trusted
environment. torchxrayvision's NIH weights were trained on a random 50% split with an unrecorded seed: an
NIH test figure of a model initialised from them is contaminated.

Input: ImageNet networks expect RGB normalised with ImageNet's mean and std. pneumo's images are grey in
[0, 1]; ``InputNormalization("imagenet")`` replicates them to three channels and normalises them inside the
classifier's ``forward`` (recorded as ``input_norm`` in the checkpoint), so training, test, ``explain.py``
and the Grad-CAM callback all feed the network the same tensors.

Example:
    >>> from monai.networks.nets import DenseNet121
    >>> donor = DenseNet121(spatial_dims=2, in_channels=3, out_channels=14)
    >>> blob = {"state_dict": {f"module.densenet121.{k.replace('class_layers.out', 'classifier.0')}": v
    ...                        for k, v in donor.state_dict().items()}}
    >>> weights = PretrainedWeights.from_blob(blob, "chexnet.pth.tar")
    >>> weights.in_channels, weights.input_norm, weights.head_outputs
    (3, 'imagenet', 14)
    >>> net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=2)
    >>> print(weights.apply(net, task_named("binary")))  # doctest: +ELLIPSIS
    chexnet.pth.tar: 725 backbone tensors loaded (every tensor of the network's features); head: the Pneumonia row (output 6 of 14, ...
"""

from __future__ import annotations

import dataclasses
import io
import logging
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.utils import look_up_option
from torch import nn

from pneumo.config import choice, suggestion
from pneumo.errors import PneumoError
from pneumo.io.checkpoints import is_model_code, pickled_globals
from pneumo.io.files import sha256_bytes, sha256_of
from pneumo.io.reading import ObjectNotFoundError, read_bytes
from pneumo.models.tasks import TASKS, Task, task_named  # noqa: F401 - task_named: the docstring example
from pneumo.nih.findings import FINDINGS, PNEUMONIA

log = logging.getLogger(__name__)

#: ``model.pretrained`` value of torchvision's ImageNet weights.
IMAGENET = "imagenet"
#: torchvision's ImageNet DenseNet121 (the hash prefix ``a639ec97`` is checked after a download).
IMAGENET_URL = "https://download.pytorch.org/models/densenet121-a639ec97.pth"
#: Input normalisations a network can have been trained with: name -> (per-channel mean, std).
INPUT_NORMS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
#: Wrappers around the network's keys in files written by other code (DataParallel, CheXNet's module
#: attribute, generic ``model.``) and by pneumo (``net.``, the LightningModule attribute).
KEY_PREFIXES = ("module.", "densenet121.", "model.", "net.")
# torchvision's dense-layer names, old (``norm.1``) and new (``norm1``) style -> MONAI's ``layers.norm1``.
_TORCHVISION_LAYER = re.compile(r"^(features\..*denselayer\d+)\.(norm|relu|conv)\.?([12])\.(.+)$")
# The head: torchvision ``classifier`` (ImageNet), CheXNet's ``classifier.0`` (Linear before a Sigmoid),
# MONAI's ``class_layers.out``.
_HEAD = re.compile(r"^(?:classifier(?:\.0)?|class_layers\.out)\.(weight|bias)$")
# Buffers that count batches: absent from the real ImageNet file, harmless to lack.
_COUNTER = "num_batches_tracked"
_MONAI_HEAD = "class_layers.out"


class PretrainedWeightsError(PneumoError, ValueError):
    """A ``model.pretrained`` source that cannot initialise the network; the message says why and the fix."""


class PretrainedFileNotFoundError(PneumoError, FileNotFoundError):
    """A ``model.pretrained`` path or URL that does not exist."""


def conversion_snippet(path: str) -> str:
    """The three Python lines that turn a pickled model/checkpoint into a plain state dict (one line)."""
    out = f"{path}.state_dict.pt"
    return (
        f"python -c \"import torch; m = torch.load('{path}', map_location='cpu', weights_only=False); "
        "m = m.get('model', m.get('state_dict', m)) if isinstance(m, dict) else m; "
        f"torch.save(m.state_dict() if hasattr(m, 'state_dict') else dict(m), '{out}')\""
    )


def imagenet_cache_path() -> Path:
    """Where ``torch.hub`` keeps the ImageNet file: ``$TORCH_HOME/hub/checkpoints/densenet121-a639ec97.pth``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / IMAGENET_URL.rsplit("/", 1)[1]


def _load_imagenet() -> tuple[Mapping[str, torch.Tensor], str]:
    try:
        state = torch.hub.load_state_dict_from_url(
            IMAGENET_URL, map_location="cpu", check_hash=True, weights_only=True, progress=False
        )
        return state, sha256_of(imagenet_cache_path())
    except (OSError, RuntimeError) as err:  # URLError is an OSError; a hash mismatch is a RuntimeError
        raise PretrainedWeightsError(
            f"model.pretrained=imagenet: cannot get {IMAGENET_URL} ({str(err).splitlines()[0]}); without "
            f"internet access copy that file to {imagenet_cache_path()} (or set $TORCH_HOME) and run again"
        ) from err


def _load_file(source: str) -> tuple[Any, str]:
    try:
        data = read_bytes(source, key="model.pretrained")  # a URL's transient failures are retried
    except ObjectNotFoundError as err:
        raise PretrainedFileNotFoundError(
            f"model.pretrained={source} does not exist: give `imagenet`, null, or the path/URL of a "
            f"checkpoint or state dict{suggestion(source, [IMAGENET])}"
        ) from err
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), sha256_bytes(data)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL ([\w.]+)", str(err))
        what = f"a pickled {found.group(1)}" if found else "pickled Python objects"
        names = pickled_globals(data)
        if not is_model_code(names):  # code that runs on loading: never offer a weights_only=False command
            others = sorted({n for n in names or [] if not is_model_code([n])})
            calls = f"calls of {', '.join(others[:3])}" if others else "objects whose classes cannot be told"
            raise PretrainedWeightsError(
                f"model.pretrained={source} holds {calls}: code that would run when the file is loaded; "
                "refused, and do not load it elsewhere either: ask its source for a plain state dict (tensors only)"
            ) from err
        raise PretrainedWeightsError(
            f"model.pretrained={source} holds {what}, which weights_only=True refuses to run; in an "
            f"environment you trust convert it once to a plain state dict: {conversion_snippet(source)} "
            f"and set model.pretrained={source}.state_dict.pt"
        ) from err
    except Exception as err:  # torch raises RuntimeError, EOFError... for bytes that are no checkpoint
        raise PretrainedWeightsError(
            f"model.pretrained={source} is not a PyTorch checkpoint or state dict ({type(err).__name__})"
        ) from err


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in KEY_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


@dataclass(frozen=True)
class PretrainedWeights:
    """Weights of one source, renamed onto MONAI's DenseNet121.

    Attributes:
        source: ``imagenet`` or the path/URL.
        backbone: ``features.*`` tensors under MONAI's names.
        head: ``{"weight": (K, 1024), "bias": (K,)}`` of the source's classifier, or empty.
        in_channels: input channels of the source's first convolution.
        input_norm: normalisation the source was trained with (``imagenet``) or ``None`` (grey in [0, 1]).
        ignored: keys of a pneumo checkpoint that are classifier state, not network weights (thresholds...).
        sha256: of the file read (``None`` when built from an object in memory).
    """

    source: str
    backbone: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    in_channels: int
    input_norm: str | None
    ignored: tuple[str, ...] = ()
    sha256: str | None = None

    @property
    def head_outputs(self) -> int | None:
        """Outputs of the source's head (1000 for ImageNet, 14 for CheXNet), ``None`` without a head."""
        return int(self.head["weight"].shape[0]) if "weight" in self.head else None

    @classmethod
    def read(cls, source: str) -> PretrainedWeights:
        """Read ``imagenet`` or a path/URL (``weights_only=True``) and rename its keys onto MONAI's."""
        blob, sha256 = _load_imagenet() if source == IMAGENET else _load_file(source)
        return dataclasses.replace(cls.from_blob(blob, source), sha256=sha256)

    @classmethod
    def from_blob(cls, blob: Any, source: str) -> PretrainedWeights:
        """Rename a loaded checkpoint / state dict; every key is classified or an error names it."""
        if not isinstance(blob, Mapping):
            raise PretrainedWeightsError(
                f"model.pretrained={source} holds a {type(blob).__name__}, not a state dict"
            )
        hparams = blob.get("hyper_parameters")
        if not isinstance(hparams, Mapping):
            hparams = {}
        state = next(
            (blob[k] for k in ("state_dict", "model_state_dict") if isinstance(blob.get(k), Mapping)), blob
        )
        tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
        if not tensors:
            raise PretrainedWeightsError(
                f"model.pretrained={source} holds no tensors (keys {list(state)[:5]})"
            )
        pneumo_layout = any(k.startswith("net.") for k in tensors)
        backbone: dict[str, torch.Tensor] = {}
        head: dict[str, torch.Tensor] = {}
        ignored, unknown = [], []
        for key, value in tensors.items():
            if pneumo_layout and not key.startswith("net."):
                ignored.append(key)  # the classifier's own buffers (threshold, class weights...)
                continue
            name = _strip_prefixes(key)
            name = _TORCHVISION_LAYER.sub(r"\1.layers.\2\3.\4", name)
            if (match := _HEAD.match(name)) is not None:
                head[match.group(1)] = value
            elif name.startswith("features."):
                backbone[name] = value
            else:
                unknown.append(key)
        if unknown:
            raise PretrainedWeightsError(
                f"model.pretrained={source}: {len(unknown)} tensor(s) match no part of a DenseNet121, e.g. "
                f"{unknown[:3]}; give a DenseNet121 checkpoint (torchvision or MONAI layout)"
            )
        conv0 = backbone.get("features.conv0.weight")
        if conv0 is None or conv0.ndim != 4:
            raise PretrainedWeightsError(
                f"model.pretrained={source} has no 2-D features.conv0.weight: not a DenseNet121 state dict"
            )
        in_channels = int(conv0.shape[1])
        if "input_norm" in hparams:  # pneumo checkpoints record it (None: grey in [0, 1])
            input_norm = hparams["input_norm"]
        else:  # torchvision-layout files: ImageNet-normalised RGB, as every published DenseNet121 is trained
            input_norm = IMAGENET if in_channels == 3 else None
        return cls(source, backbone, head, in_channels, input_norm, tuple(ignored))

    def apply(self, net: nn.Module, task: Task) -> str:
        """Copy the weights into ``net`` (MONAI DenseNet121) for ``task``; returns the one-line account.

        Raises:
            PretrainedWeightsError: a backbone tensor of the source or of the network has no counterpart
                of the same shape.
        """
        own = net.state_dict()
        own_backbone = {k for k in own if k.startswith("features.") and not k.endswith(_COUNTER)}
        unmatched = [k for k, v in self.backbone.items() if k not in own or own[k].shape != v.shape]
        missing = sorted(own_backbone - set(self.backbone))
        if unmatched or missing:
            detail = ", ".join(
                f"{k} {tuple(self.backbone[k].shape)} vs {tuple(own[k].shape) if k in own else 'absent'}"
                for k in unmatched[:3]
            )
            raise PretrainedWeightsError(
                f"model.pretrained={self.source} does not fit the network: {len(unmatched)} source tensor(s) "
                f"match no network tensor of that shape ({detail}), {len(missing)} network tensor(s) get "
                f"none ({missing[:3]}); it must be a DenseNet121 with {self.in_channels} input channel(s)"
            )
        loaded = dict(self.backbone)
        head_note = self._head_into(own, task, loaded)
        net.load_state_dict({**own, **loaded})
        counters = sum(k.endswith(_COUNTER) for k in own_backbone | set(self.backbone))
        account = (
            f"{self.source}: {len(self.backbone)} backbone tensors loaded (every tensor of the network's "
            f"features{'' if counters else '; BatchNorm batch counters start at 0'}); head: {head_note}"
        )
        if self.ignored:
            account += (
                f"; {len(self.ignored)} classifier buffer(s) not network weights: {list(self.ignored)[:4]}"
            )
        return account

    def _head_into(self, own: Mapping[str, torch.Tensor], task: Task, loaded: dict[str, torch.Tensor]) -> str:
        weight, bias = self.head.get("weight"), self.head.get("bias")
        target_w, target_b = own[f"{_MONAI_HEAD}.weight"], own[f"{_MONAI_HEAD}.bias"]
        k = self.head_outputs
        if weight is None or bias is None:
            return "none in the source, the network's head starts fresh"
        if weight.shape[1] != target_w.shape[1]:
            raise PretrainedWeightsError(
                f"model.pretrained={self.source}: its head takes {weight.shape[1]} features, the network's "
                f"{target_w.shape[1]}: not a DenseNet121 head"
            )
        if weight.shape == target_w.shape:
            loaded[f"{_MONAI_HEAD}.weight"], loaded[f"{_MONAI_HEAD}.bias"] = weight, bias
            return f"all {k} outputs loaded"
        if k == len(FINDINGS) and not task.findings:
            # softmax([0, z]) = sigmoid(z): the binary model starts with the source's pneumonia probability
            w, b = torch.zeros_like(target_w), torch.zeros_like(target_b)
            row = TASKS["multilabel"].pneumonia_output  # the source is a 14-finding (multi-label) head
            w[task.pneumonia_output], b[task.pneumonia_output] = weight[row], bias[row]
            loaded[f"{_MONAI_HEAD}.weight"], loaded[f"{_MONAI_HEAD}.bias"] = w, b
            return (
                f"the {PNEUMONIA} row (output {row} of {k}, NIH's finding order) seeds the "
                "pneumonia logit, the other logit starts at 0"
            )
        note = f"its {k} outputs fit neither task's head ({target_w.shape[0]} here): the head starts fresh"
        if k != 1000:  # ImageNet's 1000 classes are expected to be dropped; anything else deserves a warning
            log.warning("model.pretrained=%s: %s", self.source, note)
        return (
            note if k != 1000 else "ImageNet's 1000-class head is not used, the network's head starts fresh"
        )


class InputNormalization(nn.Module):
    """What a pretrained network expects from pneumo's grey ``(B, 1, H, W)`` images in [0, 1]: the image
    replicated to the normalisation's channels, minus its mean, over its std.

    Example:
        >>> x = torch.full((1, 1, 2, 2), 0.485)
        >>> InputNormalization("imagenet")(x)[0, :, 0, 0]
        tensor([0.0000, 0.1295, 0.3511])
    """

    # Buffers (nn.Module types a registered name only as ``Tensor | Module``).
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, name: str) -> None:
        super().__init__()
        mean, std = look_up_option(name, INPUT_NORMS)
        self.name = name
        # Not persistent: the name in the hyperparameters is the record; checkpoints keep their keys.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = self.mean.shape[1]
        if x.shape[1] == 1 and channels > 1:
            x = x.expand(-1, channels, -1, -1)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return self.name


def input_adapter(input_norm: str | None) -> nn.Module:
    """``InputNormalization(input_norm)``, or ``nn.Identity()`` for ``None`` (grey in [0, 1] as is)."""
    name = choice(input_norm, "model.input_norm", (*sorted(INPUT_NORMS), None))
    if name is None:
        return nn.Identity()
    return InputNormalization(name)
