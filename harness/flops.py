"""FLOPs per optimizer step, the device's measured matmul peak, and model FLOP utilisation (MFU).

FLOPs are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` around one
micro-batch's forward + loss and its backward, on a copy of the task's model built on the
``meta`` device (shapes only: no memory, no arithmetic, so a 100M-parameter model costs
milliseconds). The count depends only on the task's configuration (task, resolved options,
micro-batch size), never on the adapter, precision or seed, so it is done once per
configuration — after training, outside the timed loop — and memoised in the process. Per
optimizer step = per micro-batch × ``grad_accum`` (one rank) and × ``world_size`` (the job).
The optimizer's own arithmetic is not counted (a few FLOPs per parameter, against ~6 per
parameter per sample for forward + backward).

The peak is measured, not taken from a datasheet: the best of a few timed square matmuls per
device and dtype (fp32, bf16, fp16; and fp32 with TF32 on CUDA), cached on disk under
``.cache/bakeoff/`` (``BAKEOFF_CACHE_DIR`` moves it), keyed by device name, torch version,
dtype, TF32 and — on CPU — the thread count, so it costs seconds once per machine and
configuration rather than every run. MFU = achieved FLOP/s / (peak × devices the job used).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness.environment import REPO_ROOT

COUNT_METHOD = (
    "torch.utils.flop_counter.FlopCounterMode: one micro-batch's forward + loss and backward on the meta device; "
    "optimizer step not counted"
)
PEAK_DTYPES = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}
PRECISION_PEAK = {"fp32": "fp32", "bf16-mixed": "bf16", "fp16-mixed": "fp16"}
"""Which peak a run's MFU is measured against: the dtype its matmuls run in."""
PEAK_SIZE = {"cpu": 1024, "cuda": 8192}
CPU_EXTRA_SIZES = (64, 128, 256, 512)
"""Smaller products also timed on a CPU: the peak is the best rate of any of them."""
PEAK_BUDGET_S = {"cpu": 0.4, "cuda": 0.3}


def cache_dir() -> Path:
    return Path(os.environ.get("BAKEOFF_CACHE_DIR") or REPO_ROOT / ".cache" / "bakeoff")


# --------------------------------------------------------------------------- FLOPs per step


def _count_micro_batch(task, options: Mapping[str, Any], data, batch_size: int) -> tuple[int, int]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    inputs, targets = data.train[0:batch_size]
    with torch.device("meta"):
        model = task.build_model(0, options, data)
    model.train()
    inputs, targets = inputs.to("meta"), targets.to("meta")
    with FlopCounterMode(display=False) as forward:
        loss = task.loss(model(inputs), targets)
    with FlopCounterMode(display=False) as backward:
        loss.backward()
    return forward.get_total_flops(), backward.get_total_flops()


_COUNTS: dict[str, tuple[int, int]] = {}
"""Counts made in this process, by task configuration."""


def step_flops(task, options: Mapping[str, Any], data, *, batch_size: int, grad_accum: int, world_size: int) -> dict:
    """The FLOP record a result stores: per micro-batch (forward, backward), per rank and job step."""
    options_json = json.dumps(dict(options), sort_keys=True)
    key = f"{task.name}|{options_json}|{data.digest}|{batch_size}"
    if key not in _COUNTS:
        _COUNTS[key] = _count_micro_batch(task, options, data, batch_size)
    forward, backward = _COUNTS[key]
    per_rank = (forward + backward) * grad_accum
    return {
        "forward_per_micro_batch": forward,
        "backward_per_micro_batch": backward,
        "per_step_per_rank": per_rank,
        "per_step": per_rank * world_size,
        "optimizer_counted": False,
        "method": COUNT_METHOD,
    }


# --------------------------------------------------------------------------- measured peak


def peak_key(device_type: str, dtype: str, *, device_name: str, torch_version: str, threads: int | None) -> str:
    parts = [device_type, device_name, f"torch {torch_version}", dtype]
    if device_type == "cpu":
        parts += [f"{threads} threads", "best of sizes"]  # the method is in the key: older peaks are re-measured
    return " | ".join(parts)


def measure_peak(device_type: str, dtype: str, *, size: int | None = None, budget_s: float | None = None) -> dict:
    """Best FLOP/s of timed ``size``×``size`` matmuls in ``dtype`` (a PEAK_DTYPES key) on this device.

    Random normal operands (zeros run faster on some GPUs and would overstate the peak); a
    warm-up, then timed repetitions until ``budget_s`` is spent (at least 3); the peak is the
    fastest repetition's rate, the median is kept beside it. CUDA times with events; TF32 is
    switched on only for the ``tf32`` entry and put back afterwards.
    """
    import torch

    budget_s = PEAK_BUDGET_S[device_type] if budget_s is None else budget_s
    torch_dtype = getattr(torch, PEAK_DTYPES[dtype])
    device = torch.device(device_type)
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32 if device_type == "cuda" else None
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        if size is None:
            size = _peak_size(device_type, torch_dtype)
        # On a CPU the fastest size is not always the largest (an emulated dtype runs fastest from
        # cache): smaller products are timed too and the best rate of any size is the peak.
        sizes = [size] if device_type != "cpu" else sorted({size, *(s for s in CPU_EXTRA_SIZES if s < size)})
        best = None
        for each in sizes:
            found = _time_matmul(torch, device, torch_dtype, each, budget_s / len(sizes))
            if best is None or found["flops_per_s"] > best["flops_per_s"]:
                best = found
    finally:
        if device_type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = previous_tf32
    return {
        **best,
        "dtype": dtype,
        "matmul": f"{best['size']}x{best['size']}x{best['size']} {PEAK_DTYPES[dtype]}",
        "sizes_tried": sizes,
        "method": "best of timed torch.mm repetitions after 2 warm-ups, random normal operands"
        + (", CUDA events" if device_type == "cuda" else ", perf_counter, the best of several sizes"),
    }


