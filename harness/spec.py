"""The spec: one run, frozen and validated, with a stable id over its canonical JSON."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from kernels.precision_names import PRECISIONS

MODES = ("aligned", "defaults")
DEVICES = ("cpu", "cuda")
SPEC_VERSION = 1

# Upper bounds that catch typos (steps=1e9) before they occupy a machine for a week.
LIMITS = {"steps": 1_000_000, "batch_size": 1_000_000, "grad_accum": 1024, "world_size": 1024, "repeat": 10_000}
MAX_THREADS = 1024

THREADS_ENV = "BAKEOFF_THREADS_PER_RANK"
"""Where a user sets the thread layout for a whole session; the CLI and suites resolve it into each spec."""


FIRST_VERSION_FIELDS = frozenset({
    "task", "adapter", "mode", "precision", "world_size", "seed", "batch_size", "steps", "lr", "grad_accum",
    "device", "options", "deterministic", "repeat",
})
"""The fields of the first spec version: always in the canonical JSON (see ``Spec.canonical_json``)."""


def _default(spec_field) -> Any:
    if spec_field.default_factory is not MISSING:
        return spec_field.default_factory()
    return spec_field.default


class SpecError(ValueError):
    """A spec that cannot run; the message is one line meant for the user."""


_NUMBER = r"(?:0|[1-9][0-9]*)"
VERSION_PATTERN = re.compile(
    rf"{_NUMBER}(?:\.{_NUMBER})*(?:(?:a|b|rc){_NUMBER})?(?:\.post{_NUMBER})?(?:\.dev{_NUMBER})?"
    r"(?:\+[a-z0-9]+(?:\.[a-z0-9]+)*)?"
)
"""A PEP 440 version in its canonical (normalized) form, without an epoch ('!' is hostile to shells):
it becomes a pip pin and a folder name."""
ADAPTER_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MAX_VERSION_LENGTH = 64
MAX_CODE_LENGTH = 200


def split_adapter(name: str) -> tuple[str, str | None]:
    """``"lightning@2.1.4"`` → ``("lightning", "2.1.4")``; a plain name → ``(name, None)``.

    An adapter name may carry the version of its library to run (a version matrix).
    The version must be a PEP 440 version written in canonical form (``2.1.4``, ``2.0.9.post0``,
    ``2.3.0rc1``): it ends up in a pip requirement and an environment folder name, and one
    spelling per version keeps one spec id per version.
    """
    base, at, version = name.partition("@")
    if not at:
        return name, None
    if not ADAPTER_NAME_PATTERN.fullmatch(base):
        raise SpecError(f"adapter {name!r}: an adapter name (letters, digits, '_', '.', '-') must come before '@'")
    if not version:
        raise SpecError(f"adapter {name!r}: a version must follow '@' (e.g. {base}@2.1.4)")
    if len(version) > MAX_VERSION_LENGTH or not VERSION_PATTERN.fullmatch(version):
        raise SpecError(
            f"adapter {name!r}: version {version!r} is not a PEP 440 version in canonical form"
            " (e.g. 2.1.4, 2.0.9.post0, 2.3.0rc1)"
        )
    return base, version


@dataclass(frozen=True, kw_only=True)
class Spec:
    task: str
    """Registered task name (``bakeoff list``)."""
    adapter: str
    """Registered adapter name, optionally with its library's version: ``lightning@2.1.4``."""
    mode: str = "aligned"
    """``aligned``: the library doing exactly the native loop's math; ``defaults``: as a new user gets it."""
    precision: str = "fp32"
    world_size: int = 1
    """Processes (torchrun ranks); each sees ``batch_size`` samples per micro-batch."""
    seed: int = 0
    batch_size: int
    """Per-rank micro-batch size."""
    steps: int
    """Optimizer steps."""
    lr: float
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    device: str = "cpu"
    options: Mapping[str, Any] = field(default_factory=dict)
    """Task options (e.g. ``{"width": 256}`` for scaling)."""
    deterministic: bool = True
    """torch.use_deterministic_algorithms and cuDNN determinism."""
    repeat: int = 0
    """Repeat index: the same run measured again in a fresh process gets its own id."""
    task_code: str = ""
    """A plugin task's code identity (``<distribution>==<version> <source digest>``, see
    ``harness.plugins``); empty for built-in tasks, whose code the result's git sha names."""
    adapter_code: str = ""
    """The same for a plugin adapter (or a user's training function); empty for built-ins."""
    threads: int | None = None
    """Intra-op CPU threads per rank; None: the automatic split (CPU cores // ranks on the node).
    CPU float reductions depend on the thread count, so the layout is part of the run's identity."""
    compile: bool = False
    """torch.compile the model the way the adapter's library does it (compile time is its own figure)."""
    tf32: bool = False
    """Allow TF32 tensor-core math for fp32 matmuls and convolutions (CUDA only; off means IEEE fp32)."""
    ddp: bool = False
    """At world size 1: still join a process group (NCCL on CUDA) and wrap the model in DDP.
    Larger world sizes always do."""

    def __post_init__(self) -> None:
        for name in ("task", "adapter"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise SpecError(f"{name} must be a non-empty name, got {value!r}")
        split_adapter(self.adapter)  # a versioned adapter name ("lightning@2.1.4") must be well formed
        if self.mode not in MODES:
            raise SpecError(f"unknown mode {self.mode!r}; choose one of: {', '.join(MODES)}")
        if self.precision not in PRECISIONS:
            raise SpecError(f"unknown precision {self.precision!r}; choose one of: {', '.join(PRECISIONS)}")
        if self.device not in DEVICES:
            raise SpecError(f"unknown device {self.device!r}; choose one of: {', '.join(DEVICES)}")
        for name in ("world_size", "batch_size", "steps", "grad_accum"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("seed", "repeat"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise SpecError(f"{name} must be a non-negative integer, got {value!r}")
        for name, limit in LIMITS.items():
            if getattr(self, name) > limit:
                raise SpecError(f"{name.replace('_', '-')} {getattr(self, name)} is over the limit of {limit}")
        if self.seed >= 2**31:
            raise SpecError(f"seed must be below 2**31, got {self.seed}")
        if (
            isinstance(self.lr, bool)
            or not isinstance(self.lr, (int, float))
            or not math.isfinite(self.lr)
            or self.lr <= 0
        ):
            raise SpecError(f"lr must be a positive finite number, got {self.lr!r}")
        if self.lr > 100:
            raise SpecError(f"lr {self.lr} is over the limit of 100")
        object.__setattr__(self, "lr", float(self.lr))
        for name in ("deterministic", "compile", "tf32", "ddp"):
            if not isinstance(getattr(self, name), bool):
                raise SpecError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.ddp and self.world_size > 1:
            raise SpecError("ddp=true is for world size 1 only (larger world sizes always run DDP)")
        if not isinstance(self.options, Mapping):
            raise SpecError(f"options must be a table of task options, got {self.options!r}")
        for key, value in self.options.items():
            if not isinstance(key, str) or not isinstance(value, (str, int, float, bool, type(None))):
                raise SpecError(f"task option {key!r} must be a string, number or boolean, got {value!r}")
        object.__setattr__(self, "options", dict(sorted(self.options.items())))
        for name in ("task_code", "adapter_code"):
            value = getattr(self, name)
            if not isinstance(value, str) or len(value) > MAX_CODE_LENGTH or not value.isprintable():
                raise SpecError(f"{name} must be a short printable string (a plugin code identity), got {value!r}")
        if self.threads is not None and (
            not isinstance(self.threads, int) or isinstance(self.threads, bool) or not 1 <= self.threads <= MAX_THREADS
        ):
            raise SpecError(f"threads must be an integer from 1 to {MAX_THREADS} (or unset), got {self.threads!r}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"] = dict(self.options)
        return data

    def canonical_json(self) -> str:
        """The JSON the id hashes. Fields added after the first spec version are left out while they
        hold their default, so a spec that does not use them keeps the id it always had."""
        data = self.to_dict()
        for spec_field in fields(self):
            if spec_field.name not in FIRST_VERSION_FIELDS and data[spec_field.name] == _default(spec_field):
                del data[spec_field.name]
        return json.dumps({"version": SPEC_VERSION, **data}, sort_keys=True, separators=(",", ":"))

    @property
    def spec_id(self) -> str:
        """First 16 hex digits of SHA-256 over the canonical JSON: same content, same id."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """Short human-readable name for progress lines and tables."""
        options = ",".join(f"{k}={v}" for k, v in self.options.items())
        parts = [self.task + (f"[{options}]" if options else ""), self.adapter, self.mode, self.precision]
        if self.world_size > 1:
            parts.append(f"ws{self.world_size}")
        if self.ddp:
            parts.append("ddp1")
        if self.grad_accum > 1:
            parts.append(f"acc{self.grad_accum}")
        if self.threads is not None:
            parts.append(f"t{self.threads}")
        if self.compile:
            parts.append("compiled")
        if self.tf32:
            parts.append("tf32")
        if not self.deterministic:
            parts.append("nondet")
        parts.append(f"s{self.seed}")
        if self.repeat:
            parts.append(f"r{self.repeat}")
        return " ".join(parts)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Spec:
        """Parse a spec from JSON/TOML data; unknown keys are an error, not silently dropped."""
        if not isinstance(data, Mapping):
            raise SpecError(f"a spec must be a table, got {type(data).__name__}")
        data = {k: v for k, v in data.items() if k != "version"}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown spec key {unknown[0]!r} (keys: {', '.join(sorted(known))})")
        missing = sorted(name for name in ("task", "adapter", "batch_size", "steps", "lr") if name not in data)
        if missing:
            raise SpecError(f"spec is missing {missing[0]!r}")
        try:
            return cls(**data)
        except TypeError as error:  # e.g. a non-string key
            raise SpecError(f"invalid spec: {error}") from None


def threads_from_environment(environ: Mapping[str, str] | None = None) -> int | None:
    """The thread count ``BAKEOFF_THREADS_PER_RANK`` asks for, or None when it is unset or empty."""
    value = (os.environ if environ is None else environ).get(THREADS_ENV, "").strip()
    if not value:
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if not 1 <= threads <= MAX_THREADS:
        raise SpecError(f"{THREADS_ENV}={value!r} must be an integer from 1 to {MAX_THREADS}")
    return threads


def with_threads(spec: Spec, threads: int | None) -> Spec:
    """``spec`` with ``threads`` filled in where the spec leaves the layout automatic; a spec's own count wins."""
    if threads is None or spec.threads is not None:
        return spec
    return replace(spec, threads=threads)
