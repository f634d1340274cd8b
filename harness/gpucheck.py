"""The GPU check: everything a lent GPU must show, in one command that fits its 9-minute window.

``python3 benchmarks/gpu_check.py`` (``make gpu-check``) on the GPU machine:

1. installs what its image lacks (fastai, keras and their dependencies) from wheels carried in the
   working tree (``.whl/``, see README: "GPU check"), into a private folder; MLflow is not needed;
2. records the environment and measures the device's matmul peaks (fp32, TF32, bf16, fp16);
3. runs the ``gpu`` suite's groups in priority order against a time budget, each group as it is
   meant to be measured: the ~100M ``charlm`` (preset ``gpt2-100m``, bf16, compiled) in a fresh
   process per adapter (throughput and MFU), the many alignment cells (every adapter on the small
   tasks in fp32, bf16, fp16 and with TF32 on) batched in a few processes (``harness.batch``),
   compile against native eager and compiled, NCCL at world size 1 and 2 ranks on one GPU over
   gloo with CUDA tensors (torchrun);
4. checks CUDA-event step times against a synchronized host clock once, computes every verdict
   against its declaration, and writes the targets' figures (MFU of native, adapters' throughput
   ratio to native);
5. leaves three files in ``--out`` (``$OUT`` there): ``gpu-results.tar.gz`` (result files and the
   small runs' weights), ``gpu-summary.json`` and ``gpu-check.log``.

Back on a CPU machine, ``python benchmarks/gpu_check.py publish DIR`` unpacks the bundle into
``results/gpu/`` and runs ``bakeoff ingest`` and ``bakeoff report`` on it.

``--device cpu`` is the dry run: the same groups and code paths at tiny sizes (CI runs it), minus
what a CPU cannot do (Flash's isolated environment is not built; TF32 cells are ``unsupported``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.environment import REPO_ROOT
from harness.spec import Spec

DEFAULT_BUDGET_S = 420.0
"""Seconds for the groups: the command must end inside 9 minutes, set-up included, and after the
groups come the event-clock check, the verdicts and the bundle (under a minute); a group that
would not fit in what is left is skipped and recorded as such, most important groups first."""
EVENT_CLOCK_TOLERANCE = (0.05, 50e-6)
"""CUDA-event and synchronized-host step times agree within 5% of the median step or 50 µs,
whichever is larger: the host side adds one synchronize's latency (~10 µs) and the timer's
resolution per step, nothing that grows with the step."""
GPU_PRESET = "gpt2-100m"
WHEEL_PACKAGES = ("fastai", "keras")
"""Distributions the GPU image lacks and the check installs from carried wheels (with their deps)."""


@dataclass(kw_only=True)
class Group:
    name: str
    description: str
    specs: list[Spec]
    mode: str
    """``process``: a fresh worker per spec (timings, isolation); ``batch``: one process for many specs."""
    estimate_s: float
    """Expected seconds on the H200 machine (start-ups, compiles, training); the scheduler skips a
    group that would not finish inside what is left of the budget."""
    warmup: int = 5
    save_weights: bool = True
    """Weights stay on the machine that ran (verdicts are computed there); the bundle takes only the
    small ones (the ~100M model's are 400 MB each)."""


@dataclass(kw_only=True)
class CheckState:
    device: str
    work: Path
    budget_s: float
    inline: bool = False
    """Batches run in this process (the CPU dry run: the imports are paid once, not per batch)."""
    started: float = field(default_factory=time.monotonic)
    log_lines: list[str] = field(default_factory=list)
    groups: list[dict[str, Any]] = field(default_factory=list)

    @property
    def results_dir(self) -> Path:
        return self.work / "results"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def log(self, text: str) -> None:
        line = f"[{self.elapsed():6.1f} s] {text}"
        self.log_lines.append(line)
        print(line, flush=True)


# --------------------------------------------------------------------------- the suite


def _spec(task: str, adapter: str, device: str, **fields: Any) -> Spec:
    from harness.registry import get_task

    defaults = get_task(task).defaults
    values = {"batch_size": defaults.batch_size, "steps": defaults.steps, "lr": defaults.lr}
    values.update(fields)
    return Spec(task=task, adapter=adapter, device=device, **values)


def gpu_adapters(device: str) -> list[str]:
    """native first, then every main-environment adapter; Flash (its own environment) on CUDA only."""
    from harness.suites import _ordered_adapters, isolated

    names = _ordered_adapters(include_isolated=True)
    return [name for name in names if device == "cuda" or not isolated(name)]


def gpu_groups(device: str) -> list[Group]:
    """The ``gpu`` suite as groups, in the order they run (most important first)."""
    cuda = device == "cuda"
    adapters = gpu_adapters(device)
    others = [name for name in adapters if name != "native"]
    main_env = [name for name in adapters if name != "flash"]
    if cuda:
        big = {"preset": GPU_PRESET}
        big_fields = {"batch_size": 32, "steps": 40, "lr": 6e-4, "precision": "bf16-mixed", "compile": True}
        small_tasks = [("digits", {}, {}), ("charlm", {}, {}), ("tabular", {}, {})]
        mixed_task, tf32_task = ("digits", {}, {}), ("digits", {}, {})
        compile_task = ("scaling", {"width": 256}, {"steps": 40})
        ddp_task = ("digits", {}, {})
    else:  # the dry run: same groups, tiny sizes, no compile of the big model (compile has its own group)
        big = {"preset": GPU_PRESET, "width": 32, "heads": 4, "layers": 1, "block_size": 32, "characters": 8000}
        big_fields = {"batch_size": 8, "steps": 6, "lr": 6e-4, "precision": "bf16-mixed", "compile": False}
        tiny = {"batch_size": 16, "steps": 4}
        small_tasks = [
            ("scaling", {"width": 8}, tiny),
            ("charlm", {"width": 32, "heads": 4, "layers": 1, "block_size": 16, "characters": 4000}, tiny),
        ]
        # fp16 arithmetic is ~50x slower than fp32 on a CPU without it: the MLP, not the CNN.
        mixed_task = tf32_task = ("scaling", {"width": 8}, tiny)
        # The spec tests/harness/test_compile.py compiles too: one persistent inductor cache serves both.
        compile_task = ("scaling", {"width": 8}, {"batch_size": 16, "steps": 6})
        ddp_task = ("scaling", {"width": 8}, {"batch_size": 16, "steps": 4})
    # The dry run leaves out what adds minutes but no code path: Keras' compiled train step (a dozen
    # graphs, ~1 min cold; its compile path is a slow test), the 2-rank run (the runner's own tests
    # cover torchrun with 2 ranks; ddp=true at one rank is new and stays) and the big model's extras.
    compiled = adapters if cuda else [name for name in adapters if name != "keras"]

    def cell(task, options, fields, adapter, **extra):
        return _spec(task, adapter, device, options=options, **{**fields, **extra})

    groups = [
        Group(
            name="charlm-100m-native",
            description=f"native on charlm preset {GPU_PRESET} (~100M parameters), bf16, compiled: the MFU figure",
            specs=[_spec("charlm", "native", device, options=big, **big_fields)],
            mode="process" if cuda else "batch",  # the dry run's process path is the distributed group's
            estimate_s=90,
            warmup=10 if cuda else 2,
        ),
        Group(
            name="alignment",
            description="every adapter aligned on the small tasks: fp32 everywhere, bf16 and fp16, TF32 on",
            specs=[
                *[cell(t, o, f, a) for t, o, f in small_tasks for a in adapters],
                *[cell(*mixed_task, a, precision=p) for p in ("bf16-mixed", "fp16-mixed") for a in adapters],
                *[cell(*tf32_task, a, tf32=True) for a in adapters],
            ],
            mode="batch",
            estimate_s=150,
        ),
        Group(
            name="charlm-100m-adapters",
            description=f"each adapter on charlm {GPU_PRESET}, bf16, compiled the library's way",
            specs=[_spec("charlm", name, device, options=big, **big_fields) for name in others],
            mode="process" if cuda else "batch",  # fresh processes for throughput; the dry run checks the cells
            estimate_s=200,
            warmup=10 if cuda else 2,
        ),
        Group(
            name="compile",
            description="native eager and compiled, and every adapter compiled, on a small MLP",
            specs=[
                cell(*compile_task, "native"),
                *[cell(*compile_task, a, compile=True) for a in compiled],
            ],
            mode="batch",
            estimate_s=120,
        ),
        Group(
            name="distributed",
            description="NCCL at world size 1 (ddp=true) and 2 ranks on one GPU over gloo with CUDA tensors",
            specs=[
                cell(*ddp_task, "native", ddp=True),
                *([cell(*ddp_task, "lightning", ddp=True)] if cuda else []),
                *[
                    cell(*ddp_task, a, world_size=2, batch_size=32)
                    for a in (main_env if cuda else [])
                    if a != "keras"  # Keras' fit has no DDP on torch (declared unsupported)
                ],
            ],
            mode="process",
            estimate_s=90,
        ),
        Group(
            name="charlm-100m-native-extras",
            description="native on the big model eager (what compile buys) and without deterministic kernels",
            specs=[
                _spec("charlm", "native", device, options=big, **{**big_fields, "compile": False}),
                _spec("charlm", "native", device, options=big, **big_fields, deterministic=False),
            ],
            mode="process",
            estimate_s=60,
            warmup=10 if cuda else 2,
        ),
    ]
    return groups if cuda else [group for group in groups if group.name != "charlm-100m-native-extras"]


def gpu_suite(device: str):
    """The ``gpu`` suite as a plain Suite (``bakeoff bench --suite gpu --dry-run`` lists it)."""
    from harness.suites import Suite

    specs = [spec for group in gpu_groups(device) for spec in group.specs]
    return Suite(name="gpu", description=gpu_suite.__doc__, specs=specs)


# --------------------------------------------------------------------------- running


def run_group(group: Group, state: CheckState) -> list[dict[str, Any]]:
    from harness import envs
    from harness.batch import run_batch, run_here
    from harness.plan import unsupported_reason
    from harness.result import base_result, result_path, write_result
    from harness.runner import RunOptions, existing_result, run_spec

    results: list[dict[str, Any]] = []
    runnable: list[Spec] = []
    for spec in group.specs:
        reason = unsupported_reason(spec)
        if reason:
            result = base_result(spec, status="unsupported", error=reason)
            write_result(result_path(state.results_dir, spec), result)
            results.append(result)
        else:
            runnable.append(spec)
    if group.mode == "batch":
        by_environment: dict[str | None, list[Spec]] = {}
        for spec in runnable:
            by_environment.setdefault(envs.declared_environment(spec.adapter), []).append(spec)
        for environment, specs in by_environment.items():
            python = sys.executable
            if environment is not None:
                try:
                    python = str(envs.prepare(specs[0].adapter).python)
                except envs.EnvironmentBuildError as error:
                    for spec in specs:
                        failed = base_result(spec, status="failed", error=f"environment: {error}"[:2000])
                        write_result(result_path(state.results_dir, spec), failed)
                        results.append(failed)
                    continue
            if state.inline and environment is None:
                state.log(f"  {len(specs)} specs in this process (dry run)")
                results += run_here(
                    specs,
                    state.results_dir,
                    warmup=group.warmup,
                    save_weights=group.save_weights,
                    log=lambda text: state.log("  " + text),
                )
                continue
            state.log(f"  batch of {len(specs)} specs ({environment or 'main environment'})")
            results += run_batch(
                specs,
                state.results_dir,
                python=python,
                timeout_s=max(10.0, state.left()),
                warmup=group.warmup,
                save_weights=group.save_weights,
                log=state.log,
            )
    else:
        for spec in runnable:
            done = existing_result(spec, state.results_dir)
            if done is not None:
                results.append(done)
                continue
            if state.left() < 20:
                result = base_result(spec, status="failed", error="not run: the GPU check's time budget was spent")
                write_result(result_path(state.results_dir, spec), result)
                results.append(result)
                continue
            options = RunOptions(
                results_dir=state.results_dir,
                timeout_s=max(20.0, state.left()),
                warmup=group.warmup,
                save_weights=group.save_weights,
            )
            started = time.monotonic()
            result = run_spec(spec, options)
            state.log(f"  {_line(result)} ({time.monotonic() - started:.0f} s)")
            results.append(result)
    return results


def _line(result: dict[str, Any]) -> str:
    from harness.cli import one_line

    return one_line(result)


# --------------------------------------------------------------------------- checks


def event_clock_check(device: str, *, steps: int = 30) -> dict[str, Any]:
    """Step times from the probe's CUDA events against a host clock read after a synchronize.

    One native run (charlm, small) whose probe marks every step end both ways: an event (what
    every result uses) and ``torch.cuda.synchronize(); perf_counter_ns()``. The per-step
    durations must agree within :data:`EVENT_CLOCK_TOLERANCE`. On a CPU both marks are the host
    clock, so the check only exercises the code (it reports ``cpu``).
    """
    import statistics

    import torch

    from harness.durations import after_warmup, step_durations_ns
    from harness.probe import Probe
    from harness.registry import get_adapter, get_task
    from harness.worker import build_job
    from kernels.determinism import set_determinism
    from kernels.distributed import init_from_env

    class HostClockProbe(Probe):
        def __init__(self, device_) -> None:
            super().__init__(device_)
            self.host_ends: list[int] = []
            self.host_start = 0

        def fit_start(self) -> None:
            if self.cuda:
                torch.cuda.synchronize()
            super().fit_start()
            self.host_start = time.perf_counter_ns()

        def step_end(self, loss=None) -> None:
            super().step_end(loss)
            if self.cuda:
                torch.cuda.synchronize()
            self.host_ends.append(time.perf_counter_ns() - self.host_start)

    tiny = {} if device == "cuda" else {"width": 16, "heads": 2, "layers": 1, "block_size": 16, "characters": 4000}
    spec = _spec("charlm", "native", device, batch_size=16, steps=steps if device == "cuda" else 12, options=tiny)
    set_determinism(spec.seed)
    context = init_from_env(device)
    probe = HostClockProbe(context.device)
    job = build_job(spec, get_task("charlm"), context, probe, workdir=Path(tempfile.gettempdir()))
    probe.fit_start()
    get_adapter("native").fit(job)
    trajectory = probe.resolve()
    warmup = 5
    events = after_warmup(step_durations_ns(trajectory.step_end_ns), warmup)
    host = after_warmup(step_durations_ns(probe.host_ends), warmup)
    event_median, host_median = statistics.median(events), statistics.median(host)
    worst = max(abs(a - b) for a, b in zip(events, host, strict=True))
    relative, absolute = EVENT_CLOCK_TOLERANCE
    allowed_ns = max(relative * host_median, absolute * 1e9)
    return {
        "device": device,
        "clock": "CUDA events vs synchronize + perf_counter"
        if device == "cuda"
        else "cpu: both marks are perf_counter",
        "steps_compared": len(events),
        "event_median_us": event_median / 1e3,
        "host_median_us": host_median / 1e3,
        "median_difference_us": (event_median - host_median) / 1e3,
        "largest_step_difference_us": worst / 1e3,
        "allowed_us": allowed_ns / 1e3,
        "agree": abs(event_median - host_median) <= allowed_ns,
        "tolerance": f"{relative:.0%} of the median step or {absolute * 1e6:.0f} us, whichever is larger",
    }


SYNC_AUDIT_ADAPTERS = ("native", "lightning", "fastai", "keras", "hf")


def sync_audit(device: str, adapters: tuple[str, ...] = SYNC_AUDIT_ADAPTERS, *, steps: int = 30,
               warmup: int = 10) -> dict[str, Any]:
    """Host syncs per steady-state step by the counter (``harness.cost.syncs``), confirmed on CUDA by torch.

    Per adapter: one aligned fit of the scaling MLP under the counter (as ``bakeoff cost`` counts),
    and on CUDA one more fit with ``torch.cuda.set_sync_debug_mode("warn")`` over the same window,
    whose warnings are torch's own count of synchronizing calls. ``agree`` says whether the two
    per-step figures are equal; on a CPU only the counter's figure exists (the dry run).
    """
    import warnings

    import torch

    from harness.cost.paired import Arms, count_syncs
    from harness.registry import RegistryError, get_adapter

    rows = []
    with tempfile.TemporaryDirectory(prefix="bakeoff-sync-audit-") as scratch:
        for name in adapters:
            spec = Spec(task="scaling", adapter=name, batch_size=32, steps=steps, lr=0.05, device=device,
                        options={"width": 64})
            row: dict[str, Any] = {"adapter": name}
            try:
                get_adapter(name)
                arms = Arms(spec, steps=steps, warmup=warmup, workroot=Path(scratch))
                refused = arms.unsupported()
                if refused:
                    rows.append({**row, "status": "unsupported", "reason": refused})
                    continue
                counted = count_syncs(arms, 1)["adapter"]
                row.update(status="ok", counter_per_step=counted["per_step"],
                           sites=[f"{s['kind']} at {s['site']}" for s in counted["sites"][:5]])
                if device == "cuda":
                    window: dict[str, Any] = {"stack": contextlib.ExitStack(), "log": []}

                    def start(window=window) -> None:
                        torch.cuda.synchronize()
                        window["log"] = window["stack"].enter_context(warnings.catch_warnings(record=True))
                        warnings.simplefilter("always")
                        torch.cuda.set_sync_debug_mode("warn")

                    def stop(window=window) -> None:
                        torch.cuda.set_sync_debug_mode("default")
                        window["stack"].close()

                    arms.fit("adapter", on_window_start=start, on_window_end=stop)
                    syncing = [w for w in window["log"] if "synchroniz" in str(w.message).lower()]
                    row["torch_per_step"] = len(syncing) / (steps - warmup)
                    row["agree"] = row["torch_per_step"] == row["counter_per_step"]
            except (RegistryError, ImportError) as error:
                row.update(status="not installed", reason=f"{type(error).__name__}: {error}")
            except Exception as error:  # one adapter's failure must not cost the others' figures
                row.update(status="failed", reason=f"{type(error).__name__}: {str(error).splitlines()[0][:300]}")
            rows.append(row)
    confirmed = [r for r in rows if "agree" in r]
    return {
        "device": device,
        "adapters": rows,
        "confirmed_by_torch": bool(confirmed) and all(r["agree"] for r in confirmed),
        "note": ("counter vs torch.cuda.set_sync_debug_mode('warn') warnings over the same steady-state window"
                 if device == "cuda" else "CPU dry run: only the counter's figures (sync debug mode is CUDA-only)"),
    }


def distributed_facts(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What each distributed run really used: its process group's backend, the device, the ranks."""
    facts = []
    for result in results:
        spec = result["spec"]
        if result["status"] != "ok" or not (spec["world_size"] > 1 or spec.get("ddp")):
            continue
        facts.append(
            {
                "label": Spec.from_dict(spec).label,
                "backend": result.get("distributed", {}).get("backend"),
                "world_size": spec["world_size"],
                "device": spec["device"],
                "statement": (
                    f"{spec['world_size']} ranks on one GPU over gloo with CUDA tensors"
                    if spec["world_size"] > 1 and spec["device"] == "cuda"
                    else "one rank, process group with DDP"
                ),
            }
        )
    return facts


EXTRA_ROLES = {"compile": "eager", "ddp": "no-ddp"}
"""Comparisons the parity stage does not make (its partners share every numbers-changing field):
a compiled run against native eager, and a one-rank DDP run against the plain single process."""


def extra_partners(candidate, pool) -> list[tuple[str, Any]]:
    """(role, native run) for the fields in :data:`EXTRA_ROLES` the candidate sets."""
    from dataclasses import replace as replace_spec

    from harness.parity import global_batch, same_run_key

    found = []
    for name, role in EXTRA_ROLES.items():
        if not getattr(candidate.spec, name):
            continue
        key = same_run_key(replace_spec(candidate.spec, **{name: False}).to_dict())
        natives = sorted(
            (
                r
                for r in pool
                if r.spec.adapter == "native"
                and r.spec.mode == "aligned"
                and r.ok
                and same_run_key(r.spec.to_dict()) == key
                and global_batch(r.spec.to_dict()) == global_batch(candidate.spec.to_dict())
            ),
            key=lambda r: (r.spec.world_size, r.spec.grad_accum, r.spec.repeat),
        )
        if natives:
            found.append((role, natives[0]))
    return found


def compare_across(reference, candidate, *, weights) -> Any:
    """``harness.parity.compare`` of runs that differ only in the fields of :data:`EXTRA_ROLES`.

    The stage refuses specs that differ in a numbers-changing field; here that difference is the
    point of the comparison, so the reference is compared as if it had the candidate's values.
    """
    from dataclasses import replace as replace_spec

    from harness.parity import compare, task_tolerance

    aligned = replace_spec(reference.spec, **{name: getattr(candidate.spec, name) for name in EXTRA_ROLES})
    return compare(
        reference.replace(spec=aligned),
        candidate,
        tolerance=task_tolerance(reference.spec.task, reference.spec.precision),
        reference_weights=weights(reference),
        candidate_weights=weights(candidate),
    )


def verdicts(results: list[dict[str, Any]], results_dir: Path) -> list[dict[str, Any]]:
    """Every result's verdicts: against its parity partners (the report's rule, harness.parity) with
    what each is expected to give; compiled runs against native eager and one-rank DDP runs against
    the plain process too (:func:`extra_partners`)."""
    from adapters.base import verdict_meets
    from harness.parity import judge, partners, weights_from
    from harness.plan import request_for
    from harness.registry import RegistryError, get_adapter
    from harness.result import Result

    pool = [Result.from_dict(dict(result)) for result in results]
    weights = weights_from([results_dir])
    rows = []

    def row(role: str, reference, candidate, verdict, expected) -> None:
        rows.append(
            {
                "label": candidate.spec.label,
                "against": role,
                "reference": reference.spec.label,
                "verdict": verdict.verdict,
                "declared": expected,
                "meets": expected in (None, "not-comparable") or verdict_meets(expected, verdict.verdict),
                "detail": verdict.describe(),
            }
        )

    for candidate in pool:
        if not candidate.ok:
            continue
        for role, reference in partners(candidate, pool):
            verdict = judge(role, reference, candidate, weights=weights)
            row(role, reference, candidate, verdict, verdict.expected)
        for role, reference in extra_partners(candidate, pool):
            try:
                adapter = get_adapter(candidate.spec.adapter)
            except RegistryError:
                continue
            request = request_for(candidate.spec)
            # eager: declared per adapter; no-ddp: one rank's all-reduce is the identity, so DDP must
            # not change a number
            expected = adapter.expected_parity_vs_eager(request) if role == "eager" else "bitwise"
            row(role, reference, candidate, compare_across(reference, candidate, weights=weights), expected)
    return rows


def targets(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's GPU targets: native MFU on the big model, each adapter's throughput ratio to native.

    Runs of the ``gpt2-100m`` preset with deterministic kernels; an adapter is compared with native
    compiled the same way (both compiled on the GPU; both eager in the dry run).
    """
    big = [
        r
        for r in results
        if r["status"] == "ok" and r["spec"]["options"].get("preset") == GPU_PRESET and r["spec"]["deterministic"]
    ]
    natives = {r["spec"].get("compile", False): r for r in big if r["spec"]["adapter"] == "native"}
    native = natives.get(True) or natives.get(False)
    figures: dict[str, Any] = {"native_mfu_target": 0.45, "adapter_throughput_target": 0.97}
    if native is None:
        figures["native"] = "not measured"
        return figures
    figures["native"] = {
        key: native["summary"].get(key)
        for key in ("mfu", "median_step_us", "throughput_samples_per_s", "achieved_flops_per_s", "compile_s")
    }
    figures["native"]["compiled"] = native["spec"].get("compile", False)
    figures["native_meets_mfu_target"] = (native["summary"].get("mfu") or 0) >= 0.45
    ratios = {}
    for result in big:
        reference = natives.get(result["spec"].get("compile", False))
        if result["spec"]["adapter"] == "native" or reference is None:
            continue
        ratio = reference["summary"]["median_step_us"] / result["summary"]["median_step_us"]
        ratios[result["spec"]["adapter"]] = {
            "throughput_ratio_to_native": ratio,
            "within_3_percent": ratio >= 0.97,
            "mfu": result["summary"].get("mfu"),
            "compiled": result["spec"].get("compile", False),
        }
    figures["adapters"] = ratios
    return figures


# --------------------------------------------------------------------------- set-up and bundle


def installed(distribution: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(distribution)
    except PackageNotFoundError:
        return False
    return True


def install_wheels(wheels: Path, target: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Install the carried wheels of distributions this interpreter lacks into ``target``.

    ``pip install --no-index --no-deps --target``: nothing is fetched, nothing in the image is
    touched; ``target`` goes first on ``sys.path`` here and on ``PYTHONPATH`` for every worker.
    Distributions the image already has are skipped, so its own versions win.
    """
    missing = [name for name in WHEEL_PACKAGES if not installed(name)]
    record: dict[str, Any] = {"needed": missing, "wheel_dir": wheels.name}
    if not missing:
        record["installed"] = []
        return record
    files = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not files:
        record["error"] = f"{', '.join(missing)} missing and no wheels in {wheels.name}/ (README: GPU check)"
        return record

    def distribution(path: Path) -> str:
        return path.name.split("-")[0].lower().replace("_", "-")

    chosen = [path for path in files if not installed(distribution(path))]
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--target",
        str(target),
        *map(str, chosen),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    record["installed"] = [path.name for path in chosen]
    if done.returncode != 0:
        record["error"] = done.stderr[-2000:]
        return record
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(target), os.environ.get("PYTHONPATH")]))
    log(f"installed {len(chosen)} wheels into {target.name}/ ({', '.join(missing)} were missing)")
    return record


