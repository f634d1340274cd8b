"""One run in its own process: build the task, hand the job to the adapter, write the result.

Launched by the runner as ``python -m harness.worker`` (or under torchrun for world size > 1), or
forked by the runner's zygote (harness.zygote) right after these imports, which then calls
:func:`main` exactly as the fresh process would.
Never talks to MLflow: the orchestrator logs finished results, so tracking costs nothing
inside the timed loop. Only rank 0 writes, atomically, and a failure anywhere still produces
a ``failed`` result with the error and whatever trajectory was recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

WORKER_START_WALL_NS = time.time_ns()
LAUNCH = "fresh"
"""How this worker process started: ``fresh`` (its own interpreter), ``zygote`` (forked), ``inline``."""

from harness.environment import REPO_ROOT  # noqa: E402

# torch.compile's kernels persist across processes in an ignored folder of the checkout, so the
# second compile of a graph is a cache load (seconds) instead of a C++/Triton build (a minute).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(REPO_ROOT / ".cache" / "inductor"))

import torch  # noqa: E402

from adapters.base import Adapter, Job, Unsupported  # noqa: E402
from harness import coverage, environment, flops  # noqa: E402
from harness.durations import after_warmup, step_durations_ns  # noqa: E402
from harness.plan import request_for  # noqa: E402
from harness.plugins import verify as verify_plugin_code  # noqa: E402
from harness.precision_audit import PrecisionAudit, precision_problem  # noqa: E402
from harness.probe import Probe  # noqa: E402
from harness.process import die_with_parent, watch_orchestrator  # noqa: E402
from harness.registry import adapter_identity, get_adapter, get_task, task_data_problem, task_identity  # noqa: E402
from harness.result import base_result, result_path, weights_digest, weights_path, write_result  # noqa: E402
from harness.spec import THREADS_ENV, Spec, SpecError  # noqa: E402
from kernels.determinism import set_determinism  # noqa: E402
from kernels.distributed import DistContext, all_reduce_mean, gather_objects, init_from_env, shutdown  # noqa: E402
from kernels.precision import TF32_CPU_REASON, make_precision, set_tf32, tf32_flags  # noqa: E402
from kernels.sampling import ShardedBatchSampler, batch_loader  # noqa: E402
from tasks.traits import detect_traits  # noqa: E402

EVAL_BATCH = 256


def time_to_target(
    evals: list[dict[str, float]], step_end_ns: list[int], target: float | None, higher_is_better: bool
) -> dict[str, Any]:
    """Training time (harness evaluation excluded) until the first evaluation that meets the target.

    Resolution is the evaluation interval: the target was met somewhere in the last interval.
    """
    if target is None or not evals:
        return {}
    figures: dict[str, Any] = {"target_metric": target, "evals_run": len(evals)}
    for record in evals:
        value = record.get("eval_metric")
        if value is not None and (value >= target if higher_is_better else value <= target):
            step = int(record["step"])
            figures["steps_to_target"] = step
            figures["time_to_target_s"] = step_end_ns[step - 1] / 1e9
            break
    return figures


def summarize(spec: Spec, step_end_ns: list[int], warmup: int) -> dict[str, Any]:
    durations = step_durations_ns(step_end_ns)
    measured = after_warmup(durations, warmup)
    summary: dict[str, Any] = {"steps_completed": len(step_end_ns), "warmup_steps": min(warmup, len(durations))}
    if measured:
        median_ns = statistics.median(measured)
        summary["median_step_us"] = median_ns / 1e3
        summary["throughput_samples_per_s"] = spec.batch_size * spec.grad_accum * spec.world_size / (median_ns / 1e9)
        summary["time_to_first_step_s"] = durations[0] / 1e9
        summary["fit_s"] = step_end_ns[-1] / 1e9
    return summary


def peak_memory() -> dict[str, Any]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(), "peak_memory_kind": "cuda_max_allocated"}
    return {
        "peak_memory_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_memory_kind": "cpu_peak_rss",
    }


@torch.no_grad()
def evaluate(job: Job) -> dict[str, float]:
    """Validation loss and the task metric over the whole validation set, in eval mode.

    Called mid-training too (``--eval-every``): every module's own train/eval flag is put back
    afterwards, because a library may keep some submodules in eval mode on purpose. It draws no
    random numbers and updates no state (BatchNorm uses its running statistics in eval mode),
    so training after it is bit-for-bit what it would have been.
    """
    model = job.model
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    total_loss, total_metric, count = 0.0, 0.0, 0
    inputs_all, targets_all = job.data.valid.tensors
    for start in range(0, len(targets_all), EVAL_BATCH):
        inputs = inputs_all[start : start + EVAL_BATCH].to(job.device)
        targets = targets_all[start : start + EVAL_BATCH].to(job.device)
        with job.precision.forward_context():
            output = model(inputs)
        output = output.float()
        size = len(targets)
        total_loss += float(job.loss(output, targets)) * size
        if job.task.metric_from_loss is None:
            total_metric += float(job.task.metric(output, targets)) * size
        count += size
    for module, training in modes:
        module.training = training
    eval_loss = total_loss / count
    from_loss = job.task.metric_from_loss
    metric = from_loss(eval_loss) if from_loss is not None else total_metric / count
    return {"eval_loss": eval_loss, "eval_metric": metric}


def forked(start_wall_ns: int) -> None:
    """Called by the zygote in a freshly forked child: this worker started at the fork, torch already imported."""
    global WORKER_START_WALL_NS, LAUNCH
    WORKER_START_WALL_NS, LAUNCH = start_wall_ns, "zygote"


def startup_figures(launch: str, launch_wall_ns: int, ready_wall_ns: int, first_step_wall_ns: int) -> dict[str, float]:
    """Start-up split at the moment the worker is ready (torch and the harness imported).

    ``launch_s`` is launch to ready: the interpreter, torch and harness imports of a fresh process,
    a fork for a zygote child. ``library_startup_s`` is ready to the end of the first step: the
    library's import, the job's construction, the library's own set-up and one step; it means the
    same however the worker started. ``startup_s`` (launch to the end of the first step, what a
    user starting a run waits for) is only written for a fresh process, where it is that figure.
    """
    figures = {
        "launch_s": (ready_wall_ns - launch_wall_ns) / 1e9,
        "library_startup_s": (first_step_wall_ns - ready_wall_ns) / 1e9,
    }
    if launch == "fresh":
        figures["startup_s"] = (first_step_wall_ns - launch_wall_ns) / 1e9
    return figures


def configure_threads(device_type: str, threads: int | None = None) -> dict[str, Any]:
    """Set this rank's intra-op CPU threads: the spec's count, else the cores split between local ranks.

    CPU float reductions depend on the thread count, so the layout is part of the spec
    (``Spec.threads``). ``BAKEOFF_THREADS_PER_RANK`` reaches a run only through the spec (the CLI
    and suites resolve it into ``threads``), so two results with one spec id never ran with
    different layouts. Returns what was set, for the result.
    """
    if threads is not None:
        torch.set_num_threads(threads)
        source = "spec"
    elif device_type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        cores = os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // local_world))
        source = f"automatic: {cores} cores // {local_world} local ranks"
    else:
        source = "torch default (the run is not on the CPU)"
    return {"requested": threads, "torch_threads": torch.get_num_threads(), "source": source}


def check_thread_layout(spec: Spec) -> None:
    """Refuse a spec whose automatic layout the environment would silently contradict."""
    override = os.environ.get(THREADS_ENV, "").strip()
    if override and spec.threads is None:
        raise SpecError(
            f"{THREADS_ENV}={override} is set but this spec's thread layout is automatic; put the count in the "
            f"spec (threads={override}; the bakeoff CLI and suites do this) so its id names the layout it ran with"
        )


TRAIT_SAMPLES = 4
"""Training samples the trait detection's forward passes use (>= 2: BatchNorm in train mode needs two)."""


