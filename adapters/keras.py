"""Keras 3 on the torch backend: the high-level style. ``model.compile`` + ``model.fit``.

The task's torch module goes into Keras through ``keras.layers.TorchModuleWrapper`` inside a
small ``keras.Model`` subclass (:class:`TaskModel`). The wrapper tracks the module's own
``nn.Parameter`` objects as Keras variables (it reuses them, it does not copy them), so Keras
trains the very tensors the task initialized and the adapter returns the task module itself.

``aligned`` keeps Keras' ``fit`` loop, callbacks and ``Model.__call__`` but overrides
``train_step`` (the Keras 3 way to customize ``fit`` with PyTorch, see the Keras guide
"Customizing what happens in fit() with PyTorch") to run the native loop's math: the task's
loss, the task's *torch* optimizer, the harness precision (``torch.autocast``) and the
native accumulation rule. ``fit`` gets the harness's ``DataLoader`` and nothing else: no
validation, no progress bar (``verbose=0``), no checkpoints.

``defaults`` is what a new Keras user writes: ``compile(optimizer=keras.optimizers.<same
name>(task hyper-parameters), loss=SparseCategoricalCrossentropy(from_logits=True),
metrics=["accuracy"])`` and ``fit(x, y, batch_size, validation_data=...)`` on the training
tensors, so Keras shuffles, logs (progress bar) and validates after every epoch.
Accumulation maps onto the Keras optimizer's ``gradient_accumulation_steps``.

What Keras cannot do here is refused with the reason rather than run wrongly:

- mixed precision in ``defaults``: Keras' ``mixed_bfloat16`` / ``mixed_float16`` policy only
  casts the float *inputs* of a ``TorchModuleWrapper``; the torch parameters are not Keras
  variables seen through an autocast scope, so they stay fp32. Float inputs then crash with a
  dtype mismatch and integer inputs (token ids) silently train in fp32.
- DDP: ``fit`` on the torch backend has no data-parallel support (``keras.distribution`` is
  JAX-only; Keras' multi-device torch guide drops ``fit`` for a hand-written loop around DDP).

Compile is Keras' own option: ``model.compile(..., jit_compile=True)``, which on the torch
backend wraps the whole train step (forward, loss, backward, optimizer) in ``torch.compile``.
fp16-mixed in ``aligned`` is the harness precision inside ``train_step``: CPU or CUDA autocast
with ``torch.amp.GradScaler`` (Keras' ``mixed_float16`` policy is refused, see above).

The probe is a ``keras.callbacks.Callback`` (:class:`ProbeCallback`).
"""

from __future__ import annotations

import math
import os
from typing import Any

from adapters.base import Adapter, Job, Request, Unsupported

# Keras picks its backend once, at first import, from KERAS_BACKEND (or ~/.keras/keras.json).
_backend = os.environ.setdefault("KERAS_BACKEND", "torch")
if _backend != "torch":
    raise ImportError(f"the keras adapter needs KERAS_BACKEND=torch (it is set to {_backend!r})")

import keras  # noqa: E402
import torch  # noqa: E402

if keras.backend.backend() != "torch":
    raise ImportError(
        f"keras was already imported with the {keras.backend.backend()!r} backend; "
        "the keras adapter needs KERAS_BACKEND=torch set before keras is first imported"
    )

from tasks.base import OptimizerRecipe, cross_entropy  # noqa: E402

# torch optimizer class name → (Keras optimizer class name, torch hyper-parameter → Keras argument).
KERAS_OPTIMIZERS = {
    "SGD": ("SGD", {"momentum": "momentum", "nesterov": "nesterov"}),
    "Adam": ("Adam", {"betas": ("beta_1", "beta_2"), "eps": "epsilon", "amsgrad": "amsgrad"}),
    "AdamW": (
        "AdamW",
        {"betas": ("beta_1", "beta_2"), "eps": "epsilon", "weight_decay": "weight_decay", "amsgrad": "amsgrad"},
    ),
    "RMSprop": ("RMSprop", {"alpha": "rho", "eps": "epsilon", "momentum": "momentum", "centered": "centered"}),
}

