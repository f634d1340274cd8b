"""The adapter contract: what the harness hands an adapter, and what it must give back.

An adapter drives one training API the way that library's users write it. Everything that
must be equal across adapters (initial weights, batches, loss, optimizer math, precision and
distributed context) arrives in the :class:`Job`; the adapter only decides how its library
runs the loop, and calls the probe from its library's own hook mechanism.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader

from kernels.distributed import DistContext
from kernels.precision import Precision
from kernels.sampling import LibrarySamples, ShardedBatchSampler
from tasks.base import Inferable, OptimizerRecipe, Task, TaskData

STYLES = ("native", "inheritance", "callback", "high-level")
MODES = ("aligned", "defaults")


class Probe(Protocol):
    """What an adapter calls while training (``harness.probe.Probe`` is the implementation).

    ``add_loss`` once per micro-batch with its un-scaled loss, ``step_end`` once per optimizer
    step, from the library's own hook mechanism. Neither may force a device sync.
    """

    def add_loss(self, loss: torch.Tensor) -> None: ...

    def step_end(self, loss: torch.Tensor | None = None) -> None: ...

    @property
    def steps(self) -> int: ...


@dataclass(frozen=True, kw_only=True)
class Request:
    """What an adapter is asked to run, before anything is built: ``check`` and ``expected_parity`` read it."""

    task: Task
    mode: str = "aligned"
    precision: str = "fp32"
    world_size: int = 1
    grad_accum: int = 1
    device_type: str = "cpu"
    options: Mapping[str, Any] = field(default_factory=dict)
    """The task's options as the spec gives them (not yet resolved against the task's defaults)."""
    inferable: Inferable | None = None
    """What the task's data declares (input shape, classes), once the data is built; None before.
    ``refuse`` may turn down a request on it (the worker checks again right before training)."""
    traits: frozenset[str] = frozenset()
    """The model's family traits (``tasks.traits.TRAITS``): declared by the task, plus those the worker
    detected on the built model. A declaration may depend on them (e.g. ``weight-reuse``)."""
    compile: bool = False
    """torch.compile, the way the adapter's library does it."""
    ddp: bool = False
    """A one-rank process group with DDP wrapping (world size 1)."""


@dataclass(kw_only=True)
class Job:
    """One training run as an adapter sees it."""

    task: Task
    options: dict[str, Any]
    """The task's resolved options."""
    data: TaskData
    model: nn.Module
    """Initialized from the spec's seed, already on ``device``; not wrapped in DDP."""
    train_loader: DataLoader
    """The harness's loader: its ``sampler`` is a ShardedBatchSampler yielding this rank's batches."""
    sampler: ShardedBatchSampler
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: OptimizerRecipe
    precision: Precision
    """The harness precision object; adapters with their own precision option map ``precision.name``."""
    dist: DistContext
    device: torch.device
    mode: str
    seed: int
    batch_size: int
    """Per-rank micro-batch size."""
    steps: int
    """Optimizer steps to run."""
    lr: float
    grad_accum: int
    probe: Probe
    """The harness probe: ``add_loss(loss)`` per micro-batch, ``step_end()`` after each optimizer step."""
    workdir: str
    """A scratch folder this run may write to (logs, checkpoints of the library's defaults)."""
    notes: dict[str, Any] = field(default_factory=dict)
    """What the adapter actually did (precision implementation, sampler used, …): lands in the result."""
    traits: frozenset[str] = frozenset()
    """The model's family traits, declared and detected (see ``Request.traits``)."""
    library_samples: LibrarySamples | None = None
    """Set by an adapter whose library draws its own batches (``record_library_samples``): the result's
    sample coverage then comes from what that library fetched instead of the harness sampler."""

    def record_library_samples(self) -> LibrarySamples:
        """Start recording the samples the library's own loader draws (wrap the data with what this returns)."""
        if self.library_samples is None:
            self.library_samples = LibrarySamples()
        return self.library_samples
    compile: bool = False
    """Compile the model with torch.compile the way the library's users do (``Request.compile``)."""

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        return self.optimizer.build(params, lr=self.lr)

    @property
    def request(self) -> Request:
        """The request this job answers (for an adapter that re-checks inside ``fit``)."""
        return Request(
            task=self.task,
            mode=self.mode,
            precision=self.precision.name,
            world_size=self.dist.world_size,
            grad_accum=self.grad_accum,
            device_type=self.device.type,
            options=self.options,
            inferable=self.data.inferable,
            traits=self.traits,
            compile=self.compile,
            ddp=self.dist.enabled and self.dist.world_size == 1,
        )


def task_refusal(request: Request) -> str | None:
    """The task's own declared reason it cannot run this precision on this device, or None."""
    task = request.task
    try:
        options = task.resolve_options(request.options)
    except ValueError:  # bad options are bad input, refused by the spec checks with their own message
        return None
    reason = task.unsupported_reason(options, request.precision, request.device_type)
    if not reason:
        return None
    return f"task {task.name!r} cannot run {request.precision} on {request.device_type}: {reason}"


