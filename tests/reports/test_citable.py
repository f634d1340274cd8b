"""The citable report: statistics with CIs, decomposition, parity, reproducibility, verify, browser.

Results are synthetic (valid result dicts with planted step times, losses and weights) logged into a
temporary SQLite MLflow store, so every expected figure is known in advance and nothing is trained.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from harness import ingest
from harness.cli import main
from harness.stats import compare_medians as compare_ci
from reports.analysis import CellRuns, combined_verdict, time_to_target
from reports.build import build_report, verify_report, write_report
from reports.source import RunRecord, Selection, records_from_results
from tasks.scaling import flops_per_sample
from tests.reports.synthetic import make_result, save, spec

SUITE = "cite"
SAMPLES = 400
CHROMIUM = "/usr/bin/chromium"
STEPS = 16
WIDTHS = (16, 64, 256, 1024)
NATIVE_FIXED_US, LIGHTNING_FIXED_US, US_PER_GFLOP = 200.0, 600.0, 5000.0
EVAL_STEPS = (4, 8, 12, 16)


def _weights(scale: float = 0.0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    weight, bias = torch.randn(4, 4, generator=generator), torch.randn(4, generator=generator)
    return {"fc.weight": weight + scale, "fc.bias": bias}


def _planted_native_steps(rng: np.random.Generator | None = None) -> list[list[float]]:
    """The three native repeats' step times: the first draws of the suite's generator."""
    rng = rng if rng is not None else np.random.default_rng(3)
    return [list(rng.normal(1000, 20, STEPS)) for _ in range(3)]


def synthetic_results() -> list[tuple[dict, dict | None]]:
    """(result, final weights) for a small suite with known answers."""
    rng = np.random.default_rng(3)
    losses = [2.3 - 0.05 * i for i in range(STEPS)]
    out = []
    native_steps = _planted_native_steps(rng)
    for repeat in range(3):
        # Interleaved as the suites run them: native, lightning aligned, lightning defaults, keras.
        out.append((make_result(spec(steps=STEPS, repeat=repeat), step_us=native_steps[repeat], losses=losses),
                    _weights()))
        out.append((make_result(spec(adapter="lightning", steps=STEPS, repeat=repeat),
                                step_us=list(rng.normal(1300, 20, STEPS)), losses=losses), _weights()))
        # Periodic validation every 4 steps: lightning defaults never reaches digits' 0.9 target ...
        out.append((make_result(spec(adapter="lightning", mode="defaults", steps=STEPS, repeat=repeat),
                                step_us=list(rng.normal(1600, 20, STEPS)), losses=[v + 0.01 for v in losses],
                                evals=list(zip(EVAL_STEPS, (0.5, 0.6, 0.7, 0.8), strict=True)), target=0.9), None))
        # keras: the native step times exactly (no measurable difference) and a rounding-sized loss drift (close);
        # ... and keras reaches the target at its third validation (step 12).
        out.append((make_result(spec(adapter="keras", steps=STEPS, repeat=repeat), step_us=native_steps[repeat],
                                losses=[v + (1e-7 if i >= 3 else 0.0) for i, v in enumerate(losses)],
                                evals=list(zip(EVAL_STEPS, (0.5, 0.8, 0.92, 0.95), strict=True)), target=0.9),
                    _weights(1e-7)))
    # fastai: different math from step 5 on (diverged); and one failed bf16 run.
    out.append((make_result(spec(adapter="fastai", steps=STEPS), step_us=list(rng.normal(1100, 20, STEPS)),
                            losses=[v + (0.5 if i >= 5 else 0.0) for i, v in enumerate(losses)]), _weights(0.3)))
    out.append((make_result(spec(adapter="fastai", steps=STEPS, precision="bf16-mixed"), status="failed"), None))
    # bf16 vs fp32: native bf16 ends 2% above fp32 (declared drift for bf16 is 10%).
    bf16 = [v * 1.02 for v in losses]
    out.append((make_result(spec(steps=STEPS, precision="bf16-mixed"), step_us=list(rng.normal(900, 20, STEPS)),
                            losses=bf16), _weights(1e-2)))
    # DDP (2 ranks × 32 = 64) and accumulation (2 × 32 = 64) against single-process native.
    out.append((make_result(spec(steps=STEPS, world_size=2, batch_size=32), step_us=list(rng.normal(1500, 20, STEPS)),
                            losses=losses), _weights()))
    out.append((make_result(spec(adapter="lightning", steps=STEPS, grad_accum=2, batch_size=32),
                            step_us=list(rng.normal(1800, 20, STEPS)), losses=[v + 2e-7 for v in losses]),
                _weights(2e-7)))
    out.append((make_result(spec(adapter="keras", steps=STEPS, world_size=2, batch_size=32), status="unsupported"),
                None))
    for width in WIDTHS:
        gflops = flops_per_sample(width, 2) * 64 / 1e9
        for adapter, fixed in (("native", NATIVE_FIXED_US), ("lightning", LIGHTNING_FIXED_US)):
            step_us = list(rng.normal(fixed + US_PER_GFLOP * gflops, 5, STEPS))
            out.append((make_result(spec(task="scaling", adapter=adapter, steps=STEPS, options={"width": width}),
                                    step_us=step_us), None))
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("results")
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    results = []
    for result, weights in synthetic_results():
        save(folder, result, weights)
        results.append(result)
    logged = ingest.log_results(results, results_dir=folder, suite=SUITE, uri=uri, command="ingest")
    assert len(logged.logged) == len(results)
    report = build_report(uri, Selection(suite=SUITE), samples=SAMPLES)
    return uri, folder, results, report


@pytest.fixture(scope="module")
def written(store, tmp_path_factory):
    return write_report(store[3], tmp_path_factory.mktemp("reports"))


def _row(table, **match):
    rows = [r for r in table.rows if all(r.get(k) == v for k, v in match.items())]
    assert len(rows) == 1, (match, [r.get("cell") or r.get("run") for r in table.rows])
    return rows[0]


def test_offline_records_equal_what_mlflow_holds(store):
    """The records the property tests build without MLflow are exactly what the store returns."""
    _, folder, results, report = store
    offline = {r.tag("spec_id"): r for r in records_from_results(results, folder)}
    for record in report.records:
        twin = offline[record.tag("spec_id")]
        def ours(tags):
            return {k: v for k, v in tags.items() if k.startswith("bakeoff.") and k != "bakeoff.suite"}

        assert ours(record.tags) == ours(twin.tags)
        assert record.tags.get("mlflow.note.content") == twin.tags.get("mlflow.note.content")
        assert record.params == twin.params
        assert record.metrics == twin.metrics
        assert record.histories == twin.histories
        assert record.environment == twin.environment


def test_overhead_table_has_cis_repeats_and_a_verdict(store):
    table = store[3].tables["overhead"]
    single = {"task": "digits", "mode": "aligned", "precision": "fp32", "world_size": 1, "grad_accum": 1}
    native = _row(table, adapter="native", **single)
    lightning = _row(table, adapter="lightning", **single)
    keras = _row(table, adapter="keras", **single)
    assert native["repeats"] == lightning["repeats"] == keras["repeats"] == 3
    assert native["runs"] == "3 ok" and native["test_verdict"] == "reference"
    assert native["median_step_low"] <= native["median_step_us"] <= native["median_step_high"]
    assert 950 < native["median_step_us"] < 1050
    # lightning was planted 30% slower: the CI excludes 1 and the test says slower.
    assert 1.2 < lightning["ratio_low"] <= lightning["ratio"] <= lightning["ratio_high"] < 1.4
    assert 200 < lightning["overhead_low"] <= lightning["overhead_us"] <= lightning["overhead_high"] < 400
    assert lightning["test_verdict"] == "slower" and lightning["p_value"] < 0.01
    # keras had exactly the native step times: no measurable difference is a result.
    assert keras["ratio"] == 1.0 and keras["ratio_low"] <= 1.0 <= keras["ratio_high"]
    assert keras["test_verdict"] == "no measurable difference"
    assert lightning["throughput"] == pytest.approx(64 / (lightning["median_step_us"] / 1e6))
    assert lightning["peak_mib"] == 300 and lightning["startup_s"] == 2.0
    assert lightning["wall_s_low"] <= lightning["wall_s"] <= lightning["wall_s_high"]
    # digits declares a target accuracy: lightning aligned had no periodic evaluation to time it with ...
    assert lightning["time_to_target"].startswith("not measured") and lightning.get("time_to_target_s") is None
    # ... keras met it at step 12 in every repeat: the time is the fit clock at that step (native's step times).
    expected = sorted(float(np.sum(native_steps[:12])) / 1e6 for native_steps in _planted_native_steps())
    assert keras["time_to_target"] == "accuracy ≥ 0.9 at step 12 in 3/3 runs (eval every 4)"
    assert keras["time_to_target_s"] == pytest.approx(expected[1], rel=1e-6)
    assert keras["time_to_target_low"] <= keras["time_to_target_s"] <= keras["time_to_target_high"]
    defaults = _row(table, adapter="lightning", **{**single, "mode": "defaults"})
    assert defaults["time_to_target"] == "accuracy ≥ 0.9 not reached in 3 runs"
    assert defaults.get("time_to_target_s") is None
    assert _row(table, task="scaling", adapter="native", options="width=16")["time_to_target"] == "no target declared"
    failed = _row(table, task="digits", adapter="fastai", precision="bf16-mixed")
    assert failed["runs"] == "1 failed" and failed["repeats"] == 0 and failed.get("median_step_us") is None


def test_validation_curves_are_plotted_against_training_time_for_tasks_with_a_target(store, written):
    report = store[3]
    targets = [name for name in report.figures if name.startswith("target-")]
    assert len(targets) == 1 and "digits" in targets[0]  # scaling declares no target; digits runs validated
    caption, png = report.figures[targets[0]]
    assert "target 0.9" in caption and png.startswith(b"\x89PNG")
    assert f"]({targets[0]})" in (written / "report.md").read_text(encoding="utf-8")
    # Every finished keras run validated (the keras DDP cell is unsupported: no run, no curve).
    keras = [r for r in report.records if r.tag("adapter") == "keras" and r.tag("status") == "ok"]
    assert len(keras) == 3
    for record in keras:
        assert [step for step, _ in record.histories["valid_metric"]] == list(EVAL_STEPS)


def test_a_verdict_needs_the_test_and_the_ci_to_agree():
    # Pooled steps say slower, but the repeats' CI still contains 1: no measurable difference.
    assert combined_verdict("slower", 0.95, 1.30) == "no measurable difference"
    assert combined_verdict("faster", 0.80, 1.00) == "no measurable difference"
    assert combined_verdict("slower", 1.05, 1.30) == "slower"
    assert combined_verdict("faster", 0.70, 0.95) == "faster"
    assert combined_verdict("no measurable difference", 1.2, 1.3) == "no measurable difference"
    assert combined_verdict("slower", None, None) == "slower"  # no CI to contradict it


def test_time_to_target_gives_a_time_only_when_every_run_reached_it():
    def row(seconds, step=None):
        return {"status": "ok", "evals_run": 4, "eval_every": 4, "time_to_target_s": seconds, "steps_to_target": step}

    digits = {"target_metric": 0.9, "metric_name": "accuracy", "higher_is_better": True}
    every = time_to_target(CellRuns(key=(), rows=[row(0.2, 8), row(0.3, 8), row(0.25, 8)]), digits, samples=200)
    assert every["time_to_target_s"] == 0.25 and every["target_reached_runs"] == 3
    assert every["time_to_target_low"] <= 0.25 <= every["time_to_target_high"]
    # One run of three missed: no median over the other two (it would flatter the cell).
    partly = time_to_target(CellRuns(key=(), rows=[row(0.2, 8), row(None), row(None)]), digits, samples=200)
    assert "time_to_target_s" not in partly and partly["target_reached_runs"] == 1
    assert partly["time_to_target"] == "accuracy ≥ 0.9 reached in only 1/3 runs (fastest 0.2 s at step 8) " \
        "(eval every 4): no time given"
    failed = {"status": "failed", "evals_run": 4, "time_to_target_s": None}
    assert time_to_target(CellRuns(key=(), rows=[failed, row(0.4, 12)]), digits, samples=200)["time_to_target_s"] == 0.4
    assert time_to_target(CellRuns(key=(), rows=[row(0.4, 12)]), {"target_metric": None}, samples=200) == {
        "time_to_target": "no target declared"}


def test_scaling_fit_recovers_the_planted_fixed_overhead(store):
    table = store[3].tables["scaling"]
    native = _row(table, adapter="native")
    lightning = _row(table, adapter="lightning")
    assert native["runs"] == lightning["runs"] == len(WIDTHS)
    for row, fixed in ((native, NATIVE_FIXED_US), (lightning, LIGHTNING_FIXED_US)):
        assert row["fixed_low"] <= fixed <= row["fixed_high"] and abs(row["fixed_us"] - fixed) < 15
        assert abs(row["slope_us_per_gflop"] - US_PER_GFLOP) < 100
    planted = LIGHTNING_FIXED_US - NATIVE_FIXED_US
    assert lightning["fixed_minus_native_us"] == pytest.approx(planted, abs=20)
    assert lightning["fixed_minus_native_low"] <= planted <= lightning["fixed_minus_native_high"]
    assert "scaling-fit.png" in store[3].figures


def test_defaults_cost_per_step_and_per_run(store):
    row = _row(store[3].tables["defaults"], adapter="lightning")
    assert row["repeats_defaults"] == row["repeats_aligned"] == 3
    assert 200 < row["step_cost_low"] <= row["step_cost_us"] <= row["step_cost_high"] < 400
    assert row["ratio_low"] > 1.1 and row["wall_s_cost"] > 0


def test_parity_table_names_step_tensor_and_difference(store):
    table = store[3].tables["parity"]
    verdicts = {r["run"]: r for r in table.rows}
    keras = next(r for name, r in verdicts.items() if name.startswith("digits keras aligned fp32 b64 s0") and
                 " r" not in name)
    assert keras["verdict"] == "close" and keras["first_differing_step"] == 3 and keras["tensor"] == "fc.weight"
    assert keras["loss_max_abs_diff"] == pytest.approx(1e-7, rel=0.01)
    fastai = next(r for name, r in verdicts.items() if name.startswith("digits fastai aligned fp32"))
    assert fastai["verdict"] == "diverged" and fastai["first_differing_step"] == 5
    assert fastai["first_step_beyond_tolerance"] == 5 and fastai["weight_max_abs_diff"] == pytest.approx(0.3, rel=1e-3)
    lightning = next(r for name, r in verdicts.items() if name.startswith("digits lightning aligned fp32 b64 s0"))
    assert lightning["verdict"] == "bitwise" and lightning["steps_compared"] == STEPS
    defaults = [r for name, r in verdicts.items() if "defaults" in name]
    assert defaults and all(r["verdict"] == "not-comparable" and "defaults" in r["reason"] for r in defaults)


def test_reproducibility_sections(store):
    report = store[3]
    repeats = _row(report.tables["repeats"], cell="digits native aligned fp32 b64 s0")
    assert repeats["repeats"] == 3 and repeats["bitwise"] == "yes" and repeats["distinct_weight_digests"] == 1
    defaults = _row(report.tables["repeats"], cell="digits lightning defaults fp32 b64 s0")
    assert defaults["bitwise"] == "yes"
    precision = _row(report.tables["precision"], run="digits native aligned b64 s0")
    assert precision["relative"] == pytest.approx(0.02) and precision["declared_drift"] == 0.10
    assert precision["within_declared"] == "yes"
    distributed = {r["run"]: r for r in report.tables["distributed"].rows}
    ddp = distributed["digits native aligned fp32 ws2 b32 s0"]
    assert ddp["kind"] == "DDP" and ddp["global_batch"] == 64 and ddp["verdict"] == "bitwise"
    assert ddp["final_loss_difference"] == 0.0
    accumulation = distributed["digits lightning aligned fp32 acc2 b32 s0"]
    assert accumulation["verdict"] == "close" and accumulation["first_differing_step"] == 0
    assert distributed["digits keras aligned fp32 ws2 b32 s0"]["status"] == "unsupported"


def test_inference_table_covers_the_high_level_apis_in_the_report(store, written):
    """keras and fastai were compared here (hf and flash were not): their rows, and only theirs."""
    table = store[3].tables["inference"]
    libraries = sorted(row["library"] for row in table.rows)
    assert [name.split()[0] for name in libraries] == ["fastai", "fastai", "keras"]
    fastai_vision = next(row for row in table.rows if row["entry_point"].startswith("vision_learner"))
    assert fastai_vision["num_classes"].startswith("inferred")
    keras = next(row for row in table.rows if row["library"].startswith("keras"))
    assert keras["num_classes"].startswith("stated")
    markdown = (written / "report.md").read_text(encoding="utf-8")
    assert "## What it infers" in markdown
    assert "get_c(dls)" in markdown and "lightning-flash" not in markdown.split("## What it infers")[1]


def test_provenance_and_citation(store, written):
    report = store[3]
    assert report.provenance["python"] == ["3.11.2"]
    assert report.provenance["hardware"] == ["Synthetic CPU, 2 logical CPUs"]
    assert report.provenance["seeds"] == ["0"] and report.provenance["git_dirty"] == ["false"]
    assert report.provenance["machine_load"] == [
        "1-minute load average at the end of each run (the run's own threads included): min 2.10, median 2.10, "
        f"max 2.10 over {len(store[2])} runs; 2 logical CPUs"]
    assert report.measured_on == "2025-11-13"  # the runs' launch time (synthetic), not when the report was built
    assert f"@misc{{bakeoff-{report.report_id}," in report.bibtex
    assert f'version: "{report.report_id}"' in report.citation_cff and "cff-version: 1.2.0" in report.citation_cff
    assert any(f"--verify reports/out/{report.report_id}" in line for line in report.reproduce)
    assert ".venv/bin/bakeoff bench --suite-file cite.toml --device cpu" in report.reproduce
    markdown = (written / "report.md").read_text()
    for text in (report.bibtex, report.citation_cff, report.citation):
        assert text in markdown
    document = json.loads((written / "report.json").read_text())
    assert set(document["tables"]) == {"overhead", "scaling", "defaults", "parity", "repeats", "precision", "inference",
                                       "distributed", "coverage", "scoreboard", "claims"}
    raw = json.loads((written / "raw.json").read_text())
    assert {r["run_id"] for r in raw["runs"]} == set(report.frame["run_id"])
    steps = (written / "steps.csv").read_text().splitlines()
    ok_runs = sum(1 for r in store[2] if r["status"] == "ok")
    assert steps[0] == "run_id,spec_id,step,loss,step_time_us" and len(steps) == 1 + ok_runs * STEPS


def test_verify_passes_and_names_what_was_changed(written, tmp_path, capsys):
    import shutil

    assert main(["report", "--verify", str(written)]) == 0
    assert "verified" in capsys.readouterr().out

    edited = tmp_path / "edited-table"
    shutil.copytree(written, edited)
    document = json.loads((edited / "report.json").read_text())
    document["tables"]["overhead"]["rows"][0]["median_step_us"] += 1.0
    (edited / "report.json").write_text(json.dumps(document))
    assert main(["report", "--verify", str(edited)]) == 1
    assert "tables.overhead.rows[0].median_step_us" in capsys.readouterr().out

    edited = tmp_path / "edited-raw"
    shutil.copytree(written, edited)
    raw = json.loads((edited / "raw.json").read_text())
    history = next(r for r in raw["runs"] if r["histories"].get("step_time_us"))["histories"]["step_time_us"]
    history[-1][1] += 50.0
    (edited / "raw.json").write_text(json.dumps(raw))
    assert main(["report", "--verify", str(edited)]) == 1
    out = capsys.readouterr().out
    assert "report id: saved" in out and "steps.csv differs" in out

    edited = tmp_path / "edited-markdown"
    shutil.copytree(written, edited)
    markdown = (edited / "report.md").read_text()
    (edited / "report.md").write_text(markdown.replace("| 3 ok |", "| 4 ok |", 1))
    assert main(["report", "--verify", str(edited)]) == 1
    assert "report.md differs" in capsys.readouterr().out

    # The HTML is what readers open: one figure edited in it fails the check.
    edited = tmp_path / "edited-html"
    shutil.copytree(written, edited)
    html = (edited / "report.html").read_text()
    assert "3 ok" in html
    (edited / "report.html").write_text(html.replace("3 ok", "4 ok", 1))
    assert main(["report", "--verify", str(edited)]) == 1
    out = capsys.readouterr().out
    assert "report.html differs" in out and "report.html was changed after the report was written" in out

    # A plot swapped for another, and a file slipped into the folder.
    edited = tmp_path / "edited-figure"
    shutil.copytree(written, edited)
    figure = next(edited.glob("*.png"))
    figure.write_bytes(figure.read_bytes() + b"\0")
    (edited / "notes.txt").write_text("not part of the report")
    assert main(["report", "--verify", str(edited)]) == 1
    out = capsys.readouterr().out
    assert f"{figure.name} was changed" in out and "notes.txt is not part of the report" in out

    assert main(["report", "--verify", str(tmp_path / "nowhere")]) == 2
    assert "no such report folder" in capsys.readouterr().err
    assert main(["report", "--verify", str(written / "report.md")]) == 2
    assert "is a file; --verify takes a report folder" in capsys.readouterr().err
    incomplete = tmp_path / "no-raw"
    shutil.copytree(written, incomplete)
    (incomplete / "raw.json").unlink()
    assert main(["report", "--verify", str(incomplete)]) == 2
    err = capsys.readouterr().err
    assert "not a complete report folder: raw.json missing" in err and err.count("\n") == 1


def test_report_out_that_cannot_be_written_is_one_line(store, tmp_path, capsys):
    uri = store[0]
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for out, message in ((a_file, "is a file, not a folder"), (a_file / "below", "is a file, not a folder"),
                             (locked / "reports", "is not writable")):
            code = main(["report", "--suite", SUITE, "--tracking-uri", uri, "--out", str(out)])
            err = capsys.readouterr().err
            if os.geteuid() == 0 and "writable" in message:
                continue  # root writes anywhere: the permission case cannot fail for it
            assert code == 2, (out, err)
            assert err.startswith("bakeoff: error: --out ") and message in err and err.count("\n") == 1
    finally:
        locked.chmod(0o700)


def test_report_command_writes_raw_data_under_BAKEOFF_REPORTS_OUT(store, tmp_path, monkeypatch):
    uri = store[0]
    monkeypatch.setenv("BAKEOFF_REPORTS_OUT", str(tmp_path / "elsewhere"))  # read at call time, not import time
    assert main(["report", "--suite", SUITE, "--tracking-uri", uri]) == 0
    (folder,) = (tmp_path / "elsewhere").iterdir()
    # The same runs and settings give the same id, whenever the report is built.
    assert folder.name == build_report(uri, Selection(suite=SUITE)).report_id != store[3].report_id
    assert {"raw.json", "steps.csv", "report.json", "report.html", "report.md", "results.csv"} <= {
        p.name for p in folder.iterdir()}
    assert verify_report(folder) == (folder.name, [])


def test_html_renders_tables_and_images_in_headless_chromium(store, written, tmp_path):
    assert Path(CHROMIUM).exists(), "chromium is needed for this test: apt-get install -y chromium (make does it)"
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000", "--dump-dom", (written / "report.html").as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, dom[:500]
    attributes = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body.group(1)))
    report = store[3]
    assert int(attributes["images-total"]) == len(report.figures) >= 6
    assert int(attributes["images-decoded"]) == len(report.figures)  # every embedded PNG decoded
    non_empty = sum(1 for t in report.tables.values() if t.rows) + 1  # + the every-run table
    assert int(attributes["tables-with-rows"]) == non_empty == 11
    for name, table in report.tables.items():
        assert (f'id="table-{name}"' in dom) == bool(table.rows), name
    lightning = _row(report.tables["overhead"], task="digits", adapter="lightning", mode="aligned",
                     precision="fp32", world_size=1, grad_accum=1)
    from reports.numbers import with_ci

    assert with_ci(lightning["ratio"], lightning["ratio_low"], lightning["ratio_high"]) in dom
    screenshot = tmp_path / "page.png"
    done = subprocess.run([*command[:-2], "--window-size=1400,3000", f"--screenshot={screenshot}",
                           (written / "report.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and screenshot.read_bytes().startswith(b"\x89PNG")


def test_machine_load_line_summarises_every_run():
    from types import SimpleNamespace

    from reports.build import _load_line

    def runs(*loads):
        return [SimpleNamespace(environment={"load_average": [v, 0.0, 0.0], "cpu_count": 2}) for v in loads]

    assert "min 1.00, median 2.50, max 9.00 over 4 runs; 2 logical CPUs" in _load_line(runs(9.0, 1.0, 2.0, 3.0))[0]
    assert "min 1.00, median 2.00, max 3.00 over 3 runs" in _load_line(runs(3.0, 2.0, 1.0))[0]
    assert _load_line([SimpleNamespace(environment={})]) == []  # results from before the field: no line


def test_native_against_itself_contains_one():
    groups = [[100.0, 101.0, 99.0, 250.0], [120.0, 118.0], [100.0]]
    ratio, difference = compare_ci(groups, groups, samples=SAMPLES)
    assert ratio.value == 1.0 and ratio.low <= 1.0 <= ratio.high
    assert difference.value == 0.0 and difference.low <= 0.0 <= difference.high


def test_run_record_round_trips_through_json(store):
    record = store[3].records[0]
    again = RunRecord.from_dict(json.loads(json.dumps(record.to_dict())))
    assert again.to_dict() == record.to_dict()