MIXED_POLICY_REASON = (
    "Keras' {policy} dtype policy cannot drive a wrapped torch module: it casts the float inputs of "
    "TorchModuleWrapper to {dtype} but the torch parameters stay fp32 (they are not autocast like Keras "
    "variables), so float inputs fail with a dtype mismatch and integer inputs train in fp32"
)
INPUT_SHAPE_REASON = (
    "keras aligned builds the model from the task's declared input shape (model.build) and task {task!r} "
    "declares none: set Inferable(input_shape=...) in its build_data (the shape of one sample, without the batch)"
)
DISTRIBUTED_REASON = (
    "Keras 3 fit() has no data-parallel support on the torch backend (keras.distribution is JAX-only; "
    "Keras' multi-device PyTorch guide replaces fit() with a hand-written loop around DDP)"
)


def keras_optimizer(recipe: OptimizerRecipe, lr: float, grad_accum: int) -> tuple[keras.Optimizer, dict[str, Any]]:
    """The Keras optimizer of the same name with the task's hyper-parameters, and its arguments."""
    if recipe.name not in KERAS_OPTIMIZERS:
        raise Unsupported(f"no Keras optimizer mapped for torch.optim.{recipe.name}")
    class_name, renames = KERAS_OPTIMIZERS[recipe.name]
    arguments: dict[str, Any] = {"learning_rate": lr}
    for key, value in recipe.hyper.items():
        if key not in renames:
            raise Unsupported(f"torch.optim.{recipe.name}({key}=...) has no Keras {class_name} equivalent")
        target = renames[key]
        if isinstance(target, tuple):
            arguments.update(zip(target, value, strict=True))
        else:
            arguments[target] = value
    if grad_accum > 1:
        arguments["gradient_accumulation_steps"] = grad_accum
    return getattr(keras.optimizers, class_name)(**arguments), arguments


def resolved_metric_names(model: keras.Model) -> list[str]:
    """The metric classes Keras chose for the names given to ``compile`` (e.g. "accuracy")."""
    compiled = next((m for m in model.metrics if m.name == "compile_metrics"), None)
    names = []
    for metrics_list in getattr(compiled, "_flat_metrics", None) or []:
        names += [type(metric).__name__ for metric in getattr(metrics_list, "metrics", [])]
    return names


def compile_note(model: keras.Model, requested: bool) -> str | None:
    """What Keras did with ``jit_compile``: on torch it is ``torch.compile`` around the train step."""
    if not requested:
        return None
    if not model.jit_compile:  # Keras turns it off (with a warning) where torch cannot compile
        raise Unsupported("Keras switched jit_compile off on this torch backend")
    return "model.compile(jit_compile=True): Keras' torch trainer wraps its train step in torch.compile"


