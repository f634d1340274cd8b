"""fp16-mixed on CPU through every adapter: what each library really does, skipped steps, verdicts.

Every claim an adapter makes about fp16 on CPU is checked here by looking at what ran (the output
dtype of the model's Linear layers, the GradScaler in use), not by trusting the option:

- Lightning's ``precision="16-mixed"`` flag trains in bf16 on CPU, so the adapter takes the plugin route;
- fastai's ``to_fp16()`` and the Trainer's ``fp16=True`` train in fp32 on CPU (fastai's adapter runs
  fastai's callback with the CPU device instead; the HF adapter refuses);
- a planted overflow (tests/plugins/bakeoff_fault_tasks.py) is one skipped step in every adapter,
  and each adapter's fp16 verdict against native is the one it declares.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from harness.parity import compare_files
from harness.plan import request_for
from harness.precision_audit import PrecisionAudit
from harness.probe import Probe
from harness.registry import get_adapter, get_task
from harness.spec import Spec
from harness.worker import build_job
from kernels.distributed import DistContext

MAIN_ENV_FP16 = ["lightning", "fastai", "keras"]
"""Main-environment adapters that run fp16-mixed on CPU (hf refuses it there, flash runs in its own env)."""


def overflow_spec(adapter: str, precision: str = "fp16-mixed", task: str = "overflow-scaling") -> Spec:
    return Spec(
        task=task,
        adapter=adapter,
        precision=precision,
        batch_size=16,
        steps=5,
        lr=0.05,
        options={"width": 8},
    )


def audited_fit(adapter_name: str, spec: Spec, folder: Path) -> tuple[PrecisionAudit, object]:
    """Fit ``spec`` with the adapter directly (no refusal check) and the audit hooked for the whole fit."""
    task = get_task(spec.task)
    job = build_job(spec, task, DistContext(), Probe(torch.device("cpu")), workdir=folder)
    audit = PrecisionAudit(job.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        get_adapter(adapter_name).fit(job)
    audit.detach()
    return audit, job


def test_native_fp16_on_cpu_autocasts_and_scales(inline):
    result = inline(overflow_spec("native", task="scaling"))
    assert result["status"] == "ok", result["error"]
    assert result["notes"]["precision_observed"]["outputs"] == {"Linear": ["float16"]}
    assert result["notes"]["grad_scaler"] == "torch.amp.GradScaler('cpu')"
    assert result["notes"]["skipped_steps"] == 0  # nothing planted: nothing skipped


@pytest.mark.parametrize("adapter_name", ["native", *MAIN_ENV_FP16])
def test_a_planted_overflow_is_one_skipped_step_and_the_fp16_verdict_is_declared(adapter_name, inline, plugin_env):
    native = inline(overflow_spec("native"))
    assert native["status"] == "ok", native["error"]
    assert native["notes"]["skipped_steps"] == 1
    # The planted step's loss is huge but finite; the step after it ran at half the scale.
    assert native["trajectory"]["losses"][2] > 1e3 > native["trajectory"]["losses"][3]
    if adapter_name == "native":
        fp32 = inline(overflow_spec("native", precision="fp32"))
        assert fp32["notes"]["skipped_steps"] == 0  # no GradScaler, nothing to skip
        return
    result = inline(overflow_spec(adapter_name))
    assert result["status"] == "ok", result["error"]
    assert result["notes"]["skipped_steps"] == 1, result["notes"]
    assert result["notes"]["precision_observed"]["outputs"]["Linear"] == ["float16"]
    assert "GradScaler('cpu')" in result["notes"]["grad_scaler"]
    declared = get_adapter(adapter_name).expected_parity(request_for(Spec.from_dict(result["spec"])))
    verdict = compare_files(native, result, inline.results_dir)
    assert verdict.verdict == declared, verdict.describe()


def test_lightning_16_mixed_flag_on_cpu_trains_bf16(tmp_path):
    """Why the Lightning adapter passes a plugin on CPU: the flag alone would be a bf16 run."""
    import lightning as L

    from adapters.lightning import ProbeCallback, TaskModule

    spec = Spec(
        task="scaling",
        adapter="lightning",
        precision="fp16-mixed",
        batch_size=16,
        steps=2,
        lr=0.05,
        options={"width": 8},
    )
    job = build_job(spec, get_task("scaling"), DistContext(), Probe(torch.device("cpu")), workdir=tmp_path)
    audit = PrecisionAudit(job.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = L.Trainer(
            accelerator="cpu",
            precision="16-mixed",
            max_steps=2,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[ProbeCallback(job.probe)],
            default_root_dir=tmp_path,
        )
        trainer.fit(TaskModule(job, log_metrics=False), train_dataloaders=job.train_loader)
    audit.detach()
    assert audit.judged == {"Linear": {"bfloat16"}}
    assert trainer.precision_plugin.precision == "bf16-mixed" and trainer.precision_plugin.scaler is None
    assert any("16-mixed" in str(w.message) and "bf16-mixed" in str(w.message) for w in caught)


def test_fastai_to_fp16_on_cpu_is_a_silent_fp32_run(tmp_path):
    """Why the fastai adapter uses its CPU subclass of MixedPrecision: ``to_fp16()`` does nothing here."""
    from fastai.callback.core import TrainEvalCallback
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner

    from adapters.fastai import HarnessBatches, SkipValidation

    spec = Spec(task="scaling", adapter="fastai", batch_size=16, steps=2, lr=0.05, options={"width": 8})
    job = build_job(spec, get_task("scaling"), DistContext(), Probe(torch.device("cpu")), workdir=tmp_path)
    audit = PrecisionAudit(job.model)
    batches = HarnessBatches(job.train_loader, job.device)
    learn = Learner(
        DataLoaders(batches, batches, device=job.device),
        job.model,
        loss_func=job.loss,
        default_cbs=False,
        cbs=[TrainEvalCallback(), SkipValidation()],
        path=tmp_path,
    )
    learn.to_fp16()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn.fit(1, lr=0.05)
    audit.detach()
    assert audit.judged == {"Linear": {"float32"}}


def test_fastai_adapter_fp16_on_cpu_runs_fastai_callback_with_cpu_autocast(tmp_path):
    audit, job = audited_fit(
        "fastai",
        Spec(
            task="scaling",
            adapter="fastai",
            precision="fp16-mixed",
            batch_size=16,
            steps=2,
            lr=0.05,
            options={"width": 8},
        ),
        tmp_path,
    )
    assert audit.judged == {"Linear": {"float16"}}
    assert "CpuMixedPrecision" in job.notes["callbacks"] and "SkippedSteps" in job.notes["callbacks"]


def test_hf_fp16_true_on_cpu_trains_fp32_so_the_adapter_refuses(tmp_path):
    spec = Spec(
        task="scaling", adapter="hf", precision="fp16-mixed", batch_size=16, steps=2, lr=0.05, options={"width": 8}
    )
    adapter = get_adapter("hf")
    reason = adapter.check(request_for(spec))
    assert reason and "fp32 on CPU" in reason
    audit, job = audited_fit("hf", spec, tmp_path)  # what would have run without the refusal
    assert audit.judged == {"Linear": {"float32"}}
    assert job.notes["precision_impl"].startswith("fp32: accelerate mixed_precision='fp16' without native AMP")
    assert job.notes["grad_scaler"] is None


@pytest.mark.slow
def test_flash_fp16_on_cpu_skips_the_planted_step_and_compiles(tmp_path, plugin_env, envs_build_root):
    """Flash runs in its own environment (through the runner): the plugin route for fp16, and compile."""
    from dataclasses import replace

    from adapters.base import verdict_meets
    from harness.runner import RunOptions, run_spec

    options = RunOptions(results_dir=tmp_path, timeout_s=1800)
    native = run_spec(overflow_spec("native"), options)
    flash = run_spec(overflow_spec("flash"), options)
    assert flash["status"] == "ok", flash["error"]
    assert flash["notes"]["skipped_steps"] == native["notes"]["skipped_steps"] == 1
    assert flash["notes"]["precision_observed"]["outputs"]["Linear"] == ["float16"]
    adapter = get_adapter("flash")
    verdict = compare_files(native, flash, tmp_path)
    assert verdict.verdict == adapter.expected_parity(request_for(Spec.from_dict(flash["spec"]))), verdict.describe()
    eager = run_spec(overflow_spec("native", precision="fp32", task="scaling"), options)
    compiled = run_spec(replace(overflow_spec("flash", precision="fp32", task="scaling"), compile=True), options)
    assert compiled["status"] == "ok" and compiled["summary"]["compile_events"] >= 1, compiled.get("error")
    request = request_for(Spec.from_dict(compiled["spec"]))
    from harness.gpucheck import compare_across
    from harness.parity import weights_from
    from harness.result import Result

    verdict = compare_across(Result.from_dict(eager), Result.from_dict(compiled), weights=weights_from([tmp_path]))
    assert verdict_meets(adapter.expected_parity_vs_eager(request), verdict.verdict)
