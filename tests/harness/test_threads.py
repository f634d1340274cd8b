"""The thread layout is part of a run's identity: in the spec, resolved from the environment by the
CLI and suites, applied by the worker and recorded per rank."""

from __future__ import annotations

import json

import pytest

from harness.cli import main
from harness.spec import THREADS_ENV, Spec, SpecError, threads_from_environment, with_threads
from harness.suites import load_suite_file
from tests.conftest import small_spec

GOLDEN_DIGITS_ID = "d5cc3f4e8ec6ec2b"
"""The id tests/golden/digits.json recorded before the layout was a spec field."""


def test_the_automatic_layout_keeps_existing_ids_and_a_count_makes_its_own():
    automatic = Spec(task="digits", adapter="native", batch_size=64, steps=12, lr=0.05)
    assert automatic.spec_id == GOLDEN_DIGITS_ID
    assert "threads" not in json.loads(automatic.canonical_json())
    one, two = with_threads(automatic, 1), with_threads(automatic, 2)
    assert len({automatic.spec_id, one.spec_id, two.spec_id}) == 3
    assert json.loads(one.canonical_json())["threads"] == 1
    assert Spec.from_dict(json.loads(one.canonical_json())) == one
    assert " t1 " in one.label and not any(part[0] == "t" and part[1:].isdigit() for part in automatic.label.split())
    assert with_threads(one, 2) == one  # a spec's own count wins over a session-wide one


@pytest.mark.parametrize("value", [0, -1, 1025, True, 1.5, "2"])
def test_invalid_thread_counts_are_refused(value):
    with pytest.raises(SpecError, match="threads must be an integer from 1 to 1024"):
        small_spec(threads=value)


def test_environment_setting_is_parsed_strictly():
    assert threads_from_environment({}) is None
    assert threads_from_environment({THREADS_ENV: " "}) is None
    assert threads_from_environment({THREADS_ENV: "3"}) == 3
    for bad in ("0", "two", "-2", "5000"):
        with pytest.raises(SpecError, match=THREADS_ENV):
            threads_from_environment({THREADS_ENV: bad})


def dry_run_ids(capsys, *args) -> list[str]:
    code = main(["bench", "--suite", "smoke", "--dry-run", "--device", "cpu", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return [line.split()[0] for line in out.splitlines()[:-1]]


def test_cli_and_environment_resolve_the_layout_into_the_spec_id(capsys, monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    automatic = dry_run_ids(capsys)
    flagged = dry_run_ids(capsys, "--threads", "1")
    monkeypatch.setenv(THREADS_ENV, "1")
    from_environment = dry_run_ids(capsys)
    overridden = dry_run_ids(capsys, "--threads", "2")
    assert automatic != flagged and flagged == from_environment  # resume cannot mix the two layouts
    assert overridden not in (automatic, flagged)


def test_bad_thread_input_is_one_line_exit_2(capsys, monkeypatch, tmp_path):
    assert main(["run", "--task", "digits", "--threads", "0", "--results-dir", str(tmp_path)]) == 2
    assert "--threads must be an integer from 1 to 1024" in capsys.readouterr().err
    monkeypatch.setenv(THREADS_ENV, "many")
    assert main(["bench", "--suite", "smoke", "--dry-run"]) == 2
    assert f"{THREADS_ENV}='many' must be an integer" in capsys.readouterr().err


def test_suite_files_take_a_layout_per_run_or_for_the_whole_suite(tmp_path):
    suite = tmp_path / "layouts.toml"
    suite.write_text(
        'threads = 2\n[[runs]]\ntask = "digits"\nadapter = "native"\nthreads = [1, 3]\n'
        '[[runs]]\ntask = "scaling"\nadapter = "native"\n'
    )
    specs = load_suite_file(suite, "cpu").specs
    assert [(spec.task, spec.threads) for spec in specs] == [("digits", 1), ("digits", 3), ("scaling", 2)]
    suite.write_text('threads = 0\n[[runs]]\ntask = "digits"\nadapter = "native"\n')
    with pytest.raises(SpecError, match="suite threads must be a positive integer"):
        load_suite_file(suite, "cpu")


def test_worker_applies_the_spec_layout_and_records_it_per_rank(inline, monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    result = inline(small_spec(steps=2, threads=1))
    assert result["status"] == "ok"
    assert result["threads"]["requested"] == 1 and result["threads"]["source"] == "spec"
    assert result["threads"]["per_rank"] == [1]
    assert result["environment"]["torch_threads"] == 1
    automatic = inline(small_spec(steps=2))
    assert automatic["threads"]["requested"] is None and automatic["threads"]["source"].startswith("automatic")
    assert automatic["threads"]["per_rank"] == [automatic["environment"]["torch_threads"]]


def test_worker_refuses_an_automatic_spec_under_a_contradicting_environment(inline, monkeypatch):
    monkeypatch.setenv(THREADS_ENV, "1")
    result = inline(small_spec(steps=2))
    assert result["status"] == "failed"
    assert f"{THREADS_ENV}=1 is set but this spec's thread layout is automatic" in result["error"]
    assert result["trajectory"]["losses"] == []  # refused before training


def test_thread_layout_of_a_result_old_and_new():
    from harness.layout import same_thread_layout, thread_layout

    new = {"spec": {"world_size": 2}, "threads": {"per_rank": [1, 1]}, "environment": {"torch_threads": 1}}
    other = {"spec": {"world_size": 2}, "threads": {"per_rank": [2, 2]}}
    old = {"spec": {"world_size": 2}, "environment": {"torch_threads": 1}}  # before per-rank counts were kept
    assert thread_layout(new) == (1, 1) and thread_layout(old) == (1, None)
    assert thread_layout({"spec": {"world_size": 1}}) is None
    assert same_thread_layout(new, dict(new)) is True and same_thread_layout(new, other) is False
    assert same_thread_layout(new, old) is None  # unknown is not "the same"
