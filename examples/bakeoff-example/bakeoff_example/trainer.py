"""A stand-in for an in-house training library: a trainer with callbacks, knowing nothing of bakeoff."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import nullcontext


class Callback:
    def on_step_end(self, trainer: MiniTrainer, loss) -> None:
        """After each optimizer step, with that step's loss (a tensor)."""


class MiniTrainer:
    """``MiniTrainer(model, optimizer, loss_fn).fit(batches, steps)``: the loop users of this library run."""

    def __init__(
        self, model, optimizer, loss_fn, *, callbacks: Iterable[Callback] = (), autocast=None, device="cpu"
    ) -> None:
        self.model, self.optimizer, self.loss_fn, self.device = model, optimizer, loss_fn, device
        self.callbacks = list(callbacks)
        self.autocast: Callable = autocast or nullcontext
        self.step = 0

    def fit(self, loader, steps: int) -> None:
        self.model.train()
        while self.step < steps:
            for batch_inputs, batch_targets in loader:
                inputs, targets = batch_inputs.to(self.device), batch_targets.to(self.device)
                with self.autocast():
                    loss = self.loss_fn(self.model(inputs), targets)
                loss.backward()
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                for callback in self.callbacks:
                    callback.on_step_end(self, loss)
                if self.step >= steps:
                    return
