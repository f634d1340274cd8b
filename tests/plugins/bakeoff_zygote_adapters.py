"""Adapters for the zygote's isolation tests, registered like a third party's (see the dist-info folder).

- ``leak-plant`` trains like native, then leaves global state behind: a patched torch function,
  a patched ``torch.manual_seed``, float64 as the default dtype, deterministic algorithms on, every
  global RNG seeded and drawn from, an environment variable and a module in ``sys.modules``.
- ``leak-check`` refuses to train (raises, so the result fails with the list) if any of that is
  visible, or if the RNGs are not exactly in the state the worker's seeding put them in.
- ``report-threads`` trains like native and records in its notes the thread pools it found.
- ``fault-kill-zygote`` kills the zygote it was forked from at step 2 (run fresh, it trains normally).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

from adapters.native import NativeAdapter

PLANTED = "_bakeoff_planted"
ENV_MARK = "BAKEOFF_PLANTED_STATE"
MODULE_MARK = "bakeoff_planted_marker"


def plant() -> None:
    original_linear, original_seed = F.linear, torch.manual_seed

    def linear(*args, **kwargs):
        return original_linear(*args, **kwargs)

    def manual_seed(seed):  # a library that "manages" seeding for you
        return torch.random.default_generator

    linear.__dict__[PLANTED] = True
    manual_seed.__dict__[PLANTED] = True
    F.linear = linear
    torch.manual_seed = manual_seed
    torch.set_default_dtype(torch.float64)
    torch.use_deterministic_algorithms(True)
    original_seed(1234)
    torch.rand(100)
    np.random.seed(4321)
    np.random.rand(100)
    random.seed(99)
    random.random()
    os.environ[ENV_MARK] = "1"
    sys.modules[MODULE_MARK] = types.ModuleType(MODULE_MARK)


def leaks(seed: int) -> list[str]:
    """Everything :func:`plant` changes that is visible here; the worker has just seeded every RNG with ``seed``."""
    found = []
    if getattr(F.linear, PLANTED, False) or not isinstance(F.linear, types.BuiltinFunctionType):
        found.append("torch.nn.functional.linear is patched")
    if getattr(torch.manual_seed, PLANTED, False):
        found.append("torch.manual_seed is patched")
    if torch.get_default_dtype() != torch.float32:
        found.append(f"the default dtype is {torch.get_default_dtype()}")
    if torch.are_deterministic_algorithms_enabled():
        found.append("deterministic algorithms are on (this spec asked for them off)")
    if ENV_MARK in os.environ:
        found.append(f"{ENV_MARK} is in the environment")
    if MODULE_MARK in sys.modules:
        found.append(f"{MODULE_MARK} is in sys.modules")
    if not torch.equal(torch.get_rng_state(), torch.Generator().manual_seed(seed).get_state()):
        found.append("torch's global RNG is not in its seeded state")
    expected = np.random.RandomState(seed).get_state()
    actual = np.random.get_state()
    if not (np.array_equal(actual[1], expected[1]) and actual[2] == expected[2]):
        found.append("NumPy's global RNG is not in its seeded state")
    if random.getstate() != random.Random(seed).getstate():
        found.append("Python's random is not in its seeded state")
    return found


class PlantAdapter(NativeAdapter):
    name = "leak-plant"

    def fit(self, job):
        trained = super().fit(job)
        plant()
        return trained


class CheckAdapter(NativeAdapter):
    name = "leak-check"

    def fit(self, job):
        found = leaks(job.seed)
        if found:
            raise RuntimeError("state leaked from an earlier spec: " + "; ".join(found))
        return super().fit(job)


def thread_pools() -> dict:
    import threadpoolctl

    return {
        "torch_threads": torch.get_num_threads(),
        "pools": sorted((info["internal_api"], info["num_threads"]) for info in threadpoolctl.threadpool_info()),
    }


class ReportThreadsAdapter(NativeAdapter):
    name = "report-threads"

    def fit(self, job):
        trained = super().fit(job)
        job.notes["thread_pools"] = thread_pools()
        # What importing the task's data modules set in the environment (scikit-learn sets these two).
        job.notes["environ"] = {name: os.environ.get(name) for name in ("KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK")}
        return trained


class _KillParentProbe:
    def __init__(self, probe) -> None:
        self._probe = probe

    def add_loss(self, loss) -> None:
        self._probe.add_loss(loss)

    def step_end(self, loss=None) -> None:
        self._probe.step_end(loss)
        if self._probe.steps == 2:
            parent = os.getppid()
            with open(f"/proc/{parent}/cmdline", "rb") as handle:
                if b"harness.zygote" in handle.read():  # never the runner itself
                    os.kill(parent, signal.SIGKILL)


class KillZygoteAdapter(NativeAdapter):
    name = "fault-kill-zygote"

    def fit(self, job):
        job.probe = _KillParentProbe(job.probe)
        return super().fit(job)
