"""Hugging Face ``Trainer`` (transformers + accelerate), written the way its users write it.

``TrainingArguments`` + a ``Trainer`` subclass: ``compute_loss`` is overridden to call the task's
plain ``nn.Module`` on a tensor and apply the task's loss (the documented hook for a custom
loss), a ``TrainerCallback`` feeds the probe, mixed precision is ``bf16=True`` / ``fp16=True``
(accelerate autocasts the model's forward), DDP is accelerate's ``DistributedDataParallel``
on the process group torchrun (and the worker) already set up, gradient accumulation is
``gradient_accumulation_steps``, compilation is ``torch_compile=True`` (accelerate calls
``torch.compile`` on the prepared model).

fp16 on CPU is refused: ``fp16=True`` there trains in fp32 without a word — accelerate enables
fp16 autocast and its GradScaler only off the CPU (``Accelerator.__init__``: ``native_amp`` needs
``device.type != "cpu"``), so the run would be labelled fp16 and be fp32
(tests/adapters/test_hf_trainer.py shows the fp32 activations).

``aligned``: ``get_train_dataloader`` (a documented extension point) iterates the harness's
sampler, the task's optimizer comes in through ``optimizers=(optimizer, constant schedule)``,
gradient clipping is off (``max_grad_norm=0``) and nothing is logged, evaluated or saved.
``defaults``: the Trainer's own shuffling sampler, its default optimizer (fused AdamW, no weight
decay) with a linear decay schedule, ``max_grad_norm=1.0``, its progress bar, step logging and
end-of-training checkpoint, with the task's learning rate, batch size and step count.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainingArguments, get_constant_schedule
from transformers.trainer_callback import PrinterCallback

from adapters.base import Adapter, Job, Request
from kernels.precision import skipped_from_scales
from kernels.sampling import base_sampler

INPUTS, LABELS = "inputs", "labels"
"""Batch keys. ``labels`` is the Trainer's conventional name for targets."""