WHEEL_LIST = REPO_ROOT / "envs" / "gpu-wheels.txt"
PLATFORM_FLAGS = (
    "--only-binary=:all:",
    "--no-deps",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "any",
)
"""The GPU image: CPython 3.12 on x86-64 Linux."""


def wheel_requirements(path: Path = WHEEL_LIST) -> dict[str, list[str]]:
    """``envs/gpu-wheels.txt`` as {subfolder of .whl/: [name==version, ...]} ("" is .whl/ itself)."""
    folders: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        folder, _, requirement = line.rpartition("/")
        folders.setdefault(folder, []).append(requirement)
    return folders


def fetch_wheels(args: argparse.Namespace) -> int:
    """``pip download`` every wheel of envs/gpu-wheels.txt for the GPU image into ``--wheels``."""
    root = Path(args.wheels)
    for folder, requirements in wheel_requirements().items():
        target = root / folder if folder else root
        target.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "-q", *PLATFORM_FLAGS, "-d", str(target), *requirements]
        print(f"pip download {len(requirements)} wheels into {target}", flush=True)
        if subprocess.run(command).returncode:
            return 1
    total = sum(path.stat().st_size for path in root.rglob("*.whl"))
    print(f"{root}: {total / 2**20:.1f} MiB of wheels (the working tree that travels is limited to 64 MiB)")
    return 0


