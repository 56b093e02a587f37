"""Pretrained initialisation, offline: ImageNet weights from a TORCH_HOME cache written by the test (the real
file's name and key layout), CheXNet-layout checkpoints, pickled files refused, and the preprocessing a
pretrained model sees in training, test and explain.py."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.networks.nets import DenseNet121
from torch import nn

from pneumo.errors import PneumoError
from pneumo.models.pretrained import (
    INPUT_NORMS,
    PretrainedFileNotFoundError,
    PretrainedWeights,
    PretrainedWeightsError,
)
from pneumo.nih.findings import FINDINGS, PNEUMONIA

MEAN, STD = (torch.tensor(v).view(1, 3, 1, 1) for v in INPUT_NORMS["imagenet"])
NET = {"_target_": "monai.networks.nets.DenseNet121", "spatial_dims": 2, "in_channels": 1, "out_channels": 2}
OPTIMIZER = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-4}


def random_densenet(out_channels: int, seed: int = 0) -> DenseNet121:
    """A 3-channel DenseNet121 with random weights and random BatchNorm statistics (so that a wrong
    mapping of any running mean/var shows in the features)."""
    torch.manual_seed(seed)
    net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=out_channels)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return net.eval()


def torchvision_layout(net: nn.Module, old_style: bool = True, head: str = "classifier") -> dict:
    """``net``'s weights under torchvision's DenseNet names, as torchvision's files hold them: old style
    (``denselayer1.norm.1.weight``) or new (``norm1``), no BatchNorm batch counters, the head under ``head``."""
    out = {}
    for monai_key, value in net.state_dict().items():
        if monai_key.endswith("num_batches_tracked"):
            continue
        key = re.sub(r"\.layers\.(norm|conv)([12])\.", r".\1.\2." if old_style else r".\1\2.", monai_key)
        out[key.replace("class_layers.out", head)] = value.clone()
    return out


def penultimate(net: nn.Module, run) -> torch.Tensor:
    """The pooled 1024 features of a MONAI DenseNet121 (input of its last layer) while ``run()`` runs."""
    seen = []
    handle = net.class_layers.flatten.register_forward_hook(lambda m, i, o: seen.append(o.detach()))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return seen[-1]


@pytest.fixture()
def imagenet_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A random DenseNet121 written as ``$TORCH_HOME/hub/checkpoints/densenet121-a639ec97.pth`` in the real
    file's layout (old key style, no batch counters, 1000-class ``classifier``); returns that state dict."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    state = torchvision_layout(random_densenet(1000))
    folder = tmp_path / "torch_home" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / "densenet121-a639ec97.pth")
    return state


def test_imagenet_gives_monai_pretrained_features(imagenet_cache: dict, caplog) -> None:
    from pneumo.models.classifier import PneumoniaClassifier

    with caplog.at_level(logging.INFO, logger="pneumo.models"):
        ours = PneumoniaClassifier(net=NET, optimizer=OPTIMIZER, pretrained="imagenet").eval()
    reference = DenseNet121(spatial_dims=2, in_channels=3, out_channels=2, pretrained=True).eval()
    x = torch.rand(3, 1, 64, 64)
    mine = penultimate(ours.net, lambda: ours(x))
    theirs = penultimate(reference, lambda: reference((x.repeat(1, 3, 1, 1) - MEAN) / STD))
    assert mine.shape == (3, 1024)
    assert torch.allclose(mine, theirs, atol=1e-4), float((mine - theirs).abs().max())
    # every backbone tensor of the file is counted in the log; the 1000-class head is said to be left out
    n_features = sum(k.startswith("features.") for k in imagenet_cache)
    assert f"imagenet: {n_features} backbone tensors loaded" in caplog.text
    assert "1000-class head is not used" in caplog.text
    # the normalisation is recorded with the model (and travels in its checkpoints)
    assert ours.hparams.input_norm == "imagenet" and ours.hparams.net["in_channels"] == 3


def test_imagenet_new_key_style_loads_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    donor = random_densenet(1000, seed=1)
    net_old, net_new = (DenseNet121(spatial_dims=2, in_channels=3, out_channels=2) for _ in range(2))
    PretrainedWeights.from_blob(torchvision_layout(donor, old_style=True), "old").apply(net_old, "binary")
    PretrainedWeights.from_blob(torchvision_layout(donor, old_style=False), "new").apply(net_new, "binary")
    for (key, a), b, c in zip(
        net_old.state_dict().items(), net_new.state_dict().values(), donor.state_dict().values()
    ):
        if key.startswith("features.") and not key.endswith("num_batches_tracked"):
            assert torch.equal(a, b) and torch.equal(a, c), key


def test_chexnet_checkpoint_loads_every_tensor(tmp_path: Path) -> None:
    """arnoweng/CheXNet's layout: DataParallel ``module.densenet121.`` prefix, old key style, a 14-output
    ``classifier.0`` (Linear before its Sigmoid), under ``state_dict``."""
    from pneumo.models.classifier import PneumoniaClassifier

    donor = random_densenet(len(FINDINGS), seed=2)
    state = {f"module.densenet121.{k}": v for k, v in torchvision_layout(donor, head="classifier.0").items()}
    path = tmp_path / "model.pth.tar"
    torch.save({"state_dict": state, "epoch": 7}, path)

    multilabel = PneumoniaClassifier(
        net={**NET, "out_channels": 14}, optimizer=OPTIMIZER, task="multilabel", pretrained=str(path)
    ).eval()
    donor_state = donor.state_dict()
    for key, value in multilabel.net.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, donor_state[key]), key

    # the binary model starts with exactly CheXNet's pneumonia probability
    binary = PneumoniaClassifier(net=NET, optimizer=OPTIMIZER, pretrained=str(path)).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        chexnet = torch.sigmoid(donor((x.repeat(1, 3, 1, 1) - MEAN) / STD))[:, FINDINGS.index(PNEUMONIA)]
    assert torch.allclose(binary.predict_proba(x), chexnet, atol=1e-5)
    assert torch.allclose(
        multilabel.predict_findings(x), torch.sigmoid(donor((x.repeat(1, 3, 1, 1) - MEAN) / STD)), atol=1e-5
    )


def test_a_tensor_matching_nothing_is_an_error(tmp_path: Path) -> None:
    state = torchvision_layout(random_densenet(1000))
    net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=2)
    extra = {
        **state,
        "features.denseblock4.denselayer17.norm.1.weight": torch.ones(1024),
    }  # a DenseNet169 layer
    with pytest.raises(PretrainedWeightsError, match=r"1 source tensor.*denselayer17"):
        PretrainedWeights.from_blob(extra, "d169.pth").apply(net, "binary")
    missing = {k: v for k, v in state.items() if "transition3" not in k}
    with pytest.raises(PretrainedWeightsError, match=r"5 network tensor\(s\) get none"):
        PretrainedWeights.from_blob(missing, "cut.pth").apply(net, "binary")
    with pytest.raises(PretrainedWeightsError, match="match no part of a DenseNet121"):
        PretrainedWeights.from_blob({**state, "fc.weight": torch.ones(2, 2)}, "resnet.pth")
    with pytest.raises(PretrainedFileNotFoundError, match=r"model\.pretrained=.*absent\.pt does not exist"):
        PretrainedWeights.read(str(tmp_path / "absent.pt"))
    with pytest.raises(PretrainedFileNotFoundError, match=re.escape("(did you mean 'imagenet'?)")):
        PretrainedWeights.read("imagnet")


def test_a_pickled_model_is_refused_with_the_conversion(tmp_path: Path) -> None:
    """jrzech/reproduce-chexnet saves the whole module (``{'model': model, ...}``): refused, and the command
    in the message converts it into a file that loads."""
    donor = random_densenet(len(FINDINGS), seed=3)
    path = tmp_path / "checkpoint"
    torch.save({"model": donor, "best_loss": 0.15, "epoch": 4}, path)
    with pytest.raises(PretrainedWeightsError) as caught:
        PretrainedWeights.read(str(path))
    message = str(caught.value)
    assert isinstance(caught.value, PneumoError) and "\n" not in message
    assert "weights_only=True refuses" in message and "monai.networks.nets.densenet.DenseNet121" in message
    command = re.search(r'python -c "(.+?)"', message).group(1)
    proc = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    converted = PretrainedWeights.read(f"{path}.state_dict.pt")
    net = DenseNet121(spatial_dims=2, in_channels=3, out_channels=14)
    converted.apply(net, "multilabel")
    for key, value in donor.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key


class NetworkInputs:
    """Every forward pass of a ``PneumoniaClassifier`` while active: the grey batch it got and the tensor
    its DenseNet121 got (a global forward pre-hook: it also sees models that other code builds)."""

    def __init__(self) -> None:
        self.pairs: list[list[torch.Tensor]] = []

    def _hook(self, module: nn.Module, args: tuple) -> None:
        from pneumo.models.classifier import PneumoniaClassifier

        if isinstance(module, PneumoniaClassifier):
            self.pairs.append([args[0].detach().clone()])
        elif isinstance(module, DenseNet121) and self.pairs and len(self.pairs[-1]) == 1:
            self.pairs[-1].append(args[0].detach().clone())

    def __enter__(self) -> NetworkInputs:
        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def network_inputs(self) -> torch.Tensor:
        return torch.cat([pair[1] for pair in self.pairs])


@pytest.mark.slow
def test_training_test_and_explain_feed_the_network_alike(
    imagenet_cache: dict, compose_train, demo_root: Path, tmp_path: Path
) -> None:
    """Trained with ``model.pretrained=imagenet`` on the demo set: in training, validation, test and the
    Grad-CAM callback the network gets the grey batch replicated to RGB and ImageNet-normalised; explain.py,
    rebuilding the model from the checkpoint alone, gives the network the very tensors test gives it."""
    import lightning as L

    from pneumo.data.datamodule import NIHDataModule
    from pneumo.models.classifier import PneumoniaClassifier
    from pneumo.pipelines.explain import ExplainSettings, explain_images
    from pneumo.pipelines.train import train
    from tests.conftest import tiny_overrides

    cfg = compose_train(
        [
            *tiny_overrides(demo_root, tmp_path, net=False),  # ImageNet's weights are DenseNet121's
            "model.pretrained=imagenet",
            "callbacks.gradcam_overlay.every_n_epochs=1",
            "eval.bootstrap.resamples=50",
        ]
    )
    with NetworkInputs() as training:
        train(cfg)
    assert len(training.pairs) >= 6  # 2 train + 2 val + 2 test batches, + the Grad-CAM overlay
    for grey, seen in training.pairs:
        assert grey.shape[1] == 1 and seen.shape[1] == 3
        assert torch.allclose(seen, (grey.expand(-1, 3, -1, -1) - MEAN) / STD, atol=1e-6)

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    blob = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert blob["hyper_parameters"]["input_norm"] == "imagenet"
    model = PneumoniaClassifier.load_from_checkpoint(ckpt)  # does not read the ImageNet file again
    assert model.hparams.pretrained is None and model.initial_weights["source"].endswith(
        "densenet121-a639ec97.pth"
    )
    assert model.initial_weights["sha256"] == blob["initial_weights"]["sha256"]
    datamodule = NIHDataModule(**blob["datamodule_hyper_parameters"])
    with NetworkInputs() as testing:
        L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).test(
            model, datamodule=datamodule
        )
    test_ids = [name for batch in datamodule.test_dataloader() for name in batch["image_id"]]
    tested = dict(zip(test_ids, testing.network_inputs()))

    with NetworkInputs() as explaining:
        result = explain_images(
            ExplainSettings(
                ckpt_path=str(ckpt), out_dir=str(tmp_path / "explain"), split="test", progress=False
            )
        )
    explained = dict(zip([row["image"] for row in result.predictions], explaining.network_inputs()))
    assert sorted(explained) == sorted(tested) and len(tested) > 0
    for name, seen in explained.items():
        assert torch.allclose(seen, tested[name], atol=1e-6), name
