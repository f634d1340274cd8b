"""PyTorch Lightning: the inheritance style. A ``LightningModule`` subclass handed to a ``Trainer``.

The module owns the math (``training_step`` returns the task's loss, ``configure_optimizers``
builds the task's torch optimizer); the Trainer owns the loop. Everything else goes through
Lightning's own options, as a Lightning user would write it:

- precision: ``Trainer(precision="32-true" | "bf16-mixed" | "16-mixed")``. On CPU Lightning
  replaces ``"16-mixed"`` with ``"bf16-mixed"`` (a warning from its accelerator connector), so
  fp16 on CPU goes through Lightning's documented plugin route instead:
  ``plugins=[MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))]``. Where Lightning
  turns autocast's weight cache off (2.6+), ``aligned`` passes ``plugins=[CachedAutocast(...)]``,
  its ``MixedPrecision`` with the cache on as the native loop has it (:class:`CachedAutocast`);
- compile: ``trainer.fit(torch.compile(module))``, as Lightning's docs show; Lightning unwraps
  the ``OptimizedModule`` and compiles the module's ``forward`` and ``training_step``;
- DDP: ``strategy="ddp"`` under torchrun. Lightning detects torchrun through its
  ``TorchElasticEnvironment`` and, because the worker has already created the process group,
  ``_init_dist_connection`` returns early and the strategy joins that group;
- gradient accumulation: ``accumulate_grad_batches`` (Lightning divides the loss by k and
  blocks DDP gradient sync on the first k-1 micro-batches, like the native loop);
- the probe: a ``Callback`` (:class:`ProbeCallback`).

``aligned`` hands the Trainer the harness's loader (``use_distributed_sampler=False``, or
Lightning would swap in its own shuffling ``DistributedSampler`` under DDP) and switches off
everything the native loop does not do: sanity validation, progress bar, logger,
checkpointing, model summary. ``defaults`` is the Trainer as a new user gets it, with a
shuffling ``DataLoader`` and a validation loader, so the report can show what that costs, and
``L.seed_everything(seed)`` first, as Lightning's reproducibility docs tell users (the seed of
the ``DistributedSampler`` it injects under DDP comes from there). The samples Lightning's own
loader draws are recorded at dataset access for the result's coverage.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from adapters.base import Adapter, Job, Request
from adapters.trainer_common import (
    ALIGNED_SWITCHES,
    defaults_notes,
    describe_precision,
    step_autocast,
    trainer_options,
)
from kernels.precision import skipped_from_scales

try:  # Lightning >= 2.1 (2.4's plugins.precision exports only this name)
    from lightning.pytorch.plugins.precision import MixedPrecision
except ImportError:  # Lightning 2.0 (lightning@2.0.x) knows the same plugin only by its old name
    from lightning.pytorch.plugins.precision import MixedPrecisionPlugin as MixedPrecision


class CachedAutocast(MixedPrecision):
    """Lightning's autocast plugin with autocast's weight cache on, as the native loop runs it.

    Lightning 2.6.0 made ``MixedPrecision.autocast_context_manager`` pass ``cache_enabled=False``
    (a workaround for stale casts after a ``torch.no_grad()`` nested in a step; Lightning's own
    later fix, PR #21616, puts the cached path back for step execution). Uncached, a weight used
    twice in one forward pass (a recurrent cell) is cast at every use and its gradient summed over
    the uses in fp32, where the native loop casts it once: the same math with other rounding, and
    under AdamW a rounding-sized difference in a near-zero gradient moves that weight by up to one
    learning rate per step, which no declared tolerance for rounding covers (notes/issue-16.md).
    Aligned mode hands the Trainer this plugin, through ``plugins=``, the way Lightning users swap
    a precision plugin; ``defaults`` keeps Lightning's own.
    """

    def autocast_context_manager(self) -> torch.autocast:
        dtype = torch.bfloat16 if self.precision == "bf16-mixed" else torch.half
        return torch.autocast(self.device, dtype=dtype, cache_enabled=True)


# The harness's precision names → Lightning's own ``Trainer(precision=...)`` values.
LIGHTNING_PRECISION = {"fp32": "32-true", "bf16-mixed": "bf16-mixed", "fp16-mixed": "16-mixed"}


class TaskModule(L.LightningModule):
    """The task as a Lightning user writes it: the model, its loss and its optimizer in one class."""

    def __init__(self, job: Job, *, log_metrics: bool) -> None:
        super().__init__()
        self.model = job.model
        self.loss_fn = job.loss
        self.metric_fn = job.task.metric if job.task.metric_from_loss is None else None
        self.metric_name = job.task.metric_name
        self.build_optimizer = job.make_optimizer
        self.log_metrics = log_metrics
        """``defaults`` logs what a new user logs; ``aligned`` logs nothing (the native loop does not)."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)

    def training_step(self, batch, batch_idx: int) -> dict[str, torch.Tensor]:
        inputs, targets = batch
        loss = self.loss_fn(self(inputs), targets)
        if self.log_metrics:
            self.log("train_loss", loss, prog_bar=True)
        # Lightning divides "loss" by accumulate_grad_batches before handing it to callbacks;
        # extra keys reach ``on_train_batch_end`` untouched, so the probe gets the batch's loss.
        return {"loss": loss, "batch_loss": loss.detach()}

    def validation_step(self, batch, batch_idx: int) -> None:
        inputs, targets = batch
        output = self(inputs).float()
        self.log("val_loss", self.loss_fn(output, targets), prog_bar=True, sync_dist=True)
        if self.metric_fn is not None:
            self.log(f"val_{self.metric_name}", self.metric_fn(output, targets), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.build_optimizer(self.parameters())


class ProbeCallback(L.Callback):
    """Feeds the harness probe: every micro-batch's loss, and each optimizer step's end.

    ``on_train_batch_end`` runs after the optimizer update of the batch that completed an
    accumulation group; ``trainer.global_step`` counts optimizer steps, so it advancing is how
    the callback knows this batch stepped. The loss comes from ``outputs["batch_loss"]``: Lightning's
    own ``outputs["loss"]`` is already divided by ``accumulate_grad_batches``.
    """

    def __init__(self, probe: Any) -> None:
        self.probe = probe
        self.steps_seen = 0
        self.grad_scales: list[torch.Tensor] = []

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        self.probe.add_loss(outputs["batch_loss"])
        if trainer.global_step > self.steps_seen:
            self.steps_seen = trainer.global_step
            self.probe.step_end()
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            if scaler is not None:  # fp16: keep the scale on the device, no per-step host sync
                self.grad_scales.append(scaler._scale.detach().clone())

    def skipped_steps(self, trainer: L.Trainer) -> int:
        """Optimizer steps the GradScaler skipped: the scale drops exactly when a step was skipped."""
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is None:
            return 0
        return skipped_from_scales(scaler._init_scale, self.grad_scales)


@contextlib.contextmanager
def seeded_like_a_lightning_user(seed: int):
    """``L.seed_everything(seed)``, as Lightning's docs tell users to do before building the Trainer.

    Without it the ``DistributedSampler`` Lightning injects under DDP takes its seed from
    ``PL_GLOBAL_SEED``, unset, so 0: every spec seed would train on the same data order. The
    variable is put back afterwards so an in-process run leaves no trace in the next one.
    """
    previous = os.environ.get("PL_GLOBAL_SEED")
    if "verbose" in inspect.signature(L.seed_everything).parameters:  # Lightning >= 2.2 logs the seed unless told
        L.seed_everything(seed, verbose=False)
    else:
        L.seed_everything(seed)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("PL_GLOBAL_SEED", None)
        else:
            os.environ["PL_GLOBAL_SEED"] = previous


class LightningAdapter(Adapter):
    name = "lightning"
    style = "inheritance"
    compiles = "step"  # from_compiled compiles training_step too: the loss is inside the graph
    library = "lightning"
    # ``lightning@<version>`` (harness.envs.variant_spec): Lightning before 2.4 declares its
    # namespace packages with ``pkg_resources``, which setuptools 81 removed.
    variant_requirements = {"<2.4": ("setuptools<81",)}
    single_rank_ddp = True  # strategy="ddp" with one device joins the worker's one-rank process group

    def expected_parity(self, request: Request) -> str:
        if request.compile:
            return self.compiled_parity(request)
        # Measured on CPU (notes/issue-4.md, notes/issue-17.md, notes/issue-16.md): aligned runs are
        # bitwise equal to native in fp32 and bf16-mixed, single process and 2-rank gloo DDP, with and
        # without accumulation, on every model family. Lightning's autocast region (training_step:
        # forward + loss) and its loss / k are the native loop's; where this Lightning turns
        # autocast's weight cache off (2.6+), aligned mode puts it back (:class:`CachedAutocast`).
        # fp16-mixed (CUDA only) adds a GradScaler whose unscale_ Lightning calls before step();
        # scaler.step() would do the same unscale, so it is declared bitwise as well.
        if request.mode != "aligned":
            return "not-comparable"
        return "bitwise"

    def recasts_reused_weights(self) -> bool:
        """Whether this adapter's Lightning runs training steps under autocast with its weight cache off.

        Asked of the Lightning imported here when it is the version this adapter runs (in the worker,
        always); for a ``lightning@<version>`` named from the main environment, from the version
        (Lightning 2.6.0 turned the cache off in ``MixedPrecision.autocast_context_manager``).
        """
        requested = getattr(self, "requested_version", None)
        if requested is None or requested == L.__version__:
            return step_autocast(MixedPrecision("bf16-mixed", "cpu"))["cache_enabled"] is False
        from packaging.version import Version

        return Version(requested) >= Version("2.6.0")

    def precision_options(self, job: Job) -> dict[str, Any]:
        """``precision=`` as Lightning users pass it, or its plugin where the flag would not mean it.

        ``Trainer(precision="16-mixed", accelerator="cpu")`` trains in bf16 (Lightning swaps it, with a
        warning); the plugin with a CPU GradScaler is what fp16 on CPU takes in Lightning.
        """
        options = trainer_options(job, LIGHTNING_PRECISION[job.precision.name])
        mixed = job.precision.name != "fp32"
        cached = mixed and job.mode == "aligned" and self.recasts_reused_weights()
        plugin = CachedAutocast if cached else MixedPrecision
        if job.precision.name == "fp16-mixed" and job.device.type == "cpu":
            job.notes["precision_route"] = (
                f"plugins=[{plugin.__name__}('16-mixed', 'cpu', GradScaler('cpu'))]: Trainer(precision='16-mixed') "
                "on CPU would be replaced by 'bf16-mixed' (Lightning's accelerator connector warns and swaps)"
            )
            del options["precision"]
            options["plugins"] = [plugin("16-mixed", "cpu", torch.amp.GradScaler("cpu"))]
        elif cached:
            job.notes["precision_route"] = (
                f"plugins=[CachedAutocast({options['precision']!r}, {job.device.type!r}"
                + (", GradScaler)" if job.precision.name == "fp16-mixed" else ")")
                + "]: Lightning's MixedPrecision with autocast's weight cache on, as the native loop has it "
                "(this Lightning turns it off; a weight reused in one forward pass would be cast at every use)"
            )
            scaler = torch.amp.GradScaler(job.device.type) if job.precision.name == "fp16-mixed" else None
            options["plugins"] = [CachedAutocast(options.pop("precision"), job.device.type, scaler)]
        return options

    def fit(self, job: Job):
        probe_callback = ProbeCallback(job.probe)
        options = self.precision_options(job)
        if job.mode == "aligned":
            module = TaskModule(job, log_metrics=False)
            trainer = L.Trainer(
                **options, **ALIGNED_SWITCHES, use_distributed_sampler=False, callbacks=[probe_callback]
            )
            trainer.fit(torch.compile(module) if job.compile else module, train_dataloaders=job.train_loader)
            job.notes["sampler"] = f"harness {type(job.sampler).__name__} (use_distributed_sampler=False)"
        else:
            samples = job.record_library_samples()
            module = TaskModule(job, log_metrics=True)
            with seeded_like_a_lightning_user(job.seed):
                trainer = L.Trainer(**options, callbacks=[probe_callback])
                train_loader = DataLoader(samples.dataset(job.data.train), batch_size=job.batch_size, shuffle=True)
                valid_loader = DataLoader(job.data.valid, batch_size=job.batch_size)
                fitted = torch.compile(module) if job.compile else module
                trainer.fit(fitted, train_dataloaders=train_loader, val_dataloaders=valid_loader)
            samples.describe_torch_sampler(trainer.train_dataloader.sampler, job.seed)
            samples.batches_per_epoch = int(trainer.num_training_batches)
            if samples.follows_spec_seed and isinstance(trainer.train_dataloader.sampler, DistributedSampler):
                samples.seed_source += ", from PL_GLOBAL_SEED, set by L.seed_everything(spec seed)"
            job.notes["seed_everything"] = job.seed
            job.notes["sampler"] = type(trainer.train_dataloader.sampler).__name__
            job.notes.update(defaults_notes(trainer))
            job.notes["checkpoint"] = (
                trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else None
            )

        job.notes["precision_impl"] = describe_precision(trainer, "lightning")
        job.notes["skipped_steps"] = probe_callback.skipped_steps(trainer)
        job.notes["strategy"] = type(trainer.strategy).__name__
        job.notes["cluster_environment"] = (
            type(trainer.strategy.cluster_environment).__name__ if job.dist.enabled else None
        )
        job.notes["trainer_precision"] = options.get("precision", "plugin")
        job.notes["grad_scaler"] = describe_scaler(trainer)
        job.notes["compile_impl"] = (
            "trainer.fit(torch.compile(module)): Lightning compiles forward and training_step" if job.compile else None
        )
        job.notes["optimizer_steps"] = trainer.global_step
        # Strategy.teardown moves the module to the CPU at the end of fit; the harness evaluates
        # and digests the model on the job's device.
        return job.model.to(job.device)


def describe_scaler(trainer: L.Trainer) -> str | None:
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    if scaler is None:
        return None
    return f"torch.amp.GradScaler({getattr(scaler, '_device', '?')!r}) in Lightning's MixedPrecision plugin"
