"""Lightning Flash 0.8.2: the high-level task API, run in its own environment.

Flash is archived and needs pytorch-lightning 1.9, so it cannot live beside the main
environment's Lightning 2.x: the adapter declares ``environment = "flash"`` (``envs/flash.txt``)
and the runner starts its workers with that environment's interpreter (harness/envs.py).
This module imports nothing from Flash at import time, so the main environment can still list
the adapter, ask it which specs it can run and which environment it needs.

What a Flash user writes: a task object (here the generic ``flash.Task``, or
``flash.core.classification.ClassificationTask`` in ``defaults``: the domain tasks such as
``ImageClassifier`` live in ``flash.image``, which no longer imports because pystiche fails with
current torchvision, and ``flash.tabular`` cannot be installed), ``flash.Trainer(...)`` and
``trainer.fit(task, ...)``. The user states the model, the loss, the optimizer and, for a
classification task, ``num_classes`` by hand (see reports/inference.py).

- ``aligned``: the harness's loader, the task's torch optimizer class and hyper-parameters via
  Flash's ``optimizer=`` / ``learning_rate=``, no sanity validation, progress bar, logger,
  checkpointing or model summary, ``replace_sampler_ddp=False``. Flash's ``training_step``
  still calls ``self.log_dict`` every step: that is Flash's own cost and stays in the timing.
- ``defaults``: ``flash.Trainer`` as a new user gets it (logger, progress bar, checkpointing,
  sanity validation) with shuffling loaders and a validation loader; a classification task
  gets Flash's default metric (Accuracy) and the ``num_classes`` the user had to state.
- precision: Lightning 1.9's ``precision=32 | "bf16" | 16``. On CPU Lightning 1.9 replaces
  ``precision=16`` with ``"bf16"`` (a warning), so fp16 on CPU passes Lightning 1.9's own plugin
  instead: ``plugins=[MixedPrecisionPlugin(16, "cpu", scaler=torch.amp.GradScaler("cpu"))]``;
- compile: ``trainer.fit(torch.compile(task))``. Flash has no option of its own, but
  pytorch-lightning 1.9.5's ``Trainer.fit`` unwraps an ``OptimizedModule`` (its experimental
  ``from_compiled``: the task's ``forward`` and step methods run compiled);
- the probe: a Lightning 1.9 ``Callback``, which also keeps the GradScaler's scale for the
  skipped-step count.
- pretrained weights: Flash's backbones catch a failed download and silently build the
  backbone with ``pretrained=False`` (a warning only). :func:`pretrained_fallbacks` finds that
  warning; the adapter records it and refuses to call such a run pretrained.
"""

from __future__ import annotations

import functools
import sys
import warnings
from typing import Any

from adapters.base import Adapter, Job, Request, Unsupported
from adapters.trainer_common import ALIGNED_SWITCHES, defaults_notes, describe_precision, trainer_options
from kernels.precision import skipped_from_scales

FLASH_PRECISION = {"fp32": 32, "bf16-mixed": "bf16", "fp16-mixed": 16}
"""The harness's precision names → Lightning 1.9's ``Trainer(precision=...)`` values."""

PRETRAINED_FALLBACK = "Failed to download pretrained weights"
"""The start of the warning Flash's ``catch_url_error`` emits when it silently drops ``pretrained``."""


def pretrained_fallbacks(caught: list[warnings.WarningMessage]) -> list[str]:
    """The warnings that say Flash built a backbone with random weights instead of pretrained ones."""
    return [str(warning.message) for warning in caught if PRETRAINED_FALLBACK in str(warning.message)]


def make_probe_callback(probe: Any, grad_accum: int):
    """A Lightning 1.9 ``Callback`` feeding the probe (built lazily: Lightning 1.9 is only in the env)."""
    import pytorch_lightning as pl

    class ProbeCallback(pl.Callback):
        """Each micro-batch's loss and each optimizer step's end.

        Flash's ``training_step`` returns the bare loss; Lightning 1.9 hands callbacks that loss
        divided by ``accumulate_grad_batches`` (``outputs["loss"]``), so the callback multiplies
        it back (exact when the accumulation count is a power of two).
        """

        def __init__(self) -> None:
            self.steps_seen = 0
            self.scales: list = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
            loss = outputs["loss"]
            probe.add_loss(loss * grad_accum if grad_accum > 1 else loss)
            if trainer.global_step > self.steps_seen:
                self.steps_seen = trainer.global_step
                probe.step_end()
                scaler = getattr(trainer.precision_plugin, "scaler", None)
                if scaler is not None:  # fp16: the scale stays on the device, no per-step host sync
                    self.scales.append(scaler._scale.detach().clone())

    return ProbeCallback()


def flash_optimizer(job: Job):
    """The task's torch optimizer class with its hyper-parameters, in the callable form Flash accepts."""
    hyper = dict(job.optimizer.hyper)
    return functools.partial(job.optimizer.optimizer, **hyper) if hyper else job.optimizer.optimizer


