"""Deliberately shifted heap layouts (harness.cost.layout): the padding, what it moves, the figures.

The known answer: in a child started like the instruction worker (address randomization off, hash
seed fixed), the objects allocated after ``harness.cost.layout`` land at the same addresses for the
same layout, every time, and elsewhere for another layout. The figures over several layouts are their
mean, and the layouts' spread is reported apart from the runs' repeatability.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cost import layout
from harness.cost.instructions import InstructionProtocol, Run, instruction_figures, no_address_randomization
from harness.spec import SpecError

REPO = Path(__file__).resolve().parents[2]

AFTER = (  # the worker imports the layout module first: where do the functions of a later import land?
    "import harness.cost.layout as l, email.message as m, inspect; "
    "f = [v for _, v in sorted(vars(m.Message).items()) if inspect.isfunction(v)]; "
    "print(l.LAYOUT, len(l.PADDING), *(id(x) for x in f))"
)


def child(layout_value: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != layout.ENV}
    env.update(PYTHONHASHSEED="0", PYTHONPATH=str(REPO))
    if layout_value is not None:
        env[layout.ENV] = layout_value
    out = subprocess.run([sys.executable, "-c", AFTER], env=env, cwd=REPO, capture_output=True, text=True, check=True,
                         preexec_fn=no_address_randomization)
    return out.stdout.split()


def test_a_layout_moves_every_later_object_and_repeats_itself():
    zero = child(None)
    assert zero[:2] == ["0", "0"]  # no layout asked for: no padding, the pass's default is untouched
    assert child(None) == zero  # the same heap every time
    assert child("0")[:2] == ["0", "0"]  # (the variable itself is an object more: the pass leaves it out for 0)
    one, two = child("1"), child("2")
    assert one[:2] == ["1", str(layout.OBJECTS_PER_LAYOUT)] and two[:2] == ["2", str(2 * layout.OBJECTS_PER_LAYOUT)]
    assert child("1") == one and child("2") == two  # a layout is the same heap in every run
    # The functions a later import made (pymalloc objects, as most of what torch and the libraries
    # make) land elsewhere than in layout 0, and in each layout elsewhere than in the others (seen: all;
    # a few may by chance share a slot, so 90%). Objects made before the padding (interned names of
    # builtins) or by glibc's malloc (large code objects, dicts) need not move.
    assert len(zero) > 2 + 40
    for a, b in ((zero, one), (zero, two), (one, two)):
        assert sum(x != y for x, y in zip(a[2:], b[2:], strict=True)) >= 0.9 * (len(a) - 2), str((a, b))


def test_the_padding_stays_within_pymalloc_and_differs_by_layout():
    assert layout.padding_sizes(0) == []
    sizes = {k: layout.padding_sizes(k) for k in (1, 2, 3)}
    for k, values in sizes.items():
        assert len(values) == k * layout.OBJECTS_PER_LAYOUT
        assert all(size >= -1 and size + 33 <= layout.LARGEST for size in values)  # a bytes header is 33 bytes
        classes = {16 if size == 0 else 32 if size == -1 else (size + 33 + 15) // 16 * 16 for size in values}
        assert {16, 32} <= classes and len(classes) >= 15  # the small classes and many more, not one
        assert layout.padding_sizes(k) == values
    assert sizes[2][: layout.OBJECTS_PER_LAYOUT] != sizes[1]  # not layout 1 plus more: another stream
    with pytest.raises(ValueError, match="non-negative"):
        layout.padding_sizes(-1)


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_a_bad_layout_value_is_refused_with_its_name(value):
    with pytest.raises(ValueError, match=f"{layout.ENV} must be a non-negative integer"):
        layout.requested({layout.ENV: value})
    assert layout.requested({}) == 0


def test_a_process_started_with_a_bad_layout_stops_with_one_line():
    env = {**os.environ, "PYTHONPATH": str(REPO), layout.ENV: "two"}
    out = subprocess.run([sys.executable, "-c", "import harness.cost.layout"], env=env, capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip() == f"bakeoff: error: {layout.ENV} must be a non-negative integer, not 'two'"


def test_the_protocol_takes_between_one_layout_and_one_per_run():
    assert InstructionProtocol().layouts == 1
    assert InstructionProtocol(runs=3, layouts=3).layouts == 3
    for runs, layouts in ((2, 3), (2, 0)):
        with pytest.raises(SpecError, match="layouts"):
            InstructionProtocol(runs=runs, layouts=layouts)


def _run(index: int, layout_index: int, native: list[float], adapter: list[float]) -> dict:
    rounds = [{"index": i, "order": "na", "native": {"per_step": n}, "adapter": {"per_step": a}}
              for i, (n, a) in enumerate(zip(native, adapter, strict=True))]
    return {"run": index, "layout": layout_index, "rounds": rounds, "functions": {"extra_per_step": 0.0}}


def test_one_layout_keeps_the_first_runs_figures_and_the_runs_spread_as_repeatability():
    runs = [_run(1, 0, [100, 102], [150, 152]), _run(2, 0, [100.1, 102.1], [150, 152])]
    summary = instruction_figures(runs)
    assert summary["native_per_step"] == 101 and summary["adapter_per_step"] == 151
    assert summary["difference_per_step"] == 50
    assert summary["layout_spread"] is None and summary["layouts"] == 1
    assert summary["repeatability"]["native"] == pytest.approx(0.1 / 101.05)
    assert summary["repeatability"]["adapter"] == 0


def test_several_layouts_give_their_mean_and_their_spread_apart_from_repeatability():
    # layout 0 has two runs (they agree to 0.1 on native), layout 1 one run 2% higher on native
    runs = [_run(1, 0, [100, 100], [150, 150]), _run(2, 1, [102, 102], [150, 150]),
            _run(3, 0, [100.1, 100.1], [150, 150])]
    summary = instruction_figures(runs)
    layout0_native = 100.05
    assert summary["native_per_step"] == pytest.approx((layout0_native + 102) / 2)  # each layout weighs the same
    assert summary["adapter_per_step"] == 150
    spread = summary["layout_spread"]
    assert spread["layouts"] == [0, 1]
    assert spread["native"] == pytest.approx((102 - layout0_native) / ((102 + layout0_native) / 2))
    assert spread["difference"] == pytest.approx((49.95 - 48) / ((49.95 + 48) / 2))
    assert summary["repeatability"]["native"] == pytest.approx(0.1 / 100.05)  # runs 1 and 3 only
    # the rounds' CI is over the layout-averaged rounds
    assert summary["difference"]["value"] == pytest.approx(150 - (layout0_native + 102) / 2)
    alone = instruction_figures([runs[0], runs[1]])
    assert alone["repeatability"]["native"] is None  # no two runs share a layout: repeatability not measured


def test_each_run_is_launched_with_its_layout_and_never_the_callers(tmp_path, monkeypatch, launch_environments):
    monkeypatch.setenv(layout.ENV, "7")  # a caller's value must not reach a run
    protocol = InstructionProtocol(runs=3, layouts=2)
    runs = [Run(i, tmp_path / f"run-{i}", layout=protocol.layout_of(i)) for i in (1, 2, 3)]
    launched = launch_environments(runs, hash_seed=0)
    assert [env.get(layout.ENV) for env in launched] == [None, "1", None]


def test_the_tracking_metrics_carry_both_spreads_of_an_instruction_record():
    from harness.ingest import _cost_metrics

    runs = [_run(1, 0, [100, 100], [150, 150]), _run(2, 1, [102, 102], [150, 150]),
            _run(3, 0, [100.1, 100.1], [150, 150])]
    metrics = _cost_metrics({"kind": "instructions", "summary": instruction_figures(runs)})
    assert metrics["instructions_layout_spread"] == pytest.approx(1.95 / 101.025)  # the native arm's, the worse
    assert metrics["instructions_repeatability"] == pytest.approx(0.1 / 100.05)
    single = _cost_metrics({"kind": "instructions", "summary": instruction_figures(runs[:1])})
    assert "instructions_layout_spread" not in single and "instructions_repeatability" not in single  # one run
