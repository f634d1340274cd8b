"""An adapter: bakeoff drives ``MiniTrainer`` the way its users do, and the probe is one of its callbacks."""

from __future__ import annotations

from bakeoff import Adapter, Job, Request
from bakeoff_example.trainer import Callback, MiniTrainer


class ProbeCallback(Callback):
    def __init__(self, probe) -> None:
        self.probe = probe

    def on_step_end(self, trainer, loss) -> None:
        self.probe.step_end(loss)  # one call per optimizer step, no device sync


class MiniTrainerAdapter(Adapter):
    name = "example-trainer"
    style = "callback"
    library = None  # part of this package: its version is the plugin's, recorded with its code
    modes = ("aligned",)
    distributed = False
    not_distributed_reason = "MiniTrainer has no data-parallel support"

    def refuse(self, request: Request) -> str | None:
        if request.grad_accum > 1:
            return "MiniTrainer steps the optimizer after every batch (no gradient accumulation)"
        return None

    def expected_parity(self, request: Request) -> str:
        # The same forward, loss, backward and step as the native loop, in the same order.
        return "bitwise" if request.mode == "aligned" else "not-comparable"

    def fit(self, job: Job):
        trainer = MiniTrainer(
            job.model,
            job.make_optimizer(job.model.parameters()),
            job.loss,
            callbacks=[ProbeCallback(job.probe)],
            autocast=job.precision.forward_context,
            device=job.device,
        )
        trainer.fit(job.train_loader, job.steps)
        job.notes["precision_impl"] = (
            f"torch.autocast ({job.precision.name}) via MiniTrainer(autocast=...)"
            if job.precision.autocast_dtype
            else "fp32"
        )
        return job.model
