"""The result file one run writes: its schema (versioned, with migrations), atomic write, validated read.

Workers produce a result as a plain JSON object. Everything that reads results back (ingest,
parity, the regression gate, the report's file source) reads it through :class:`Result`, which
validates it, migrates an older schema version to the current one and keeps the digest of the
file as written, so a migrated result is still recognised as the same result in the store.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.spec import Spec, SpecError

SCHEMA_PREFIX = "bakeoff.result/"
SCHEMA_VERSION = 2
SCHEMA = f"{SCHEMA_PREFIX}{SCHEMA_VERSION}"
STATUSES = ("ok", "failed", "unsupported")
REQUIRED_KEYS = ("schema", "spec", "spec_id", "status", "error", "trajectory", "summary", "environment")


class ResultError(ValueError):
    """A result file that is unreadable, of an unknown schema or inconsistent with itself."""


# --------------------------------------------------------------------------- schema versions


def _v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Version 2 adds what the adapter declared about parity (unknown for version-1 results)."""
    data = dict(data)
    data.setdefault("declared_parity", None)
    data["schema"] = f"{SCHEMA_PREFIX}2"
    return data


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _v1_to_v2}
"""version → the function that turns a result of that version into the next one."""


def schema_version(data: Mapping[str, Any], *, where: str = "result") -> int:
    schema = data.get("schema")
    if not isinstance(schema, str) or not schema.startswith(SCHEMA_PREFIX):
        raise ResultError(f"{where}: schema {schema!r} is not a bakeoff result schema ({SCHEMA_PREFIX}N)")
    try:
        version = int(schema.removeprefix(SCHEMA_PREFIX))
    except ValueError:
        raise ResultError(f"{where}: schema {schema!r} has no version number") from None
    if version > SCHEMA_VERSION:
        raise ResultError(f"{where}: schema {schema!r} is newer than this bakeoff reads ({SCHEMA}): update bakeoff")
    if version < 1:
        raise ResultError(f"{where}: schema {schema!r} has no migration")
    return version


def migrate(data: Mapping[str, Any], *, where: str = "result") -> dict[str, Any]:
    """The result in the current schema version (a copy; the input is left as it is)."""
    version = schema_version(data, where=where)
    current = dict(data)
    while version < SCHEMA_VERSION:
        current = MIGRATIONS[version](current)
        version += 1
    return current


# --------------------------------------------------------------------------- the typed result


