"""This package's own CI: parity of its task, adapter and loop, run with bakeoff's pytest plugin."""

from hypothesis import given, settings
from hypothesis import strategies as st

from bakeoff.testing.strategies import specs

TASK = "example-spirals"


def test_the_in_house_trainer_reproduces_native(bakeoff):
    bakeoff.assert_parity(TASK, "example-trainer", steps=8)


def test_the_plain_loop_reproduces_native_in_bf16(bakeoff):
    bakeoff.assert_parity(TASK, "example-loop", steps=8, precision="bf16-mixed")


@settings(max_examples=6, deadline=None)
@given(spec=specs(TASK, adapters=["example-trainer", "example-loop", "lightning"], steps=st.integers(2, 5)))
def test_every_adapter_reproduces_native(bakeoff, spec):
    bakeoff.assert_spec_parity(spec)