class TaskModel(keras.Model):
    """The task's torch module as a Keras model.

    ``aligned`` passes ``job`` and gets :meth:`train_step` running the native loop's math;
    ``defaults`` passes no job and uses Keras' own ``train_step``. Either way the loss of the
    last training micro-batch is kept in ``last_loss`` for the probe callback.
    """

    def __init__(self, module: torch.nn.Module, job: Job | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.task_module = keras.layers.TorchModuleWrapper(module)
        self.job = job
        self.last_loss: torch.Tensor | None = None
        self._micro_batches = 0
        if job is not None:
            self.torch_optimizer = job.make_optimizer(module.parameters())

    def call(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.task_module(inputs)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training=training)
        if training:
            self.last_loss = loss.detach()
        return loss

    def train_step(self, data):
        if self.job is None:
            return super().train_step(data)
        job = self.job
        inputs, targets = (tensor.to(job.device, non_blocking=True) for tensor in data)
        with job.precision.forward_context():
            loss = job.loss(self(inputs, training=True), targets)
        job.precision.backward(loss / job.grad_accum)
        self.last_loss = loss.detach()
        if self._completes_step():
            job.precision.optimizer_step(self.torch_optimizer)
            self.torch_optimizer.zero_grad(set_to_none=True)
        # No logs: Keras would turn each logged tensor into a Python float after every batch
        # (a device sync the native loop does not have); the probe reads ``last_loss`` instead.
        return {}

    @torch.compiler.disable
    def _completes_step(self) -> bool:
        """Count this micro-batch; True when it completes an optimizer step.

        Kept out of ``jit_compile``'s graph: dynamo treats a module's integer attributes as
        constants, so counting inside the compiled train step recompiles it at every batch.
        """
        self._micro_batches += 1
        return self._micro_batches % self.job.grad_accum == 0


class ProbeCallback(keras.callbacks.Callback):
    """Feeds the probe from ``on_train_batch_end`` and stops ``fit`` after ``steps`` optimizer steps.

    Keras calls ``on_train_batch_end`` after ``train_step`` returns, i.e. after the update.
    With a Keras optimizer accumulating gradients, the update happens on every
    ``grad_accum``-th batch (its ``iterations`` counter is global, not per epoch).
    ``async_safe`` stays False: the step end must be stamped in the training thread.
    """

    def __init__(self, probe: Any, *, steps: int, grad_accum: int) -> None:
        super().__init__()
        self.probe = probe
        self.steps = steps
        self.grad_accum = grad_accum
        self.micro_batches = 0

    def on_train_batch_end(self, batch: int, logs=None) -> None:
        self.probe.add_loss(self.model.last_loss)
        self.micro_batches += 1
        if self.micro_batches % self.grad_accum == 0:
            self.probe.step_end()
            if self.probe.steps >= self.steps:
                self.model.stop_training = True


class SampleLogStart(keras.callbacks.Callback):
    """Starts the sample log when training starts: ``fit`` first fetches one batch to build the model."""

    def __init__(self, log) -> None:
        super().__init__()
        self.log = log

    def on_train_begin(self, logs=None) -> None:
        self.log.discard()


class SamplerEpochCallback(keras.callbacks.Callback):
    """Tells the harness sampler which epoch Keras is in, as torch users do with ``set_epoch``."""

    def __init__(self, sampler) -> None:
        super().__init__()
        self.sampler = sampler

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        self.sampler.set_epoch(epoch)


class KerasAdapter(Adapter):
    name = "keras"
    style = "high-level"
    compiles = "step"  # jit_compile wraps the whole train step (forward, loss, backward, optimizer)
    library = "keras"
    distributed = False
    not_distributed_reason = DISTRIBUTED_REASON

    def refuse(self, request: Request) -> str | None:
        if request.mode == "aligned" and request.inferable is not None and request.inferable.input_shape is None:
            return INPUT_SHAPE_REASON.format(task=request.task.name)
        if request.mode == "defaults" and request.precision != "fp32":
            policy, dtype = (
                ("mixed_bfloat16", "bfloat16") if request.precision == "bf16-mixed" else ("mixed_float16", "float16")
            )
            return MIXED_POLICY_REASON.format(policy=policy, dtype=dtype)
        return None

    def expected_parity(self, request: Request) -> str:
        if request.compile:
            return self.compiled_parity(request)
        # Measured on CPU for fp32, bf16-mixed and accumulation (notes/issue-6-keras.md): aligned
        # runs the native loop's operations in the same order inside Keras' fit, so every step
        # loss and every weight is bitwise equal. fp16-mixed (CUDA) takes the same harness
        # GradScaler path but has not been measured.
        if request.mode == "aligned" and request.world_size == 1:
            return "bitwise"
        return "not-comparable"

    def fit(self, job: Job):
        reason = self.check(job.request)
        if reason:
            raise Unsupported(reason)
        with keras.device(str(job.device)):
            if job.mode == "aligned":
                self._fit_aligned(job)
            else:
                self._fit_defaults(job)
        job.model.train()  # Keras leaves the module in eval mode after each epoch
        return job.model

    def _fit_aligned(self, job: Job) -> None:
        model = TaskModel(job.model, job)
        # Built explicitly from the task's declared input shape: otherwise fit() would build it
        # by pulling one batch from the loader, an extra pass that moves the harness sampler to
        # its next epoch and draws from the global RNG (the DataLoader iterator's base seed).
        model.build((None, *job.data.inferable.input_shape))
        model.compile(optimizer=None, jit_compile=job.compile)  # the torch optimizer lives in train_step
        batches_per_epoch = len(job.train_loader)
        micro_batches = job.steps * job.grad_accum
        model.fit(
            job.train_loader,
            epochs=math.ceil(micro_batches / batches_per_epoch),
            # One harness epoch per Keras epoch; with steps_per_epoch set Keras keeps one loader
            # iterator per pass (without it, it would open two at each epoch boundary).
            steps_per_epoch=batches_per_epoch,
            shuffle=False,  # the order is the harness sampler's
            verbose=0,
            callbacks=[
                SamplerEpochCallback(job.sampler),
                ProbeCallback(job.probe, steps=job.steps, grad_accum=job.grad_accum),
            ],
        )
        job.notes.update(
            {
                "precision_impl": (
                    f"torch.autocast({job.device.type}, {str(job.precision.autocast_dtype).removeprefix('torch.')}, "
                    "cache_enabled=True) around forward + loss inside the Keras train_step"
                    if job.precision.autocast_dtype
                    else "fp32"
                ),
                "skipped_steps": job.precision.skipped_steps,
                "grad_scaler": getattr(job.precision, "describe_scaler", lambda: None)(),
                "compile_impl": compile_note(model, job.compile),
                "optimizer": f"torch.optim.{job.optimizer.name} (task recipe) in an overridden Keras train_step",
                "loss": "task loss (torch) in train_step",
                "data": "harness DataLoader passed to fit (steps_per_epoch = one harness epoch)",
                "model": "keras.Model subclass wrapping the task module with keras.layers.TorchModuleWrapper",
                "inferred": {"input_shape": "declared by the task (model.build), not inferred"},
            }
        )

    def _fit_defaults(self, job: Job) -> None:
        model = TaskModel(job.model)
        optimizer, arguments = keras_optimizer(job.optimizer, job.lr, job.grad_accum)
        if job.loss is cross_entropy:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            loss_note = "keras.losses.SparseCategoricalCrossentropy(from_logits=True)"
        else:
            target_dtype = job.data.train.tensors[1].dtype

            def loss(y_true, y_pred):
                # Keras hands a loss function its targets cast to float32; class ids go back to their dtype.
                return job.loss(y_pred, y_true.to(target_dtype))

            loss_note = "task loss (torch) as a Keras loss function"
        model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"], jit_compile=job.compile)
        train_x, train_y = job.data.train.tensors
        valid_x, valid_y = job.data.valid.tensors
        micro_batches = job.steps * job.grad_accum
        batches_per_epoch = math.ceil(len(train_y) / job.batch_size)
        # The labels go in as a tensor that logs the rows Keras slices for each batch (values,
        # dtype and everything the model sees unchanged): the result's sample coverage.
        samples = job.record_library_samples()
        model.fit(
            train_x,
            samples.tensor(train_y),
            batch_size=job.batch_size,
            epochs=math.ceil(micro_batches / batches_per_epoch),
            validation_data=(valid_x, valid_y),
            callbacks=[
                SampleLogStart(samples.log),
                ProbeCallback(job.probe, steps=job.steps, grad_accum=job.grad_accum),
            ],
        )
        samples.batches_per_epoch = batches_per_epoch  # Keras' array adapter: ceil(samples / batch_size)
        samples.sampler = "Keras array adapter: BatchSampler(RandomSampler(range(n)), drop_last=False)"
        samples.follows_spec_seed = True
        samples.seed_source = (
            "a seed torch's RandomSampler draws from the global RNG as each epoch starts; the worker seeds that "
            "RNG from the spec seed"
        )
        resolved = resolved_metric_names(model)
        job.notes.update(
            {
                "precision_impl": "fp32",
                "compile_impl": compile_note(model, job.compile),
                "optimizer": f"keras.optimizers.{type(optimizer).__name__}({arguments})",
                "loss": loss_note,
                "data": "fit(x, y, batch_size, shuffle=True): Keras' own shuffling; validation after every epoch",
                "model": "keras.Model subclass wrapping the task module with keras.layers.TorchModuleWrapper",
                "inferred": {
                    "input_shape": "from the first batch (Keras' symbolic build)",
                    "metric 'accuracy'": ", ".join(resolved) or "unresolved",
                    "num_classes": "not inferable: Keras builds no output layer for a wrapped torch module",
                },
            }
        )
