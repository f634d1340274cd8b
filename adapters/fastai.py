"""fastai: a ``Learner`` driven by ``DataLoaders`` and extended with ``Callback``s.

The adapter is written the way fastai users write fastai code: the loop is ``learn.fit``, and
everything else (the probe, stopping after ``job.steps`` optimizer steps, skipping validation,
bf16 on CPU, gradient accumulation, DDP) is a callback or one of fastai's context managers.

``aligned``: the harness's batches in ``DataLoaders``, the task's torch optimizer through
``OptimWrapper``, plain ``fit`` with only ``TrainEvalCallback`` (no Recorder, no progress bar),
validation cancelled by a callback. ``defaults``: ``DataLoaders.from_dsets`` (fastai's shuffled
``TfmdDL``), fastai's own optimizer with the task's hyper-parameters mapped, the default
callbacks, the task metric and validation every epoch.

Precision: fastai's ``MixedPrecision`` (``learn.to_fp16()``) hard-codes ``autocast("cuda")`` and
``GradScaler("cuda")``, which torch disables on a machine without CUDA: a silent fp32 run. So on
CPU bf16 runs through :class:`CpuBf16` (the same three hooks with CPU autocast) and fp16 through
:class:`CpuMixedPrecision` (fastai's own callback with the device changed to the CPU: its hooks,
its GradScaler logic, its skipped-step handling). Skipped steps are counted by
:class:`SkippedSteps` from fastai's ``after_cancel_step`` event, on every device.
Compile: fastai has no option for it; its users compile the model by hand before building the
``Learner`` (``Learner(dls, torch.compile(model))``), which is what the adapter does.
DDP: fastai's ``distrib_ctx`` under torchrun. Its ``DistributedDL`` broadcasts indices as CUDA
tensors, which gloo cannot do on CPU; ``DistributedTrainer`` leaves loaders that already are a
``DistributedDL`` as they are, so the adapter hands it pre-distributed loaders (see ``_DDP_ROUTE``).
"""

from __future__ import annotations

import math
from functools import partial

import torch
from fastai.callback.core import (
    Callback,
    CancelFitException,
    CancelValidException,
    TrainEvalCallback,
)
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.callback.training import GradientAccumulation
from fastai.data.core import DataLoaders
from fastai.distributed import DistributedDL
from fastai.learner import Learner
from fastai.optimizer import SGD, Adam, OptimWrapper
from fastai.torch_core import to_float

from adapters.base import Adapter, Job, Request, Unsupported
from tasks.base import OptimizerRecipe

_DDP_ROUTE = {
    "aligned": (
        "Learner.distrib_ctx(sync_bn=False, cpu=<on CPU>) as shipped (accelerate wraps the model in DDP); the "
        "train loader is the harness's per-rank sampler declared as a DistributedDL subclass, so "
        "DistributedTrainer keeps it instead of re-sharding"
    ),
    "defaults": (
        "Learner.distrib_ctx(cpu=<on CPU>) as shipped; loaders pre-wrapped in a DistributedDL subclass whose "
        "index broadcast stays on the CPU under gloo (fastai's moves it to CUDA), which DistributedTrainer then keeps"
    ),
}


# --------------------------------------------------------------------------- callbacks


class HarnessProbe(Callback):
    """Feeds the harness probe and ends the fit after ``total_steps`` optimizer steps.

    ``learn.loss`` is a clone taken before ``after_loss`` callbacks run, so it is the un-scaled
    micro-batch loss even when ``GradientAccumulation`` or ``MixedPrecision`` rescale ``loss_grad``.
    ``after_step`` only runs for micro-batches that stepped the optimizer.
    """

    order = 100  # after Recorder (50) and ProgressCallback (60): they see the last batch too
    run_valid = False

    def __init__(self, probe, total_steps: int) -> None:
        self.probe, self.total_steps, self.steps_done = probe, total_steps, 0

    def after_loss(self) -> None:
        self.probe.add_loss(self.learn.loss)

    def after_step(self) -> None:
        self.probe.step_end()
        self.steps_done += 1

    def after_batch(self) -> None:
        if self.steps_done >= self.total_steps:
            raise CancelFitException()


