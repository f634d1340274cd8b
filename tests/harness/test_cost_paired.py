"""The paired measurement proven on known answers: A/A, planted per-step costs, planted syncs, attribution.

Timing on a shared machine. Other engineers' work runs beside these tests, so:

- the planted cost is a busy-wait on the main thread's CPU clock (``time.thread_time_ns``): it costs
  exactly its duration in thread time whatever else runs, and the proofs read the thread clock; a
  wall-clock figure is only required to be consistent (its CI reaching the planted cost), because
  another process taking the core inflates wall time by any amount;
- every statistical assertion uses a 99.9% CI rather than the 95% one the reports show: a calibrated
  95% interval misses the truth in 1 run of 20 by construction, which would make a correct method
  fail CI that often;
- a 2 ms planted cost, large against the round-to-round noise of a loaded 2-core machine (hundreds
  of µs in thread time), must be resolved from zero; the 50 µs one must lie inside its CI (the
  quiet-machine benchmark shows its CI excluding zero: notes/issue-16.md). On a loaded machine the
  2 ms arm comes out *above* 2 ms in thread time too (3.0 ms [2.7, 3.2] at a load of 15 on 2 cores):
  spinning 2 ms of CPU takes ~14 ms of wall time there, during which other processes evict this
  one's caches, so the rest of its step runs colder. That is a real cost of a slower arm on a busy
  machine, not a measurement error, so the 2 ms test asks for "at least 2 ms, and not zero".

The planted adapters add two forwarding calls per step and stop spinning at most one spin chunk
late: ``ALLOWANCE_US`` above the planted duration is still the planted cost.
"""

from __future__ import annotations

import pytest
import torch

from harness.cost.analysis import paired
from harness.cost.paired import Arms, Protocol, count_syncs, measure_cell
from harness.spec import Spec

pytestmark = pytest.mark.usefixtures("plugin_env")

TEST_CONFIDENCE = 0.999
ALLOWANCE_US = 3.0
PROTOCOL = Protocol(rounds=12, steps=40, warmup=10, threads=1, sync_fits=1, profile_rounds=0)


def cell(adapter: str) -> Spec:
    return Spec(task="scaling", adapter=adapter, batch_size=16, steps=40, lr=0.05, options={"width": 16})


def interval(record: dict, clock: str):
    rounds = record["rounds"]
    key = f"{clock}_mean_us"
    figures = paired(
        [r["native"][key] for r in rounds], [r["adapter"][key] for r in rounds], confidence=TEST_CONFIDENCE
    )
    return figures["difference"]


def test_native_against_native_gives_zero_within_its_ci(tmp_path):
    threads = torch.get_num_threads()
    record = measure_cell(cell("native"), PROTOCOL, tmp_path)
    assert torch.get_num_threads() == threads  # the caller's own setting comes back (other tests run here)
    assert record["status"] == "ok", record["error"]
    assert len(record["rounds"]) == 12
    assert sorted(tuple(r["order"]) for r in record["rounds"]).count(("adapter", "native")) == 6
    for clock in ("wall", "thread"):
        difference = interval(record, clock)
        assert difference.contains(0.0), (clock, difference)
        assert record["summary"][clock]["difference"]["rounds"] == 12
    assert record["syncs"]["native"]["per_step"] == 0 and record["syncs"]["adapter"]["per_step"] == 0
    assert record["threads"] == 1


def test_a_planted_50_us_per_step_is_inside_its_ci(tmp_path):
    record = measure_cell(cell("cost-busy50"), PROTOCOL, tmp_path)
    assert record["status"] == "ok", record["error"]
    thread = interval(record, "thread")
    assert thread.low <= 50.0 + ALLOWANCE_US and thread.high >= 50.0, thread
    assert interval(record, "wall").high >= 50.0  # wall time cannot be below the CPU time spent


def test_a_planted_2_ms_per_step_is_resolved_from_zero(tmp_path):
    record = measure_cell(cell("cost-busy2000"), PROTOCOL, tmp_path)
    assert record["status"] == "ok", record["error"]
    thread = interval(record, "thread")
    assert thread.low > 0 and thread.high >= 2000.0, thread
    assert interval(record, "wall").high >= 2000.0
    assert record["summary"]["thread"]["ratio"]["value"] > 1.5