def offline_pip(wheels: Path) -> None:
    """Let harness.envs build Flash's environment with no index: pip reads only the carried wheels."""
    os.environ["PIP_NO_INDEX"] = "1"
    os.environ["PIP_FIND_LINKS"] = str(wheels / "flash")


def bundle(state: CheckState, out: Path, summary: dict[str, Any], max_weight_bytes: int = 4_000_000) -> list[Path]:
    """The files that come back: results (+ small weights) as one archive, the summary, the log."""
    out.mkdir(parents=True, exist_ok=True)
    archive = out / "gpu-results.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(state.results_dir.glob("*")):
            if path.suffix == ".json" or (
                path.name.endswith(".weights.pt") and path.stat().st_size <= max_weight_bytes
            ):
                tar.add(path, arcname=f"gpu/{path.name}")
    summary_path = out / "gpu-summary.json"
    summary_path.write_text(json.dumps(summary, indent=1, sort_keys=True, default=str) + "\n")
    log_path = out / "gpu-check.log"
    log_path.write_text("\n".join(state.log_lines) + "\n")
    return [archive, summary_path, log_path]


# --------------------------------------------------------------------------- the command


def check(args: argparse.Namespace) -> int:
    device = args.device
    work = Path(args.work)
    budget = args.budget_s if args.budget_s is not None else (DEFAULT_BUDGET_S if device == "cuda" else 3600.0)
    state = CheckState(device=device, work=work, budget_s=budget, inline=device == "cpu")
    state.results_dir.mkdir(parents=True, exist_ok=True)
    state.log(f"GPU check on {device}: budget {budget:.0f} s, results in {state.results_dir}")
    summary: dict[str, Any] = {"device": device, "budget_s": budget}
    summary["wheels"] = install_wheels(Path(args.wheels), work / "site", state.log)
    if device == "cuda":
        offline_pip(Path(args.wheels))
    if summary["wheels"].get("error"):
        state.log(f"wheels: {summary['wheels']['error']}")

    import torch

    from harness import environment, flops

    if device == "cuda" and not torch.cuda.is_available():
        state.log("no CUDA device here; use --device cpu for the dry run")
        return 2
    summary["environment"] = environment.capture(("lightning", "fastai", "keras", "transformers", "accelerate"))
    summary["environment"].pop("executable", None)  # a path of the machine that ran it
    peaks = {}
    for dtype in ("fp32", "tf32", "bf16", "fp16") if device == "cuda" else ("fp32", "bf16", "fp16"):
        record = flops.peak(device, dtype, refresh=True)
        peaks[dtype] = {key: record[key] for key in ("flops_per_s", "median_flops_per_s", "matmul", "key")}
        state.log(f"peak {dtype}: {record['flops_per_s'] / 1e9:,.1f} GFLOP/s ({record['matmul']})")
    summary["peaks"] = peaks

    all_results: list[dict[str, Any]] = []
    for group in gpu_groups(device):
        if args.only and group.name not in args.only:
            continue
        record = {"name": group.name, "description": group.description, "specs": len(group.specs), "mode": group.mode}
        if device == "cuda" and state.left() < group.estimate_s:
            record["status"] = f"skipped: {state.left():.0f} s left, the group needs ~{group.estimate_s:.0f} s"
            state.log(f"{group.name}: {record['status']}")
            state.groups.append(record)
            continue
        state.log(f"{group.name}: {group.description} ({len(group.specs)} specs, {group.mode})")
        began = time.monotonic()
        results = run_group(group, state)
        counts: dict[str, int] = {}
        for result in results:
            counts[result["status"]] = counts.get(result["status"], 0) + 1
        record.update(status="ran", seconds=time.monotonic() - began, counts=counts)
        state.log(f"{group.name}: {counts} in {record['seconds']:.0f} s")
        state.groups.append(record)
        all_results += results

    state.log("event clock check")
    try:
        summary["event_clock"] = event_clock_check(device)
        state.log(f"  {summary['event_clock']}")
    except Exception as error:  # a check that cannot run says why; the bundle still comes back
        summary["event_clock"] = {"error": f"{type(error).__name__}: {error}"}
    try:
        summary["sync_audit"] = sync_audit(device)
        counts = [(r["adapter"], r.get("counter_per_step")) for r in summary["sync_audit"]["adapters"]]
        state.log(f"  host syncs per step: {counts}")
    except Exception as error:  # the bundle still comes back
        summary["sync_audit"] = {"error": f"{type(error).__name__}: {error}"}
    summary["groups"] = state.groups
    summary["distributed"] = distributed_facts(all_results)
    summary["verdicts"] = verdicts(all_results, state.results_dir)
    summary["declarations_false"] = [row for row in summary["verdicts"] if not row["meets"]]
    summary["targets"] = targets(all_results)
    summary["runs"] = [
        {
            "label": Spec.from_dict(r["spec"]).label,
            "status": r["status"],
            "error": r.get("error"),
            **{
                k: r.get("summary", {}).get(k)
                for k in ("median_step_us", "mfu", "achieved_over_measured_peak", "compile_s",
                          "throughput_samples_per_s")
            },
        }
        for r in all_results
    ]
    summary["elapsed_s"] = state.elapsed()
    for row in summary["declarations_false"]:
        state.log(
            f"expected {row['declared']} but measured {row['verdict']}: {row['label']} vs {row['reference']} "
            f"({row['against']} partner)"
        )
    state.log(
        f"done in {state.elapsed():.0f} s: {len(all_results)} runs, "
        f"{len(summary['declarations_false'])} declarations not met"
    )
    files = bundle(state, Path(args.out), summary)
    for path in files:
        print(f"  {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def publish(args: argparse.Namespace) -> int:
    """On the CPU machine: unpack a GPU bundle into results/gpu and log + report it with bakeoff."""
    folder = Path(args.bundle)
    archive = folder / "gpu-results.tar.gz" if folder.is_dir() else folder
    if not archive.is_file():
        print(f"gpu_check publish: no gpu-results.tar.gz in {folder}", file=sys.stderr)
        return 2
    target = Path(args.results_root)
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.startswith("gpu/") and ".." not in m.name]
        tar.extractall(target, members=members, filter="data")
    results = target / "gpu"
    print(f"unpacked {len(members)} files into {results}")
    bakeoff = [sys.executable, "-m", "harness.cli"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    code = subprocess.run([*bakeoff, "ingest", str(results), "--suite", "gpu"], env=env).returncode
    if code:
        return code
    return subprocess.run(
        [*bakeoff, "report", "--suite", "gpu", *(["--out", args.out] if args.out else [])], env=env
    ).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("run", help="run the GPU check (the default command)")
    for target in (parser, run):
        target.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: the tiny dry run")
        target.add_argument(
            "--out",
            default=os.environ.get("OUT") or str(REPO_ROOT / "results" / "gpu-check-out"),
            help="where the three result files go (default: $OUT, else results/gpu-check-out)",
        )
        target.add_argument(
            "--work",
            default=str(REPO_ROOT / "results" / "gpu-check"),
            help="scratch folder: result files, installed wheels (default: results/gpu-check)",
        )
        target.add_argument("--wheels", default=str(REPO_ROOT / ".whl"), help="carried wheels (default: .whl/)")
        target.add_argument(
            "--budget-s",
            type=float,
            default=None,
            help=f"seconds for the checks before bundling (default {DEFAULT_BUDGET_S:.0f} on cuda; the cpu dry run "
            "runs everything)",
        )
        target.add_argument("--only", nargs="*", help="run only these groups (names: see gpucheck.gpu_groups)")
    fetch = commands.add_parser("fetch-wheels", help="download the wheels the GPU image lacks into .whl/")
    fetch.add_argument("--wheels", default=str(REPO_ROOT / ".whl"))
    pub = commands.add_parser("publish", help="on the CPU machine: unpack a bundle, bakeoff ingest + report")
    pub.add_argument("bundle", help="the folder the GPU files landed in, or the gpu-results.tar.gz itself")
    pub.add_argument("--results-root", default=str(REPO_ROOT / "results"), help="unpacks into <root>/gpu")
    pub.add_argument("--out", help="report output root (default: bakeoff report's)")
    args = parser.parse_args(argv)
    if args.command == "publish":
        return publish(args)
    if args.command == "fetch-wheels":
        return fetch_wheels(args)
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error("--budget-s must be positive")
    return check(args)