def sample_batch(dataset, count: int):
    """The first ``count`` samples of ``dataset`` as one batch (batch indexing, else per-sample collate)."""
    indices = list(range(min(count, len(dataset))))
    try:
        return dataset[indices]
    except Exception:  # a dataset that only indexes one sample at a time
        return torch.utils.data.default_collate([dataset[index] for index in indices])


def model_traits(job: Job) -> dict[str, Any]:
    """The model's family traits: what the task declares and what one small forward pass detects.

    Sets ``job.traits`` to their union (the request an adapter's declaration judges). Never changes
    the run (tasks/traits.py: forked RNG, buffers restored, no backward).
    """
    declared = sorted(job.task.traits(job.options))
    inputs, targets = sample_batch(job.data.train, TRAIT_SAMPLES)
    detected = detect_traits(job.model, job.loss, inputs.to(job.device), targets.to(job.device), job.device)
    job.traits = frozenset(declared) | frozenset(detected["traits"])
    return {"declared": declared, "detected": detected["traits"], "undetermined": detected["undetermined"]}


class AutocastObserver:
    """Reads the autocast state the model's first training forward pass actually runs under.

    Whatever library drives the loop (and wherever it enters autocast: around the step, around
    ``model.forward``), the first submodule called in training mode with grad enabled sees it; the
    hooks are removed right there, so later steps run hook-free.
    """

    def __init__(self, model: torch.nn.Module, device_type: str) -> None:
        self.device_type = device_type
        self.observed: dict[str, Any] | None = None
        modules = [module for name, module in model.named_modules() if name] or [model]
        self.handles = [module.register_forward_pre_hook(self._hook) for module in modules]

    def _hook(self, module, args) -> None:
        if self.observed is not None or not (module.training and torch.is_grad_enabled()):
            return
        enabled = torch.is_autocast_enabled(self.device_type)
        self.observed = {
            "enabled": enabled,
            "device_type": self.device_type,
            "dtype": str(torch.get_autocast_dtype(self.device_type)).removeprefix("torch.") if enabled else None,
            "cache_enabled": torch.is_autocast_cache_enabled() if enabled else None,
            "observed_at": "the model's first training forward pass",
        }
        self.remove()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def record(self) -> dict[str, Any]:
        self.remove()
        return self.observed or {"enabled": None, "observed_at": "no training forward pass was seen"}


