"""Suite files: malformed or hostile TOML is refused with one clear line, never a traceback."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.spec import SpecError
from harness.suites import load_suite_file

GOOD = """
name = "mine"
repeats = 2
[[runs]]
task = "scaling"
adapter = ["native", "lightning"]
precision = ["fp32", "bf16-mixed"]
options = {width = [32, 64]}
"""


def write(tmp_path, text: str):
    path = tmp_path / "suite.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_good_file_expands_the_product_and_interleaves_repeats(tmp_path):
    suite = load_suite_file(write(tmp_path, GOOD), "cpu")
    assert suite.name == "mine" and suite.repeats == 2
    assert len(suite.specs) == 2 * 2 * 2 * 2
    first_half = suite.specs[:8]
    assert {s.repeat for s in first_half} == {0}  # all cells once, then the repeat
    assert {s.adapter for s in first_half} == {"native", "lightning"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = ", "is not valid TOML"),
        ("[[runs]]\ntask = 'digits'\nbogus = 1\n", "unknown spec key 'bogus'"),
        ("color = 'red'\n[[runs]]\ntask = 'digits'\n", "unknown key 'color'"),
        ("[[runs]]\ntask = 'digits'\nadapter = 'native'\nsteps = 'many'\n", "steps must be a positive integer"),
        ("[[runs]]\ntask = 'digits'\nadapter = 'native'\nsteps = 100000000\n", "over the limit"),
        ("repeats = 0\n[[runs]]\ntask = 'digits'\n", "repeats must be an integer from 1 to 100"),
        ("name = '../../etc'\n[[runs]]\ntask = 'digits'\n", "suite name must be letters"),
        ("[[runs]]\ntask = 'nope'\n", "unknown task 'nope'"),
        ("[[runs]]\ntask = 'digits'\nseed = []\n", "empty list"),
        (
            "[[runs]]\ntask = 'digits'\nseed = " + str(list(range(200))) + "\nlr = " + str([0.1] * 200) + "\n",
            "more than 20000",
        ),
        ("name = 'x'\n", "needs at least one [[runs]] table"),
        (
            "fresh_processes = 'yes'\n[[runs]]\ntask = 'digits'\nadapter = 'native'\n",
            "fresh_processes must be true or false",
        ),
    ],
)
def test_bad_suite_files_are_refused_clearly(tmp_path, text, message):
    with pytest.raises(SpecError, match=message.replace("[", r"\[").replace("]", r"\]")) as caught:
        load_suite_file(write(tmp_path, text), "cpu")
    assert "\n" not in str(caught.value)


def test_a_suite_file_can_ask_for_fresh_processes(tmp_path):
    runs = "[[runs]]\ntask = 'digits'\nadapter = 'native'\n"
    assert not load_suite_file(write(tmp_path, runs), "cpu").fresh_processes
    assert load_suite_file(write(tmp_path, "fresh_processes = true\n" + runs), "cpu").fresh_processes


def test_unreadable_file_is_a_clear_error(tmp_path):
    with pytest.raises(SpecError, match="cannot read suite file"):
        load_suite_file(tmp_path / "missing.toml", "cpu")


@given(st.text(max_size=200))
def test_fuzzed_suite_text_parses_or_is_refused(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("fuzz") / "suite.toml"
    path.write_text(text, encoding="utf-8")
    try:
        suite = load_suite_file(path, "cpu")
    except SpecError as error:
        assert str(error) and "\n" not in str(error)
    else:
        assert suite.specs


@given(
    st.dictionaries(
        st.sampled_from(["task", "adapter", "steps", "lr", "seed", "batch_size", "precision", "options", "mode"]),
        st.one_of(
            st.integers(-3, 10**9),
            st.floats(allow_nan=True),
            st.text(max_size=6),
            st.booleans(),
            st.lists(st.integers(0, 3), max_size=3),
        ),
        max_size=6,
    )
)
def test_fuzzed_run_tables_parse_or_are_refused(tmp_path_factory, run):
    import tomllib

    lines = ["[[runs]]"]
    for key, value in run.items():
        if isinstance(value, str):
            value_text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
        elif isinstance(value, bool):
            value_text = "true" if value else "false"
        elif isinstance(value, float) and value != value:
            value_text = "nan"
        elif isinstance(value, float) and value in (float("inf"), float("-inf")):
            value_text = "inf" if value > 0 else "-inf"
        else:
            value_text = str(value)
        lines.append(f"{key} = {value_text}")
    text = "\n".join(lines) + "\n"
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # the generator wrote something TOML itself rejects; the text fuzz covers that path
    path = tmp_path_factory.mktemp("fuzz") / "suite.toml"
    path.write_text(text, encoding="utf-8")
    try:
        load_suite_file(path, "cpu")
    except SpecError as error:
        assert str(error) and "\n" not in str(error)


def test_builtin_suites_interleave_every_repeat_and_carry_the_version_matrix():
    from harness.suites import VERSION_MATRIX, get_suite

    standard = get_suite("standard", "cpu")
    assert standard.repeats == 3 and standard.eval_every == 10
    ids = [spec.spec_id for spec in standard.specs]
    assert len(ids) == len(set(ids))  # no spec twice
    per_repeat = [[s for s in standard.specs if s.repeat == r] for r in range(3)]
    assert len({len(group) for group in per_repeat}) == 1
    # A B C A B C: every repeat of the matrix finishes before the next one starts.
    assert [s.repeat for s in standard.specs] == sorted(s.repeat for s in standard.specs)
    for variant in VERSION_MATRIX:
        cells = {(s.task, s.mode) for s in per_repeat[0] if s.adapter == variant}
        assert cells == {(t, m) for t in ("digits", "tabular", "charlm") for m in ("aligned", "defaults")}
    assert get_suite("quick", "cpu").eval_every == 10