def _time_matmul(torch, device, torch_dtype, size: int, budget_s: float) -> dict:
    """Best and median FLOP/s of timed ``size``³ products (at least 3 repetitions, at most 200)."""
    device_type = device.type
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator).to(torch_dtype)
    b = torch.randn(size, size, device=device, generator=generator).to(torch_dtype)
    flops = 2 * size**3
    for _ in range(2):
        torch.mm(a, b)
    seconds: list[float] = []
    spent_start = time.perf_counter()
    while len(seconds) < 3 or time.perf_counter() - spent_start < budget_s:
        if device_type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.mm(a, b)
            end.record()
            end.synchronize()
            seconds.append(start.elapsed_time(end) / 1e3)
        else:
            began = time.perf_counter()
            torch.mm(a, b)
            seconds.append(time.perf_counter() - began)
        if len(seconds) >= 200:
            break
    return {
        "flops_per_s": flops / min(seconds),
        "median_flops_per_s": flops / statistics.median(seconds),
        "size": size,
        "repetitions": len(seconds),
        "best_s": min(seconds),
    }


def _peak_size(device_type: str, dtype) -> int:
    """The matmul size for the peak: ``PEAK_SIZE``, smaller where the dtype is slow on this device
    (fp16 on a CPU without fp16 arithmetic runs ~100x slower than fp32) so that one product takes
    tens of milliseconds, not seconds. CUDA always uses the full size (it is never that slow)."""
    import torch

    largest = PEAK_SIZE[device_type]
    if device_type != "cpu":
        return largest
    probe = torch.ones(256, 256, dtype=dtype)
    torch.mm(probe, probe)
    began = time.perf_counter()
    torch.mm(probe, probe)
    rate = 2 * 256**3 / max(time.perf_counter() - began, 1e-9)
    wanted = (rate * 0.03 / 2) ** (1 / 3)  # ~30 ms per product
    return int(max(256, min(largest, 256 * round(wanted / 256))))


def _device_name(device_type: str) -> str:
    import torch

    from harness.environment import cpu_model

    return torch.cuda.get_device_name() if device_type == "cuda" else cpu_model()


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def peak(device_type: str, dtype: str, *, refresh: bool = False) -> dict:
    """The cached peak for this device and dtype, measured (and cached) when missing or ``refresh``."""
    import torch

    threads = torch.get_num_threads() if device_type == "cpu" else None
    key = peak_key(
        device_type, dtype, device_name=_device_name(device_type), torch_version=torch.__version__, threads=threads
    )
    path = cache_dir() / "peak.json"
    entries = _read_json(path)
    if not refresh and isinstance(entries.get(key), dict) and entries[key].get("flops_per_s"):
        return {**entries[key], "key": key, "cached": True}
    record = measure_peak(device_type, dtype)
    record.update(measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), load_average=load_average())
    entries = _read_json(path)  # another process may have written meanwhile
    entries[key] = record
    _write_json(path, entries)
    return {**record, "key": key, "cached": False}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json(path: Path, data: dict) -> None:
    from harness.result import atomic_write_text

    with contextlib.suppress(OSError):  # a read-only checkout still gets its figure, only not cached
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


# --------------------------------------------------------------------------- utilisation


def peak_dtype(precision: str, *, tf32: bool, device_type: str) -> str:
    dtype = PRECISION_PEAK[precision]
    return "tf32" if dtype == "fp32" and tf32 and device_type == "cuda" else dtype


def devices_used(device_type: str, world_size: int, gpu_count: int) -> int:
    """How many of the peak's units the job occupied: each CPU rank measures the peak at its own
    thread count, so CPU ranks add up; ranks sharing one GPU share its peak."""
    if device_type == "cpu":
        return world_size
    return max(1, min(world_size, gpu_count or 1))


def utilisation(
    flops_per_step: int | None, median_step_us: float | None, peak_flops_per_s: float | None, devices: int
) -> dict[str, float]:
    """Achieved FLOP/s of the median step and MFU against ``devices`` × the peak."""
    figures: dict[str, float] = {}
    if not flops_per_step or not median_step_us or median_step_us <= 0:
        return figures
    achieved = flops_per_step / (median_step_us / 1e6)
    figures["achieved_flops_per_s"] = achieved
    if peak_flops_per_s and math.isfinite(peak_flops_per_s) and peak_flops_per_s > 0:
        mfu = achieved / (peak_flops_per_s * devices)
        # Above 1 the measured peak is not this dtype's ceiling on this device (a CPU without that
        # arithmetic has no single fastest size, or the peak was measured on a loaded machine): the
        # MFU is left empty rather than impossible, and the ratio is kept under its own name.
        figures["mfu"] = mfu if mfu <= 1.0 else None
        if mfu > 1.0:
            figures["achieved_over_measured_peak"] = mfu
    return figures
