"""Spec validation and ids, including a fuzz of the parser: parse to a valid spec or a clear error."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.spec import Spec, SpecError
from tests.conftest import small_spec


def test_spec_id_is_stable_and_content_derived():
    a = small_spec(options={"width": 32, "depth": 2})
    b = small_spec(options={"depth": 2, "width": 32})  # key order does not matter
    assert a.spec_id == b.spec_id and len(a.spec_id) == 16
    assert small_spec(seed=1).spec_id != a.spec_id
    assert Spec.from_dict(json.loads(a.canonical_json())) == a


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"batch_size": 0}, "batch-size must be a positive integer"),
        ({"steps": -3}, "steps must be a positive integer"),
        ({"lr": 0.0}, "lr must be a positive finite number"),
        ({"lr": float("nan")}, "lr must be a positive finite number"),
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"mode": "fast"}, "unknown mode 'fast'"),
        ({"steps": 10**9}, "over the limit"),
        ({"world_size": True}, "world-size must be a positive integer"),
    ],
)
def test_invalid_fields_are_refused_with_one_line(fields, message):
    with pytest.raises(SpecError, match=message) as caught:
        small_spec(**fields)
    assert "\n" not in str(caught.value)


def test_from_dict_refuses_unknown_and_missing_keys():
    data = small_spec().to_dict()
    with pytest.raises(SpecError, match="unknown spec key 'bach_size'"):
        Spec.from_dict({**data, "bach_size": 3})
    del data["lr"]
    with pytest.raises(SpecError, match="missing 'lr'"):
        Spec.from_dict(data)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**7), st.floats(allow_nan=True), st.text(max_size=8))


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "task",
                "adapter",
                "mode",
                "precision",
                "world_size",
                "seed",
                "batch_size",
                "steps",
                "lr",
                "grad_accum",
                "device",
                "options",
                "repeat",
                "deterministic",
                "junk",
            ]
        ),
        st.one_of(scalars, st.dictionaries(st.text(max_size=5), scalars, max_size=3)),
    )
)
def test_parser_fuzz_parses_or_refuses_cleanly(data):
    try:
        spec = Spec.from_dict(data)
    except SpecError as error:
        assert str(error) and "\n" not in str(error)
        return
    assert Spec.from_dict(json.loads(spec.canonical_json())).spec_id == spec.spec_id


@given(st.integers(1, 6), st.lists(st.integers(0, 10_000), min_size=1, max_size=40, unique=True))
def test_shards_are_disjoint_and_cover_the_suite(count, seeds):
    from harness.suites import shard

    specs = [small_spec(seed=seed) for seed in seeds]
    parts = [shard(specs, i, count) for i in range(1, count + 1)]
    assert sorted(s.spec_id for part in parts for s in part) == sorted(s.spec_id for s in specs)
    extra = small_spec(seed=10_001)  # adding a spec never moves the others between shards
    assert [s for s in shard([*specs, extra], 1, count) if s != extra] == parts[0]


def test_shard_syntax_errors_are_clear():
    from harness.suites import parse_shard

    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/2", "3/2", "a/b", "2"):
        with pytest.raises(SpecError, match="--shard"):
            parse_shard(bad)
