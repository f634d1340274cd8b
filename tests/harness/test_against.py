"""A verdict from one command: `bakeoff run ... --against ADAPTER`, its partner, its exit status."""

from __future__ import annotations

import argparse

import pytest

from harness.against import declared_verdict, meets, partner_for
from harness.cli import _spec_from_args, build_parser, main
from harness.spec import Spec, SpecError

DRIFTING = "tests.adapters.test_loop:drifting_train"
PLAIN = "tests.adapters.test_loop:fp32_only_train"


def parse(*args: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", *args])


@pytest.mark.parametrize(
    ("verdict", "declared", "holds"),
    [
        ("bitwise", "bitwise", True),
        ("close", "bitwise", False),
        ("bitwise", "close", True),
        ("diverged", "close", False),
        ("not-comparable", "bitwise", False),  # a failed partner never passes for a claim
        ("diverged", "not-comparable", True),  # nothing was claimed
    ],
)
def test_a_verdict_meets_a_claim_only_when_at_least_as_strong(verdict, declared, holds):
    assert meets(verdict, declared) is holds


def test_global_batch_does_the_per_rank_arithmetic():
    spec = _spec_from_args(parse("--task", "digits", "--world-size", "2", "--global-batch", "64", "--device", "cpu"))
    assert (spec.batch_size, spec.world_size) == (32, 2)
    spec = _spec_from_args(parse("--task", "digits", "--grad-accum", "4", "--global-batch", "64", "--device", "cpu"))
    assert (spec.batch_size, spec.grad_accum) == (16, 4)
    with pytest.raises(SpecError, match="does not split into --world-size 2 x --grad-accum 1"):
        _spec_from_args(parse("--task", "digits", "--world-size", "2", "--global-batch", "63", "--device", "cpu"))


def test_batch_size_and_global_batch_exclude_each_other_and_the_help_says_per_rank(capsys):
    assert main(["run", "--task", "digits", "--batch-size", "8", "--global-batch", "64"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err
    help_text = build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    assert "PER RANK" in help_text and "--global-batch" in help_text and "--against" in help_text


def test_partners_keep_the_global_batch_and_a_partner_of_itself_is_its_next_repeat():
    ddp = Spec(task="digits", adapter="lightning", world_size=2, batch_size=32, steps=5, lr=0.05)
    single = partner_for(ddp, "native", world_size=1)
    assert (single.adapter, single.world_size, single.batch_size, single.mode) == ("native", 1, 64, "aligned")
    same = partner_for(ddp, "native")
    assert (same.world_size, same.batch_size) == (2, 32)
    native = Spec(task="digits", adapter="native", batch_size=64, steps=5, lr=0.05)
    again = partner_for(native)
    assert again.repeat == 1 and again.spec_id != native.spec_id
    with pytest.raises(SpecError, match="does not split into 3 ranks"):
        partner_for(ddp, "native", world_size=3)


def test_what_the_pair_is_held_to():
    lightning = Spec(task="digits", adapter="lightning", batch_size=64, steps=5, lr=0.05)
    assert declared_verdict(lightning, partner_for(lightning))[0] == "bitwise"  # lightning's expected_parity
    assert declared_verdict(lightning, partner_for(lightning), expect="close") == ("close", "--expect")
    assert declared_verdict(lightning, partner_for(lightning, "fastai"))[0] == "not-comparable"  # no claim
    ddp = Spec(task="digits", adapter="native", world_size=2, batch_size=32, steps=5, lr=0.05)
    assert declared_verdict(ddp, partner_for(ddp, world_size=1))[0] == "close"
    tabular = Spec(task="tabular", adapter="native", world_size=2, batch_size=32, steps=5, lr=0.05)
    held, why = declared_verdict(tabular, partner_for(tabular, world_size=1))
    assert held == "not-comparable" and "not batch-invariant" in why


def test_run_against_prints_the_verdict_and_exits_1_when_worse_than_declared(capsys, tmp_path):
    """Three worker processes: the native partner once, a drifting loop (exit 1), a faithful loop (exit 0)."""
    common = ["--task", "digits", "--steps", "6", "--device", "cpu", "--results-dir", str(tmp_path)]
    code = main(["run", "--adapter", DRIFTING, "--against", "native", *common])
    out = capsys.readouterr().out
    assert code == 1, out
    verdict_line = next(line for line in out.splitlines() if line.startswith("verdict vs native:"))
    assert "losses differ first at step 4" in verdict_line
    assert f"declared bitwise ({DRIFTING}'s expected_parity): WORSE THAN DECLARED" in verdict_line
    code = main(["run", "--adapter", PLAIN, "--against", "native", *common])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "(partner, found in the results folder)" in out  # the native run above, not run again
    assert "verdict vs native: bitwise (6 steps, identical weights) | declared bitwise" in out and "holds" in out


def test_against_options_need_against(capsys):
    assert main(["run", "--task", "digits", "--expect", "close"]) == 2
    assert "only make sense with --against" in capsys.readouterr().err
