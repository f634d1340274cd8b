"""A user's CI: their loops against the native loop, with bakeoff's pytest plugin and strategies."""

from hypothesis import given, settings
from hypothesis import strategies as st

from bakeoff.testing.strategies import specs


def test_my_loop_reproduces_native(bakeoff):
    outcome = bakeoff.assert_parity("digits", "userpkg.loops:train", steps=5)
    assert outcome.verdict.verdict == "bitwise"


@settings(max_examples=4, deadline=None)
@given(
    spec=specs(
        "digits",
        adapters=["userpkg.loops:train"],
        precisions=["fp32", "bf16-mixed"],
        grad_accum=[1, 2],  # the loop takes no grad_accum: never drawn with 2
        steps=st.integers(2, 4),
    )
)
def test_my_loop_reproduces_native_whatever_the_seed_and_precision(bakeoff, spec):
    assert spec.grad_accum == 1
    bakeoff.assert_spec_parity(spec)


def test_the_refactored_loop_still_reproduces_native(bakeoff):
    bakeoff.assert_parity("digits", "userpkg.loops:drifting_train", steps=6)