def rank_draws(job: Job, probe: Probe) -> dict[str, Any]:
    """This rank's trained batches, epoch by epoch, and how they were known (gathered to rank 0 after training).

    Nothing here runs in the loop: the harness sampler's batches are rebuilt from its seed; a
    library loader's were appended to a SampleLog as it fetched them. Prefetched batches that never
    trained are cut off by the count of micro-batches the probe saw in completed steps.
    """
    trained = probe.micro_batches
    if trained is None:  # an adapter that reports one loss per step: the spec's accumulation says how many
        trained = probe.steps * job.grad_accum
    library = job.library_samples
    if library is not None:
        log = library.log
        if log.epoch_orders:
            epochs = coverage.trim_epochs(log.epoch_streams(), trained)
            method = "the library's index stream per epoch, cut into the batch sizes it trained"
        elif library.batches_per_epoch:
            epochs = coverage.split_epochs(log.fetched_batches(), library.batches_per_epoch, trained)
            method = "indices recorded as the library's loader fetched each batch (outside the model's path)"
        else:
            return {"problem": "the adapter recorded its library's batches but not how many make an epoch"}
        meta = {
            "source": "library loader",
            "method": method,
            "sampler": library.sampler,
            "batches_per_epoch": library.batches_per_epoch,
            "follows_spec_seed": library.follows_spec_seed,
            "seed_source": library.seed_source,
        }
    elif job.sampler.passes:
        sampler = job.sampler
        epochs = coverage.trained_passes(list(zip((e for e, _ in sampler.passes), sampler.drawn())), trained)
        meta = {
            "source": "harness sampler",
            "method": "rebuilt after training from the sampler's seed and the batches each pass handed out",
            "sampler": (
                f"ShardedBatchSampler(seed={sampler.seed}, batch_size={sampler.batch_size}, "
                f"world_size={sampler.world_size}, grad_accum={sampler.grad_accum})"
            ),
            "batches_per_epoch": len(sampler),
            "follows_spec_seed": True,
            "seed_source": "the spec seed: one permutation per epoch drawn from (seed, epoch)",
        }
    else:
        return {"problem": "the adapter drew from neither the harness sampler nor a recorded dataset"}
    recorded = sum(len(epoch) for epoch in epochs)
    if recorded < trained:
        return {"problem": f"{recorded} batches were recorded but {trained} micro-batches trained"}
    return {"epochs": epochs, "meta": meta}


def sample_coverage(job: Job, draws: list[dict[str, Any]]) -> dict[str, Any]:
    """``result["coverage"]`` from every rank's draws (harness/coverage.py has the schema)."""
    for rank, draw in enumerate(draws):
        if "problem" in draw:
            return coverage.not_recorded(f"rank {rank}: {draw['problem']}")
    meta = draws[0]["meta"]
    return coverage.coverage(
        [draw["epochs"] for draw in draws],
        dataset_size=len(job.data.train),
        batch_size=job.batch_size,
        grad_accum=job.grad_accum,
        **meta,
    )


class Terminated(Exception):
    """SIGTERM arrived (timeout, or torchrun stopping the job because another rank failed)."""


# While the worker trains, SIGTERM raises Terminated and the run ends as a failed result with what
# it recorded. Once it is writing a result up (handling a failure, in `run`'s finally, writing the
# file), a SIGTERM only returns: raising there would lose the result being written. That is the
# race a killed DDP peer sets up: gloo reports the dead socket to rank 0 first, and torchrun's
# SIGTERM follows while rank 0 is handling that error.
_writing_up = False


def _terminate(signum, frame) -> None:
    if _writing_up:
        return
    raise Terminated(f"terminated by {signal.Signals(signum).name} (timeout, or another rank failed)")


def _write_up(now: bool = True) -> None:
    global _writing_up
    _writing_up = now


def adapter_record(adapter: Adapter) -> dict[str, Any]:
    """What a result says about the adapter that ran: name, style, library and its version."""
    record = {
        "name": adapter.name,
        "style": adapter.style,
        "library": adapter.library,
        "library_version": environment.package_version(adapter.library),
    }
    if getattr(adapter, "variant_of", None):  # `<adapter>@<version>`: what was asked for, next to what ran
        record.update(variant_of=adapter.variant_of, requested_version=adapter.requested_version)
    return record


def plugin_identities(spec: Spec) -> dict[str, Any]:
    """The code identities of the spec's plugin task and adapter as this worker imports them.

    Raises PluginCodeMismatch when they are not what the spec names: the result must be of the
    code its spec id stands for.
    """
    identities = {"task": task_identity(spec.task), "adapter": adapter_identity(spec.adapter)}
    verify_plugin_code(spec, identities["task"], identities["adapter"])
    return identities


def build_job(spec: Spec, task, context: DistContext, probe: Probe, *, workdir: Path) -> Job:
    """The job an adapter trains: the task's data and seeded model, the harness sampler, precision, probe.

    The same construction serves the process-per-spec worker and the in-process measurements
    (paired cost, attribution), so every arm of a comparison gets an identical job.
    """
    options = task.resolve_options(spec.options)
    data = task.build_data(options)
    model = task.build_model(spec.seed, options, data).to(context.device)
    sampler = ShardedBatchSampler(
        len(data.train),
        batch_size=spec.batch_size,
        seed=spec.seed,
        rank=context.rank,
        world_size=context.world_size,
        grad_accum=spec.grad_accum,
    )
    return Job(
        task=task,
        options=options,
        data=data,
        model=model,
        train_loader=batch_loader(data.train, sampler),
        sampler=sampler,
        loss=task.loss_for(options),
        optimizer=task.optimizer,
        precision=make_precision(spec.precision, spec.device),
        dist=context,
        device=context.device,
        mode=spec.mode,
        seed=spec.seed,
        batch_size=spec.batch_size,
        steps=spec.steps,
        lr=spec.lr,
        grad_accum=spec.grad_accum,
        probe=probe,
        workdir=str(workdir),
        compile=spec.compile,
    )


def load_compiler() -> float:
    """Import torch.compile's machinery before the fit clock starts; return the seconds it took.

    The first ``torch.compile(...)`` call in a process imports ~600 modules (seconds), and it is
    made inside each adapter's fit, before any compile callback fires: it would land unmarked in
    the first step. Loading it here, the same for every adapter, makes it the figure
    ``compile_setup_s`` instead.
    """
    started = time.perf_counter()
    torch.compile(torch.nn.Identity())  # builds the wrapper only: nothing is compiled until a call
    # A process that already ran a compiled spec (run_inline, a batch of specs) would reuse that
    # run's compiled code for a model of the same class and report no compile time at all.
    torch._dynamo.reset()
    return time.perf_counter() - started


