"""Paired in-process cost of one cell: the native loop and the adapter alternating in one process.

One worker process per (task, adapter, mode, precision) cell imports the adapter's library, then
runs rounds: in each round both arms train a fresh, identical job (``harness.worker.build_job``
from the same spec fields; the adapter's ``fit`` is called again every round), in a random order
balanced over the rounds. The probe (:class:`harness.cost.probe.CostProbe`, the same for both
arms) stamps every step end with the wall clock (``perf_counter_ns``) and the main thread's CPU
clock (``thread_time_ns``). A round's figure per arm is its mean µs per steady-state step; the
cell's figure is the per-round paired difference and ratio with bootstrap CIs over rounds
(:mod:`harness.cost.analysis`).

Fairness by construction: both arms run in a process where the library is imported (whatever it
patched or set at import applies to both; :mod:`harness.cost.contamination` measures that effect
separately); both get the same data, weights, batches, precision and thread count; a garbage
collection runs before every fit so one arm's garbage is not collected during the other's steps.

What a library leaves behind between fits, and why it does not bias the pair: its import-time
patches and global settings (shared by both arms from the start), singletons such as accelerate's
``AcceleratorState`` or Keras' name counters (set up in the discarded warm-up round), threads such
as tqdm's monitor (started by the first progress bar; it sleeps between checks and then runs beside
both arms alike), and files a ``defaults`` run writes (each fit gets a fresh scratch folder,
deleted after it, outside the measured steps). The warm-up rounds, run before the measured ones
and discarded, absorb first-fit costs (lazy imports, caches filled on first use).

After the measured rounds the same worker counts host syncs (:mod:`harness.cost.syncs`) and
profiles both arms (:mod:`harness.cost.attribution`); neither runs during the measured rounds.

    python -m harness.cost.paired --spec SPEC.json --protocol PROTOCOL.json --out RESULT.json
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

WORKER_START_WALL_NS = time.time_ns()

import torch  # noqa: E402

from adapters.base import Adapter  # noqa: E402
from harness import environment  # noqa: E402
from harness.cost import record as cost_record  # noqa: E402
from harness.cost.analysis import (  # noqa: E402
    MIN_ROUNDS,
    Interval,
    arm_figures,
    attribute,
    balanced_orders,
    meets_target,
    paired,
)
from harness.cost.attribution import WindowProfiler  # noqa: E402
from harness.cost.probe import CostProbe  # noqa: E402
from harness.cost.syncs import SyncCounter, sync_summary  # noqa: E402
from harness.plan import request_for  # noqa: E402
from harness.process import die_with_parent, watch_orchestrator  # noqa: E402
from harness.registry import get_adapter, get_task  # noqa: E402
from harness.spec import Spec, SpecError  # noqa: E402
from harness.worker import adapter_record, build_job  # noqa: E402
from kernels.determinism import set_determinism  # noqa: E402
from kernels.distributed import DistContext  # noqa: E402

ARMS = ("native", "adapter")


@dataclass(frozen=True, kw_only=True)
class Protocol:
    """How a cell is measured; stored in every result so figures are read with their method."""

    rounds: int = 40
    """Measured rounds (each: one fit per arm, in a random order balanced over the rounds)."""
    steps: int = 100
    """Optimizer steps per fit, warm-up included. At most one epoch of the harness loader, so no
    per-epoch work (validation, epoch-end hooks) lands in the window; work every N steps does."""
    warmup: int = 20
    """Steps of each fit left out (``harness.durations.after_warmup``)."""
    warm_rounds: int = 1
    """Rounds run first and discarded (first-fit costs: lazy imports, caches)."""
    threads: int = 1
    """torch threads (intra-op) for both arms."""
    order_seed: int = 0
    sync_fits: int = 1
    """Fits per arm under the sync counter (0: no sync count)."""
    profile_rounds: int = 2
    """Rounds per arm under the profiler (0: no attribution)."""
    top_sites: int = 12

    def __post_init__(self) -> None:
        cost_record.check_counts(self, "cost protocol")
        if self.rounds < MIN_ROUNDS:
            raise SpecError(f"cost protocol needs at least {MIN_ROUNDS} rounds for a CI over rounds, got {self.rounds}")
        if self.threads < 1:
            raise SpecError("cost protocol threads must be at least 1")
        if self.steps < self.warmup + 2:
            raise SpecError(f"cost protocol steps ({self.steps}) must exceed warmup ({self.warmup}) by at least 2")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Protocol:
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown cost protocol key {unknown[0]!r} (keys: {', '.join(sorted(known))})")
        return cls(**data)


def arm_specs(spec: Spec, steps: int) -> dict[str, Spec]:
    """The two arms' specs: the adapter's, and the native loop with everything else the same."""
    adapter = replace(spec, steps=steps, repeat=0)
    return {"adapter": adapter, "native": replace(adapter, adapter="native", mode="aligned")}


def cell_id(spec: Spec) -> str:
    """A cell's id: the spec's id with the step count and repeat left out, so the paired and the
    instruction measurements of one cell (which run different step counts) share it."""
    return replace(spec, steps=1, repeat=0).spec_id


def check_epoch(spec: Spec, steps: int) -> None:
    """Refuse a window that would cross the harness loader's epoch boundary (per-epoch work)."""
    task = get_task(spec.task)
    options = task.resolve_options(spec.options)
    batches = len(task.build_data(options).train) // (spec.batch_size * spec.grad_accum)
    if steps > batches:
        raise SpecError(
            f"{spec.label}: {steps} steps per fit cross an epoch ({batches} optimizer steps per epoch); "
            "per-epoch work would land in the measured steps: use fewer steps or a smaller batch"
        )


