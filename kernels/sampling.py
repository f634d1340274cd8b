"""The harness's data order: one seeded, distributed-aware batch sampler shared by every adapter.

Each epoch is a permutation drawn from ``(seed, epoch)``. The permutation is cut into global
batches of ``batch_size * world_size`` consecutive indices and every rank takes its own
contiguous slice of each global batch. That makes three runs see the same samples per
optimizer step: ``world_size=2`` with per-rank batch ``b``, ``world_size=1`` with batch ``2b``,
and ``grad_accum=2`` with micro-batch ``b``. Each epoch is truncated to a whole number of
optimizer steps, so no library has to decide what to do with a half-accumulated step at an
epoch boundary.

Sample coverage (which ids each rank trained on, harness/coverage.py) is recorded without
touching the model's path: the harness sampler only counts the batches each pass handed out
and rebuilds their ids from its seed after training; a library's own loader draws through a
:class:`RecordingDataset` (or, for Keras' array adapter, an :class:`IndexRecordingTensor`) that
appends the fetched ids to a :class:`SampleLog` of plain integer arrays.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field

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
        self.passes: list[list[int]] = []
        """``[epoch, batches handed out]`` per pass, in order: what :meth:`drawn` rebuilds after training."""

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
        handed_out = [self.epoch, 0]
        self.passes.append(handed_out)
        self.epoch += 1  # the next pass is the next epoch, for libraries that never call set_epoch
        start = self.rank * self.batch_size
        for batch_index in range(len(self)):
            offset = batch_index * self.global_batch + start
            handed_out[1] += 1  # counted as it is handed out: a pass abandoned mid-way stops here
            yield permutation[offset : offset + self.batch_size].tolist()

    def epoch_batches(self, epoch: int, rank: int | None = None) -> list[list[int]]:
        """Every batch ``rank`` (default: this sampler's) gets in ``epoch``, rebuilt from the seed."""
        rank = self.rank if rank is None else rank
        permutation = self.order(epoch)
        start = rank * self.batch_size
        offsets = (index * self.global_batch + start for index in range(len(self)))
        return [permutation[offset : offset + self.batch_size].tolist() for offset in offsets]

    def drawn(self, rank: int | None = None) -> list[list[list[int]]]:
        """Per pass, the batches handed out (for ``rank``, whose sampler made the same passes)."""
        return [self.epoch_batches(epoch, rank)[:count] for epoch, count in self.passes]


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


class SampleLog:
    """The sample ids a library's own loader fetched, kept as plain integer arrays.

    Two ways in, depending on how the library fetches: ``record_batch`` when one call fetches a
    whole batch (a torch DataLoader calling ``__getitems__``, Keras slicing its arrays); or the
    library's index stream per epoch (``start_epoch``) plus the size of each batch it trained
    (``batch_trained``), for loaders that fetch sample by sample in worker processes (fastai).
    """

    def __init__(self) -> None:
        self.ids = array("q")
        self.batch_ends = array("q")
        """Batch-level records: the end offset in ``ids`` of each fetched batch."""
        self.epoch_orders: list[list[int]] = []
        self.epoch_batch_sizes: list[list[int]] = []

    def record_batch(self, indices) -> None:
        self.ids.extend(indices if isinstance(indices, list) else [int(i) for i in indices])
        self.batch_ends.append(len(self.ids))

    def start_epoch(self, order) -> None:
        self.epoch_orders.append([int(i) for i in order])
        self.epoch_batch_sizes.append([])

    def batch_trained(self, size: int) -> None:
        """The library is about to train its next batch, of ``size`` samples (stream-level records)."""
        if self.epoch_batch_sizes:
            self.epoch_batch_sizes[-1].append(int(size))

    def discard(self) -> None:
        """Forget what was fetched so far (e.g. the batch Keras fetches to build the model before training)."""
        self.ids = array("q")
        self.batch_ends = array("q")
        self.epoch_orders, self.epoch_batch_sizes = [], []

    def fetched_batches(self) -> list[list[int]]:
        """Batch-level records, in fetch order."""
        starts = [0, *self.batch_ends][:-1]
        return [self.ids[start:end].tolist() for start, end in zip(starts, self.batch_ends, strict=True)]

    def epoch_streams(self) -> list[list[list[int]]]:
        """Stream-level records: per epoch, its index stream cut into the batch sizes trained."""
        epochs = []
        for order, sizes in zip(self.epoch_orders, self.epoch_batch_sizes, strict=True):
            batches, offset = [], 0
            for size in sizes:
                batches.append(order[offset : offset + size])
                offset += size
            epochs.append(batches)
        return epochs


class RecordingDataset(Dataset):
    """A map-style dataset that logs every index a library's DataLoader fetches.

    ``__getitems__`` (which a torch DataLoader calls once per batch when the dataset has it) does
    what the DataLoader would do without it, one ``dataset[i]`` per index, and logs the batch.
    """

    def __init__(self, dataset: Dataset, log: SampleLog) -> None:
        self.dataset, self.log = dataset, log

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        if isinstance(index, list):  # a loader that hands the dataset whole index lists (batch_size=None)
            self.log.record_batch(index)
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> list:
        self.log.record_batch(indices)
        return [self.dataset[index] for index in indices]


class IndexRecordingTensor(torch.Tensor):
    """A tensor whose row indexing is logged; every other operation returns plain tensors.

    Keras' array adapter (``fit(x, y, batch_size, shuffle=True)`` on the torch backend) fetches each
    batch as ``y[indices]``; giving it ``y`` as this subclass logs the ids without changing the
    values, the dtype or anything the model sees. Make one with :func:`recording_tensor`.
    """

    _sample_log: SampleLog | None = None

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func is torch.Tensor.__getitem__ and isinstance(args[0], cls) and args[0]._sample_log is not None:
            index = args[1]
            if isinstance(index, (list, tuple, torch.Tensor)) or hasattr(index, "tolist"):
                args[0]._sample_log.record_batch(index.tolist() if hasattr(index, "tolist") else list(index))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **(kwargs or {}))