def compile_figures(trajectory, tracked: bool) -> dict[str, Any]:
    """Compile time as its own figure: host seconds spent compiling inside the fit, and how often.

    The step clock already excludes it (the probe pauses during compilation); ``compile_s`` is
    where it went. ``compile_tracked`` False: dynamo was never loaded, so nothing was compiled.
    """
    if not tracked:
        return {"compile_tracked": False}
    return {
        "compile_tracked": True,
        "compile_s": sum(record["compile_s"] for record in trajectory.compiles),
        "compile_events": len(trajectory.compiles),
    }


def utilisation_figures(spec: Spec, job: Job, result: dict[str, Any]) -> None:
    """FLOPs per step (counted once per task configuration), the device's measured peak, and MFU.

    Runs after training and evaluation, so neither the count nor a first peak measurement is
    inside any timed figure. A task whose model cannot be counted records why instead.
    """
    try:
        result["flops"] = flops.step_flops(
            job.task, job.options, job.data, batch_size=spec.batch_size, grad_accum=spec.grad_accum,
            world_size=spec.world_size,
        )
    except Exception as error:  # a plugin model the meta device cannot build: say so, keep the run
        result["flops"] = {"error": f"{type(error).__name__}: {error}"[:300]}
        return
    dtype = flops.peak_dtype(spec.precision, tf32=spec.tf32, device_type=spec.device)
    try:
        peak = flops.peak(spec.device, dtype)
    except Exception as error:
        result["peak_flops"] = {"error": f"{type(error).__name__}: {error}"[:300]}
        return
    result["peak_flops"] = peak
    summary = result["summary"]
    summary["flops_per_step"] = result["flops"]["per_step"]
    gpus = torch.cuda.device_count() if spec.device == "cuda" else 0
    devices = flops.devices_used(spec.device, spec.world_size, gpus)
    summary["peak_flops_per_s"] = peak["flops_per_s"] * devices
    summary.update(
        flops.utilisation(summary["flops_per_step"], summary.get("median_step_us"), peak["flops_per_s"], devices)
    )


def task_record(job: Job) -> dict[str, Any]:
    """What a result says about the task it trained: options, metric, data digest, size."""
    task, data = job.task, job.data
    return {
        "name": task.name,
        "options": job.options,
        "batch_invariant": task.is_batch_invariant(job.options),
        "metric_name": task.metric_name,
        "higher_is_better": task.higher_is_better,
        "target_metric": task.target_metric,
        "data_digest": data.digest,
        "data_source": data.source,
        "train_samples": len(data.train),
        "valid_samples": len(data.valid),
        "parameters": sum(p.numel() for p in job.model.parameters()),
        "optimizer": task.optimizer.name,
    }


