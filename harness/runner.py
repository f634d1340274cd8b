"""The orchestrator side of a run: one fresh worker process per spec, timeouts, resume.

A suite forks its single-process workers from a preloaded zygote (harness.zygote: torch is
imported once, each spec still gets a process of its own); DDP specs run under torchrun, and
``RunOptions.zygote = False`` (``bench --no-zygote``, ``BAKEOFF_ZYGOTE=0``) starts every worker as
a fresh interpreter. A spec whose result file exists is skipped, so an interrupted suite resumes
where it stopped. Whatever happens to a worker (exception, crash, signal, hang), the spec ends
with a result file and the suite goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import envs, locks, zygote
from harness.environment import REPO_ROOT
from harness.process import ORCHESTRATOR_ENV, die_with_parent, orchestrator_token
from harness.result import ResultError, base_result, read_result, result_path, write_result
from harness.spec import Spec

DEFAULT_TIMEOUT_S = 600.0
STDERR_TAIL = 3000


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    results_dir: Path
    timeout_s: float = DEFAULT_TIMEOUT_S
    warmup: int = 5
    """Steps excluded from step-time statistics."""
    eval_every: int = 0
    """Evaluate on the validation set every N steps (time-to-target); 0: only after training."""
    save_weights: bool = True
    python: str = sys.executable
    retry_failed: bool = False
    """On resume, run again specs whose existing result is ``failed``."""
    nnodes: int = 1
    """Machines the job spans; > 1 launches torchrun with a c10d rendezvous at ``rdzv_endpoint``.
    Every node runs the same command; the node that holds global rank 0 writes the result."""
    rdzv_endpoint: str | None = None
    zygote: bool = dataclasses.field(default_factory=lambda: os.environ.get("BAKEOFF_ZYGOTE", "1") != "0")
    """Fork single-process workers from a preloaded zygote in ``run_suite`` (default; env BAKEOFF_ZYGOTE=0: off)."""


def worker_arguments(spec_file: Path, options: RunOptions, launch_wall_ns: int) -> list[str]:
    """``harness.worker``'s own arguments (what follows ``python -m harness.worker``)."""
    arguments = [
        "--spec",
        str(spec_file),
        "--results-dir",
        str(options.results_dir),
        "--launch-wall-ns",
        str(launch_wall_ns),
        "--warmup",
        str(options.warmup),
    ]
    if options.eval_every:
        arguments += ["--eval-every", str(options.eval_every)]
    if options.save_weights:
        arguments.append("--save-weights")
    return arguments