def batch_as_dict(batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The harness loader yields one ``(inputs, targets)`` batch; the Trainer expects a dict."""
    inputs, targets = batch
    return {INPUTS: inputs, LABELS: targets}


def collate_samples(samples: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``data_collator`` for the Trainer's own loader: stack ``(input, target)`` samples into a dict."""
    inputs, targets = zip(*samples, strict=True)
    return {INPUTS: torch.stack(inputs), LABELS: torch.stack(targets)}


def _value(option: Any) -> str:
    """An enum option of TrainingArguments/accelerate as its plain string."""
    return str(getattr(option, "value", option))


def describe_sampler(loader: DataLoader) -> str:
    """The sampler classes inside a (possibly accelerate-prepared) DataLoader, outermost first."""
    names, batch_sampler = [], loader.batch_sampler
    while batch_sampler is not None:
        names.append(type(batch_sampler).__name__)
        inner = getattr(batch_sampler, "batch_sampler", None)
        if inner is None:
            names.append(type(getattr(batch_sampler, "sampler", None)).__name__)
        batch_sampler = inner
    return " > ".join(names) or type(loader.sampler).__name__


FP16_CPU_REASON = (
    "Trainer(fp16=True) trains in fp32 on CPU: accelerate turns on fp16 autocast and its GradScaler only on an "
    "accelerator (Accelerator: native_amp requires device.type != 'cpu'), so the run would be mislabelled"
)


class ProbeCallback(TrainerCallback):
    """Marks the end of each optimizer step (after the update, scheduler step and zero_grad).

    With fp16 it also keeps accelerate's GradScaler scale after every step (a device tensor, no
    host sync), from which the skipped steps are counted after training.
    """

    def __init__(self, probe) -> None:
        self.probe = probe
        self.scaler = None
        self.scales: list[torch.Tensor] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.probe.step_end()
        if self.scaler is not None:
            self.scales.append(self.scaler._scale.detach().clone())


class TaskTrainer(Trainer):
    """A Trainer for a plain ``nn.Module`` that takes a tensor, trained with the task's loss.

    ``harness_loader`` (aligned mode) replaces the Trainer's own shuffled DataLoader with one
    over the harness's sampler, so every adapter sees the same batches in the same order.
    """

    def __init__(self, *args, task_loss, probe, harness_loader: DataLoader | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.task_loss = task_loss
        self.probe = probe
        self.harness_loader = harness_loader

    def get_train_dataloader(self) -> DataLoader:
        if self.harness_loader is None:
            return super().get_train_dataloader()
        # Not passed through accelerator.prepare: the harness sampler already gives each rank its
        # own shard, and accelerate's BatchSamplerShard would shard it a second time. Batches are
        # moved to the device by Trainer._prepare_inputs.
        return self.harness_loader

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The mean loss of this micro-batch. The Trainer divides it by the number of accumulated
        # micro-batches before backward (num_items_in_batch stays None: the model takes no **kwargs).
        outputs = model(inputs[INPUTS])
        loss = self.task_loss(outputs, inputs[LABELS])
        if model.training:
            self.probe.add_loss(loss)
        return (loss, {"logits": outputs}) if return_outputs else loss


class HFTrainerAdapter(Adapter):
    name = "hf"
    style = "high-level"
    library = "transformers"

    def refuse(self, request: Request) -> str | None:
        if request.precision == "fp16-mixed" and request.device_type != "cuda":
            return FP16_CPU_REASON
        return None

    def expected_parity(self, request: Request) -> str:
        if request.compile:
            return self.compiled_parity(request)
        if request.mode != "aligned":
            return "not-comparable"
        # Measured on CPU (tests/adapters/test_hf_trainer.py, notes/issue-6-hf.md): the Trainer runs
        # the same forward / loss / backward / step ops as the native loop: bitwise in fp32, with
        # accumulation (loss / accumulation steps before backward, as native) and under DDP
        # (accelerate's DDP on the worker's process group). bf16 is bitwise too on CPU: accelerate
        # autocasts only the forward and casts the logits to fp32, the loss then runs in fp32, which
        # is what CPU autocast does to cross_entropy in the native loop anyway. fp16 (CUDA only)
        # was not measured here; GradScaler schedules may differ, so only "close" is declared.
        # That bf16 argument holds only for a loss autocast runs in fp32 anyway: a loss with ops
        # autocast leaves in low precision (a hand-written log-softmax on the logits) runs in bf16 in
        # native and in fp32 here, another computation (measured diverged from step 1 on
        # families[lowp-loss]).
        if request.precision != "fp32" and "loss-precision-sensitive" in request.traits:
            return "diverged"
        return "close" if request.precision == "fp16-mixed" else "bitwise"

    def training_arguments(self, job: Job) -> TrainingArguments:
        common: dict[str, Any] = {
            "output_dir": job.workdir,
            "per_device_train_batch_size": job.batch_size,
            "gradient_accumulation_steps": job.grad_accum,
            "max_steps": job.steps,
            "learning_rate": job.lr,
            "bf16": job.precision.name == "bf16-mixed",
            "fp16": job.precision.name == "fp16-mixed",
            "use_cpu": job.device.type == "cpu",
            "report_to": "none",
            "torch_compile": job.compile,
        }
        if job.mode == "defaults":
            # What a new user writes: hyper-parameters only. Everything else is the library's default.
            return TrainingArguments(**common, seed=job.seed)
        return TrainingArguments(
            **common,
            # The worker seeded every RNG with seed + rank right before fit; Trainer.__init__ calls
            # set_seed(args.seed) again, so give it that same value (dropout masks stay aligned).
            seed=job.seed + job.dist.rank,
            max_grad_norm=0.0,  # the default 1.0 clips; the native loop does not
            eval_strategy="no",
            save_strategy="no",
            logging_strategy="no",
            logging_nan_inf_filter=False,  # isnan/isinf on every loss is a host sync per micro-batch
            disable_tqdm=True,
            dataloader_pin_memory=False,
            # The task models use every parameter; the default (True for non-transformers models)
            # makes DDP walk the autograd graph after every backward.
            ddp_find_unused_parameters=False,
        )

    def fit(self, job: Job) -> nn.Module:
        args = self.training_arguments(job)
        aligned = job.mode == "aligned"
        train_dataset = job.data.train
        if aligned:
            optimizer = job.make_optimizer(job.model.parameters())
            optimizers = (optimizer, get_constant_schedule(optimizer))
            harness_loader = DataLoader(
                job.train_loader.dataset, sampler=job.sampler, batch_size=None, collate_fn=batch_as_dict
            )
        else:
            optimizers, harness_loader = (None, None), None
            train_dataset = job.record_library_samples().dataset(job.data.train)  # coverage of its own loader
        probe_callback = ProbeCallback(job.probe)
        trainer = TaskTrainer(
            model=job.model,
            args=args,
            data_collator=collate_samples,
            train_dataset=train_dataset,
            eval_dataset=job.data.valid,
            optimizers=optimizers,
            callbacks=[probe_callback],
            task_loss=job.loss,
            probe=job.probe,
            harness_loader=harness_loader,
        )
        if aligned:
            trainer.remove_callback(PrinterCallback)  # prints the final metrics dict; nothing to log
        probe_callback.scaler = trainer.accelerator.scaler
        trainer.train()
        self.record(job, trainer, aligned)
        scaler = trainer.accelerator.scaler
        job.notes["skipped_steps"] = skipped_from_scales(scaler._init_scale, probe_callback.scales) if scaler else 0
        job.notes["grad_scaler"] = f"accelerate {type(scaler).__name__}" if scaler is not None else None
        job.notes["compile_impl"] = (
            f"TrainingArguments(torch_compile=True): accelerate torch.compile(backend={args.torch_compile_backend!r})"
            if job.compile
            else None
        )
        # Undo accelerate's wrapping (compile, DDP and the autocast forward), returning the task's own module.
        return trainer.accelerator.unwrap_model(
            trainer.model_wrapped, keep_fp32_wrapper=False, keep_torch_compile=False
        )

    @staticmethod
    def record(job: Job, trainer: Trainer, aligned: bool) -> None:
        args = trainer.args
        accelerator = trainer.accelerator
        precision = accelerator.mixed_precision
        if precision == "no":
            job.notes["precision_impl"] = "fp32"
        elif not accelerator.native_amp:  # accelerate's fp16 off an accelerator: neither autocast nor scaler
            job.notes["precision_impl"] = (
                f"fp32: accelerate mixed_precision={precision!r} without native AMP on {accelerator.device.type}"
            )
        else:
            handler = getattr(accelerator, "autocast_handler", None)
            cache = getattr(handler, "cache_enabled", None)
            job.notes["precision_impl"] = (
                f"Trainer {precision}=True: accelerate torch.autocast({accelerator.device.type}, {precision}, "
                f"cache_enabled={'True (torch default)' if cache is None else cache}) around model.forward, "
                "outputs cast to fp32, loss outside autocast"
                + (", GradScaler" if accelerator.scaler is not None else "")
            )
        optimizer = type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__
        if aligned:
            job.notes["optimizer"] = f"{optimizer} (task recipe via optimizers=)"
        else:
            job.notes["optimizer"] = f"{optimizer} (optim={_value(args.optim)}, weight_decay={args.weight_decay})"
        job.notes["lr_scheduler"] = "constant" if aligned else _value(args.lr_scheduler_type)
        job.notes["max_grad_norm"] = args.max_grad_norm
        if aligned:
            job.notes["sampler"] = "harness ShardedBatchSampler (get_train_dataloader override)"
        else:
            loader = trainer.callback_handler.train_dataloader
            job.notes["sampler"] = f"Trainer's own: {describe_sampler(loader)}"
            samples = job.library_samples
            samples.describe_torch_sampler(base_sampler(loader), job.seed)
            samples.sampler = f"{describe_sampler(loader)}: {samples.sampler}"
            samples.batches_per_epoch = len(loader)
            if samples.follows_spec_seed and "initial_seed" in samples.sampler:
                samples.seed_source += ": torch.random.initial_seed() after Trainer's set_seed(args.seed = spec seed)"
        job.notes["distributed"] = _value(accelerator.distributed_type)
        job.notes["optimizer_steps"] = trainer.state.global_step
        job.notes["inferred"] = "nothing: the Trainer takes a built model; num_labels is a config value, not inferred"

