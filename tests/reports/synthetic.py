"""Synthetic result files for report tests: valid results (``validate_result``) without training anything."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.result import base_result, result_path, validate_result, write_result
from harness.spec import Spec
from harness.worker import summarize, time_to_target

ENVIRONMENT = {
    "python": "3.11.2",
    "platform": "Linux-test-x86_64",
    "torch": torch.__version__,
    "cuda": None,
    "device_name": "Synthetic CPU",
    "cpu_model": "Synthetic CPU",
    "cpu_count": 2,
    "torch_threads": 2,
    "load_average": [2.1, 1.5, 1.2],
    "gpu_count": 0,
    "packages": {"numpy": np.__version__},
    "git_sha": "0123456789abcdef0123456789abcdef01234567",
    "git_dirty": False,
}
LIBRARIES = {"native": ("native", "torch"), "lightning": ("inheritance", "lightning"), "keras": ("high-level", "keras")}


def spec(**fields: Any) -> Spec:
    values = {"task": "digits", "adapter": "native", "batch_size": 64, "steps": 12, "lr": 0.05}
    values.update(fields)
    return Spec(**values)


def make_result(
    spec: Spec,
    *,
    status: str = "ok",
    step_us: list[float] | None = None,
    losses: list[float] | None = None,
    warmup: int = 2,
    digest: str | None = None,
    launch_ns: int = 1_763_000_000_000_000_000,
    evals: list[tuple[int, float]] | None = None,
    target: float | None = None,
) -> dict[str, Any]:
    """A result as the worker writes it; ``step_us`` are the per-step durations (the first from fit start).

    ``evals`` are periodic validations (steps done, metric) as ``--eval-every`` records them; with a
    ``target`` the summary gets the worker's own time-to-target figures.
    """
    result = base_result(spec, status=status, error=None if status == "ok" else f"synthetic {status} run")
    style, library = LIBRARIES.get(spec.adapter, ("callback", spec.adapter))
    result["adapter"] = {"name": spec.adapter, "style": style, "library": library,
                         "library_version": ENVIRONMENT["torch"] if library == "torch" else "1.0"}
    result["environment"] = dict(ENVIRONMENT)
    result["timing"] = {"launch_wall_ns": launch_ns, "adapter_import_s": 0.01}
    result["task"] = {"name": spec.task, "metric_name": "accuracy", "data_digest": "d" * 64, "options": {}}
    if status == "ok":
        step_us = step_us if step_us is not None else [1000.0] * spec.steps
        losses = losses if losses is not None else [2.3 - 0.01 * i for i in range(len(step_us))]
        ends = np.cumsum(np.asarray(step_us) * 1e3).astype(np.int64).tolist()
        result["trajectory"] = {"step_end_ns": ends, "losses": [float(v) for v in losses]}
        result["summary"] = summarize(spec, ends, warmup)
        result["summary"].update(
            final_loss=float(losses[-1]), eval_loss=float(losses[-1]) + 0.01, eval_metric=0.5,
            peak_memory_bytes=300 * 2**20, wall_s=3.0 + ends[-1] / 1e9, startup_s=2.0,
        )
        if evals:
            records = [
                {"step": step, "eval_metric": metric, "eval_loss": 1.0, "eval_s": 0.01} for step, metric in evals
            ]
            result["trajectory"]["evals"] = records
            result["summary"]["eval_every"] = evals[0][0]
            result["summary"].update(time_to_target(records, ends, target, True))
        result["weights_digest"] = digest or hashlib.sha256(repr(losses).encode()).hexdigest()
    else:
        result["summary"] = {"wall_s": 1.0, "peak_memory_bytes": 100 * 2**20}
    validate_result(result)
    return result


def save(results_dir: Path, result: dict[str, Any], weights: dict[str, torch.Tensor] | None = None) -> None:
    """Write the result (and final weights, so parity compares tensors) into ``results_dir``."""
    spec_obj = Spec.from_dict(result["spec"])
    if weights is not None:
        name = f"{spec_obj.spec_id}.weights.pt"
        torch.save(weights, Path(results_dir) / name)
        result["weights_file"] = name
    write_result(result_path(results_dir, spec_obj), result)
