"""Per-step cost of every adapter on a tiny model, where library overhead dominates.

Run by `make bench-check` (not by `make test`): pytest-benchmark times each adapter's whole
fit, and the probe's per-step durations (after warm-up) go into ``extra_info``; the gate
(`python -m harness.benchgate`) compares each adapter's per-step ratio to native measured in
the same session against the committed baseline for this machine class.
"""

from __future__ import annotations

import tempfile

import pytest
import torch

from harness.durations import step_durations_ns
from harness.overhead import make_job
from harness.probe import Probe
from harness.registry import RegistryError, adapter_names, get_adapter
from kernels.determinism import set_determinism

STEPS, WARMUP, ROUNDS = 40, 5, 5
CELLS = [(name, mode) for name in adapter_names() for mode in ("aligned", "defaults")]


def _available(name: str, mode: str) -> bool:
    """In-process adapters only: one in an isolated environment (flash) cannot import here."""
    try:
        adapter = get_adapter(name)
    except RegistryError:
        return False
    return mode in adapter.modes and adapter.environment is None


@pytest.mark.parametrize(("adapter_name", "mode"), [c for c in CELLS if _available(*c)])
def test_step_cost(benchmark, adapter_name, mode):
    adapter = get_adapter(adapter_name)
    per_round: list[list[float]] = []
    workdir = tempfile.mkdtemp(prefix="bakeoff-bench-")
    state = {}

    def setup():
        set_determinism(0)
        job = make_job("scaling", STEPS, 32, "fp32", {"width": 16})
        job.mode, job.workdir = mode, workdir
        state["job"] = job
        return (), {}

    def fit():
        job = state["job"]
        job.probe.fit_start()
        adapter.fit(job)

    def record():
        probe: Probe = state["job"].probe
        trajectory = probe.resolve()
        per_round.append([d / 1e3 for d in step_durations_ns(trajectory.step_end_ns)[WARMUP:]])

    def fit_and_record():
        fit()
        record()

    benchmark.pedantic(fit_and_record, setup=setup, rounds=ROUNDS, iterations=1)
    benchmark.extra_info["step_us"] = per_round
    benchmark.extra_info["steps"] = STEPS
    benchmark.extra_info["threads"] = torch.get_num_threads()
    assert all(len(r) == STEPS - WARMUP for r in per_round)
