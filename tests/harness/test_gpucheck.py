"""The GPU check: what its suite covers, its set-up and bundle, batch crash recovery, and the CPU dry run.

``test_the_cpu_dry_run_runs_every_group_and_publishes`` is the dry run CI runs so the GPU command
cannot rot: ``benchmarks/gpu_check.py --device cpu`` end to end (wheels check, peaks, every
group, the event-clock check, verdicts, the three returned files), then ``publish`` on the
returned files (ingest + report into this test's private MLflow store).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from harness import gpucheck
from tests.conftest import REPO_ROOT, small_spec

ADAPTERS = {"native", "lightning", "fastai", "keras", "hf", "flash"}


def by_name(device: str) -> dict[str, gpucheck.Group]:
    return {group.name: group for group in gpucheck.gpu_groups(device)}


def test_the_gpu_suite_has_what_a_gpu_must_show():
    groups = by_name("cuda")
    assert next(iter(groups)) == "charlm-100m-native"  # the MFU figure first: it survives a short window
    big = [spec for name in ("charlm-100m-native", "charlm-100m-adapters") for spec in groups[name].specs]
    assert {spec.adapter for spec in big} == ADAPTERS
    assert all(
        s.options == {"preset": "gpt2-100m"} and s.precision == "bf16-mixed" and s.compile and s.device == "cuda"
        for s in big
    )
    assert groups["charlm-100m-adapters"].mode == "process"  # throughput from fresh processes
    alignment = groups["alignment"].specs
    for precision in ("fp32", "bf16-mixed", "fp16-mixed"):
        assert {s.adapter for s in alignment if s.precision == precision} == ADAPTERS, precision
    assert {s.adapter for s in alignment if s.tf32} == ADAPTERS
    assert {s.adapter for s in alignment if not s.tf32 and s.precision == "fp32"} == ADAPTERS  # TF32 off too
    assert {s.task for s in alignment} >= {"digits", "charlm", "tabular"}
    compiled = groups["compile"].specs
    assert {s.adapter for s in compiled if s.compile} == ADAPTERS
    assert any(s.adapter == "native" and not s.compile for s in compiled)  # native eager, the other reference
    distributed = groups["distributed"].specs
    assert any(s.ddp and s.world_size == 1 and s.adapter == "native" for s in distributed)  # NCCL at one rank
    assert {s.adapter for s in distributed if s.world_size == 2} == {"native", "lightning", "hf", "fastai"}
    for group in groups.values():
        ids = [spec.spec_id for spec in group.specs]
        assert len(ids) == len(set(ids)), group.name
    suite = gpucheck.gpu_suite("cuda")
    assert len(suite.specs) == sum(len(group.specs) for group in groups.values())


def test_the_dry_run_has_the_same_groups_at_tiny_sizes():
    cuda, cpu = by_name("cuda"), by_name("cpu")
    assert set(cpu) == set(cuda) - {"charlm-100m-native-extras"}
    assert all(spec.device == "cpu" for group in cpu.values() for spec in group.specs)
    assert cpu["charlm-100m-native"].specs[0].options["preset"] == "gpt2-100m"  # the preset path, tiny overrides
    assert cpu["charlm-100m-native"].specs[0].options["layers"] == 1
    assert "flash" not in {s.adapter for group in cpu.values() for s in group.specs}  # no isolated env in CI
    assert max(s.steps for group in cpu.values() for s in group.specs) <= 6


def test_targets_read_native_mfu_and_each_adapters_throughput_ratio():
    def result(adapter, median_us, mfu):
        spec = small_spec(task="charlm", adapter=adapter, options={"preset": "gpt2-100m"}, compile=True)
        return {"spec": spec.to_dict(), "status": "ok", "summary": {"median_step_us": median_us, "mfu": mfu}}

    figures = gpucheck.targets([result("native", 100.0, 0.46), result("hf", 102.0, 0.45), result("keras", 110.0, 0.4)])
    assert figures["native_meets_mfu_target"] is True
    assert figures["adapters"]["hf"]["within_3_percent"] is True  # 100/102 = 0.98
    assert figures["adapters"]["keras"]["within_3_percent"] is False  # 100/110 = 0.91
    assert gpucheck.targets([])["native"] == "not measured"


def _fake_wheel(folder: Path, name: str = "bakeoff_fake_wheel", version: str = "0.1") -> Path:
    """A minimal valid wheel of a one-module distribution."""
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{name}.py", "ANSWER = 42\n")
        wheel.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        wheel.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        wheel.writestr(f"{info}/RECORD", "")
    return path


def test_missing_packages_install_offline_from_carried_wheels(tmp_path, monkeypatch):
    wheels = tmp_path / "whl"
    wheels.mkdir()
    _fake_wheel(wheels)
    monkeypatch.setattr(gpucheck, "WHEEL_PACKAGES", ("bakeoff-fake-wheel",))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", "")
    record = gpucheck.install_wheels(wheels, tmp_path / "site", print)
    assert record["needed"] == ["bakeoff-fake-wheel"] and "error" not in record, record
    assert record["installed"] == ["bakeoff_fake_wheel-0.1-py3-none-any.whl"]
    assert (tmp_path / "site" / "bakeoff_fake_wheel.py").is_file()
    done = subprocess.run(
        [sys.executable, "-c", "import bakeoff_fake_wheel as m; print(m.ANSWER)"],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path / "site")},
    )
    assert done.stdout.strip() == "42"  # workers see it through PYTHONPATH
    empty = gpucheck.install_wheels(tmp_path / "none", tmp_path / "site2", print)
    assert empty["needed"] == [] or "no wheels" in empty.get("error", "")


def test_the_wheel_list_names_every_package_once():
    folders = gpucheck.wheel_requirements()
    assert set(folders) == {"", "flash"}
    names = [requirement.split("==")[0] for requirement in folders[""]]
    assert {"fastai", "keras"} <= set(names) and len(names) == len(set(names))
    assert all("==" in requirement for group in folders.values() for requirement in group)


@pytest.mark.usefixtures("plugin_env")
def test_a_batch_that_dies_fails_only_the_spec_it_was_running(tmp_path):
    from harness.batch import run_batch

    specs = [
        small_spec(options={"width": 8}, steps=3),
        small_spec(adapter="fault-kill", options={"width": 8}, steps=3),
        small_spec(options={"width": 8}, steps=3, seed=1),
    ]
    results = run_batch(specs, tmp_path, timeout_s=600, log=print)
    assert [r["status"] for r in results] == ["ok", "failed", "ok"]
    assert "died running it" in results[1]["error"]
    assert results[0]["timing"]["process"]["mode"] == "batch"
    assert results[2]["timing"]["process"] == {"mode": "batch", "position": 1, "of": 1}  # the restarted batch


def test_the_cpu_dry_run_runs_every_group_and_publishes(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    command = [
        sys.executable,
        str(REPO_ROOT / "benchmarks" / "gpu_check.py"),
        "--device",
        "cpu",
        "--work",
        str(work),
        "--out",
        str(out),
    ]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.log", "gpu-results.tar.gz", "gpu-summary.json"]
    summary = json.loads((out / "gpu-summary.json").read_text())
    assert [g["name"] for g in summary["groups"]] == [g.name for g in gpucheck.gpu_groups("cpu")]
    assert all(g["status"] == "ran" for g in summary["groups"])
    expected = {spec.spec_id for spec in gpucheck.gpu_suite("cpu").specs}
    with tarfile.open(out / "gpu-results.tar.gz") as tar:
        names = tar.getnames()
    assert {Path(n).name.removesuffix(".json") for n in names if n.endswith(".json")} == expected
    runs = {row["label"]: row for row in summary["runs"]}
    unsupported = {label for label, row in runs.items() if row["status"] == "unsupported"}
    assert all(" tf32 " in label or (" hf " in label and "fp16" in label) for label in unsupported)
    assert not [label for label, row in runs.items() if row["status"] == "failed"], summary["runs"]
    assert summary["verdicts"] and summary["declarations_false"] == [], summary["declarations_false"]
    assert {"fp32", "bf16", "fp16"} <= set(summary["peaks"])
    assert summary["event_clock"]["agree"] is True
    audit = {row["adapter"]: row for row in summary["sync_audit"]["adapters"]}
    assert audit["native"]["counter_per_step"] == 0.0  # the native loop reads nothing back per step
    assert all(row["status"] == "ok" and "torch_per_step" not in row for row in audit.values()), audit
    assert summary["sync_audit"]["confirmed_by_torch"] is False  # no CUDA here: nothing to confirm with
    (ddp1,) = summary["distributed"]
    assert ddp1["backend"] == "gloo" and ddp1["world_size"] == 1
    ok = [row for row in summary["runs"] if row["status"] == "ok"]
    assert all(row["mfu"] is not None or row["achieved_over_measured_peak"] for row in ok)  # a figure either way
    compiled = [row for label, row in runs.items() if " compiled " in label]
    assert compiled and all(row["compile_s"] is not None for row in compiled)
    assert "executable" not in summary["environment"]

    published = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "benchmarks" / "gpu_check.py"),
            "publish",
            str(out),
            "--results-root",
            str(tmp_path / "results"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert published.returncode == 0, published.stdout[-3000:] + published.stderr[-3000:]
    assert f"{len(expected)} new runs" in published.stdout
    assert "report " in published.stdout and "report.html" in published.stdout
    assert len(list((tmp_path / "results" / "gpu").glob("*.json"))) == len(expected)


def test_the_sync_audit_counts_a_planted_read_and_none_for_native(plugin_env):
    """On the CPU the audit is the counter alone: native 0 per step, the planted two .item() calls 2."""
    from harness.gpucheck import sync_audit

    audit = sync_audit("cpu", ("native", "cost-item2"), steps=14, warmup=4)
    rows = {row["adapter"]: row for row in audit["adapters"]}
    assert rows["native"]["counter_per_step"] == 0.0 and rows["cost-item2"]["counter_per_step"] == 2.0, rows
    assert any("bakeoff_cost_adapters.py" in site for site in rows["cost-item2"]["sites"])
    assert audit["confirmed_by_torch"] is False and "CPU dry run" in audit["note"]