def test_two_item_calls_per_step_count_exactly_two_and_native_none(tmp_path):
    arms = Arms(cell("cost-item2"), steps=30, warmup=10, workroot=tmp_path)
    syncs = count_syncs(arms, fits=2)
    assert syncs["native"]["per_step"] == 0 and syncs["native"]["sites"] == []
    assert syncs["adapter"]["steps"] == 40
    assert syncs["adapter"]["per_step"] == 2.0
    assert syncs["adapter"]["by_kind"] == {"item": 2.0}
    sites = {site["site"] for site in syncs["adapter"]["sites"]}
    assert all(site.startswith("tests/plugins/bakeoff_cost_adapters.py:") for site in sites), sites
    assert all(site.endswith("(_two_items)") for site in sites) and len(sites) == 2  # the two lines that call it


def _profiled_planted_us(calls: int = 200) -> float:
    """The planted wait's time per call as the attribution's profiler (cProfile on the thread clock)
    sees it on this machine: 50 µs plus its last spin chunk and the profiler's own per-call cost, which
    is larger where reading the thread clock is slow (2.2 µs a read profiled on one 2-core VM)."""
    import cProfile
    import pstats
    import time

    from bakeoff_cost_adapters import planted_busy_wait

    profile = cProfile.Profile(time.thread_time_ns, 1e-9)
    profile.enable()
    for _ in range(calls):
        planted_busy_wait()
    profile.disable()
    stats = pstats.Stats(profile).stats
    (cumulative,) = [value[3] for (_, _, name), value in stats.items() if name == "planted_busy_wait"]
    return cumulative / calls * 1e6


def test_attribution_names_the_planted_function(tmp_path):
    protocol = Protocol(rounds=6, steps=40, warmup=10, threads=1, sync_fits=0, profile_rounds=4)
    record = measure_cell(cell("cost-busy50"), protocol, tmp_path)
    assert record["status"] == "ok", record["error"]
    attribution = record["attribution"]
    # Named among the first three call sites: the other sites' differences are the two arms' noise
    # (the same model and loop code on both sides), which on a loaded machine can reach the plant's size.
    planted = [entry for entry in attribution["top"][:3] if entry["site"].startswith(
        "tests/plugins/bakeoff_cost_adapters.py:") and entry["site"].endswith("(planted_busy_wait)")]
    assert planted, attribution["top"][:3]
    top = planted[0]
    # Self-timed on the profiler's own clock: its extra time is the planted 50 µs, plus what profiling
    # the wait itself costs on this machine, measured here in the same process.
    alone = _profiled_planted_us()
    assert 45.0 <= top["profiled_us"] <= max(50.0 + ALLOWANCE_US, alone) + 5.0, (top, alone)
    assert attribution["steps"] == 120
    # (the profiled arms' totals carry the machine's noise, so their difference, and with it the
    # shares, may even be negative on a loaded machine; the planted site's own time cannot)
    buckets = [*attribution["top"], attribution["other_extra"], attribution["native_only"], attribution["unplaced"]]
    assert sum(entry["profiled_us"] for entry in buckets) == pytest.approx(attribution["profiled_difference_us"])


def test_an_unsupported_cell_is_recorded_with_its_reason(tmp_path):
    spec = Spec(
        task="scaling", adapter="keras", mode="defaults", precision="bf16-mixed", batch_size=16, steps=40, lr=0.05
    )
    record = measure_cell(spec, PROTOCOL, tmp_path)
    assert record["status"] == "unsupported" and "mixed_bfloat16" in record["error"]
    assert "rounds" not in record


def test_a_window_crossing_an_epoch_is_refused(tmp_path):
    spec = Spec(task="scaling", adapter="native", batch_size=1024, steps=40, lr=0.05)
    record = measure_cell(spec, PROTOCOL, tmp_path)
    assert record["status"] == "failed" and "cross an epoch" in record["error"]
