"""What recording sample coverage costs inside the loop: each recording path against the same path bare.

Both arms run in this one process on the same data, alternating round by round (bare, recorded,
bare, recorded, ...) in random order within a round, so drifts of a shared machine hit both.
Each figure is the per-round paired difference in µs per batch, with its median and a bootstrap
95% CI, next to the bare path's own µs per batch:

- ``harness sampler``: ShardedBatchSampler counting the batches it hands out vs the same iteration
  without the count (the ids themselves are rebuilt after training);
- ``torch DataLoader``: a shuffling DataLoader (Lightning / HF / Flash defaults) over a
  RecordingDataset vs over the plain TensorDataset;
- ``keras slicing``: ``y[indices]`` on an IndexRecordingTensor vs on the plain tensor;
- ``fastai stream``: a SampleLog's per-batch ``batch_trained`` call (fastai's before_batch) vs nothing.

    python -m harness.coverage_cost --rounds 30 --epochs 5
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from kernels.sampling import SampleLog, ShardedBatchSampler, recording_tensor


class UncountedSampler(ShardedBatchSampler):
    """The harness sampler's iteration without the per-batch count: the bare arm of the comparison."""

    def __iter__(self) -> Iterator[list[int]]:
        permutation = self.order(self.epoch)
        self.epoch += 1
        start = self.rank * self.batch_size
        for batch_index in range(len(self)):
            offset = batch_index * self.global_batch + start
            yield permutation[offset : offset + self.batch_size].tolist()


def bootstrap_ci(values: list[float], *, samples: int = 5000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    data = np.asarray(values)
    medians = np.median(rng.choice(data, size=(samples, len(data)), replace=True), axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def paired(bare: Callable[[], int], recorded: Callable[[], int], rounds: int, seed: int = 0) -> dict[str, float]:
    """Alternate the two arms; each returns the batches it processed. µs per batch, per-round differences."""
    order = random.Random(seed)
    bare(), recorded()  # warm-up: first-touch allocations
    bare_us, differences = [], []
    for _ in range(rounds):
        arms = [("bare", bare), ("recorded", recorded)]
        order.shuffle(arms)
        timings = {}
        for name, arm in arms:
            start = time.perf_counter_ns()
            batches = arm()
            timings[name] = (time.perf_counter_ns() - start) / 1e3 / batches
        bare_us.append(timings["bare"])
        differences.append(timings["recorded"] - timings["bare"])
    low, high = bootstrap_ci(differences)
    return {
        "bare_us_per_batch": statistics.median(bare_us),
        "added_us_per_batch": statistics.median(differences),
        "added_ci95": (low, high),
    }


def measure(*, samples: int, batch_size: int, epochs: int, rounds: int) -> dict[str, dict[str, float]]:
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(samples, 64, generator=generator)
    labels = torch.randint(0, 10, (samples,), generator=generator)
    dataset = TensorDataset(features, labels)

    def iterate_sampler(sampler_class) -> Callable[[], int]:
        def run() -> int:
            sampler = sampler_class(samples, batch_size=batch_size, seed=0)
            return sum(1 for _ in range(epochs) for _ in sampler)

        return run

    def iterate_loader(recorded: bool) -> Callable[[], int]:
        def run() -> int:
            source = SampleLog() if recorded else None
            from kernels.sampling import RecordingDataset

            data = RecordingDataset(dataset, source) if recorded else dataset
            loader = DataLoader(data, batch_size=batch_size, shuffle=True)
            return sum(1 for _ in range(epochs) for _ in loader)

        return run

    batches = [list(range(start, min(start + batch_size, samples))) for start in range(0, samples, batch_size)]

    def slice_labels(recorded: bool) -> Callable[[], int]:
        def run() -> int:
            target = recording_tensor(labels, SampleLog()) if recorded else labels
            for _ in range(epochs):
                for indices in batches:
                    target[indices]
            return epochs * len(batches)

        return run

    def stream(recorded: bool) -> Callable[[], int]:
        def run() -> int:
            log = SampleLog()
            for _ in range(epochs):
                log.start_epoch(range(samples))
                for indices in batches:
                    if recorded:
                        log.batch_trained(len(indices))
            return epochs * len(batches)

        return run

    return {
        "harness sampler": paired(iterate_sampler(UncountedSampler), iterate_sampler(ShardedBatchSampler), rounds),
        "torch DataLoader": paired(iterate_loader(False), iterate_loader(True), rounds),
        "keras slicing": paired(slice_labels(False), slice_labels(True), rounds),
        "fastai stream": paired(stream(False), stream(True), rounds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.coverage_cost", description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1438, help="data set size (default: digits' training set)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=5, help="epochs per arm per round")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a data path, not a kernel)")
    args = parser.parse_args(argv)
    if args.rounds < 5 or args.epochs < 1 or args.batch_size < 1 or args.samples < args.batch_size:
        message = "need --rounds >= 5, --epochs >= 1 and at least one batch of samples"
        print(f"python -m harness.coverage_cost: error: {message}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    figures = measure(samples=args.samples, batch_size=args.batch_size, epochs=args.epochs, rounds=args.rounds)
    print(
        f"{args.samples} samples, batch {args.batch_size}, {args.epochs} epochs x {args.rounds} alternating rounds, "
        f"{args.threads} thread(s); µs per batch (median round), added by recording: median [bootstrap 95% CI]"
    )
    for name, figure in figures.items():
        low, high = figure["added_ci95"]
        print(
            f"  {name:17} bare {figure['bare_us_per_batch']:8.2f}   added {figure['added_us_per_batch']:+7.3f} "
            f"[{low:+.3f}, {high:+.3f}]"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