def recording_tensor(tensor: torch.Tensor, log: SampleLog) -> IndexRecordingTensor:
    """``tensor`` (same storage) as an :class:`IndexRecordingTensor` logging into ``log``."""
    recording = tensor.as_subclass(IndexRecordingTensor)
    recording._sample_log = log
    return recording


def base_sampler(loader: DataLoader):
    """The index sampler at the bottom of a (possibly wrapped) DataLoader's batch sampler chain."""
    batch_sampler = getattr(loader, "batch_sampler", None)
    while batch_sampler is not None and getattr(batch_sampler, "batch_sampler", None) is not None:
        batch_sampler = batch_sampler.batch_sampler  # e.g. accelerate's BatchSamplerShard around a BatchSampler
    return getattr(batch_sampler, "sampler", None) or getattr(loader, "sampler", None)


def sampler_origin(sampler, spec_seed: int) -> tuple[str, bool | None, str]:
    """``(description, follows the spec seed?, where its order comes from)`` for a torch sampler a library built.

    "Follows" means the order is a function of the spec's seed: a sampler seeded with exactly the
    spec seed (the library's seed comes from it: ``seed_everything``, ``set_seed``), or one drawing
    its seed from torch's global RNG, which the worker seeds from the spec seed.
    """
    from torch.utils.data import DistributedSampler, RandomSampler, SequentialSampler

    name = type(sampler).__name__
    if isinstance(sampler, DistributedSampler):
        description = (
            f"{name}(num_replicas={sampler.num_replicas}, shuffle={sampler.shuffle}, seed={sampler.seed}, "
            f"drop_last={sampler.drop_last})"
        )
        if not sampler.shuffle:
            return description, False, "no shuffling: the data set's own order"
        return (
            description,
            sampler.seed == spec_seed,
            f"its seed argument ({sampler.seed}); one permutation per epoch from (seed, epoch)",
        )
    if isinstance(sampler, RandomSampler):
        initial = getattr(sampler, "initial_seed", None)  # accelerate's SeedableRandomSampler
        if initial is not None:
            return f"{name}(initial_seed={initial})", initial == spec_seed, f"its initial_seed ({initial}) + epoch"
        if sampler.generator is None:
            return (
                f"{name}(generator=None)",
                True,
                "a seed drawn from torch's global RNG as each epoch starts (the worker seeds it from the spec seed)",
            )
        return f"{name}(generator=<library's>)", None, "a generator the library made (not traced to the spec seed)"
    if isinstance(sampler, SequentialSampler):
        return name, False, "no shuffling: the data set's own order"
    return name, None, f"not known for a {name}"


@dataclass(kw_only=True)
class LibrarySamples:
    """What an adapter whose library draws its own batches tells the harness about them.

    The adapter wraps the training data with :meth:`dataset` (or :meth:`tensor`) before handing it
    to its library and, after training, says what the library's sampler was and where its order
    comes from; the worker turns that into the result's ``coverage`` (harness/coverage.py).
    """

    log: SampleLog = field(default_factory=SampleLog)
    sampler: str | None = None
    """The library's sampler as the library built it, e.g. ``DistributedSampler(shuffle=True, seed=0)``."""
    batches_per_epoch: int | None = None
    """Batches per epoch on this rank, from the library's own loader (cuts batch-level records into epochs)."""
    follows_spec_seed: bool | None = None
    """Whether the library's order derives from the spec's seed; None: not known."""
    seed_source: str | None = None
    """Where the library's shuffling seed comes from, in words."""

    def dataset(self, dataset: Dataset) -> RecordingDataset:
        return RecordingDataset(dataset, self.log)

    def tensor(self, tensor: torch.Tensor) -> IndexRecordingTensor:
        return recording_tensor(tensor, self.log)

    def describe_torch_sampler(self, sampler, spec_seed: int) -> None:
        """Fill ``sampler``/``follows_spec_seed``/``seed_source`` from a torch sampler the library built."""
        self.sampler, self.follows_spec_seed, self.seed_source = sampler_origin(sampler, spec_seed)
