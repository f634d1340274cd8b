"""The result file one run writes: schema, atomic write, validated read, weights digest."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from harness.spec import Spec, SpecError

SCHEMA = "bakeoff.result/1"
STATUSES = ("ok", "failed", "unsupported")
REQUIRED_KEYS = ("schema", "spec", "spec_id", "status", "error", "trajectory", "summary", "environment")


class ResultError(ValueError):
    """A result file that is unreadable, of the wrong schema or inconsistent with itself."""


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor of a state_dict in sorted key order (name, dtype, shape, bytes)."""
    hasher = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key]
        if not isinstance(tensor, torch.Tensor):
            continue
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        hasher.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        hasher.update(flat.view(torch.uint8).numpy().tobytes())
    return hasher.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: store them as null (the status already says the run failed)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def write_result(path: Path, result: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(_finite_or_none(result), indent=1, sort_keys=True, allow_nan=False) + "\n")


def read_result(path: Path) -> dict[str, Any]:
    """Load and check a result file; raise ResultError with the reason when it is not valid."""
    try:
        result = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultError(f"{path}: not a readable result file ({error})") from None
    validate_result(result, where=str(path))
    return result


def validate_result(result: Any, *, where: str = "result") -> None:
    if not isinstance(result, dict):
        raise ResultError(f"{where}: a result must be a JSON object")
    if result.get("schema") != SCHEMA:
        raise ResultError(f"{where}: schema {result.get('schema')!r} is not {SCHEMA!r}")
    missing = [key for key in REQUIRED_KEYS if key not in result]
    if missing:
        raise ResultError(f"{where}: missing {', '.join(missing)}")
    if result["status"] not in STATUSES:
        raise ResultError(f"{where}: unknown status {result['status']!r}")
    try:
        spec = Spec.from_dict(result["spec"])
    except SpecError as error:
        raise ResultError(f"{where}: invalid spec ({error})") from None
    if spec.spec_id != result["spec_id"]:
        raise ResultError(f"{where}: spec_id {result['spec_id']} does not match its spec ({spec.spec_id})")
    trajectory = result["trajectory"]
    if not isinstance(trajectory, dict) or len(trajectory.get("losses", [])) != len(trajectory.get("step_end_ns", [])):
        raise ResultError(f"{where}: trajectory losses and step times differ in length")


def base_result(spec: Spec, *, status: str, error: str | None = None) -> dict[str, Any]:
    """The skeleton every result shares; the worker fills in the rest."""
    return {
        "schema": SCHEMA,
        "spec": spec.to_dict(),
        "spec_id": spec.spec_id,
        "status": status,
        "error": error,
        "adapter": {"name": spec.adapter},
        "task": {"name": spec.task},
        "trajectory": {"step_end_ns": [], "losses": []},
        "summary": {},
        "environment": {},
        "notes": {},
        "weights_digest": None,
        "weights_file": None,
    }


def result_path(results_dir: Path, spec: Spec) -> Path:
    return Path(results_dir) / f"{spec.spec_id}.json"


def weights_path(results_dir: Path, spec: Spec) -> Path:
    return Path(results_dir) / f"{spec.spec_id}.weights.pt"


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Final weights saved next to a result; tensors only, never code (weights_only=True)."""
    return torch.load(path, map_location="cpu", weights_only=True)