def worker_command(spec: Spec, spec_file: Path, options: RunOptions, launch_wall_ns: int) -> list[str]:
    worker_args = ["-m", "harness.worker", *worker_arguments(spec_file, options, launch_wall_ns)]
    if options.nnodes > 1:
        if spec.world_size % options.nnodes:
            raise ValueError(f"world size {spec.world_size} does not split over {options.nnodes} nodes")
        if not options.rdzv_endpoint:
            raise ValueError("a multi-node run needs a rendezvous endpoint (host:port)")
        return [
            options.python, "-m", "torch.distributed.run",
            "--nnodes", str(options.nnodes), "--nproc-per-node", str(spec.world_size // options.nnodes),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", options.rdzv_endpoint, "--rdzv-id", spec.spec_id,
            "--max-restarts", "0", "--monitor-interval", "0.5",
            *worker_args,
        ]
    if spec.world_size == 1 and not spec.ddp:
        return [options.python, *worker_args]
    # torchrun's --standalone picks a free local port through the c10d rendezvous.
    return [
        options.python,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc-per-node",
        str(spec.world_size),
        "--max-restarts",
        "0",
        "--monitor-interval",
        "0.5",
        *worker_args,
    ]


def _kill_group(process: subprocess.Popen) -> None:
    """Stop the worker and everything it started (torchrun's ranks) by process group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONUNBUFFERED", "1")
    env[ORCHESTRATOR_ENV] = orchestrator_token()  # every rank exits when this process is gone
    return env


def forkable(spec: Spec, options: RunOptions) -> bool:
    """Whether the spec's worker may be forked from a zygote: one process on this node (DDP keeps torchrun)."""
    return spec.world_size == 1 and options.nnodes == 1


def preload_for(spec: Spec) -> tuple[str, ...]:
    """What the zygote for this spec imports before forking: modules its worker imports anyway, whatever
    the library: torch's compiler stack when the spec is deterministic
    (``kernels.determinism.DETERMINISM_IMPORTS``) and the task's data modules (``Task.preload``).

    The set depends on the spec's task and determinism only, never on its adapter, so every adapter's
    library start-up on a task leaves out the same imports and stays comparable with the others'.
    A task that cannot be loaded here preloads nothing."""
    from kernels.determinism import DETERMINISM_IMPORTS

    modules = list(DETERMINISM_IMPORTS) if spec.deterministic else []
    try:
        from harness.registry import get_task

        modules += list(get_task(spec.task).preload)
    except Exception:  # the worker reports a task that does not load; the zygote need not
        pass
    return tuple(dict.fromkeys(modules))


def _run_fresh(command: list[str], stderr, timeout_s: float) -> tuple[int | None, bool]:
    """Start the worker as a new interpreter; returns (exit code, timed out)."""
    process = subprocess.Popen(
        command,
        cwd=REPO_ROOT,
        env=_worker_env(),
        stdout=stderr,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so a timeout kills every rank
        preexec_fn=functools.partial(die_with_parent, os.getpid()),
    )
    timed_out = False
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
    _kill_group(process)  # also reaps anything a finished worker left behind
    return process.returncode, timed_out


def _run_forked(
    pool: zygote.ZygotePool, python: str, argv_for, output: Path, timeout_s: float, preload: tuple[str, ...] = ()
) -> tuple[int, int | None, bool] | None:
    """Fork the worker from the pool's zygote: (launch time, exit code, timed out), or None when no
    zygote can serve (the caller then runs the spec in a fresh process)."""
    forker = pool.get(python, _worker_env(), cwd=str(REPO_ROOT), preload=preload)
    if forker is None:
        return None
    launch_wall_ns = time.time_ns()
    try:
        pid = forker.launch(argv_for(launch_wall_ns), output=str(output))
    except zygote.ZygoteError as error:
        pool.failed(python, str(error), preload=preload)
        return None
    try:
        code = forker.wait(pid, timeout_s)
        timed_out = code is None
        for sig in (signal.SIGTERM, signal.SIGKILL):  # as _kill_group: the worker's whole process group
            if code is not None:
                break
            _signal_group(pid, sig)
            code = forker.wait(pid, 5)
    except zygote.ZygoteError as error:
        _signal_group(pid, signal.SIGKILL)  # its zygote is gone, so it is going too: make sure
        pool.failed(python, f"{error} while a worker ran", preload=preload)
        return None
    if code is None:  # the zygote never reported the SIGKILLed worker's end: do not reuse it
        pool.failed(python, "the zygote did not report a killed worker's exit", preload=preload)
        code = -signal.SIGKILL
    else:
        pool.succeeded(python, preload=preload)
    _signal_group(pid, signal.SIGTERM)  # anything the finished worker left behind in its group
    return launch_wall_ns, code, timed_out


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run_spec(spec: Spec, options: RunOptions, zygotes: zygote.ZygotePool | None = None) -> dict[str, Any]:
    """Run one spec in a process of its own and return its result (also on disk).

    With ``zygotes`` (a suite's pool) a single-process spec is forked from the zygote for its
    interpreter; otherwise, or when no zygote can serve, it starts a fresh interpreter.
    """
    # The worker runs in the repository root: a relative folder must mean the caller's, not that.
    options = dataclasses.replace(options, results_dir=Path(options.results_dir).absolute())
    options.results_dir.mkdir(parents=True, exist_ok=True)
    path = result_path(options.results_dir, spec)
    try:  # an adapter that declares its own environment runs with that environment's python
        isolated = envs.prepare(spec.adapter)
    except envs.EnvironmentBuildError as error:
        return _write_failure(spec, options, path, f"environment: {error}", "", time.time_ns())
    if isolated is not None:
        options = dataclasses.replace(options, python=str(isolated.python))
    with tempfile.TemporaryDirectory(prefix="bakeoff-") as scratch:
        spec_file = Path(scratch) / "spec.json"
        spec_file.write_text(spec.canonical_json())
        stderr_file = Path(scratch) / "stderr.txt"
        with open(stderr_file, "w+b") as stderr:
            ran = None
            if zygotes is not None and forkable(spec, options):
                ran = _run_forked(
                    zygotes,
                    options.python,
                    lambda launch_ns: worker_arguments(spec_file, options, launch_ns),
                    stderr_file,
                    options.timeout_s,
                    preload_for(spec),
                )
                if ran is None:  # no zygote could serve: start over in a fresh process
                    stderr.seek(0)
                    stderr.truncate()
            if ran is None:
                ran = _run_fresh_command(spec, spec_file, options, stderr)
            launch_wall_ns, code, timed_out = ran
            stderr.seek(0)
            output_tail = stderr.read()[-STDERR_TAIL:].decode("utf-8", "replace")
        worker_result = _read_if_valid(path, newer_than_ns=launch_wall_ns)
        if timed_out:
            # A worker stopped by SIGTERM writes what it had; keep its partial trajectory.
            partial = worker_result["trajectory"] if worker_result else None
            return _write_failure(
                spec,
                options,
                path,
                f"timed out after {options.timeout_s:g} s",
                output_tail,
                launch_wall_ns,
                trajectory=partial,
            )
        if worker_result is not None:
            if isolated is not None:
                write_result(path, envs.attach(worker_result, isolated))
            return worker_result
        if code == 0 and options.nnodes > 1:
            # This node did not hold global rank 0; that node wrote the result.
            return {**base_result(spec, status="ok"), "elsewhere": "result written by the node holding rank 0"}
        if code and code < 0:
            reason = f"killed by signal {signal.Signals(-code).name}"
        else:
            reason = f"worker exited with code {code}"
        return _write_failure(spec, options, path, f"{reason} without a result", output_tail, launch_wall_ns)


def _run_fresh_command(spec: Spec, spec_file: Path, options: RunOptions, stderr) -> tuple[int, int | None, bool]:
    # The command carries the launch time; take it as late as possible, right before the start.
    launch_wall_ns = time.time_ns()
    code, timed_out = _run_fresh(worker_command(spec, spec_file, options, launch_wall_ns), stderr, options.timeout_s)
    return launch_wall_ns, code, timed_out


def _read_if_valid(path: Path, *, newer_than_ns: int) -> dict[str, Any] | None:
    if not path.exists() or path.stat().st_mtime_ns < newer_than_ns - 1_000_000_000:
        return None
    try:
        return read_result(path)
    except ResultError:
        return None


def _write_failure(
    spec: Spec,
    options: RunOptions,
    path: Path,
    reason: str,
    output_tail: str,
    launch_wall_ns: int,
    trajectory: dict[str, Any] | None = None,
) -> dict[str, Any]:
    result = base_result(spec, status="failed", error=reason)
    if trajectory:
        result["trajectory"] = trajectory
    result["output_tail"] = output_tail
    result["summary"]["wall_s"] = (time.time_ns() - launch_wall_ns) / 1e9
    write_result(path, result)
    return result


def existing_result(spec: Spec, results_dir: Path) -> dict[str, Any] | None:
    path = result_path(results_dir, spec)
    if not path.exists():
        return None
    try:
        return read_result(path)
    except ResultError:
        return None  # a damaged file is rerun, not trusted


FOREIGN_CLAIM_EXPIRY_S = 6 * 3600.0
"""A claim made on another host cannot be checked by PID; it counts as abandoned after this long."""


class Claim:
    """An atomic per-spec claim file, so two `bench` processes on one folder never run a spec twice.

    Holds ``<host> <pid>``. A claim from this host whose process is gone is stale and is taken
    over (the orchestrator was killed mid-spec), so an interrupted suite still resumes. A claim
    from another host (a SLURM array on a shared folder) cannot be checked by PID: it is honoured
    until ``foreign_expiry_s`` after it was made. Every look at a claim (acquire, take-over,
    clean-up) happens under one ``flock`` per results folder, and a claim file appears with its
    owner already in it (written aside, then hard-linked into place): an empty claim read between
    "created" and "owner written" once looked stale to a second process, which ran the spec too.
    Filesystems without ``flock`` or hard links fall back to ``O_EXCL`` creation.
    """

    LOCK_NAME = ".claims.lock"

    def __init__(self, results_dir: Path, spec: Spec, *, foreign_expiry_s: float = FOREIGN_CLAIM_EXPIRY_S) -> None:
        self.path = Path(results_dir) / f"{spec.spec_id}.claim"
        self.held = False
        self.foreign_expiry_s = foreign_expiry_s

    @contextlib.contextmanager
    def _locked(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.parent / self.LOCK_NAME, "a") as handle, locks.exclusive(handle):
            yield  # without flock (some network filesystems) the O_EXCL / link step alone decides

    def acquire(self) -> bool:
        with self._locked():
            if self.path.exists():
                if not self._stale():
                    return False
                self.path.unlink(missing_ok=True)
            owner = f"{socket.gethostname()} {os.getpid()}"
            descriptor, aside = tempfile.mkstemp(dir=self.path.parent, prefix=".claim-")
            try:
                with os.fdopen(descriptor, "w") as handle:
                    handle.write(owner)
                os.link(aside, self.path)  # fails if the name exists: never two owners
            except FileExistsError:
                return False
            except OSError:  # no hard links on this filesystem
                return self._create_exclusive(owner)
            finally:
                os.unlink(aside)
            self.held = True
            return True

    def _create_exclusive(self, owner: str) -> bool:
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as handle:
            handle.write(owner)
        self.held = True
        return True

    def _stale(self) -> bool:
        try:
            text = self.path.read_text().split()
            made = self.path.stat().st_mtime
        except OSError:
            return True
        host, pid = (text[0], text[1]) if len(text) == 2 else (socket.gethostname(), text[0] if text else "0")
        if host != socket.gethostname():
            return time.time() - made > self.foreign_expiry_s
        try:
            owner = int(pid)
        except ValueError:
            return True
        if owner <= 0:
            return True
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def clear_if_stale(self) -> None:
        """Remove a dead process's leftover claim (e.g. killed after its result was written)."""
        with self._locked():
            if self.path.exists() and self._stale():
                self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            with self._locked():
                self.path.unlink(missing_ok=True)
            self.held = False


def _claim(options: RunOptions, spec: Spec) -> Claim:
    # Another host's claim is honoured at least as long as its run could legitimately take.
    expiry = max(FOREIGN_CLAIM_EXPIRY_S, options.timeout_s + envs.BUILD_TIMEOUT_S)
    return Claim(options.results_dir, spec, foreign_expiry_s=expiry)


Progress = Callable[[int, int, Spec, dict[str, Any], bool, float], None]


def run_suite(specs: Iterable[Spec], options: RunOptions, progress: Progress | None = None) -> list[dict[str, Any]]:
    """Run every spec (skipping those already done) and return all results in order.

    A spec another live process has claimed is waited for at the end rather than run twice.
    Single-process workers are forked from a zygote unless ``options.zygote`` is off.
    """
    specs = list(specs)
    pool = zygote.ZygotePool(label=str(options.results_dir)) if options.zygote else None
    try:
        return _run_all(specs, options, progress, pool)
    finally:
        if pool is not None:
            pool.close()


def _run_all(
    specs: list[Spec], options: RunOptions, progress: Progress | None, pool: zygote.ZygotePool | None
) -> list[dict[str, Any]]:
    results: dict[str, dict[str, Any]] = {}
    elsewhere: list[tuple[int, Spec]] = []
    for index, spec in enumerate(specs, start=1):
        started = time.perf_counter()
        done = existing_result(spec, options.results_dir)
        skipped = done is not None and not (options.retry_failed and done["status"] == "failed")
        if skipped:
            result = done
            _claim(options, spec).clear_if_stale()
        else:
            claim = _claim(options, spec)
            if not claim.acquire():
                elsewhere.append((index, spec))
                continue
            try:
                done = existing_result(spec, options.results_dir)  # finished while we were claiming?
                finished = done is not None and not (options.retry_failed and done["status"] == "failed")
                result = done if finished else run_spec(spec, options, pool)
                skipped = finished
            finally:
                claim.release()
        results[spec.spec_id] = result
        if progress:
            progress(index, len(specs), spec, result, skipped, time.perf_counter() - started)
    for index, spec in elsewhere:
        started = time.perf_counter()
        result = _wait_for_other(spec, options, pool)
        results[spec.spec_id] = result
        if progress:
            progress(index, len(specs), spec, result, True, time.perf_counter() - started)
    return [results[spec.spec_id] for spec in specs]


def _wait_for_other(spec: Spec, options: RunOptions, pool: zygote.ZygotePool | None = None) -> dict[str, Any]:
    """Wait for the process that claimed ``spec``; run it ourselves if that process died."""
    deadline = time.monotonic() + options.timeout_s + 60
    claim = _claim(options, spec)
    while time.monotonic() < deadline:
        done = existing_result(spec, options.results_dir)
        if done is not None:
            return done
        if claim.acquire():
            try:
                return existing_result(spec, options.results_dir) or run_spec(spec, options, pool)
            finally:
                claim.release()
        time.sleep(0.5)
    return _write_failure(
        spec,
        options,
        result_path(options.results_dir, spec),
        "another bench process claimed this spec and never finished it",
        "",
        time.time_ns(),
    )


def dump_spec(spec: Spec) -> str:
    return json.dumps(spec.to_dict(), sort_keys=True)
