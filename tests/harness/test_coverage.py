"""Sample coverage: counted right on planted samplers, and the ids a run records are the ids it trained on."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from adapters.native import NativeAdapter
from harness import coverage, registry, worker
from harness.coverage import describe, split_epochs, trained_passes, trim_epochs
from harness.probe import Probe
from harness.spec import Spec
from kernels.sampling import SampleLog, ShardedBatchSampler
from tasks.base import Inferable, OptimizerRecipe, Task, TaskDefaults, seeded_init, tensor_data
from tasks.tolerances import STANDARD_TOLERANCES
from tests.conftest import small_spec

# --------------------------------------------------------------------------- the counting, on planted draws


def test_a_planted_duplicate_and_drop_are_counted_exactly():
    # 10 samples, batches of 4: sample 3 drawn twice, sample 7 never, the last batch short.
    epoch = [[0, 1, 2, 3], [4, 5, 6, 3], [8, 9]]
    record = coverage.coverage(
        [[epoch, [[9, 8, 7, 6]]]], dataset_size=10, batch_size=4, batches_per_epoch=3, source="test", method="planted"
    )
    first, second = record["epochs"]
    assert first["complete"] and not second["complete"]
    assert (first["samples"], first["distinct"], first["duplicates"], first["dropped"]) == (10, 9, 1, 1)
    assert (first["short_batches"], first["short_batch_sizes"], first["exactly_once"]) == (1, [2], False)
    assert second["dropped"] is None and second["duplicates"] == 0  # a partial epoch drops nothing yet
    assert record["samples_trained"] == 14 and record["micro_batches_trained"] == [4]
    assert describe(record) == "per epoch: 1 duplicate of 10, 1 of 10 dropped, 1 short batch"


def test_duplicates_across_ranks_are_told_apart_from_those_within_a_rank():
    # 2 ranks, 6 samples: rank 1 repeats sample 0 (drawn on rank 0) and sample 4 (its own).
    rank0 = [[[0, 1], [2, 3]]]
    rank1 = [[[4, 0], [5, 4]]]
    record = coverage.coverage(
        [rank0, rank1], dataset_size=6, batch_size=2, batches_per_epoch=2, source="test", method="planted"
    )
    (epoch,) = record["epochs"]
    assert (epoch["duplicates"], epoch["cross_rank"], epoch["dropped"]) == (2, 1, 0)
    assert [r["duplicates"] for r in epoch["per_rank"]] == [0, 1]
    assert describe(record) == "per epoch: 2 duplicates of 6 (1 across ranks)"


def test_exactly_once_and_the_order_statement():
    epochs = [[[0, 1], [2, 3]], [[3, 2], [1, 0]]]
    record = coverage.coverage(
        [epochs], dataset_size=4, batch_size=2, batches_per_epoch=2, source="t", method="m", follows_spec_seed=False
    )
    assert all(epoch["exactly_once"] for epoch in record["epochs"])
    assert describe(record) == "exactly-once (2 epochs); order ignores the spec seed"
    partial = coverage.coverage([[[[0, 1]]]], dataset_size=4, batch_size=2, batches_per_epoch=2, source="t", method="m")
    assert describe(partial) == "less than one epoch: no duplicates in 2 draws of 4"
    assert describe(coverage.not_recorded("why")) == "not recorded: why"
    assert describe(None) == "not recorded"


def test_epochs_that_differ_are_summarised_by_their_worst():
    epochs = [[[0, 1], [2, 3]], [[0, 0], [1, 2]]]
    record = coverage.coverage([epochs], dataset_size=4, batch_size=2, batches_per_epoch=2, source="t", method="m")
    assert describe(record) == "per epoch, up to: 1 duplicate of 4, 1 of 4 dropped"


def test_step_digest_is_the_same_for_equivalent_layouts_and_the_order_digest_is_not():
    one_rank = [[[[0, 1, 2, 3], [4, 5, 6, 7]]]]
    two_ranks = [[[[0, 1], [4, 5]]], [[[2, 3], [6, 7]]]]
    accumulated = [[[[0, 1], [2, 3], [4, 5], [6, 7]]]]
    a = coverage.coverage(one_rank, dataset_size=8, batch_size=4, batches_per_epoch=2, source="t", method="m")
    b = coverage.coverage(two_ranks, dataset_size=8, batch_size=2, batches_per_epoch=2, source="t", method="m")
    c = coverage.coverage(
        accumulated, dataset_size=8, batch_size=2, grad_accum=2, batches_per_epoch=4, source="t", method="m"
    )
    assert a["order"]["step_digest"] == b["order"]["step_digest"] == c["order"]["step_digest"]
    assert len({a["order"]["digest"], b["order"]["digest"], c["order"]["digest"]}) == 3


def test_prefetched_batches_that_never_trained_are_cut_off():
    fetched = [[0], [1], [2], [3], [4]]
    assert split_epochs(fetched, 2, trained=3) == [[[0], [1]], [[2]]]
    assert trim_epochs([[[0], [1]], [[2], [3]]], trained=3) == [[[0], [1]], [[2]]]
    # A replayed epoch counts as the same epoch: its second pass shows up as duplicates.
    assert trained_passes([(0, [[0], [1]]), (0, [[0]]), (1, [[1], [0]])], trained=4) == [[[0], [1], [0]], [[1]]]


def test_harness_sampler_rebuilds_what_it_handed_out():
    sampler = ShardedBatchSampler(20, batch_size=3, seed=5, rank=1, world_size=2)
    handed = []
    iterator = iter(sampler)
    handed += [next(iterator) for _ in range(2)]  # a pass abandoned after two batches
    handed += list(sampler)  # then a whole epoch
    assert sampler.passes == [[0, 2], [1, 3]]
    rebuilt = [batch for pass_ in sampler.drawn() for batch in pass_]
    assert rebuilt == handed
    assert sampler.drawn(rank=0)[1] == ShardedBatchSampler(
        20, batch_size=3, seed=5, rank=0, world_size=2
    ).epoch_batches(1)


def test_sample_log_records_batches_and_streams():
    log = SampleLog()
    log.record_batch([3, 1])
    log.record_batch(torch.tensor([2]))
    assert log.fetched_batches() == [[3, 1], [2]]
    log.discard()
    log.start_epoch([5, 4, 3, 2, 1])
    log.batch_trained(2)
    log.batch_trained(2)
    assert log.fetched_batches() == [] and log.epoch_streams() == [[[5, 4], [3, 2]]]


# --------------------------------------------------------------------------- end to end, in the worker


class PlantedSampler(Sampler[list[int]]):
    """A batch sampler with a known fault: sample ``drop`` is replaced by sample ``duplicate``."""

    def __init__(self, size: int, batch: int, *, duplicate: int, drop: int) -> None:
        self.order = [duplicate if i == drop else i for i in range(size)]
        self.batch = batch

    def __iter__(self):
        for start in range(0, len(self.order), self.batch):
            yield self.order[start : start + self.batch]

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch)


class PlantedLoaderAdapter(NativeAdapter):
    """The native loop over a library-style loader of its own, recorded the way library adapters do."""

    name = "planted-loader"

    def fit(self, job):
        samples = job.record_library_samples()
        sampler = PlantedSampler(len(job.data.train), job.batch_size, duplicate=3, drop=7)
        job.train_loader = DataLoader(samples.dataset(job.data.train), batch_sampler=sampler)
        samples.batches_per_epoch = len(sampler)
        samples.sampler, samples.follows_spec_seed, samples.seed_source = "PlantedSampler", False, "none: fixed order"
        return super().fit(job)


@pytest.fixture
def planted_adapter(monkeypatch):
    entry = registry.Entry(kind="adapter", name=PlantedLoaderAdapter.name,
                           target=f"{__name__}:PlantedLoaderAdapter", origin="built-in")
    monkeypatch.setitem(registry.adapter_table(), PlantedLoaderAdapter.name, entry)
    yield
    registry.clear_caches()


def test_a_planted_sampler_is_reported_by_the_worker(inline, planted_adapter):
    # scaling's default 4096 samples: 3277 train; batches of 64 leave a short batch of 13.
    spec = small_spec(adapter="planted-loader", batch_size=64, steps=60)
    result = inline(spec)
    assert result["status"] == "ok", result["error"]
    record = result["coverage"]
    assert record["source"] == "library loader" and record["batches_per_epoch"] == 52
    first = record["epochs"][0]
    assert first["complete"] and (first["duplicates"], first["dropped"], first["short_batches"]) == (1, 1, 1)
    assert first["short_batch_sizes"] == [3277 % 64]
    assert not record["epochs"][1]["complete"] and record["micro_batches_trained"] == [60]
    assert (
        describe(record)
        == "per epoch: 1 duplicate of 3277, 1 of 3277 dropped, 1 short batch; order ignores the spec seed"
    )


def test_aligned_runs_state_the_harness_sampler_and_its_seed(inline):
    result = inline(small_spec(batch_size=64, steps=60))
    record = result["coverage"]
    assert record["source"] == "harness sampler" and record["order"]["follows_spec_seed"] is True
    assert [e["dropped"] for e in record["epochs"] if e["complete"]] == [3277 - 51 * 64]  # whole steps only
    assert describe(record) == f"per epoch: {3277 - 51 * 64} of 3277 dropped"
    other_seed = inline(small_spec(batch_size=64, steps=60, seed=1))["coverage"]
    assert other_seed["order"]["digest"] != record["order"]["digest"]


# --------------------------------------------------------------------------- recorded ids = trained ids


class SampleIds(Task):
    """Each sample's label is its own id, so the loss sees which samples it trains on."""

    name = "sample-ids"
    description = "test task: label = sample id"
    defaults = TaskDefaults(batch_size=8, steps=5, lr=0.01)
    optimizer = OptimizerRecipe(optimizer=torch.optim.SGD, hyper={"momentum": 0.9})
    tolerances = STANDARD_TOLERANCES
    SAMPLES = 53  # a short last batch for every batch size used here
    seen: list[list[int]] = []
    armed = False

    def build_data(self, options):
        generator = torch.Generator().manual_seed(0)
        features = torch.randn(self.SAMPLES + 10, 6, generator=generator)
        labels = torch.arange(self.SAMPLES + 10) % (self.SAMPLES)
        return tensor_data(
            (features[: self.SAMPLES], labels[: self.SAMPLES]),
            (features[self.SAMPLES :], labels[self.SAMPLES :]),
            inferable=Inferable(num_classes=self.SAMPLES, input_shape=(6,)),
            source="test",
        )

    def build_model(self, seed, options, data):
        return seeded_init(seed, lambda: nn.Linear(6, self.SAMPLES))

    @staticmethod
    def loss(output, target):
        if SampleIds.armed and torch.is_grad_enabled():  # training only: not validation, not trait detection
            SampleIds.seen.append(target.tolist())
        return nn.functional.cross_entropy(output, target)


