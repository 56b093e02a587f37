"""Training throughput of a config: model-only steps vs end-to-end ``trainer.fit``, in one run.

1. **model-only**: forward + loss + backward + optimizer step on a synthetic batch that already sits on the
   device (the ceiling: no data loading, no Lightning).
2. **end-to-end**: ``trainer.fit`` of the same model on the configured data module (its cache when it has
   one, else the images it streams), with the configured trainer and speed callbacks; validation,
   checkpoints and loggers are off so only the training loop is timed. The loaders give uint8 batches and
   the data module scales and augments them after the copy, on the device (``on_after_batch_transfer``):
   that work is part of the end-to-end figure. The loader's workers and pinning (``auto`` resolved) and the
   bytes per image copied to the device are printed with it.

The model-only figure is measured before and after the end-to-end run; the ratio end-to-end / mean
model-only says how much the input pipeline and the training loop cost (target on a GPU: >= 0.90), and the
spread of the two model-only runs how far to trust it (a busy machine gives a wide spread). The first
``--warmup`` steps of each run (cuDNN autotuning, torch.compile) are not timed.

Arguments after the options are Hydra overrides of ``conf/train.yaml``, as for ``train.py``:

    # the 224-px GPU recipe on the synthetic demo set (no NIH download needed)
    python benchmarks/gpu_throughput.py experiment=nih_densenet121_224 data=demo \\
        data.synthetic.root=data/nih_demo_256 data.synthetic.n=3000 data.synthetic.size=256
    # CPU-sized run (CI)
    python benchmarks/gpu_throughput.py --warmup 1 --steps 3 trainer.accelerator=cpu data.loader.batch_size=8
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import hydra
import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pneumo.callbacks.performance import tune_module  # noqa: E402
from pneumo.config import to_plain  # noqa: E402
from pneumo.pipelines.train import instantiate_group  # noqa: E402


def compose_config(overrides: list[str], out: str) -> DictConfig:
    """``conf/train.yaml`` with overrides, as ``train.py`` would see it (outputs under ``out``)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = out
        del cfg["hydra"]
    return cfg


