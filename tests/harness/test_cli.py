"""The CLI: bad input is one line on stderr, exit code 2, and nothing written."""

from __future__ import annotations

import os

import pytest

from harness.cli import main


def run_cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


BAD_RUNS = [
    (["--task", "nope"], "unknown task 'nope'; choose one of: charlm, cifar10, digits"),
    (["--task", "digits", "--adapter", "nope"], "unknown adapter 'nope'; choose one of:"),
    (["--task", "digits", "--precision", "fp64"], "unknown precision 'fp64'"),
    (["--task", "digits", "--precision", "fp16", "--device", "cpu"], "unknown precision 'fp16'"),
    (["--task", "digits", "--batch-size", "0"], "batch-size must be a positive integer"),
    (["--task", "digits", "--steps", "-1"], "steps must be a positive integer"),
    (["--task", "digits", "--lr", "0"], "lr must be a positive finite number"),
    (["--task", "digits", "--world-size", str((os.cpu_count() or 1) + 1)], "CPU cores; this machine has"),
    (["--task", "digits", "-o", "width=3"], "task 'digits' has no option 'width'"),
    (["--task", "scaling", "-o", "width=abc"], "task option 'width' must be int"),
    (["--task", "digits", "--steps", "ten"], "invalid int value"),
    (["--task", "digits", "--results-dir", "../escape"], "refusing a path that climbs out"),
    (["--task", "digits", "--timeout", "-5"], "must be positive"),
    (["--task", "digits", "--device", "tpu"], "unknown device 'tpu'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_RUNS)
def test_bad_run_input_exits_2_with_one_line_and_writes_nothing(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    results = tmp_path / "out"
    extra = [] if "--results-dir" in args else ["--results-dir", str(results)]
    code, _out, err = run_cli(capsys, "run", *args, *extra)
    assert code == 2
    assert err.startswith("bakeoff: error: ") and message in err
    assert err.count("\n") == 1
    assert not results.exists() and not (tmp_path / "results").exists()


def test_bad_suite_name_and_missing_command(capsys):
    code, _, err = run_cli(capsys, "bench", "--suite", "huge")
    assert code == 2 and "unknown suite 'huge'; choose one of:" in err
    code, _, err = run_cli(
        capsys,
    )
    assert code == 2 and "required: COMMAND" in err


def test_list_shows_tasks_adapters_and_suites(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    for name in ("digits", "tabular", "charlm", "scaling", "mnist", "cifar10", "native", "quick"):
        assert name in out
    assert "<adapter>@<version>" in out  # the version matrix is discoverable


def test_dry_run_lists_specs(capsys):
    code, out, _ = run_cli(capsys, "bench", "--suite", "smoke", "--dry-run", "--device", "cpu")
    assert code == 0 and "digits native aligned fp32" in out and "1 specs in suite 'smoke'" in out


def test_env_never_prints_secrets(capsys, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "planted-secret-value-123")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    code, out, _ = run_cli(capsys, "env")
    assert code == 0 and "planted-secret-value-123" not in out and "AWS_SECRET" not in out
    assert '"OMP_NUM_THREADS": "2"' in out


def test_run_prints_summary_with_digest_and_result_path(capsys, tmp_path):
    code, out, _ = run_cli(
        capsys, "run", "--task", "scaling", "--steps", "3", "--device", "cpu", "--results-dir", str(tmp_path)
    )
    assert code == 0
    first, second = out.strip().splitlines()
    assert first.startswith("scaling native aligned fp32 s0 | ok |") and "weights " in first
    assert second.startswith(f"result: {tmp_path}/") and second.endswith(".json")


def test_bench_prints_progress_with_an_estimate_and_honours_no_zygote(capsys, tmp_path, monkeypatch):
    from harness import runner
    from harness.result import base_result

    seen = {}

    def fake_run_suite(specs, options, progress=None):
        seen["zygote"] = options.zygote
        results = []
        for index, spec in enumerate(specs, start=1):
            result = base_result(spec, status="ok")
            results.append(result)
            progress(index, len(specs), spec, result, False, 2.0)
        return results

    monkeypatch.setattr(runner, "run_suite", fake_run_suite)
    code, out, _ = run_cli(capsys, "bench", "--suite", "smoke", "--device", "cpu", "--no-tracking", "--no-zygote",
                           "--results-dir", str(tmp_path))
    assert code == 0 and seen["zygote"] is False
    lines = out.splitlines()
    assert lines[0].endswith("a fresh process per spec")
    assert lines[1].startswith("[1/1, 100% done] digits native aligned fp32 s0 | ok") and "elapsed, done" in lines[1]
    assert lines[-1].startswith("suite smoke: 1 ok (1 specs) in ") and f"results in {tmp_path}" in lines[-1]
    code, _, _ = run_cli(capsys, "bench", "--suite", "smoke", "--device", "cpu", "--no-tracking",
                         "--results-dir", str(tmp_path / "again"))
    assert seen["zygote"] is True  # the default: forked from a zygote