class SampleOrder(Callback):
    """Records the samples fastai's own loader trains on, for the result's coverage.

    fastai fetches items in its loader's worker processes, so nothing seen there reaches the
    main process; what does is the epoch's index list, which ``DataLoader.get_idxs`` computes in
    the main process (fastai lets any of its loader methods be replaced per instance), and each
    training batch's size, seen here in ``before_batch``. Batch j of an epoch is the next slice
    of that list (fastai cuts it into consecutive batches, in order, whatever the workers).
    """

    run_valid = False

    def __init__(self, log, loader) -> None:
        self.log = log
        compute = loader.get_idxs

        def get_idxs():
            indices = compute()
            log.start_epoch(indices)
            return indices

        loader.get_idxs = get_idxs

    def before_batch(self) -> None:
        self.log.batch_trained(len(self.learn.yb[0]) if self.learn.yb else len(self.learn.xb[0]))


class SkipValidation(Callback):
    """Cancel the validation pass (before TrainEvalCallback switches the model to eval mode)."""

    order = TrainEvalCallback.order - 1

    def before_validate(self) -> None:
        raise CancelValidException()


class CpuBf16(Callback):
    """bf16 autocast on CPU with the hooks of fastai's MixedPrecision (which only autocasts CUDA).

    No GradScaler: bf16 has fp32's exponent range, and fastai's MixedPrecision disables its
    scaler for bf16 too.
    """

    order = MixedPrecision.order

    def before_batch(self) -> None:
        self.autocast_context = torch.autocast("cpu", dtype=torch.bfloat16)
        self.autocast_context.__enter__()

    def after_pred(self) -> None:
        self.learn.pred = to_float(self.learn.pred)

    def after_loss(self) -> None:
        self.autocast_context.__exit__(None, None, None)


class CpuMixedPrecision(MixedPrecision):
    """fastai's MixedPrecision with CPU autocast and a CPU GradScaler (fastai's own asks for CUDA)."""

    def before_fit(self) -> None:
        # fastai's before_fit with "cuda" replaced by "cpu" (calling it would build the CUDA pair first)
        dtype = torch.float16 if self.amp_mode == AMPMode.FP16 else torch.bfloat16
        self.kwargs["enabled"] = dtype == torch.float16
        self.autocast = torch.autocast("cpu", dtype=dtype)
        self.learn.scaler, self.scales = torch.amp.GradScaler("cpu", **self.kwargs), []


class SkippedSteps(Callback):
    """Counts optimizer steps fastai's MixedPrecision cancelled because the GradScaler found inf/NaN."""

    run_valid = False

    def __init__(self) -> None:
        self.count = 0

    def after_cancel_step(self) -> None:
        self.count += 1


# --------------------------------------------------------------------------- loaders


class HarnessBatches:
    """The harness's torch DataLoader, plus the ``device``/``to`` fastai's DataLoaders asks of a loader.

    A plain torch DataLoader works in ``DataLoaders`` except for the device: without one,
    ``TrainEvalCallback`` moves the model to fastai's ``default_device()`` (CUDA when present).
    """

    def __init__(self, loader: torch.utils.data.DataLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device
        self.dataset = loader.dataset

    def to(self, device: torch.device) -> HarnessBatches:
        self.device = device
        return self

    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)


class HarnessShards(HarnessBatches, DistributedDL):
    """The harness's loader under DDP: already one shard per rank (its sampler is rank-aware).

    Being a ``DistributedDL`` is what tells fastai's ``DistributedTrainer`` not to re-shard it;
    iteration, length and device come from :class:`HarnessBatches`.
    """


class GlooDistributedDL(DistributedDL):
    """fastai's DistributedDL with the index broadcast kept on the CPU when the backend is gloo."""

    def _broadcast(self, t, rank):
        if torch.distributed.get_backend() != "gloo":
            return super()._broadcast(t, rank)
        indices = torch.tensor(t, dtype=torch.long)
        torch.distributed.broadcast(indices, rank)
        return indices.tolist()


# --------------------------------------------------------------------------- optimizer mapping

_FASTAI_HYPER = {"momentum": "mom", "weight_decay": "wd", "eps": "eps"}