def content_digest(data: Mapping[str, Any]) -> str:
    """SHA-256 (first 16 hex digits) over a result's canonical JSON: same content, same digest."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True, kw_only=True)
class Result:
    """One run's result, validated and in the current schema version."""

    spec: Spec
    status: str
    """``ok``, ``failed`` or ``unsupported``."""
    error: str | None
    adapter: dict[str, Any]
    """Name, style, library and the library version that ran (and, for ``lib@version``, what was asked)."""
    task: dict[str, Any]
    """Name, resolved options, metric, data digest and source, parameter count."""
    trajectory: dict[str, Any]
    """``step_end_ns`` and ``losses`` per optimizer step; ``evals`` with periodic validation."""
    summary: dict[str, Any]
    environment: dict[str, Any]
    notes: dict[str, Any] = field(default_factory=dict)
    """What the adapter actually did (precision implementation, sampler, …)."""
    weights_digest: str | None = None
    weights_file: str | None = None
    declared_parity: str | None = None
    """The verdict the adapter declared against its native partner; None when unknown (older results)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Every other top-level section the worker wrote (timing, distributed, output tail, …), kept as is."""
    digest: str = ""
    """Digest of the document as it was written, before any migration: the run's identity in the store."""

    @property
    def spec_id(self) -> str:
        return self.spec.spec_id

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def losses(self) -> list[float | None]:
        return list(self.trajectory.get("losses", []))

    @property
    def step_end_ns(self) -> list[int]:
        return list(self.trajectory.get("step_end_ns", []))

    @property
    def threads_per_rank(self) -> int | None:
        """The CPU threads each rank trained with (part of what makes two runs bitwise partners)."""
        threads = self.environment.get("torch_threads")
        return int(threads) if isinstance(threads, int) and not isinstance(threads, bool) else None

    @property
    def kernel_layout(self) -> dict[str, Any]:
        """What decides float reduction order besides the spec: threads per rank, the CPU kernels' instruction
        set, the device. Only what the result recorded; older results may lack some of it."""
        layout = {"threads per rank": self.threads_per_rank, "CPU kernels": self.environment.get("cpu_capability")}
        if self.spec.device != "cpu":
            layout["device"] = self.environment.get("device_name")
        return {name: value for name, value in layout.items() if value is not None}

    def to_dict(self) -> dict[str, Any]:
        """The current-version document (what a result file of this version holds)."""
        data: dict[str, Any] = {
            "schema": SCHEMA,
            "spec": self.spec.to_dict(),
            "spec_id": self.spec_id,
            "status": self.status,
            "error": self.error,
            "adapter": self.adapter,
            "task": self.task,
            "trajectory": self.trajectory,
            "summary": self.summary,
            "environment": self.environment,
            "notes": self.notes,
            "weights_digest": self.weights_digest,
            "weights_file": self.weights_file,
            "declared_parity": self.declared_parity,
        }
        return {**self.extra, **data}

    def replace(self, **changes: Any) -> Result:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: Any, *, where: str = "result") -> Result:
        """Validate and migrate a result document; raise ResultError with the reason when it is not valid."""
        if not isinstance(data, dict):
            raise ResultError(f"{where}: a result must be a JSON object")
        digest = content_digest(data)
        current = migrate(data, where=where)
        missing = [key for key in REQUIRED_KEYS if key not in current]
        if missing:
            raise ResultError(f"{where}: missing {', '.join(missing)}")
        if current["status"] not in STATUSES:
            raise ResultError(f"{where}: unknown status {current['status']!r}")
        try:
            spec = Spec.from_dict(current["spec"])
        except SpecError as error:
            raise ResultError(f"{where}: invalid spec ({error})") from None
        if spec.spec_id != current["spec_id"]:
            raise ResultError(f"{where}: spec_id {current['spec_id']} does not match its spec ({spec.spec_id})")
        trajectory = current["trajectory"]
        if not isinstance(trajectory, dict) or len(trajectory.get("losses", [])) != len(
            trajectory.get("step_end_ns", [])
        ):
            raise ResultError(f"{where}: trajectory losses and step times differ in length")
        for name in ("summary", "environment"):
            if not isinstance(current[name], dict):
                raise ResultError(f"{where}: {name} must be an object")
        known = {f.name for f in dataclasses.fields(cls)} | {"schema", "spec_id"}
        return cls(
            spec=spec,
            status=current["status"],
            error=current["error"],
            adapter=dict(current.get("adapter") or {"name": spec.adapter}),
            task=dict(current.get("task") or {"name": spec.task}),
            trajectory=trajectory,
            summary=current["summary"],
            environment=current["environment"],
            notes=dict(current.get("notes") or {}),
            weights_digest=current.get("weights_digest"),
            weights_file=current.get("weights_file"),
            declared_parity=current.get("declared_parity"),
            extra={k: v for k, v in current.items() if k not in known},
            digest=digest,
        )


# --------------------------------------------------------------------------- files


def umask() -> int:
    """The process's file-creation mask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one.

    The file gets the permissions a plain ``open(path, "w")`` would give (0666 less the umask):
    the temporary file it is written to is private until it is complete, and results on a shared
    folder must stay readable by the other users who ingest them.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), 0o666 & ~umask())
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


def write_result(path: Path, result: Mapping[str, Any] | Result) -> None:
    data = result.to_dict() if isinstance(result, Result) else result
    atomic_write_text(path, json.dumps(_finite_or_none(data), indent=1, sort_keys=True, allow_nan=False) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultError(f"{path}: not a readable result file ({error})") from None


def load_result(path: Path) -> Result:
    """Load, validate and migrate a result file; raise ResultError with the reason when it is not valid."""
    return Result.from_dict(_read_json(path), where=str(path))


def read_result(path: Path) -> dict[str, Any]:
    """A result file as a validated document in the current schema version (the producer side's form)."""
    data = _read_json(path)
    Result.from_dict(data, where=str(path))
    return migrate(data, where=str(path))


def validate_result(result: Any, *, where: str = "result") -> None:
    Result.from_dict(result, where=where)


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
        "declared_parity": None,
    }


def result_path(results_dir: Path, spec: Spec) -> Path:
    return Path(results_dir) / f"{spec.spec_id}.json"


def weights_path(results_dir: Path, spec: Spec) -> Path:
    return Path(results_dir) / f"{spec.spec_id}.weights.pt"


def weights_digest(state_dict: Mapping[str, Any]) -> str:
    """SHA-256 over every tensor of a state_dict in sorted key order (name, dtype, shape, bytes)."""
    from tasks.base import hash_tensor_bytes  # torch, needed only by whoever digests weights

    hasher = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key]
        if not hasattr(tensor, "detach"):
            continue
        hasher.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        hash_tensor_bytes(hasher, tensor)
    return hasher.hexdigest()


def load_weights(path: Path) -> dict[str, Any]:
    """Final weights saved next to a result; tensors only, never code (weights_only=True)."""
    import torch  # readers of result files need no torch; loading weights does

    return torch.load(path, map_location="cpu", weights_only=True)