def verdict_meets(declared: str, verdict: str) -> bool:
    """Whether ``verdict`` satisfies a declaration: exact, except that bitwise is within any tolerance."""
    return verdict == declared or (declared == "close" and verdict == "bitwise")


class Unsupported(Exception):
    """Raised by ``Adapter.check`` (or during fit) when the library cannot run this spec."""


class Adapter:
    """Base class. Subclasses set the class attributes and implement ``fit``."""

    name: ClassVar[str]
    style: ClassVar[str]
    library: ClassVar[str | None] = None
    """Distribution name whose version the result records (``None`` for plain torch)."""
    modes: ClassVar[tuple[str, ...]] = MODES
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "bf16-mixed", "fp16-mixed")
    distributed: ClassVar[bool] = True
    """Whether the adapter can run under torchrun with world size > 1."""
    not_distributed_reason: ClassVar[str | None] = None
    """Why not, when ``distributed`` is False: the reason an ``unsupported`` DDP result carries."""
    single_rank_ddp: ClassVar[bool] = False
    """Whether the adapter joins a one-rank process group and wraps DDP when asked (``Request.ddp``)."""
    compiles: ClassVar[str] = "model"
    """What the library hands to torch.compile: ``"model"`` (the task module, as the native loop
    does: the same graph, the same generated kernels) or ``"step"`` (more than the model: the
    loss, or the whole train step, so inductor generates other kernels)."""
    environment: ClassVar[str | None] = None
    """An isolated environment its workers run in (``envs/<name>.txt``, see harness.envs); None: the main one."""
    variant_requirements: ClassVar[dict[str, tuple[str, ...]]] = {}
    """Extra pins for ``<name>@<version>`` environments: PEP 440 specifier → pip requirements, each
    added when the requested version matches it (e.g. ``{"<2.4": ("setuptools<81",)}``)."""

    def check(self, request: Request) -> str | None:
        """Why this adapter cannot run the request, or None when it can. Called before launching.

        The checks every adapter shares run first (what the task itself declares it cannot run
        comes before anything about the library); then :meth:`refuse`, the adapter's own.
        Subclasses override ``refuse``, not this.
        """
        task_reason = task_refusal(request)
        if task_reason:
            return task_reason
        if request.mode not in self.modes:
            return f"{self.name} has no {request.mode!r} mode (modes: {', '.join(self.modes)})"
        if request.precision not in self.precisions:
            return f"{self.name} does not support {request.precision}"
        if request.world_size > 1 and not self.distributed:
            return (
                self.not_distributed_reason or f"{self.name} cannot run distributed (world size {request.world_size})"
            )
        if request.ddp and not self.single_rank_ddp:
            return f"{self.name} is not wired to run DDP in a one-rank process group (ddp=true at world size 1)"
        return self.refuse(request)

    def refuse(self, request: Request) -> str | None:
        """The adapter's own reason not to run a request that passed the shared checks, or None."""
        return None

    def expected_parity(self, request: Request) -> str:
        """The verdict this adapter declares against native for such a request.

        For a compiled request the reference is native compiled the same way (``compile=true``);
        subclasses answer it with :meth:`compiled_parity`.
        """
        if request.compile:
            return self.compiled_parity(request)
        return "bitwise" if request.mode == "aligned" and request.precision == "fp32" else "not-comparable"

    def compiled_parity(self, request: Request) -> str:
        """The verdict of a compiled run against native compiled.

        A library that compiles the task module alone runs native's compiled graph, so its eager
        verdict carries over; one that compiles more (``compiles = "step"``) runs other generated
        kernels (the loss fused into the graph, reductions reordered): ``close`` at best.
        Measured on CPU in tests/harness/test_compile.py.
        """
        if request.mode != "aligned":
            return "not-comparable"
        eager = self.expected_parity(replace(request, compile=False))
        return "close" if self.compiles == "step" and eager == "bitwise" else eager

    def expected_parity_vs_eager(self, request: Request) -> str:
        """The verdict a run declares against native *eager* (uncompiled) with otherwise the same spec.

        Compiled runs: ``close``, i.e. within the task's tolerance for the precision. Inductor
        regenerates the kernels (fused pointwise ops without intermediate rounding, reductions in
        another order), so bitwise equality happens (bf16 here often is) but is never promised:
        a bitwise result meets a declared ``close`` (:func:`verdict_meets`).
        """
        if not request.compile:
            return self.expected_parity(request)
        return "close" if request.mode == "aligned" else "not-comparable"

    def fit(self, job: Job) -> nn.Module:
        """Train ``job.model`` for ``job.steps`` optimizer steps; return the trained (unwrapped) model."""
        raise NotImplementedError
