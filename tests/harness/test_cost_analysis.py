"""The torch-free parts of the cost measurements: statistics over rounds, attribution, records, callgrind files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.cost import callgrind, record
from harness.cost.analysis import (
    Interval,
    arm_figures,
    attribute,
    balanced_orders,
    bootstrap,
    meets_target,
    paired,
    relative_spread,
    site_group,
    site_path,
)


def test_bootstrap_median_and_interval_contain_the_estimate():
    values = [10.0, 11.0, 12.0, 13.0, 50.0, 9.0, 10.5]
    estimate = bootstrap(values)
    assert estimate.value == 11.0  # the median: the outlier round does not move it
    assert estimate.low <= 11.0 <= estimate.high
    assert estimate.rounds == 7
    assert estimate.high < 50.0
    wider = bootstrap(values, confidence=0.999)
    assert wider.low <= estimate.low and wider.high >= estimate.high


def test_bootstrap_edge_cases():
    assert bootstrap([]) is None
    assert bootstrap([float("nan"), None]) is None
    single = bootstrap([3.0])
    assert (single.value, single.low, single.high, single.rounds) == (3.0, 3.0, 3.0, 1)
    constant = bootstrap([2.0] * 8)
    assert constant.half_width == 0.0 and constant.contains(2.0) and not constant.contains(2.1)


def test_paired_differences_and_ratios_per_round():
    native = [100.0, 120.0, 90.0, 110.0]
    adapter = [150.0, 170.0, 140.0, 160.0]  # +50 in every round, whatever the round's level
    result = paired(native, adapter)
    assert result["differences"] == [50.0, 50.0, 50.0, 50.0]
    assert result["difference"].value == 50.0 and result["difference"].half_width == 0.0
    assert result["ratios"] == pytest.approx([1.5, 170 / 120, 140 / 90, 160 / 110])
    assert result["native"].value == 105.0
    with pytest.raises(ValueError, match="differ in number"):
        paired([1.0], [1.0, 2.0])
    dropped = paired([1.0, float("nan"), 3.0], [2.0, 5.0, None])
    assert dropped["differences"] == [1.0]


def test_pairing_cancels_a_drift_that_separate_runs_cannot():
    # The machine slows down over time; each round's two arms share the slowdown.
    drift = [1.0 + 0.05 * i for i in range(20)]
    native = [400.0 * d for d in drift]
    adapter = [400.0 * d + 30.0 for d in drift]
    result = paired(native, adapter)
    assert result["difference"].value == pytest.approx(30.0)
    assert result["difference"].half_width == pytest.approx(0.0, abs=1e-9)


def test_balanced_orders_use_each_order_half_the_time_in_a_random_sequence():
    orders = balanced_orders(10, seed=1)
    assert orders.count(("native", "adapter")) == 5 and orders.count(("adapter", "native")) == 5
    assert balanced_orders(10, seed=1) == orders
    assert any(balanced_orders(10, seed=s) != orders for s in range(2, 6))
    odd = balanced_orders(7, seed=0)
    assert abs(odd.count(("native", "adapter")) - odd.count(("adapter", "native"))) == 1


def test_arm_figures_mean_and_median_after_warmup():
    # Steps of 10, 10 (warm-up), then 4, 4, 6, 10 µs; thread clock half of wall.
    ends = [10_000, 20_000, 24_000, 28_000, 34_000, 44_000]
    threads = [e // 2 for e in ends]
    figures = arm_figures(ends, threads, warmup=2)
    assert figures["steps"] == 4
    assert figures["wall_mean_us"] == pytest.approx(6.0)
    assert figures["wall_median_us"] == pytest.approx(5.0)
    assert figures["thread_mean_us"] == pytest.approx(3.0)
    with pytest.raises(ValueError):
        arm_figures([], [], warmup=0)


def test_meets_target_is_the_larger_of_5_us_and_2_percent():
    narrow = Interval(10.0, 7.0, 13.0, 30)
    assert meets_target(narrow, 100.0) == {"target_us": 5.0, "half_width_us": 3.0, "met": True}
    wide = Interval(10.0, 0.0, 20.0, 30)
    assert meets_target(wide, 100.0)["met"] is False
    assert meets_target(wide, 1000.0) == {"target_us": 20.0, "half_width_us": 10.0, "met": True}
    assert meets_target(None, 100.0)["met"] is None


def test_relative_spread():
    assert relative_spread([100.0, 100.05]) == pytest.approx(0.0005, rel=1e-3)
    assert relative_spread([1.0]) is None


def _attribution(native: dict, adapter: dict, native_total: float, adapter_total: float, paired_total=30.0, top=2):
    return attribute(
        {k: ("g", v) for k, v in native.items()},
        {k: ("g", v) for k, v in adapter.items()},
        native_total_us=native_total,
        adapter_total_us=adapter_total,
        paired_total_us=paired_total,
        top=top,
    )


def test_attribution_buckets_add_up_and_are_scaled_to_the_paired_total():
    # Profiled: native 100 µs/step, adapter 160; the adapter adds hooks (40) and logging (20) and
    # replaces the native loop's frame (10 of it), and 10 µs land in no function.
    native = {"loop": 10.0, "linear": 90.0}
    adapter = {"linear": 90.0, "hooks": 40.0, "logging": 20.0, "tiny": 0.0001}
    result = _attribution(native, adapter, 100.0, 170.0, paired_total=35.0, top=2)
    assert result["profiled_difference_us"] == pytest.approx(70.0)
    assert [e["site"] for e in result["top"]] == ["hooks", "logging"]
    assert result["top"][0]["share"] == pytest.approx(40 / 70)
    assert result["native_only"]["profiled_us"] == pytest.approx(-10.0)
    assert result["unplaced"]["profiled_us"] == pytest.approx(70.0 - 50.0001)
    buckets = [*result["top"], result["other_extra"], result["native_only"], result["unplaced"]]
    assert sum(e["share"] for e in buckets) == pytest.approx(1.0)
    assert sum(e["scaled_us"] for e in buckets) == pytest.approx(35.0)
    assert result["placed_share"] == pytest.approx(50.0001 / 70)
    assert result["inflation"] == pytest.approx(2.0)


def test_attribution_of_no_difference_has_no_shares():
    result = _attribution({"a": 5.0}, {"a": 5.0}, 5.0, 4.0)
    assert result["profiled_difference_us"] == pytest.approx(-1.0)
    assert result["placed_share"] is None and result["top"] == []


@given(
    st.dictionaries(st.sampled_from("abcdefgh"), st.floats(0, 500), max_size=8),
    st.dictionaries(st.sampled_from("abcdefgh"), st.floats(0, 500), max_size=8),
    st.floats(0, 100),
)
def test_attribution_conserves_the_profiled_difference(native, adapter, unrecorded):
    native_total = sum(native.values())
    adapter_total = sum(adapter.values()) + unrecorded
    result = _attribution(native, adapter, native_total, adapter_total, top=3)
    buckets = [*result["top"], result["other_extra"], result["native_only"], result["unplaced"]]
    assert sum(e["profiled_us"] for e in buckets) == pytest.approx(result["profiled_difference_us"], abs=1e-6)
    assert result["unplaced"]["profiled_us"] == pytest.approx(unrecorded, abs=1e-6)


def test_site_paths_never_hold_the_machine_path():
    repo = Path(__file__).resolve().parents[2]
    assert site_path("/x/y/.venv/lib/python3.11/site-packages/lightning/pytorch/loops/fit_loop.py") == (
        "lightning/pytorch/loops/fit_loop.py"
    )
    assert site_path(str(repo / "adapters" / "lightning.py")) == "adapters/lightning.py"
    assert site_path("/root/.pyenv/versions/3.11.7/lib/python3.11/logging/__init__.py") == "python/logging/__init__.py"
    assert site_path("<frozen abc>") == "<frozen abc>"
    assert site_path("/somewhere/private/odd.py") == "odd.py"
    assert site_group("lightning/pytorch/loops/fit_loop.py") == "lightning/pytorch/loops"
    assert site_group("transformers/trainer.py") == "transformers"


def _paired_record(**overrides) -> dict:
    data = {
        "schema": record.SCHEMA,
        "kind": "paired",
        "cell_id": "0123456789abcdef",
        "status": "ok",
        "error": None,
        "protocol": {},
        "environment": {},
        "rounds": [],
        "summary": {},
    }
    data.update(overrides)
    return data


def test_record_round_trip_and_validation(tmp_path):
    path = record.write(tmp_path / record.file_name("paired", "0123456789abcdef"), _paired_record(value=float("inf")))
    assert path.name == "paired-0123456789abcdef.json"
    assert record.read(path)["value"] is None  # no NaN/inf in JSON
    with pytest.raises(record.CostRecordError, match="schema"):
        record.validate(_paired_record(schema="bakeoff.result/1"))
    with pytest.raises(record.CostRecordError, match="needs rounds"):
        record.validate({k: v for k, v in _paired_record().items() if k != "rounds"})
    with pytest.raises(record.CostRecordError, match="library"):
        record.validate(_paired_record(kind="contamination"))
    record.validate({k: v for k, v in _paired_record(status="failed").items() if k not in ("rounds", "summary")})
    (tmp_path / "paired-broken.json").write_text("{")
    (tmp_path / "unrelated.json").write_text("{}")
    records, problems = record.read_folder(tmp_path)
    assert len(records) == 1 and len(problems) == 1 and "paired-broken.json" in problems[0]
    with pytest.raises(ValueError):
        record.file_name("other", "x")


def test_record_module_and_report_rows_do_not_import_torch():
    code = (
        "import sys, harness.cost.record, harness.cost.analysis, harness.cost.callgrind, reports.cost;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


CALLGRIND_DUMP = """# callgrind format
version: 1
creator: callgrind-3.19.0
pid: 4242
part: 3
thread: 1

