"""The shared sampler: the same samples per optimizer step across world sizes and accumulation."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kernels.sampling import ShardedBatchSampler


def step_sets(size, batch, world, accum, seed, epochs=2):
    """The multiset of sample indices consumed by each optimizer step, over all ranks."""
    samplers = [
        ShardedBatchSampler(size, batch_size=batch, seed=seed, rank=r, world_size=world, grad_accum=accum)
        for r in range(world)
    ]
    steps = []
    for _ in range(epochs):
        per_rank = [list(iter(s)) for s in samplers]
        for step in range(len(per_rank[0]) // accum):
            indices = []
            for rank_batches in per_rank:
                for micro in rank_batches[step * accum : (step + 1) * accum]:
                    indices += micro
            steps.append(sorted(indices))
    return steps


@given(
    size=st.integers(40, 300),
    batch=st.integers(1, 8),
    world=st.integers(1, 3),
    accum=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_sharding_and_accumulation_see_the_same_samples_per_step(size, batch, world, accum, seed):
    if batch * world * accum > size:
        return
    reference = step_sets(size, batch * world * accum, 1, 1, seed)
    assert step_sets(size, batch, world, accum, seed) == reference


@given(size=st.integers(10, 200), batch=st.integers(1, 10), accum=st.integers(1, 4), seed=st.integers(0, 1000))
def test_epoch_is_whole_steps_without_repeats(size, batch, accum, seed):
    if batch * accum > size:
        return
    sampler = ShardedBatchSampler(size, batch_size=batch, seed=seed, grad_accum=accum)
    batches = list(sampler)
    assert len(batches) == len(sampler) and len(batches) % accum == 0
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))  # no sample twice within an epoch
    assert all(0 <= i < size for i in flat)


def test_epochs_differ_and_set_epoch_replays():
    sampler = ShardedBatchSampler(100, batch_size=10, seed=3)
    first, second = list(sampler), list(sampler)
    assert first != second  # each pass is the next epoch
    sampler.set_epoch(0)
    assert list(sampler) == first  # libraries that call set_epoch(0) get epoch 0 again
    assert list(ShardedBatchSampler(100, batch_size=10, seed=4)) != first


def test_refuses_a_step_larger_than_the_data():
    with pytest.raises(ValueError, match="one optimizer step needs 40 samples"):
        ShardedBatchSampler(30, batch_size=10, seed=0, world_size=2, grad_accum=2)
