"""The harness's data order: one seeded, distributed-aware batch sampler shared by every adapter.

Each epoch is a permutation drawn from ``(seed, epoch)``. The permutation is cut into global
batches of ``batch_size * world_size`` consecutive indices and every rank takes its own
contiguous slice of each global batch. That makes three runs see the same samples per
optimizer step: ``world_size=2`` with per-rank batch ``b``, ``world_size=1`` with batch ``2b``,
and ``grad_accum=2`` with micro-batch ``b``. Each epoch is truncated to a whole number of
optimizer steps, so no library has to decide what to do with a half-accumulated step at an
epoch boundary.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ShardedBatchSampler(Sampler[list[int]]):
    """Yields this rank's index lists; the epoch advances on every pass or via ``set_epoch``."""

    def __init__(
        self,
        dataset_size: int,
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
    ) -> None:
        if batch_size * world_size * grad_accum > dataset_size:
            raise ValueError(
                f"one optimizer step needs {batch_size * world_size * grad_accum} samples "
                f"(batch {batch_size} x world size {world_size} x accumulation {grad_accum}) "
                f"but the data set has {dataset_size}"
            )
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.grad_accum = grad_accum
        self.epoch = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        """Micro-batches per epoch for this rank: a multiple of ``grad_accum``."""
        steps = self.dataset_size // (self.global_batch * self.grad_accum)
        return steps * self.grad_accum

    def set_epoch(self, epoch: int) -> None:
        """Libraries that call this (Lightning, accelerate) pick the epoch explicitly."""
        self.epoch = epoch

    def order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator()
        generator.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.dataset_size, generator=generator)

    def __iter__(self) -> Iterator[list[int]]:
        permutation = self.order(self.epoch)
        self.epoch += 1  # the next pass is the next epoch, for libraries that never call set_epoch
        start = self.rank * self.batch_size
        for batch_index in range(len(self)):
            offset = batch_index * self.global_batch + start
            yield permutation[offset : offset + self.batch_size].tolist()


def batch_loader(dataset: Dataset, sampler: ShardedBatchSampler) -> DataLoader:
    """A DataLoader that indexes the dataset once per batch with the sampler's index list.

    With ``batch_size=None`` the loader hands each index list straight to
    ``dataset[indices]`` (TensorDataset gathers a whole batch in one indexing op), so the
    per-sample Python collate of a default loader does not inflate step times.
    """
    return DataLoader(dataset, sampler=sampler, batch_size=None, num_workers=0)


def endless(loader: DataLoader) -> Iterator:
    """Batches forever, one epoch after another."""
    while True:
        yield from loader
