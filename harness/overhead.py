"""How much the harness's instrumentation costs: the native adapter (with its probe) vs a bare loop.

Both run in this one process on the same task, weights and batches, alternating round by round
(bare, native, bare, native, ...) so drifts of a shared machine hit both. The figure is the
ratio of whole-loop times per round; we report its median, IQR and a bootstrap 95% CI.

    python -m harness.overhead --task scaling --steps 300 --rounds 12
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from adapters.base import Job
from adapters.native import NativeAdapter
from harness.probe import Probe
from harness.registry import get_task
from kernels.determinism import set_determinism
from kernels.distributed import DistContext
from kernels.precision import make_precision
from kernels.sampling import ShardedBatchSampler, batch_loader, endless


def make_job(task_name: str, steps: int, batch_size: int, precision: str, options: dict) -> Job:
    task = get_task(task_name)
    resolved = task.resolve_options(options)
    data = task.build_data(resolved)
    sampler = ShardedBatchSampler(len(data.train), batch_size=batch_size, seed=0)
    return Job(
        task=task,
        options=resolved,
        data=data,
        model=task.build_model(0, resolved, data),
        train_loader=batch_loader(data.train, sampler),
        sampler=sampler,
        loss=task.loss_for(resolved),
        optimizer=task.optimizer,
        precision=make_precision(precision, "cpu"),
        dist=DistContext(),
        device=torch.device("cpu"),
        mode="aligned",
        seed=0,
        batch_size=batch_size,
        steps=steps,
        lr=task.defaults.lr,
        grad_accum=1,
        probe=Probe(torch.device("cpu")),
        workdir="/tmp",
    )


def bare_loop(job: Job) -> None:
    """The native loop with nothing measured: what a user would write by hand."""
    model, precision = job.model, job.precision
    optimizer = job.make_optimizer(model.parameters())
    batches = endless(job.train_loader)
    model.train()
    for _ in range(job.steps):
        inputs, targets = next(batches)
        inputs, targets = inputs.to(job.device), targets.to(job.device)
        with precision.forward_context():
            loss = job.loss(model(inputs), targets)
        precision.backward(loss)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad(set_to_none=True)


def timed(function, job: Job) -> float:
    start = time.perf_counter_ns()
    function(job)
    return (time.perf_counter_ns() - start) / 1e9


def bootstrap_ci(values: list[float], *, samples: int = 5000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    data = np.asarray(values)
    medians = np.median(rng.choice(data, size=(samples, len(data)), replace=True), axis=1)
    return float(np.percentile(medians, 2.5)), float(np.percentile(medians, 97.5))


def measure(task: str, steps: int, rounds: int, batch_size: int, precision: str, options: dict) -> dict:
    template = make_job(task, steps, batch_size, precision, options)
    initial = {k: v.clone() for k, v in template.model.state_dict().items()}

    def fresh() -> Job:
        template.model.load_state_dict(initial)
        set_determinism(0)
        template.sampler.set_epoch(0)
        return replace(template, probe=Probe(torch.device("cpu")), notes={})

    timed(bare_loop, fresh())  # warm-up: first-touch allocations, lazy inits
    bare, native = [], []
    for _ in range(rounds):
        bare.append(timed(bare_loop, fresh()))
        native.append(timed(NativeAdapter().fit, fresh()))
    ratios = [n / b for n, b in zip(native, bare)]
    low, high = bootstrap_ci(ratios)
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    return {
        "task": task,
        "options": options,
        "steps": steps,
        "rounds": rounds,
        "batch_size": batch_size,
        "bare_us_per_step": statistics.median(bare) / steps * 1e6,
        "native_us_per_step": statistics.median(native) / steps * 1e6,
        "ratio_median": statistics.median(ratios),
        "ratio_iqr": (q1, q3),
        "ratio_ci95": (low, high),
        "threads": torch.get_num_threads(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="scaling")
    parser.add_argument("--width", type=int, default=64, help="scaling task width (ignored for other tasks)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.steps < 10 or args.rounds < 3:
        print("python -m harness.overhead: error: need --steps >= 10 and --rounds >= 3", file=sys.stderr)
        return 2
    options = {"width": args.width} if args.task == "scaling" else {}
    report = measure(args.task, args.steps, args.rounds, args.batch_size, args.precision, options)
    print(
        f"{report['task']} {report['options']} batch {report['batch_size']}, {report['steps']} steps x "
        f"{report['rounds']} alternating rounds, {report['threads']} threads\n"
        f"  bare loop   {report['bare_us_per_step']:.1f} us/step (median round)\n"
        f"  native+probe {report['native_us_per_step']:.1f} us/step (median round)\n"
        f"  ratio native/bare: median {report['ratio_median']:.4f}, IQR {report['ratio_iqr'][0]:.4f}-"
        f"{report['ratio_iqr'][1]:.4f}, bootstrap 95% CI {report['ratio_ci95'][0]:.4f}-{report['ratio_ci95'][1]:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