def fastai_optimizer(recipe: OptimizerRecipe) -> tuple[partial, dict]:
    """fastai's own optimizer for a torch recipe, with its hyper-parameters under fastai's names.

    Hyper-parameters the recipe leaves unset keep fastai's defaults (a new user's experience:
    e.g. Adam's sqr_mom 0.99 and eps 1e-5 rather than torch's 0.999 and 1e-8).
    """
    hyper = dict(recipe.hyper)
    mapped: dict = {}
    if recipe.optimizer is torch.optim.SGD:
        factory = SGD
        mapped["decouple_wd"] = False  # torch SGD's weight_decay is L2 on the gradient
        if hyper.pop("nesterov", False) or hyper.pop("dampening", 0):
            raise Unsupported("fastai's SGD has no nesterov momentum or dampening")
    elif recipe.optimizer in (torch.optim.Adam, torch.optim.AdamW):
        factory = Adam
        mapped["decouple_wd"] = recipe.optimizer is torch.optim.AdamW
        if recipe.optimizer is torch.optim.AdamW:
            mapped["wd"] = 0.01  # torch AdamW's default, which the recipe may override below
        if "betas" in hyper:
            mapped["mom"], mapped["sqr_mom"] = hyper.pop("betas")
    else:
        raise Unsupported(f"no fastai optimizer mapping for {recipe.name}")
    for key, value in hyper.items():
        if key not in _FASTAI_HYPER:
            raise Unsupported(f"cannot map {recipe.name} hyper-parameter {key!r} onto fastai's {factory.__name__}")
        mapped[_FASTAI_HYPER[key]] = value
    return partial(factory, **mapped), {"optimizer": f"fastai.optimizer.{factory.__name__}", **mapped}


# --------------------------------------------------------------------------- adapter


