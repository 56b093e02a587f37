"""``PredictionWriter``: Lightning's ``BasePredictionWriter`` that writes ``Trainer.predict``'s scores of every
process into one CSV, each input exactly once, in input order.

Each process keeps the rows of its batches (``PneumoniaClassifier.predict_step``'s ``image_id``,
``probability``, ``logit``, ``predicted_label``, with the batch's ``index``: the input's position) and writes
them to a part file at the end of the epoch; after a barrier, rank 0 merges the parts (one row per input
index: a sampler that pads the last shard with repeats does not write an image twice), sorts them by index,
writes the CSV whole and deletes the parts. Under ``ShardedDDPStrategy`` (``conf/trainer/ddp.yaml``) every
process scores a disjoint shard, so N processes score N times as many images per second.

Example:
    >>> writer = PredictionWriter("out", threshold=0.5, temperature=1.0)
    >>> trainer = L.Trainer(callbacks=[writer], logger=False)  # doctest: +SKIP
    >>> trainer.predict(model, dataloaders=loader, return_predictions=False)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from pneumo.io.files import atomic_write_bytes

#: Columns of the written CSV (``index`` is the input's position).
COLUMNS = ("index", "image", "probability", "logit", "predicted_label", "threshold", "temperature")


class PredictionWriter(BasePredictionWriter):
    """Write every process's predictions into ``out_dir/filename`` (module docstring).

    Args:
        out_dir: folder of the CSV (created).
        filename: the CSV's name.
        threshold: the model's threshold, written on every row.
        temperature: the model's temperature, written on every row.
    """

    def __init__(
        self,
        out_dir: str | Path,
        filename: str = "predictions.csv",
        threshold: float = 0.5,
        temperature: float = 1.0,
    ) -> None:
        super().__init__(write_interval="batch")
        self.out_dir, self.filename = Path(out_dir), filename
        self.threshold, self.temperature = float(threshold), float(temperature)
        self.rows: list[tuple] = []

    @property
    def path(self) -> Path:
        """The merged CSV."""
        return self.out_dir / self.filename

    def on_predict_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        indices = batch["index"] if isinstance(batch, Mapping) and "index" in batch else batch_indices
        if indices is None:
            raise ValueError(
                "PredictionWriter needs the batch's input positions: an 'index' key in the batch"
            )
        positions = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
        ids = prediction.get("image_id") or [str(i) for i in positions]
        values = [prediction[k].detach().float().cpu().tolist() for k in ("probability", "logit")]
        labels = prediction["predicted_label"].cpu().tolist()
        for j, index in enumerate(positions):
            self.rows.append((index, ids[j], values[0][j], values[1][j], int(labels[j])))

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        part = self.out_dir / f".{self.filename}.rank{trainer.global_rank}"
        atomic_write_bytes(part, _csv(self.rows, self.threshold, self.temperature, header=False))
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            merged: dict[int, tuple] = {}
            for rank in range(trainer.world_size):
                path = self.out_dir / f".{self.filename}.rank{rank}"
                for row in csv.reader(io.StringIO(path.read_text())):
                    merged.setdefault(
                        int(row[0]), (int(row[0]), row[1], float(row[2]), float(row[3]), int(row[4]))
                    )
            rows = [merged[i] for i in sorted(merged)]
            atomic_write_bytes(self.path, _csv(rows, self.threshold, self.temperature, header=True))
            for rank in range(trainer.world_size):
                (self.out_dir / f".{self.filename}.rank{rank}").unlink(missing_ok=True)
        trainer.strategy.barrier()


def _csv(rows: Sequence[tuple], threshold: float, temperature: float, header: bool) -> bytes:
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    if header:
        writer.writerow(COLUMNS)
    for index, image, probability, logit, label in rows:
        writer.writerow([index, image, repr(float(probability)), repr(float(logit)), label, repr(threshold),
                         repr(temperature)])  # fmt: skip
    return text.getvalue().encode()
