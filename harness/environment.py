"""What a result must say about where it ran: versions and hardware, never secrets.

Environment variables are read only through ALLOWED_ENV: tokens, keys and passwords in the
environment can never reach a result, MLflow or a report.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

ALLOWED_ENV = (
    "CUDA_VISIBLE_DEVICES",
    "CUBLAS_WORKSPACE_CONFIG",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "KERAS_BACKEND",
    "PYTORCH_CUDA_ALLOC_CONF",
    "NCCL_P2P_DISABLE",
    "NCCL_IB_DISABLE",
    "BAKEOFF_THREADS_PER_RANK",
)

CORE_PACKAGES = ("torch", "numpy", "scikit-learn")


def package_version(distribution: str | None) -> str | None:
    if not distribution:
        return None
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


@cache
def git_state(root: Path = REPO_ROOT) -> dict[str, Any]:
    """The commit the harness ran from and whether tracked files differed from it."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_sha": sha, "git_dirty": None if status is None else bool(status)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_capability() -> str | None:
    """The instruction set torch's CPU kernels were dispatched for (``AVX512``, ``AVX2``, ``DEFAULT``).

    Two CPUs with the same model string can differ here, and their float results differ with it: it is
    part of what makes two runs bitwise partners.
    """
    import torch

    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return None


def capture(extra_packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """Versions, hardware and allow-listed settings for the current process."""
    import torch

    cuda = torch.cuda.is_available()
    environment: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "executable": sys.executable,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device_name": torch.cuda.get_device_name(0) if cuda else cpu_model(),
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "cpu_model": cpu_model(),
        "cpu_capability": cpu_capability(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": load_average(),
        "packages": {name: package_version(name) for name in (*CORE_PACKAGES, *extra_packages)},
        "env": {name: os.environ[name] for name in ALLOWED_ENV if name in os.environ},
    }
    if cuda:
        environment["driver"] = _nvidia_driver()
    environment.update(git_state())
    return environment


def load_average() -> list[float] | None:
    """The machine's 1/5/15-minute load averages when the run ends (the run's own threads included).

    Evidence of contention: on a 2-core machine a lone run with 2 threads reads about 2; much more
    means something else was running while this one was timed.
    """
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _nvidia_driver() -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        return None