def run(
    spec: Spec,
    results_dir: Path,
    *,
    launch_wall_ns: int,
    warmup: int,
    save_weights: bool,
    eval_every: int = 0,
    launch: str | None = None,
) -> dict[str, Any]:
    ready_wall_ns = time.time_ns()
    launch = launch or LAUNCH
    result = base_result(spec, status="ok")
    result["timing"] = {
        "launch": launch,
        "launch_wall_ns": launch_wall_ns,
        "worker_start_wall_ns": WORKER_START_WALL_NS,
        "ready_wall_ns": ready_wall_ns,
    }
    layout = configure_threads(spec.device, spec.threads)
    result["threads"] = {**layout, "per_rank": None}
    context = init_from_env(spec.device, process_group=spec.ddp)
    result["_rank"] = context.rank
    probe = Probe(context.device)
    job: Job | None = None
    audit: PrecisionAudit | None = None
    compiles_tracked = False
    _write_up(False)
    try:
        check_thread_layout(spec)
        set_determinism(spec.seed, rank=context.rank, deterministic=spec.deterministic)
        if spec.tf32 and spec.device != "cuda":
            raise Unsupported(TF32_CPU_REASON)
        result["tf32"] = {"requested": spec.tf32, "set": set_tf32(spec.tf32, spec.device)}
        task = get_task(spec.task)
        import_start = time.perf_counter()
        adapter = get_adapter(spec.adapter)
        result["timing"]["adapter_import_s"] = time.perf_counter() - import_start
        request = request_for(spec, task)
        reason = adapter.check(request)
        if reason:  # the orchestrator checks too; a worker launched directly must not half-run
            raise Unsupported(reason)
        result["adapter"] = adapter_record(adapter)
        result["declared_parity"] = adapter.expected_parity(request)
        plugin_code = plugin_identities(spec)
        if plugin_code["adapter"]:
            result["adapter"]["plugin"] = plugin_code["adapter"].record()
        job = build_job(spec, task, context, probe, workdir=results_dir / "work" / spec.spec_id)
        problem = task_data_problem(job.data)
        if problem:
            raise ValueError(f"task {spec.task!r}: {problem}")
        result["task"] = task_record(job)
        if plugin_code["task"]:
            result["task"]["plugin"] = plugin_code["task"].record()
        # Facts known only once the data is built (e.g. an input shape the task did not declare)
        # may still make the adapter refuse: before training, with its reason.
        reason = adapter.check(job.request)
        if reason:
            raise Unsupported(reason)
        result["task"]["traits"] = model_traits(job)
        # Declared again with the traits detected on the built model (a plugin task may declare none),
        # here where the library version that runs is imported.
        result["declared_parity"] = adapter.expected_parity(job.request)
        # Not on a compiled run: hooks present while dynamo traces would enter the graph.
        autocast = None if spec.compile else AutocastObserver(job.model, job.device.type)
        eval_every = eval_every if task.target_metric is not None else 0  # only time-to-target needs it
        if eval_every:
            probe.evaluate_every(eval_every, lambda: evaluate(job))
        # Reseed right before training: dropout masks and any library RNG use start from the
        # same state in every adapter, whatever building the data consumed.
        set_determinism(spec.seed, rank=context.rank, deterministic=spec.deterministic)
        if not spec.compile:  # hooks present while dynamo traces would enter the graph
            audit = PrecisionAudit(job.model)
            probe.after_first_step(audit.detach)
        if spec.compile:
            result["summary"]["compile_setup_s"] = load_compiler()
        if spec.compile or "torch._dynamo" in sys.modules:  # importing dynamo only to listen costs seconds
            compiles_tracked = probe.track_compiles()
        probe.fit_start()
        trained = adapter.fit(job)
        job.notes["autocast"] = autocast.record() if autocast else {
            "enabled": None, "observed_at": "not observed: a compiled run (hooks would enter the graph)"}
        probe.stop_tracking_compiles()
        job.model = trained
        result["tf32"]["after_fit"] = tf32_flags()
        losses = all_reduce_mean(probe.step_losses(), context)
        # One gather after training: every rank's thread count and trained sample ids.
        gathered = gather_objects({"threads": torch.get_num_threads(), "draws": rank_draws(job, probe)}, context)
        result["threads"]["per_rank"] = [entry["threads"] for entry in gathered]
        if context.is_main:
            result["coverage"] = sample_coverage(job, [entry["draws"] for entry in gathered])
        trajectory = probe.resolve(losses)
        result["trajectory"] = {"step_end_ns": trajectory.step_end_ns, "losses": trajectory.losses}
        if eval_every:
            result["trajectory"]["evals"] = trajectory.evals
            result["summary"]["eval_every"] = eval_every
        if trajectory.compiles:
            result["trajectory"]["compiles"] = trajectory.compiles
        result["summary"].update(summarize(spec, trajectory.step_end_ns, warmup))
        result["summary"].update(compile_figures(trajectory, compiles_tracked))
        result["summary"].update(
            time_to_target(trajectory.evals, trajectory.step_end_ns, task.target_metric, task.higher_is_better)
        )
        if trajectory.first_step_wall_ns is not None:
            result["summary"].update(
                startup_figures(launch, launch_wall_ns, ready_wall_ns, trajectory.first_step_wall_ns)
            )
        bad = next((i for i, loss in enumerate(trajectory.losses) if not torch.isfinite(torch.tensor(loss))), None)
        mislabelled = None
        if audit is not None:
            audit.detach()
            job.notes["precision_observed"] = audit.record()
            mislabelled = precision_problem(spec.precision, audit.judged)
        else:
            job.notes["precision_observed"] = "not audited: the model was compiled (hooks would enter the graph)"
        if mislabelled:
            result["status"] = "failed"
            result["error"] = f"precision not as labelled: {mislabelled}"
        elif bad is not None:
            result["status"] = "failed"
            result["error"] = f"non-finite loss ({trajectory.losses[bad]}) at step {bad}"
        elif len(trajectory.losses) != spec.steps:
            result["status"] = "failed"
            result["error"] = f"adapter ran {len(trajectory.losses)} optimizer steps, spec asked for {spec.steps}"
        if trajectory.losses:
            result["summary"]["final_loss"] = trajectory.losses[-1]
        if context.is_main:
            result["summary"].update(evaluate(job))
            state = {k: v.detach().cpu() for k, v in trained.state_dict().items()}
            result["weights_digest"] = weights_digest(state)
            if save_weights:
                path = weights_path(results_dir, spec)
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(state, path)
                result["weights_file"] = path.name
            utilisation_figures(spec, job, result)
    except Unsupported as reason:
        _write_up()
        result["status"] = "unsupported"
        result["error"] = str(reason)
    except BaseException as error:
        _write_up()
        result["status"] = "failed"
        result["error"] = f"{type(error).__name__}: {error}".strip()
        result["traceback"] = traceback.format_exc()[-4000:]
        try:
            partial = probe.resolve()
            result["trajectory"] = {"step_end_ns": partial.step_end_ns, "losses": partial.losses}
            if partial.evals:
                result["trajectory"]["evals"] = partial.evals
        except Exception:
            pass
    finally:
        _write_up()
        probe.stop_tracking_compiles()
        if audit is not None:
            audit.detach()
        if job is not None:
            result["notes"] = job.notes
        result["summary"].update(peak_memory())
        result["summary"]["wall_s"] = (time.time_ns() - launch_wall_ns) / 1e9
        result["environment"] = environment.capture(tuple(p for p in [result["adapter"].get("library")] if p))
        result["distributed"] = {"world_size": context.world_size, "backend": context.backend}
        shutdown(context)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.worker", description="Run one spec (internal).")
    parser.add_argument("--spec", required=True, help="spec JSON file")
    parser.add_argument("--results-dir", required=True)
    parser.add_argument("--launch-wall-ns", type=int, default=WORKER_START_WALL_NS)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--save-weights", action="store_true")
    parser.add_argument("--eval-every", type=int, default=0, help="evaluate every N steps (0: only at the end)")
    args = parser.parse_args(argv)
    die_with_parent()  # a rank must not outlive torchrun (the runner armed it for a single worker)
    watch_orchestrator()  # nor the orchestrator, however it died
    signal.signal(signal.SIGTERM, _terminate)  # write what we have before going
    spec = Spec.from_dict(json.loads(Path(args.spec).read_text()))
    results_dir = Path(args.results_dir)
    result = run(
        spec,
        results_dir,
        launch_wall_ns=args.launch_wall_ns,
        warmup=args.warmup,
        save_weights=args.save_weights,
        eval_every=args.eval_every,
    )
    rank = result.pop("_rank", 0)
    if rank == 0:
        write_result(result_path(results_dir, spec), result)
    return 0 if result["status"] != "failed" else 3


if __name__ == "__main__":
    sys.exit(main())


def run_inline(
    spec: Spec, results_dir: Path, *, warmup: int = 5, save_weights: bool = True, eval_every: int = 0
) -> dict[str, Any]:
    """Run a single-process spec inside the calling process and write its result.

    For tests and notebooks: it skips the ~5 s interpreter + torch start-up of a fresh worker,
    at the price of sharing the caller's process state. Timing figures from it are not the
    harness's measurements (it writes no ``startup_s``); use the runner for those.
    """
    if spec.world_size != 1 or spec.ddp:
        raise ValueError("run_inline runs single-process specs only; use harness.runner for DDP")
    result = run(
        spec,
        Path(results_dir),
        launch_wall_ns=time.time_ns(),
        warmup=warmup,
        save_weights=save_weights,
        eval_every=eval_every,
        launch="inline",
    )
    result.pop("_rank", None)
    write_result(result_path(Path(results_dir), spec), result)
    return result
