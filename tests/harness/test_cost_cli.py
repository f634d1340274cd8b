"""``bakeoff cost``: the cells and protocol it plans, bad input (exit 2, nothing run), and real small runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.cost import record as cost_record
from tests.conftest import PLUGINS, REPO_ROOT

SUITE_FILE = REPO_ROOT / "benchmarks" / "suites" / "cost-paired.toml"


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_default_cells_are_the_target_cells_with_the_a_a_check(capsys):
    code, out, _ = run_cli(capsys, "cost", "--dry-run")
    assert code == 0
    listed = [line.split("  ", 2)[-1] for line in out.splitlines() if "scaling[width=64]" in line]
    assert listed[0] == "scaling[width=64] native aligned fp32 s0"
    assert {" ".join(label.split()[1:3]) for label in listed[1:]} == {
        f"{adapter} {mode}" for adapter in ("lightning", "fastai", "keras", "hf") for mode in ("aligned", "defaults")
    }
    assert "rounds=40, steps=100, warmup=20" in out and "threads=1" in out


def test_the_suite_file_gives_the_same_cells_and_its_protocol(capsys):
    code, out, _ = run_cli(capsys, "cost", "--suite-file", str(SUITE_FILE), "--dry-run", "--rounds", "12")
    assert code == 0
    assert "9 cells from suite cost-paired" in out
    assert "rounds=12, steps=100" in out  # the flag over the suite's table
    assert "results in results/cost-paired/cost" in out


BAD = [
    (["--rounds", "2"], "at least 6 rounds"),
    (["--steps", "500"], "cross an epoch"),
    (["--steps", "20", "--warmup", "19"], "must exceed warmup"),
    (["--adapters", "nope"], "unknown adapter 'nope'"),
    (["--passes", "paired,bogus"], "unknown cost pass 'bogus'"),
    (["--task", "nope"], "unknown task 'nope'"),
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--tracking-uri", "http://127.0.0.1:9"], "tracking server http://127.0.0.1:9 is unreachable"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--adapters", "lightning", "--no-aa", "--modes", "sideways"], "unknown mode 'sideways'"),
    (["--adapters", "native", "--no-aa"], "no cells to measure"),
    (["--results-dir", "../up"], "refusing a path that climbs out"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "cost", *args)
    assert code == 2, out
    assert err.startswith("bakeoff: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('cost = "sometimes"', "suite cost must be one of: process, paired"),
        ('cost = "paired"\n[cost_protocol]\nspeed = 3', "unknown key 'speed'"),
        ('cost = "paired"\n[cost_protocol]\nrounds = 1', "at least 6 rounds"),
        ('cost = "paired"\ncost_protocol = 4', "cost_protocol must be a table"),
    ],
)
def test_bad_cost_settings_in_a_suite_file_exit_2_before_anything_runs(capsys, tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    suite = tmp_path / "s.toml"
    suite.write_text(_suite_text(text))
    for command in (
        ["cost", "--suite-file", str(suite), "--dry-run"],
        ["bench", "--suite-file", str(suite), "--no-tracking"],
    ):
        code, _, err = run_cli(capsys, *command)
        assert code == 2 and message in err, err
    assert not (tmp_path / "results").exists()


def _suite_text(cost_lines: str) -> str:
    """A one-run suite with the given top-level cost settings (tables after the plain keys)."""
    head, _, table = cost_lines.partition("\n[cost_protocol]")
    text = f'name = "s"\n{head}\n'
    if table:
        text += f"[cost_protocol]{table}\n"
    return text + '[[runs]]\ntask = "scaling"\nadapter = "native"\nbatch_size = 32\n'


def test_bench_dry_run_of_a_paired_suite_lists_its_specs(capsys):
    code, out, _ = run_cli(capsys, "bench", "--suite-file", str(SUITE_FILE), "--dry-run")
    assert code == 0 and "9 specs in suite 'cost-paired'" in out


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), str(PLUGINS)])}
    return subprocess.run(
        [sys.executable, "-m", "harness", "cost", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )


def test_a_small_paired_run_writes_a_valid_record_and_resumes(tmp_path):
    args = [
        "--adapters",
        "cost-item2",
        "--no-aa",
        "--modes",
        "aligned",
        "--passes",
        "paired",
        "--rounds",
        "6",
        "--steps",
        "30",
        "--warmup",
        "10",
        "--profile-rounds",
        "1",
        "--results-dir",
        str(tmp_path / "out"),
    ]
    completed = _cli(args, REPO_ROOT)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "[1/1] scaling[width=64] cost-item2 aligned fp32 | wall " in completed.stdout
    assert "syncs 2/step" in completed.stdout
    records, problems = cost_record.read_folder(tmp_path / "out")
    assert problems == [] and len(records) == 1
    (record,) = records
    assert record["status"] == "ok" and len(record["rounds"]) == 6 and record["protocol"]["rounds"] == 6
    assert record["syncs"]["adapter"]["per_step"] == 2.0
    assert record["attribution"]["steps"] == 20
    text = json.dumps({key: record[key] for key in ("attribution", "syncs", "cell", "rounds")})
    assert str(REPO_ROOT) not in text and "site-packages" not in text  # call sites carry no machine path
    again = _cli(args, REPO_ROOT)
    assert again.returncode == 0 and "(done earlier)" in again.stdout


def test_the_imports_pass_writes_one_record_per_library_and_checks_the_clean_processes(tmp_path):
    args = [
        "--adapters",
        "cost-item2",
        "--no-aa",
        "--modes",
        "aligned",
        "--passes",
        "imports",
        "--import-blocks",
        "2",
        "--steps",
        "30",
        "--warmup",
        "10",
        "--results-dir",
        str(tmp_path),
    ]
    completed = _cli(args, REPO_ROOT)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    record = cost_record.read(tmp_path / "contamination-cost-item2.json")
    assert record["status"] == "ok" and record["module"] == "bakeoff_cost_adapters"
    assert len(record["blocks"]) == 2
    assert all(block["clean"]["libraries_loaded"] == [] for block in record["blocks"])
    assert all(block["clean"]["module"] is None for block in record["blocks"])
    assert "[4/4] block 2" in completed.stdout


@pytest.mark.slow
def test_a_planted_import_contamination_is_found(tmp_path):
    """A module whose import slows SGD.step by 1 ms of thread CPU: the native loop with it imported is slower."""
    args = [
        "--adapters",
        "cost-contaminating",
        "--no-aa",
        "--modes",
        "aligned",
        "--passes",
        "imports",
        "--import-blocks",
        "6",
        "--steps",
        "30",
        "--warmup",
        "10",
        "--results-dir",
        str(tmp_path),
    ]
    completed = _cli(args, REPO_ROOT)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    record = cost_record.read(tmp_path / "contamination-cost-contaminating.json")
    thread = record["summary"]["thread"]["difference"]
    assert thread["low"] > 0 and thread["high"] >= 1000.0, thread
