"""The reference: a plain PyTorch training loop, readable top to bottom.

Every other adapter is measured against this one, so it does the obvious thing and nothing
else: the harness's batches, the task's optimizer, autocast around forward + loss, the loss
divided by the accumulation count, DDP gradient sync only on the last micro-batch. With
``compile`` the model is ``torch.compile``d before DDP wraps it, as nanoGPT does.
"""

from __future__ import annotations

import torch
from torch.nn.parallel import DistributedDataParallel

from adapters.base import Adapter, Job
from kernels.distributed import wrap_ddp
from kernels.sampling import endless


class NativeAdapter(Adapter):
    name = "native"
    style = "native"
    library = None
    modes = ("aligned",)  # the native loop has no library defaults to measure
    single_rank_ddp = True

    def fit(self, job: Job):
        model = job.model
        train_model = wrap_ddp(torch.compile(model) if job.compile else model, job.dist)
        optimizer = job.make_optimizer(model.parameters())
        precision = job.precision
        batches = endless(job.train_loader)
        model.train()

        for _ in range(job.steps):
            for micro_step in range(job.grad_accum):
                inputs, targets = next(batches)
                inputs = inputs.to(job.device, non_blocking=True)
                targets = targets.to(job.device, non_blocking=True)
                # All-reduce gradients only on the last micro-batch of the step. Setting the
                # flag (rather than entering no_sync()) keeps one code path for every micro-batch.
                if isinstance(train_model, DistributedDataParallel):
                    train_model.require_backward_grad_sync = micro_step == job.grad_accum - 1
                with precision.forward_context():
                    loss = job.loss(train_model(inputs), targets)
                # Average gradients over the micro-batches; a single one needs no division node.
                precision.backward(loss / job.grad_accum if job.grad_accum > 1 else loss)
                job.probe.add_loss(loss)
            precision.optimizer_step(optimizer)
            optimizer.zero_grad(set_to_none=True)
            job.probe.step_end()

        job.notes["precision_impl"] = (
            f"torch.autocast({job.device.type}, {str(precision.autocast_dtype).removeprefix('torch.')}, "
            "cache_enabled=True) around forward + loss"
            if precision.autocast_dtype
            else "fp32"
        )
        job.notes["skipped_steps"] = precision.skipped_steps
        job.notes["grad_scaler"] = getattr(precision, "describe_scaler", lambda: None)()
        job.notes["wrapper"] = type(train_model).__name__  # DistributedDataParallel whenever a process group is up
        compiled = "torch.compile(model), inside DDP" if job.dist.enabled else "torch.compile(model)"
        job.notes["compile_impl"] = compiled if job.compile else None
        return model