class FastaiAdapter(Adapter):
    name = "fastai"
    style = "callback"
    library = "fastai"

    def refuse(self, request: Request) -> str | None:
        if request.mode == "defaults":
            try:
                fastai_optimizer(request.task.optimizer)
            except Unsupported as error:
                return str(error)
        return None

    def expected_parity(self, request: Request) -> str:
        if request.compile:
            return self.compiled_parity(request)
        if request.mode != "aligned":
            return "not-comparable"
        if request.precision != "fp32" and "loss-precision-sensitive" in request.traits:
            # fastai's MixedPrecision (and CpuBf16, its CPU twin) casts the prediction to fp32 in
            # after_pred, so the loss runs in fp32 where native runs it on the low-precision logits.
            # When the loss has ops autocast leaves in low precision (a hand-written log-softmax),
            # that is another computation: measured diverged from step 1 on families[lowp-loss].
            return "diverged"
        # fp16: fastai's MixedPrecision unscales through GradScaler.step (a fake optimizer), steps the real
        # optimizer, then update(): the native loop's math, bitwise on CPU (tests/adapters/test_fp16.py).
        if request.world_size > 1 and request.grad_accum > 1:
            # fastai all-reduces on every micro-batch (no no_sync): same sum, another float order.
            return "close"
        return "bitwise"

    def fit(self, job: Job):
        if job.mode == "aligned":
            learn = self._aligned_learner(job)
        else:
            learn = self._defaults_learner(job)
        skipped = self._add_precision(learn, job)
        if job.grad_accum > 1:
            # fastai counts samples, not batches: step once every grad_accum micro-batches of batch_size.
            learn.add_cb(GradientAccumulation(n_acc=job.batch_size * job.grad_accum))
            job.notes["grad_accum_impl"] = f"GradientAccumulation(n_acc={job.batch_size * job.grad_accum})"
        learn.add_cb(HarnessProbe(job.probe, job.steps))
        epochs = math.ceil(job.steps * job.grad_accum / len(learn.dls.train))
        job.notes["epochs"] = epochs
        job.notes["callbacks"] = [type(cb).__name__ for cb in learn.cbs.sorted("order")]
        if job.dist.enabled:
            job.notes["ddp_route"] = _DDP_ROUTE[job.mode]
            sync_bn = job.mode == "defaults" and job.device.type == "cuda"
            job.notes["sync_bn"] = sync_bn  # SyncBatchNorm refuses CPU tensors; aligned matches native's BN
            # accelerate only treats a torchrun job as multi-CPU DDP when told cpu=True.
            with learn.distrib_ctx(sync_bn=sync_bn, cpu=job.device.type == "cpu"):
                learn.fit(epochs, lr=job.lr)
        else:
            learn.fit(epochs, lr=job.lr)
        job.notes["skipped_steps"] = skipped.count if skipped is not None else 0
        return job.model if job.compile else learn.model

    def _aligned_learner(self, job: Job) -> Learner:
        batches = HarnessShards if job.dist.enabled else HarnessBatches
        valid = torch.utils.data.DataLoader(job.data.valid, batch_size=256)  # never iterated: SkipValidation
        dls = DataLoaders(batches(job.train_loader, job.device), batches(valid, job.device), device=job.device)
        opt_func = partial(OptimWrapper, opt=job.optimizer.optimizer, **dict(job.optimizer.hyper))
        job.notes["optimizer"] = f"OptimWrapper({job.optimizer.name})"
        job.notes["data"] = "harness sampler batches"
        return Learner(
            dls,
            self._model(job),
            loss_func=job.loss,
            opt_func=opt_func,
            lr=job.lr,
            path=job.workdir,
            default_cbs=False,
            cbs=[TrainEvalCallback(), SkipValidation()],
        )

    def _defaults_learner(self, job: Job) -> Learner:
        dls = DataLoaders.from_dsets(job.data.train, job.data.valid, bs=job.batch_size, device=job.device)
        if job.dist.enabled:
            dls = DataLoaders(*(GlooDistributedDL(dl) for dl in dls), device=job.device)
        opt_func, optimizer_notes = fastai_optimizer(job.optimizer)
        job.notes["optimizer"] = optimizer_notes
        job.notes["data"] = (
            f"DataLoaders.from_dsets: TfmdDL(shuffle=True, drop_last=True, num_workers={dls.train.fake_l.num_workers})"
        )
        job.notes["not_comparable"] = "fastai defaults mode uses fastai's shuffled loaders and fastai's optimizer"
        metrics = job.task.metric if job.task.metric_from_loss is None else None
        samples = job.record_library_samples()
        learn = Learner(
            dls,
            self._model(job),
            loss_func=job.loss,
            opt_func=opt_func,
            lr=job.lr,
            path=job.workdir,
            metrics=metrics,
            cbs=[SampleOrder(samples.log, dls.train)],
        )
        samples.batches_per_epoch = len(dls.train)
        samples.sampler = f"{type(dls.train).__name__}(bs={job.batch_size}, shuffle=True, drop_last=True)"
        samples.follows_spec_seed = True
        samples.seed_source = (
            "fastai's loader rng, random.Random(random.randint(...)) when the loader is built, from Python's random "
            "module, which the worker seeds from the spec seed"
            + (" (under DDP, rank 0's index list is broadcast to every rank)" if job.dist.enabled else "")
        )
        if not (hasattr(learn, "recorder") and hasattr(learn, "progress")):
            raise RuntimeError("fastai's default Recorder/ProgressCallback are missing")  # defaults must measure them
        return learn

    @staticmethod
    def _model(job: Job):
        """The model the Learner trains: compiled by hand when asked (fastai has no compile option)."""
        if not job.compile:
            job.notes["compile_impl"] = None
            return job.model
        job.notes["compile_impl"] = "by hand: Learner(dls, torch.compile(model)) (fastai has no compile option)"
        return torch.compile(job.model)

    def _add_precision(self, learn: Learner, job: Job) -> SkippedSteps | None:
        """Add the precision callbacks; return the skipped-step counter when a GradScaler is in play."""
        name = job.precision.name
        job.notes["grad_scaler"] = None
        if name == "fp32":
            job.notes["precision_impl"] = "fp32"
            return None
        if name == "bf16-mixed" and job.device.type == "cpu":
            learn.add_cb(CpuBf16())
            job.notes["precision_impl"] = (
                "bakeoff CpuBf16 callback: torch.autocast(cpu, bfloat16, cache_enabled=True) from before_batch to "
                "after_loss, prediction cast to fp32 in after_pred (fastai's MixedPrecision is CUDA-only)"
            )
            return None
        amp_mode = AMPMode.BF16 if name == "bf16-mixed" else AMPMode.FP16
        if job.device.type == "cuda":
            learn.to_fp16(amp_mode=amp_mode)
            job.notes["precision_impl"] = (
                f"fastai learn.to_fp16(amp_mode={amp_mode.value!r}): MixedPrecision, CUDA autocast"
            )
        else:
            learn.add_cb(CpuMixedPrecision(amp_mode=amp_mode))
            job.notes["precision_route"] = (
                "CpuMixedPrecision (fastai's MixedPrecision on the CPU device): learn.to_fp16() on CPU trains in fp32"
            )
            job.notes["precision_impl"] = (
                "fastai MixedPrecision with the device set to the CPU (CpuMixedPrecision): learn.to_fp16() on CPU "
                "asks for autocast('cuda') and GradScaler('cuda'), which torch disables without CUDA (silent fp32)"
            )
        skipped = SkippedSteps()
        learn.add_cb(skipped)
        if amp_mode == AMPMode.FP16:
            job.notes["grad_scaler"] = f"fastai MixedPrecision: torch.amp.GradScaler({job.device.type!r})"
        return skipped