class Arms:
    """Builds and trains the two arms' jobs; every fit gets a fresh job and scratch folder."""

    def __init__(self, spec: Spec, *, steps: int, warmup: int, workroot: Path) -> None:
        self.warmup = warmup
        self.specs = arm_specs(spec, steps)
        self.task = get_task(spec.task)
        self.adapters: dict[str, Adapter] = {"native": get_adapter("native"), "adapter": get_adapter(spec.adapter)}
        self.workroot = workroot
        self.context = DistContext()
        self.fits = 0
        """Fits so far: names each fit's scratch folder, the same in every run (no random names, which
        would change the heap's layout, and with it instruction counts, from one run to the next)."""

    def unsupported(self) -> str | None:
        spec = self.specs["adapter"]
        return self.adapters["adapter"].check(request_for(spec, self.task))

    def fit(
        self,
        arm: str,
        *,
        on_window_start: Callable[[], None] | None = None,
        on_window_end: Callable[[], None] | None = None,
        around: Callable[[Any], contextlib.AbstractContextManager] | None = None,
    ) -> CostProbe:
        """Train one fresh job of ``arm``; ``around(job)`` may wrap the fit (e.g. the sync counter)."""
        spec = self.specs[arm]
        probe = CostProbe(
            torch.device(spec.device),
            warmup=self.warmup,
            steps=spec.steps,
            on_window_start=on_window_start,
            on_window_end=on_window_end,
        )
        self.fits += 1
        scratch = self.workroot / f"{self.specs['adapter'].spec_id}-{self.fits:05d}-{arm}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            job = build_job(spec, self.task, self.context, probe, workdir=scratch)
            set_determinism(spec.seed, deterministic=spec.deterministic)  # as the worker does, right before fit
            gc.collect()
            with around(job) if around is not None else contextlib.nullcontext():
                probe.fit_start()
                self.adapters[arm].fit(job)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        if probe.steps != spec.steps:
            raise RuntimeError(f"{spec.adapter} ran {probe.steps} optimizer steps, the cell asked for {spec.steps}")
        return probe