class FlashAdapter(Adapter):
    name = "flash"
    style = "high-level"
    compiles = "step"  # Lightning 1.9's from_compiled compiles the task's training_step too
    library = "lightning-flash"
    environment = "flash"
    precisions = ("fp32", "bf16-mixed", "fp16-mixed")
    distributed = False
    """Not wired: Flash's Trainer is Lightning 1.9's, whose DDP join of an existing torchrun group is untested here."""

    def expected_parity(self, request: Request) -> str:
        if request.compile:
            return self.compiled_parity(request)
        # Measured on CPU (notes/issue-11.md): aligned fp32 and bf16-mixed runs are bitwise equal
        # to native; Lightning 1.9's automatic optimization is the native loop's math.
        if request.mode == "aligned" and request.grad_accum & (request.grad_accum - 1) == 0:
            return "bitwise"
        if request.mode == "aligned":
            return "close"  # loss / k * k in the probe is not exact for k not a power of two
        return "not-comparable"

    def build_task(self, job: Job):
        """The Flash task object, as its users build one: everything stated by hand."""
        import flash
        from flash.core.classification import ClassificationTask

        common = {
            "model": job.model,
            "loss_fn": job.loss,
            "optimizer": flash_optimizer(job),
            "learning_rate": job.lr,
        }
        num_classes = job.data.inferable.num_classes
        if job.mode == "defaults" and num_classes is not None and job.task.metric_name == "accuracy":
            job.notes["flash_task"] = "ClassificationTask"
            job.notes["stated_by_hand"] = {"num_classes": num_classes, "loss_fn": "task loss", "model": "task model"}
            return ClassificationTask(num_classes=num_classes, **common)
        job.notes["flash_task"] = "Task"
        job.notes["stated_by_hand"] = {"loss_fn": "task loss", "model": "task model"}
        return flash.Task(**common)

    def fit(self, job: Job):
        if job.dist.enabled:
            raise Unsupported("flash adapter runs single-process only")
        try:
            import flash
        except ImportError as error:  # e.g. run in-process (run_inline) in the main environment
            raise Unsupported(
                f"lightning-flash is not importable in {sys.executable} ({error}); flash runs in its own "
                "environment (envs/flash.txt): launch it through harness.runner, which builds and uses it"
            ) from None
        from torch.utils.data import DataLoader

        job.notes["flash_version"] = flash.__version__
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            task = self.build_task(job)
        fallbacks = pretrained_fallbacks(caught)
        job.notes["pretrained"] = "none requested: the task's model, initialized from the seed"
        if fallbacks:  # never hide it: a run that asked for pretrained weights and got random ones
            job.notes["pretrained"] = "FELL BACK TO RANDOM WEIGHTS"
            job.notes["pretrained_fallback_warnings"] = fallbacks

        probe_callback = make_probe_callback(job.probe, job.grad_accum)
        options = {**precision_options(job), "callbacks": [probe_callback]}
        if job.mode == "aligned":
            trainer = flash.Trainer(**options, **ALIGNED_SWITCHES, replace_sampler_ddp=False)
            trainer.fit(compiled(task, job), train_dataloader=job.train_loader)
            job.notes["sampler"] = f"harness {type(job.sampler).__name__} (replace_sampler_ddp=False)"
        else:
            trainer = flash.Trainer(**options)
            samples = job.record_library_samples()
            train_loader = DataLoader(samples.dataset(job.data.train), batch_size=job.batch_size, shuffle=True)
            valid_loader = DataLoader(job.data.valid, batch_size=job.batch_size)
            trainer.fit(compiled(task, job), train_dataloader=train_loader, val_dataloaders=valid_loader)
            samples.describe_torch_sampler(train_loader.sampler, job.seed)
            samples.batches_per_epoch = int(trainer.num_training_batches)
            job.notes["sampler"] = type(train_loader.sampler).__name__
            job.notes.update(defaults_notes(trainer))

        job.notes["trainer_precision"] = str(options.get("precision", "plugin"))
        job.notes["precision_impl"] = describe_precision(trainer, "pytorch_lightning 1.9")
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        job.notes["grad_scaler"] = (
            f"{type(scaler).__name__} in Lightning 1.9's MixedPrecisionPlugin" if scaler is not None else None
        )
        job.notes["skipped_steps"] = (
            skipped_from_scales(scaler._init_scale, probe_callback.scales) if scaler is not None else 0
        )
        job.notes["pytorch_lightning"] = _version("pytorch-lightning")
        job.notes["optimizer_steps"] = trainer.global_step
        job.notes["flash_image"] = flash_image_status()  # after training: its import is not timed
        return job.model.to(job.device)


def compiled(task, job: Job):
    """The task as ``trainer.fit`` gets it: ``torch.compile(task)`` when asked (Lightning 1.9.5 unwraps it)."""
    if not job.compile:
        job.notes["compile_impl"] = None
        return task
    import torch

    job.notes["compile_impl"] = (
        "trainer.fit(torch.compile(task)): pytorch-lightning 1.9.5 unwraps it (from_compiled, experimental)"
    )
    return torch.compile(task)


def precision_options(job: Job) -> dict[str, Any]:
    """The shared Trainer options with Lightning 1.9's ``precision=`` flag, or its plugin where the flag
    would be swapped for bf16 (fp16 on CPU)."""
    options = trainer_options(job, FLASH_PRECISION[job.precision.name])
    if job.precision.name == "fp16-mixed" and job.device.type == "cpu":
        import torch
        from pytorch_lightning.plugins.precision import MixedPrecisionPlugin

        job.notes["precision_route"] = (
            "plugins=[MixedPrecisionPlugin(16, 'cpu', scaler=GradScaler('cpu'))]: Trainer(precision=16) on CPU "
            "would be replaced by 'bf16' (Lightning 1.9 warns and swaps)"
        )
        del options["precision"]
        options["plugins"] = [MixedPrecisionPlugin(16, "cpu", scaler=torch.amp.GradScaler("cpu"))]
    return options
def flash_image_status() -> str:
    """Whether Flash's image tasks (``ImageClassifier``: the domain task API) can be built here."""
    from flash.core.utilities import imports

    if imports._TOPIC_IMAGE_AVAILABLE:
        return "available"
    missing = [
        name
        for name in ("torchvision", "timm", "pil", "albumentations", "pystiche")
        if not getattr(imports, f"_{name.upper()}_AVAILABLE", False)
    ]
    return "unavailable: ImageClassifier needs lightning-flash[image]; missing " + ", ".join(missing)


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
