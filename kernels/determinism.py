"""One place that makes a process deterministic: every RNG seeded, deterministic kernels on."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

DETERMINISM_IMPORTS = ("torch._inductor.config",)
"""What ``set_determinism(deterministic=True)`` imports: ``torch.use_deterministic_algorithms`` sets
inductor's deterministic flag, and importing inductor's config brings in torch._dynamo (~1.5 s on
the 2-core machine). A zygote preloads these for deterministic specs (``harness.runner.preload_for``)."""


def set_determinism(seed: int, *, rank: int = 0, deterministic: bool = True) -> int:
    """Seed Python, NumPy and torch (CPU and CUDA) with ``seed + rank`` and return that seed.

    Ranks get distinct seeds so dropout masks differ across data-parallel replicas, as they
    would in any real run; initial weights come from a task's own generator, not from this.
    ``CUBLAS_WORKSPACE_CONFIG`` must be set before the first cuBLAS call, which is why the
    worker calls this before building anything on the device.
    """
    process_seed = seed + rank
    random.seed(process_seed)
    np.random.seed(process_seed % 2**32)
    torch.manual_seed(process_seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=False)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return process_seed


def seeded_generator(seed: int) -> torch.Generator:
    """A CPU generator independent of the global RNG, for weights and data order."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator
