"""The GPU recipe: its configs, the speed callback (checked on CPU) and the throughput benchmark, CPU-sized."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import hydra
import pytest
import torch

from pneumo.callbacks.performance import PerformanceTuning
from tests.helpers import ROOT


def test_recipe_config(compose_train) -> None:
    cfg = compose_train(["experiment=nih_densenet121_224"])
    assert (
        cfg.trainer.precision == "bf16-mixed" and cfg.trainer.accelerator == "gpu" and cfg.trainer.benchmark
    )
    assert (cfg.data.images.size, cfg.data.loader.batch_size, cfg.data.loader.num_workers) == (224, 128, 12)
    assert cfg.data.loader.pin_memory is True
    perf = hydra.utils.instantiate(cfg.callbacks.performance)
    assert isinstance(perf, PerformanceTuning) and perf.channels_last and not perf.compile
    # the rest of the default callbacks stay
    assert {"model_checkpoint", "last_checkpoint", "early_stopping"} <= set(cfg.callbacks)


def test_channels_last_changes_layout_not_results(compose_train) -> None:
    cfg = compose_train([])
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        before = model(x)
    keys = list(model.state_dict())
    PerformanceTuning(channels_last=True, matmul_precision=None).setup(None, model, "fit")
    # (the 1-channel stem and 1x1 kernels are the same memory in either layout)
    convs = [
        m.weight
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1 and m.kernel_size != (1, 1)
    ]
    assert len(convs) >= 58  # the 3x3 convolutions of DenseNet121's 58 dense layers
    assert all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in convs)
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-5)
    assert list(model.state_dict()) == keys  # checkpoints keep their names
    with pytest.raises(
        ValueError,
        match=re.escape(
            "callbacks.performance.matmul_precision='fast': choose one of 'highest', 'high', 'medium', null"
        ),
    ):
        PerformanceTuning(matmul_precision="fast")


@pytest.mark.slow
def test_throughput_benchmark_cpu_sized(demo_root: Path, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "benchmarks" / "gpu_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # the GPU recipe itself (bf16 autocast, channels-last callback, plateau scheduler), shrunk to CPU size
    result = bench.main(
        [
            "--warmup=1",
            "--steps=1",
            "experiment=nih_densenet121_224",
            "data=demo",
            "trainer.accelerator=cpu",
            "data.images.size=64",
            "data.loader.num_workers=0",
            "data.loader.pin_memory=false",
            f"data.synthetic.root={demo_root}",
            "data.synthetic.n=80",
            "data.synthetic.size=64",
            "data.loader.batch_size=8",
            f"paths.log_dir={tmp_path}/logs",
            f"paths.data_dir={tmp_path}/data",
        ]
    )
    assert min(result["model_only_runs"]) > 0 and result["end_to_end"] > 0
    assert result["model_only"] == pytest.approx(sum(result["model_only_runs"]) / 2)
    assert result["ratio"] == pytest.approx(result["end_to_end"] / result["model_only"])
    # the data module's own image source (cache or stream), then how the loader ran
    assert result["source"].split(";")[0].endswith("Source")
    assert "0 loader workers, pin_memory False" in result["source"]
