"""Data-parallel training on Lightning's DDP with exact per-rank data shards.

Lightning's default ``DistributedSampler`` pads every split to a multiple of the world size by repeating
samples. For training that is harmless, but on validation and test the repeated images are counted twice,
so a 4-GPU test AUROC differs from the 1-GPU AUROC of the same checkpoint. ``ShardedDDPStrategy`` is
Lightning's ``DDPStrategy`` with the samplers replaced (``conf/trainer/ddp.yaml``):

- **train**: a seeded ``DistributedSampler`` reshuffled every epoch with ``drop_last=True``: the ranks'
  shards are disjoint and equally long (so no rank waits in a gradient all-reduce for a batch that never
  comes); at most ``world_size - 1`` images sit out each epoch, different ones every epoch.
- **val / test**: Lightning's ``UnrepeatedDistributedSampler``: image ``i`` goes to rank
  ``i % world_size``; the shards are disjoint and cover the split exactly. Ranks may differ by one image;
  that is safe without gradients, and torchmetrics gathers the uneven states when it computes the metric,
  so the synced AUROC is the AUROC of the whole split.
- **predict**: as val / test (``Trainer.predict`` with ``pneumo.callbacks.prediction_writer``: each image
  scored once, by one rank).
- **any other sampler** (weighted, custom) is the user's: it is kept and not sharded (a warning says so).

Example:
    >>> import lightning as L
    >>> trainer = L.Trainer(strategy=ShardedDDPStrategy(), accelerator="cpu", devices=2,
    ...                     use_distributed_sampler=False)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sized
from typing import Any, cast

from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler, _IndexBatchSamplerWrapper
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, SequentialSampler

from pneumo.errors import ConfigError

log = logging.getLogger(__name__)


def _in_hydra_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def shard_sampler(
    dataloader: DataLoader, num_replicas: int, rank: int, seed: int = 0
) -> DistributedSampler | None:
    """The sampler giving ``rank`` its shard of ``dataloader``'s data set (``None``: leave it alone).

    A shuffled loader (``RandomSampler``, or a shuffling ``DistributedSampler``) is a training loader and
    gets disjoint, equally long shards; a sequential one gets an exact, unrepeated partition. Any other
    sampler (weighted, custom) is the user's and is kept.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> loader = DataLoader(list(range(5)), shuffle=False)
        >>> list(shard_sampler(loader, num_replicas=2, rank=1))
        [1, 3]
    """
    sampler = dataloader.sampler
    if isinstance(sampler, DistributedSamplerWrapper):
        return None  # Lightning's wrapper around the user's own sampler (use_distributed_sampler=True): kept
    if isinstance(sampler, RandomSampler) or (isinstance(sampler, DistributedSampler) and sampler.shuffle):
        return DistributedSampler(
            dataloader.dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
    if isinstance(sampler, SequentialSampler | DistributedSampler):
        dataset = cast(Sized, dataloader.dataset)  # these samplers draw from a sized (map-style) dataset
        if 0 < len(dataset) < num_replicas:
            raise ConfigError(
                f"a split of {len(dataset)} images cannot be shared by {num_replicas} ranks "
                "(a rank would get none); use fewer devices"
            )
        return UnrepeatedDistributedSampler(
            dataloader.dataset, num_replicas=num_replicas, rank=rank, shuffle=False
        )
    return None


class ShardedDDPStrategy(DDPStrategy):
    """``DDPStrategy`` whose data loaders get exact shards (see the module docstring).

    Takes every ``DDPStrategy`` argument (``process_group_backend``, ``find_unused_parameters``, ``timeout``,
    ...). Use it with ``Trainer(use_distributed_sampler=False)`` (``conf/trainer/ddp.yaml``). With ``True``,
    the ``DistributedSampler`` Lightning puts in place of a random or sequential sampler is replaced all the
    same, but a sampler of the user's own (weighted, custom) that Lightning wrapped in its
    ``DistributedSamplerWrapper`` is kept as Lightning made it, padding included (a warning says so).
    """

    strategy_name = "ddp_sharded_exact"

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        assert self.cluster_environment is not None  # as in DDPStrategy._configure_launcher
        spawns = not self.cluster_environment.creates_processes_externally and self.num_processes > 1
        if spawns and _in_hydra_multirun():
            # Lightning would start the other ranks by re-running this command line: a whole new sweep.
            raise RuntimeError(
                "trainer=ddp with several devices cannot run inside a local multirun (-m): Lightning starts "
                "the other ranks by re-running the command line. Run DDP jobs of a sweep on SLURM "
                "(hydra/launcher=slurm with hydra.launcher.tasks_per_node=<devices>), or train one DDP run at "
                "a time."
            )

    def process_dataloader(self, dataloader: Any) -> Any:
        dataloader = super().process_dataloader(dataloader)
        if not isinstance(dataloader, DataLoader) or self.world_size < 2 or dataloader.batch_sampler is None:
            return dataloader
        sampler = shard_sampler(
            dataloader, self.world_size, self.global_rank, seed=int(os.getenv("PL_GLOBAL_SEED", "0"))
        )
        if sampler is None:
            log.warning(
                "rank %d: keeping the loader's own %s (it is not sharded over the %d ranks)",
                self.global_rank,
                type(dataloader.sampler).__name__,
                self.world_size,
            )
            return dataloader
        # Lightning's own helper re-creates the loader (any DataLoader subclass) with the new sampler.
        from lightning.pytorch.trainer.states import RunningStage
        from lightning.pytorch.utilities.data import _update_dataloader

        if isinstance(dataloader.batch_sampler, _IndexBatchSamplerWrapper):
            # Trainer.predict has wrapped the batch sampler to record each batch's input indices (prediction
            # writers read them); re-create the loader from the batch sampler inside, wrapped again.
            inner = copy.copy(dataloader)
            inside = dataloader.batch_sampler._batch_sampler  # noqa: SLF001 - the wrapper keeps it privately
            object.__setattr__(inner, "batch_sampler", inside)
            return _update_dataloader(inner, sampler, mode=RunningStage.PREDICTING)
        return _update_dataloader(dataloader, sampler)