def device_name(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def autocast(precision: str, device: torch.device):
    """The autocast context Lightning uses for ``precision`` (none for 32-true)."""
    if precision.startswith("bf16"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16"):
        return torch.autocast(device.type, dtype=torch.float16)
    return torch.autocast(device.type, enabled=False)


def performance_settings(cfg: DictConfig) -> dict:
    spec = OmegaConf.select(cfg, "callbacks.performance", default=None)
    if not spec:
        return {"channels_last": False, "compile": False, "compile_options": {}}
    return {
        "channels_last": bool(spec.get("channels_last", True)),
        "compile": bool(spec.get("compile", False)),
        "compile_options": to_plain(spec.get("compile_options")) or {},
    }


def model_only(cfg: DictConfig, device: torch.device, warmup: int, steps: int) -> float:
    """Images per second of bare training steps on a synthetic batch already on ``device``."""
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    tune_module(model, **performance_settings(cfg))
    model.to(device).train()
    opt = model.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    size, batch = int(cfg.data.images.size), int(cfg.data.loader.batch_size)
    x = torch.rand(batch, 1, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=device)
    precision = str(cfg.trainer.get("precision", "32-true"))

    def step() -> None:
        with autocast(precision, device):
            loss = F.cross_entropy(model(x), y, weight=model.class_weights)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


class StepTimer(L.Callback):
    """Times training batches ``warmup`` .. ``warmup + steps - 1``, each with its data fetch."""

    def __init__(self, warmup: int, steps: int) -> None:
        self.warmup, self.steps = warmup, steps
        self.images, self.start, self.seconds = 0, 0.0, 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.warmup - 1:
            sync(pl_module.device)
            self.start = time.perf_counter()
        elif self.warmup <= batch_idx < self.warmup + self.steps:
            self.images += len(batch["label"])
            if batch_idx == self.warmup + self.steps - 1:
                sync(pl_module.device)
                self.seconds = time.perf_counter() - self.start


def end_to_end(cfg: DictConfig, warmup: int, steps: int) -> tuple[float, str, int]:
    """Images per second of ``trainer.fit`` (training loop only), the image source (and how the loader ran),
    the batches timed."""
    datamodule = hydra.utils.instantiate(cfg.data)
    # no LR scheduler: a plateau scheduler would wait for the validation metric of the skipped validation
    model = hydra.utils.instantiate(cfg.model, scheduler=None, _recursive_=False)
    callbacks = [
        cb
        for cb in instantiate_group(cfg.get("callbacks"), "callbacks")
        if type(cb).__name__ == "PerformanceTuning"
    ]
    timer = StepTimer(warmup, steps)
    trainer = hydra.utils.instantiate(
        cfg.trainer,
        callbacks=[*callbacks, timer],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_epochs=1,
        limit_train_batches=warmup + steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    loader = trainer.train_dataloader
    images = next(iter(loader))["image"]  # a batch as the loader hands it over, before the copy
    source = (
        f"{type(datamodule.datasets['train'].source).__name__}; {loader.num_workers} loader workers, "
        f"pin_memory {loader.pin_memory}, {images.nbytes / len(images):,.0f} bytes/image to the device "
        f"({str(images.dtype).replace('torch.', '')})"
    )
    if timer.images == 0 or timer.seconds <= 0:
        raise SystemExit(
            f"the train split gave fewer than {warmup + steps} batches; lower --warmup/--steps or data.loader.batch_size"
        )
    return timer.images / timer.seconds, source, timer.images // int(cfg.data.loader.batch_size)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (autotuning, compile)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps")
    args, overrides = parser.parse_known_args(argv)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    with tempfile.TemporaryDirectory(prefix="pneumo_bench_") as out:
        cfg = compose_config(overrides, out)
        L.seed_everything(cfg.get("seed") or 0, verbose=False)
        accelerator = str(cfg.trainer.get("accelerator", "auto"))
        use_cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
        device = torch.device("cuda" if use_cuda else "cpu")
        settings = performance_settings(cfg)
        matmul = OmegaConf.select(cfg, "callbacks.performance.matmul_precision", default=None)
        if matmul:  # as PerformanceTuning sets it for the end-to-end run: the same for both
            torch.set_float32_matmul_precision(matmul)
        print(
            f"device: {device_name(accelerator)} | torch {torch.__version__} | image {cfg.data.images.size} px | "
            f"batch {cfg.data.loader.batch_size} | precision {cfg.trainer.get('precision')} | "
            f"channels_last {settings['channels_last']} | compile {settings['compile']} | "
            f"workers {cfg.data.loader.num_workers} | pin_memory {cfg.data.loader.pin_memory}",
            flush=True,
        )
        # model-only before and after the end-to-end run: their spread shows how steady the machine was
        before = model_only(cfg, device, args.warmup, args.steps)
        print(
            f"model-only  : {before:10.1f} img/s  ({args.steps} steps on a synthetic batch on {device.type})"
        )
        e2e, source, batches = end_to_end(cfg, args.warmup, args.steps)
        print(f"end-to-end  : {e2e:10.1f} img/s  ({batches} steps of trainer.fit, images from {source})")
        after = model_only(cfg, device, args.warmup, args.steps)
        print(f"model-only  : {after:10.1f} img/s  (again, after the end-to-end run)")
        fast = (before + after) / 2
        print(
            f"ratio       : {e2e / fast:10.3f}  (end-to-end / mean model-only; GPU target >= 0.90; "
            f"model-only spread {abs(before - after) / fast:.0%})"
        )
    return {
        "model_only": fast,
        "model_only_runs": (before, after),
        "end_to_end": e2e,
        "ratio": e2e / fast,
        "source": source,
    }


if __name__ == "__main__":
    main()