desc: Trigger: Client Request

positions: line
events: Ir
summary: 1000

ob=(1) /usr/lib/libpython3.11.so.1.0
fl=(1) /build/Python/ceval.c
fn=(1) _PyEval_EvalFrameDefault
0 300
cob=(2) /opt/lib/libtorch_cpu.so
cfi=(2) /build/aten/add.cpp
cfn=(2) at::native::add
calls=2 0
0 450
fn=(3) _PyEval_EvalFrameDefault'2
0 50
ob=(2)
fl=(2)
fn=(2)
0 400
+1 50
fi=(3) /build/inline.h
* 150
fn=(4) 0x0000000004936728
0 50

totals: 1000
"""


def test_callgrind_parse_own_costs_skips_call_costs_and_resolves_names(tmp_path):
    path = tmp_path / "callgrind.out.4242.3-01"
    path.write_text(CALLGRIND_DUMP)
    dump = callgrind.parse(path)
    assert (dump.part, dump.thread, dump.trigger, dump.total) == (3, 1, "Client Request", 1000)
    assert dump.functions == {
        "libpython3.11.so.1.0: _PyEval_EvalFrameDefault": 350,  # both recursion levels, the call's 450 skipped
        "libtorch_cpu.so: at::native::add": 600,
        "libtorch_cpu.so: 0x0000000004936728": 50,
    }
    assert sum(dump.functions.values()) == dump.total
    assert not any("/" in name for name in dump.functions)  # object file names only, no machine paths


def test_callgrind_dump_files_by_part_and_thread(tmp_path):
    for name in (
        "callgrind.out.7",
        "callgrind.out.7-01",
        "callgrind.out.7.1-01",
        "callgrind.out.7.1-02",
        "callgrind.out.7.2-01",
        "callgrind.out.8.1-01",
        "other.txt",
    ):
        (tmp_path / name).write_text("")
    found = callgrind.dump_files(tmp_path, pid=7)
    assert {part: path.name for part, path in found.items()} == {1: "callgrind.out.7.1-01", 2: "callgrind.out.7.2-01"}
    assert callgrind.dump_files(tmp_path, pid=7, thread=2)[1].name == "callgrind.out.7.1-02"


def test_interval_round_trip():
    interval = Interval(1.0, 0.5, 2.0, 10)
    assert Interval.from_dict(json.loads(json.dumps(interval.to_dict()))) == interval