@pytest.fixture
def sample_ids(monkeypatch):
    entry = registry.Entry(kind="task", name=SampleIds.name, target=f"{__name__}:SampleIds", origin="built-in")
    monkeypatch.setitem(registry.task_table(), SampleIds.name, entry)
    start = Probe.fit_start
    kept: list[dict] = []
    rank_draws = worker.rank_draws

    def fit_start(self):
        SampleIds.armed = True
        start(self)

    def keep(job, probe):
        SampleIds.armed = False
        draws = rank_draws(job, probe)
        kept.append(draws)
        return draws

    monkeypatch.setattr(Probe, "fit_start", fit_start)
    monkeypatch.setattr(worker, "rank_draws", keep)
    SampleIds.seen = []
    return kept


@pytest.mark.parametrize(
    ("adapter", "mode", "grad_accum"),
    [
        ("native", "aligned", 2),
        ("lightning", "aligned", 1),
        ("lightning", "defaults", 2),
        ("hf", "aligned", 1),
        ("hf", "defaults", 1),
        ("fastai", "aligned", 2),
        ("fastai", "defaults", 1),
        ("keras", "aligned", 1),
        ("keras", "defaults", 2),
    ],
)
def test_recorded_ids_are_the_ids_the_loss_trained_on(inline, sample_ids, adapter, mode, grad_accum):
    spec = Spec(task="sample-ids", adapter=adapter, mode=mode, batch_size=8, steps=9, lr=0.01, grad_accum=grad_accum)
    result = inline(spec)
    assert result["status"] == "ok", result["error"]
    (draws,) = sample_ids
    recorded = [batch for epoch in draws["epochs"] for batch in epoch]
    assert recorded == SampleIds.seen, f"{adapter} {mode}: coverage rebuilt other samples than the loss saw"
    # Every micro-batch of the 9 steps (a library may step on a partial accumulation at an epoch's end).
    assert result["coverage"]["micro_batches_trained"] == [len(SampleIds.seen)] and len(recorded) >= 9
    assert result["coverage"]["recorded"] and result["coverage"]["epochs"][0]["complete"]