def measure_rounds(
    arms: Arms, protocol: Protocol, progress: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """The warm-up rounds (discarded), then the measured rounds: per arm, both clocks' figures."""
    for _ in range(protocol.warm_rounds):
        for arm in ARMS:
            arms.fit(arm)
    rounds = []
    for index, order in enumerate(balanced_orders(protocol.rounds, protocol.order_seed)):
        entry: dict[str, Any] = {"index": index, "order": list(order)}
        for arm in order:
            probe = arms.fit(arm)
            entry[arm] = arm_figures(probe.wall_end_ns(), probe.thread_end_ns, protocol.warmup)
        rounds.append(entry)
        if progress is not None:
            progress(
                f"round {index + 1}/{protocol.rounds}: native {entry['native']['wall_mean_us']:.1f} us/step, "
                f"{arms.specs['adapter'].adapter} {entry['adapter']['wall_mean_us']:.1f} us/step"
            )
    return rounds


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Both clocks' paired difference, ratio and arms, with CIs over rounds, and the target check."""
    summary: dict[str, Any] = {}
    for clock in ("wall", "thread"):
        key = f"{clock}_mean_us"
        figures = paired([r["native"][key] for r in rounds], [r["adapter"][key] for r in rounds])
        native = figures["native"]
        summary[clock] = {
            key: value.to_dict() if isinstance(value, Interval) else value for key, value in figures.items()
        }
        summary[clock]["target"] = meets_target(figures["difference"], native.value if native else None)
    return summary


def count_syncs(arms: Arms, fits: int) -> dict[str, Any]:
    """Host syncs per steady-state step of each arm, with call sites (fits outside the measured rounds)."""
    out: dict[str, Any] = {}
    for arm in ARMS:
        events, steps = [], 0
        for _ in range(fits):
            box: dict[str, SyncCounter] = {}

            def around(job, box=box) -> SyncCounter:
                box["counter"] = SyncCounter(job.model)
                return box["counter"]

            probe = arms.fit(
                arm,
                on_window_start=lambda box=box: box["counter"].start(),
                on_window_end=lambda box=box: box["counter"].stop(),
                around=around,
            )
            events += box["counter"].events
            steps += probe.total_steps - probe.warmup
        out[arm] = sync_summary(events, steps)
    return out


def profile(
    arms: Arms, protocol: Protocol, paired_total_us: float | None, paired_thread_us: float | None = None
) -> dict[str, Any]:
    """Profile both arms' steady-state steps over a few rounds and attribute the difference.

    ``paired_total_us`` (wall) is what the shares are applied to; ``paired_thread_us`` (the same
    rounds' thread-clock difference) gives the profiler's inflation on its own clock.
    """
    profilers = {arm: WindowProfiler() for arm in ARMS}
    steps = (protocol.steps - protocol.warmup) * protocol.profile_rounds
    for order in balanced_orders(protocol.profile_rounds, protocol.order_seed + 1):
        for arm in order:
            profiler = profilers[arm]
            arms.fit(arm, on_window_start=profiler.start, on_window_end=profiler.stop)
    per_step = {arm: profilers[arm].own_time_per_step(steps) for arm in ARMS}
    attribution = attribute(
        per_step["native"],
        per_step["adapter"],
        native_total_us=profilers["native"].window_thread_ns / 1e3 / steps,
        adapter_total_us=profilers["adapter"].window_thread_ns / 1e3 / steps,
        paired_total_us=paired_total_us,
        top=protocol.top_sites,
    )
    attribution.update(profiler="cProfile", profile_clock="thread", total_clock="wall", steps=steps)
    # The profiler's inflation on its own clock: profiled difference over the unprofiled one, both thread time.
    profiled = attribution["profiled_difference_us"]
    attribution["inflation"] = profiled / paired_thread_us if paired_thread_us and paired_thread_us > 0 else None
    return attribution


def cell_description(spec: Spec) -> dict[str, Any]:
    return {
        "task": spec.task,
        "options": dict(spec.options),
        "adapter": spec.adapter,
        "mode": spec.mode,
        "precision": spec.precision,
        "batch_size": spec.batch_size,
        "lr": spec.lr,
        "seed": spec.seed,
        "device": spec.device,
        "label": f"{spec.task}{_options(spec)} {spec.adapter} {spec.mode} {spec.precision}",
    }


def _options(spec: Spec) -> str:
    return "[" + ",".join(f"{k}={v}" for k, v in spec.options.items()) + "]" if spec.options else ""


def measure_cell(
    spec: Spec, protocol: Protocol, workroot: Path, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The whole paired measurement of one cell in this process, as a ``bakeoff.cost/1`` record."""
    started = time.perf_counter()
    threads_before = torch.get_num_threads()  # restored after: an in-process caller keeps its own thread count
    torch.set_num_threads(protocol.threads)
    specs = arm_specs(spec, protocol.steps)
    record: dict[str, Any] = {
        "schema": cost_record.SCHEMA,
        "kind": "paired",
        "cell_id": cell_id(spec),
        "cell": cell_description(specs["adapter"]),
        "spec": specs["adapter"].to_dict(),
        "baseline_spec": specs["native"].to_dict(),
        "status": "ok",
        "error": None,
        "protocol": protocol.to_dict(),
        "threads": torch.get_num_threads(),
        "environment": {},
    }
    arms = None
    try:
        check_epoch(spec, protocol.steps)
        arms = Arms(spec, steps=protocol.steps, warmup=protocol.warmup, workroot=workroot)
        record["adapter"] = adapter_record(arms.adapters["adapter"])
        reason = arms.unsupported()
        if reason:
            record.update(status="unsupported", error=reason)
            return record
        record["rounds"] = measure_rounds(arms, protocol, progress)
        record["summary"] = summarize(record["rounds"])
        if protocol.sync_fits:
            record["syncs"] = count_syncs(arms, protocol.sync_fits)
        if protocol.profile_rounds:
            wall, thread = (record["summary"][clock]["difference"] for clock in ("wall", "thread"))
            record["attribution"] = profile(
                arms, protocol, wall["value"] if wall else None, thread["value"] if thread else None
            )
    except SpecError as error:
        record.update(status="failed", error=str(error))
    except Exception as error:
        record.update(status="failed", error=f"{type(error).__name__}: {error}".strip())
        record["traceback"] = traceback.format_exc()[-4000:]
    finally:
        library = record.get("adapter", {}).get("library")
        record["environment"] = environment.capture(tuple(p for p in [library] if p))
        record["elapsed_s"] = time.perf_counter() - started
        torch.set_num_threads(threads_before)
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.cost.paired", description="Measure one cell (internal).")
    parser.add_argument("--spec", required=True, type=Path, help="the adapter arm's spec JSON")
    parser.add_argument("--protocol", required=True, type=Path, help="protocol JSON")
    parser.add_argument("--out", required=True, type=Path, help="where the bakeoff.cost/1 record goes")
    parser.add_argument("--workroot", type=Path, default=None, help="scratch folder for the fits")
    args = parser.parse_args(argv)
    die_with_parent()
    watch_orchestrator()
    spec = Spec.from_dict(json.loads(args.spec.read_text()))
    protocol = Protocol.from_dict(json.loads(args.protocol.read_text()))
    workroot = args.workroot or args.out.parent / "work"

    def progress(line: str) -> None:
        print(f"[cost] {line}", file=sys.stderr, flush=True)

    record = measure_cell(spec, protocol, workroot, progress)
    cost_record.write(args.out, record)
    return 0 if record["status"] != "failed" else 3


if __name__ == "__main__":
    sys.exit(main())
