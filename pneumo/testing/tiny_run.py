"""A small demo checkpoint trained by ``train.py``'s own code, for the saliency tests and benchmarks.

``train_demo_checkpoint`` composes ``conf/train.yaml`` with a synthetic demo set (half pneumonia), a small
MONAI DenseNet (``SALIENCY_NET`` unless told otherwise), CPU, no test, no logger, no
Grad-CAM/early-stopping/LR callbacks, and trains it; it returns ``last.ckpt``. ``densenet_net`` is the network
part alone (the test suite's runs use it too).

Example:
    >>> ckpt = train_demo_checkpoint(Path("out"), n=300, size=64, epochs=20)  # doctest: +SKIP
    >>> densenet_net(8, 4, 1)[:2], densenet_overrides(8, 4, 1)[-1]
    (['model.net._target_=monai.networks.nets.DenseNet', '+model.net.init_features=8'], 'model.temperature=1.0')
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def densenet_net(init_features: int, growth_rate: int, layers_per_block: int) -> list[str]:
    """Overrides of ``model.net``: a 4-block MONAI DenseNet of ``layers_per_block`` layers per block, with
    DenseNet121's class, layer names and in-place ReLUs."""
    return [
        "model.net._target_=monai.networks.nets.DenseNet",
        f"+model.net.init_features={init_features}",
        f"+model.net.growth_rate={growth_rate}",
        f"+model.net.block_config=[{','.join([str(layers_per_block)] * 4)}]",
        "+model.net.bn_size=2",
    ]


def densenet_overrides(init_features: int, growth_rate: int, layers_per_block: int) -> list[str]:
    """``densenet_net`` trained with lr 3e-3 and no temperature fit (the small networks' settings)."""
    return [
        *densenet_net(init_features, growth_rate, layers_per_block),
        "model.optimizer.lr=3e-3",
        "model.temperature=1.0",
    ]


#: The network of the saliency tests and benchmarks: DenseNet(16, 8, [2,2,2,2]), 15 k parameters. On 300 demo
#: images at 64 px for 20 epochs (about 6 CPU-seconds) it reached a test AUROC of 0.97-0.999 over seeds 0-6,
#: with Grad-CAM's maximum inside the opacity's box on about 60% of the pneumonia images; a 2 k-parameter
#: DenseNet(8, 4, [1,1,1,1]) hit the box no more often than a random point.
SALIENCY_NET = densenet_overrides(16, 8, 2)


def train_demo_checkpoint(
    out: Path,
    *,
    n: int,
    size: int,
    epochs: int,
    seed: int = 0,
    net: Sequence[str] = (),
    data_root: Path | None = None,
    overrides: Sequence[str] = (),
) -> Path:
    """Train on a demo set of ``n`` images at ``size`` px (written to ``data_root``, default ``out/data``) for
    ``epochs`` epochs; ``net``: network overrides (default ``SALIENCY_NET``), ``overrides``:
    more. Returns ``out/run/checkpoints/last.ckpt``."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from pneumo.pipelines.train import train

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="pneumo.conf", version_base="1.3"):  # as hydra_command
        cfg = compose(
            "train",
            overrides=[
                f"data.synthetic.root={data_root or out / 'data'}", f"data.synthetic.n={n}",
                f"data.synthetic.size={size}", "data.synthetic.pneumonia_fraction=0.5", f"data.images.size={size}",
                "data.loader.batch_size=16", "data.loader.num_workers=0", f"paths.log_dir={out}",
                f"paths.data_dir={out}/cache", "trainer.accelerator=cpu", f"trainer.max_epochs={epochs}",
                "callbacks.progress_bar.refresh_rate=0", "test=false", "logger=none", f"seed={seed}",
                *(net or SALIENCY_NET), *overrides,
            ],
        )  # fmt: skip
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(out / "run")
        cfg.callbacks.gradcam_overlay = None
        cfg.callbacks.lr_monitor = None
        cfg.callbacks.early_stopping = None
    train(cfg)
    return out / "run" / "checkpoints" / "last.ckpt"
