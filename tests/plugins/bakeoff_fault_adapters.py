"""Adapters that fail on purpose, for runner fault tests.

They are registered through the ``bakeoff.adapters`` entry-point group by the dist-info folder
beside this file, which also exercises the third-party registration path. Each runs the native
loop and injects its fault after ``FAULT_STEP`` optimizer steps, so the result must carry a
partial trajectory.
"""

from __future__ import annotations

import os
import signal
import time

from adapters.native import NativeAdapter

FAULT_STEP = 2


class _FaultingProbe:
    """Forwards to the real probe and calls ``fault()`` once the given step has ended."""

    def __init__(self, probe, fault) -> None:
        self._probe, self._fault = probe, fault

    def add_loss(self, loss) -> None:
        self._probe.add_loss(loss)

    def step_end(self, loss=None) -> None:
        self._probe.step_end(loss)
        if self._probe.steps == FAULT_STEP:
            self._fault()


class _FaultAdapter(NativeAdapter):
    style = "native"

    def fault(self) -> None:
        raise NotImplementedError

    def fit(self, job):
        job.probe = _FaultingProbe(job.probe, self.fault)
        return super().fit(job)


class RaiseAdapter(_FaultAdapter):
    name = "fault-raise"

    def fault(self) -> None:
        raise RuntimeError("planted failure inside the training loop")


class HangAdapter(_FaultAdapter):
    name = "fault-hang"

    def fault(self) -> None:
        while True:
            time.sleep(1)


class KillAdapter(_FaultAdapter):
    name = "fault-kill"

    def fault(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class NanAdapter(NativeAdapter):
    name = "fault-nan"

    def fit(self, job):
        task_loss = job.loss
        calls = {"n": 0}

        def poisoned(output, target):
            calls["n"] += 1
            loss = task_loss(output, target)
            return loss * float("nan") if calls["n"] > FAULT_STEP else loss

        job.loss = poisoned
        return super().fit(job)


class SilentFp32Adapter(NativeAdapter):
    """Accepts any precision and trains in fp32 without a word (what some libraries do on CPU)."""

    name = "fault-silent-fp32"

    def fit(self, job):
        from kernels.precision import Precision

        job.precision = Precision()
        return super().fit(job)


class KillRankOneAdapter(_FaultAdapter):
    """Rank 1 of a DDP job dies by SIGKILL; rank 0 must still end as a failed result."""

    name = "fault-kill-rank1"

    def fit(self, job):
        self._rank = job.dist.rank
        return super().fit(job)

    def fault(self) -> None:
        if self._rank == 1:
            os.kill(os.getpid(), signal.SIGKILL)


class OutOfMemoryAdapter(_FaultAdapter):
    """An out-of-memory error, simulated on CPU with the exception CUDA would raise."""

    name = "fault-oom"

    def fault(self) -> None:
        import torch

        raise torch.OutOfMemoryError("simulated: tried to allocate 80.00 GiB")


def _lightning_callback_fault():
    """A Lightning run whose Callback raises (the probe is called from a Lightning Callback)."""
    from adapters.lightning import LightningAdapter

    class LightningCallbackRaiseAdapter(LightningAdapter):
        name = "fault-lightning-callback"

        def fit(self, job):
            def boom():
                raise RuntimeError("planted failure inside a Lightning callback")

            job.probe = _FaultingProbe(job.probe, boom)
            return super().fit(job)

    return LightningCallbackRaiseAdapter


def __getattr__(name):  # the Lightning-based fault adapter is built only when asked for
    if name == "LightningCallbackRaiseAdapter":
        return _lightning_callback_fault()
    raise AttributeError(name)
