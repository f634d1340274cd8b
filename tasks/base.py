"""The task contract every adapter trains against.

A task owns everything that must be identical across adapters: the data, the initial weights
(drawn from the spec's seed on a private generator, so the global RNG cannot shift them), the
loss, the metric and the optimizer recipe. Adapters own only how the loop is driven.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset


@dataclass(frozen=True, kw_only=True)
class Tolerance:
    """How far two runs of the same math at one precision may drift and still be ``close``.

    Declared per task and precision, before any result is seen; never fitted to results.
    """

    loss_rtol: float
    loss_atol: float
    weight_rtol: float
    weight_atol: float

    def losses_close(self, a: float, b: float) -> bool:
        return abs(a - b) <= self.loss_atol + self.loss_rtol * abs(b)


@dataclass(frozen=True, kw_only=True)
class OptimizerRecipe:
    """A torch optimizer class and its hyper-parameters; the learning rate comes from the spec."""

    optimizer: type[torch.optim.Optimizer]
    hyper: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.optimizer.__name__

    def build(self, params, lr: float) -> torch.optim.Optimizer:
        return self.optimizer(params, lr=lr, **dict(self.hyper))


@dataclass(frozen=True, kw_only=True)
class TaskDefaults:
    batch_size: int
    steps: int
    lr: float


@dataclass(frozen=True, kw_only=True)
class Inferable:
    """What a high-level API could infer from the data instead of being told (``num_classes``, input shape)."""

    num_classes: int | None = None
    input_shape: tuple[int, ...] | None = None


@dataclass(kw_only=True)
class TaskData:
    train: Dataset
    valid: Dataset
    inferable: Inferable
    digest: str
    """SHA-256 over the train and valid tensors: names exactly what a run trained on."""
    source: str
    """Where the data came from (a bundled data set, a generated corpus, a path)."""


def hash_tensor_bytes(hasher, tensor: torch.Tensor) -> None:
    """Feed a tensor's raw bytes (C order, on the CPU) to a hashlib object."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    hasher.update(flat.view(torch.uint8).numpy().tobytes())


def tensors_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 over the shapes, dtypes and bytes of the tensors, in order: names the data a run saw."""
    hasher = hashlib.sha256()
    for tensor in tensors:
        hasher.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        hash_tensor_bytes(hasher, tensor)
    return hasher.hexdigest()


def tensor_data(
    train: tuple[torch.Tensor, torch.Tensor],
    valid: tuple[torch.Tensor, torch.Tensor],
    *,
    inferable: Inferable,
    source: str,
) -> TaskData:
    return TaskData(
        train=TensorDataset(*train),
        valid=TensorDataset(*valid),
        inferable=inferable,
        digest=tensors_digest(*train, *valid),
        source=source,
    )


def fixed_split(count: int, valid_fraction: float, *, split_seed: int = 1234) -> tuple[torch.Tensor, torch.Tensor]:
    """A train/valid split that never changes with the run's seed: every run validates alike."""
    generator = torch.Generator()
    generator.manual_seed(split_seed)
    order = torch.randperm(count, generator=generator)
    valid_count = round(count * valid_fraction)
    return order[valid_count:], order[:valid_count]


def cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy; sequence outputs (B, T, V) are flattened over tokens."""
    if output.dim() == 3:
        return nn.functional.cross_entropy(output.reshape(-1, output.size(-1)), target.reshape(-1))
    return nn.functional.cross_entropy(output, target)


def accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (output.argmax(dim=-1) == target).float().mean()


class Task:
    """Base class: subclasses set the class attributes and implement the two builders."""

    name: ClassVar[str]
    description: ClassVar[str]
    defaults: ClassVar[TaskDefaults]
    optimizer: ClassVar[OptimizerRecipe]
    tolerances: ClassVar[Mapping[str, Tolerance]]
    """Per precision: the drift allowed between two runs of the same math."""
    precision_drift: ClassVar[Mapping[str, float]] = {}
    """Per precision: the relative difference of the final loss from fp32 that is expected."""
    options: ClassVar[Mapping[str, Any]] = {}
    """Task-specific options with their defaults (e.g. ``width`` for ``scaling``)."""
    metric_name: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    target_metric: ClassVar[float | None] = None
    """Time-to-train target on the validation metric, where the task declares one."""
    batch_invariant: ClassVar[bool] = True
    """False when the model's math depends on batch composition (BatchNorm, dropout), so
    DDP vs single-process and accumulation vs large batch cannot be compared exactly."""
    declared_traits: ClassVar[frozenset[str]] = frozenset()
    """What the model does that a library may treat differently (``tasks.traits.TRAITS``: weight
    reuse, tied weights, BatchNorm, dropout, ...). Adapters' declared parity may depend on them; the
    worker also detects them on the built model, and tests check built-in declarations against that."""
    unsupported: ClassVar[Mapping[tuple[str, str], str]] = {}
    """``(precision, device type)`` → why the task cannot run that combination (e.g. an op with no
    kernel for that dtype on that device, in plain torch too). Such runs end ``unsupported`` with the
    reason, checked before launching; options-dependent cases override :meth:`unsupported_reason`."""

    preload: ClassVar[tuple[str, ...]] = ()
    """Modules ``build_data`` imports (e.g. ``sklearn.datasets``). A suite's zygote imports them
    before it forks this task's workers, which saves each worker that import; they must be modules
    the worker imports anyway, before training, and must start no thread when imported."""

    loss: ClassVar[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = staticmethod(cross_entropy)
    metric: ClassVar[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = staticmethod(accuracy)
    metric_from_loss: ClassVar[Callable[[float], float] | None] = None
    """Set when the metric is a function of the mean loss (perplexity = exp(loss)): evaluation then
    derives it from the validation loss instead of averaging ``metric`` over batches, and libraries
    are not asked to log ``metric`` per batch (a mean of per-batch perplexities is not a perplexity)."""

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults filled in, unknown keys and wrong types refused."""
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            known = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"task {self.name!r} has no option {unknown[0]!r} (options: {known})")
        resolved = dict(self.options)
        for key, value in given.items():
            _check_option_type(key, value, self.options[key])
            resolved[key] = value
        self.validate_options(resolved)
        return resolved

    def validate_options(self, options: Mapping[str, Any]) -> None:
        """Range checks for options; raise ValueError with a one-line message."""

    def traits(self, options: Mapping[str, Any]) -> frozenset[str]:
        """The model-family traits (``tasks/traits.py``) of this task's model with these resolved options."""
        return self.declared_traits

    def loss_for(self, options: Mapping[str, Any]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The loss for these resolved options (``loss`` unless the options choose another)."""
        return self.loss

    def unsupported_reason(self, options: Mapping[str, Any], precision: str, device_type: str) -> str | None:
        """Why this task cannot run ``precision`` on ``device_type`` with these resolved options, or None."""
        return self.unsupported.get((precision, device_type))

    def is_batch_invariant(self, options: Mapping[str, Any]) -> bool:
        """``batch_invariant`` for these resolved options (a task whose options add BatchNorm or dropout overrides)."""
        return self.batch_invariant

    def build_data(self, options: Mapping[str, Any]) -> TaskData:
        raise NotImplementedError

    def build_model(self, seed: int, options: Mapping[str, Any], data: TaskData) -> nn.Module:
        """Same seed, same options ⇒ same weights, whatever the global RNG state."""
        raise NotImplementedError


def _check_option_type(key: str, value: Any, default: Any) -> None:
    """Options take the type of their default; a default of None means an optional string."""
    if default is None:
        expected, ok = "str", value is None or isinstance(value, str)
    elif isinstance(default, bool):
        expected, ok = "bool", isinstance(value, bool)
    elif isinstance(default, int):
        expected, ok = "int", isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        expected, ok = "float", isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        expected, ok = type(default).__name__, isinstance(value, type(default))
    if not ok:
        raise ValueError(f"task option {key!r} must be {expected}, got {value!r}")


def seeded_init(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    """Build ``factory()`` with torch's default init drawn from ``seed`` and no global side effect."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()
