"""A preloaded worker zygote: import torch once, fork a fresh worker per spec (the forkserver pattern).

A fresh ``python -m harness.worker`` spends seconds importing torch before it reads its spec, and
the next spec pays it again. The zygote is one process per interpreter, environment and preload
that imports what every worker imports at its top (torch, NumPy, the harness's worker modules),
plus the ``--preload`` modules its specs' workers import anyway whatever their library
(``harness.runner.preload_for``: torch's compiler stack, the task's data modules), and nothing that
runs compute or starts a thread, then waits. For each spec it forks a child that
becomes the worker a fresh process would be at that point — its own session and process group,
the runner's environment, arguments, working folder and output file — and calls the same
``harness.worker.main``. The child imports its library, builds its job and trains; the zygote
never runs a spec, so whatever a library does to the process (patched functions, the default
dtype, deterministic flags, RNG state) dies with its child and the next child starts from the
zygote's untouched memory.

What a fork inherits that a fresh interpreter would not have is dealt with here:

- Thread pools. Threads do not survive ``fork``, and a pool that believes it has threads hangs
  the child (GNU OpenMP is the classic case). The zygote never calls into OpenMP (no compute,
  not even ``torch.get_num_threads``), loads NumPy's (and a preloaded SciPy's) OpenBLAS with
  ``OPENBLAS_NUM_THREADS=1`` so it starts no pool, and pyarrow's jemalloc without its background
  purge thread (``ZYGOTE_ONLY_ENV``), and before every fork checks that it has exactly one thread and that
  CUDA is not initialised; otherwise it refuses and the runner uses a fresh process. The child
  gives OpenBLAS the thread count a fresh process gets, measured once in a throwaway interpreter
  with the runner's environment.
- RNGs. Python's ``random`` reseeds itself in a forked child; NumPy's global RNG is reseeded from
  the OS, as a fresh import seeds it; torch's default generator was never drawn from in the
  zygote, so it holds torch's fixed default seed as in a fresh process. The worker seeds all of
  them before building anything anyway.
- Import caches (``importlib.invalidate_caches``), so a module written after the zygote started
  is found.
- The environment. The child takes the runner's environment, then sets again what the preloaded
  imports changed in the zygote's (scikit-learn's and joblib's ``KMP_*`` defaults), as those
  imports would have in a fresh worker. Names the zygote alone sets (``ZYGOTE_ONLY_ENV``) go back to
  the runner's values.
- Exit. The child flushes Python's and C's output buffers, runs the ``atexit`` handlers and
  leaves with ``os._exit``: the zygote's own loop must not resume in it. Interpreter teardown is
  skipped, which only frees memory.

Lifetime: the zygote dies with the runner (``PR_SET_PDEATHSIG`` armed race-free by the runner, and
end-of-file on its request pipe); a child dies with the zygote (the same signal, armed against
the zygote's PID) and, like every worker, watches the runner's PID (``BAKEOFF_ORCHESTRATOR_PID``).

Protocol: one JSON object per line, requests on the zygote's stdin and replies on its stdout, both
moved to private descriptors at start so that anything a module prints cannot corrupt them.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
from typing import Any

ZYGOTE_ONLY_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "JE_ARROW_MALLOC_CONF": "background_thread:false",
}
"""Set in the zygote's own environment only, so that what it loads starts no thread: NumPy's and
SciPy's OpenBLAS load without their pools, and the jemalloc inside pyarrow (loaded with pandas, which
scikit-learn imports) without its background purge thread. Children get the runner's values back."""
ORIGINAL_ENV_PREFIX = "BAKEOFF_ZYGOTE_ORIGINAL_"
"""``BAKEOFF_ZYGOTE_ORIGINAL_<NAME>``: the runner's own value of a ``ZYGOTE_ONLY_ENV`` name (empty: unset)."""


def _zygote_value(name: str, runner_value: str | None) -> str:
    if name == "JE_ARROW_MALLOC_CONF" and runner_value:  # jemalloc options are a comma-separated list
        return f"{runner_value},{ZYGOTE_ONLY_ENV[name]}"
    return ZYGOTE_ONLY_ENV[name]


def zygote_environment(env: dict[str, str]) -> dict[str, str]:
    """The environment a zygote runs in: the runner's, with ``ZYGOTE_ONLY_ENV`` and the originals kept aside."""
    zygote_env = dict(env)
    for name in ZYGOTE_ONLY_ENV:
        zygote_env[ORIGINAL_ENV_PREFIX + name] = env.get(name, "")
        zygote_env[name] = _zygote_value(name, env.get(name))
    return zygote_env


# Runs in a throwaway interpreter with the runner's environment, after importing what the zygote
# preloads: the OpenBLAS thread counts a fresh worker starts with (paths identify the libraries).
_OPENBLAS_PROBE = (
    "import importlib, importlib.util, json, sys, numpy, threadpoolctl\n"
    "for name in sys.argv[1:]:\n"
    "    if importlib.util.find_spec(name.split('.')[0]) is not None: importlib.import_module(name)\n"
    "print(json.dumps({i['filepath']: i['num_threads'] for i in threadpoolctl.threadpool_info() "
    "if i.get('internal_api') == 'openblas'}))"
)


def thread_count() -> int:
    """Threads of this process, native ones included (``/proc/self/task``)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:  # no /proc: only Python's own threads can be seen
        import threading

        return threading.active_count()


def fork_hazards(openblas_threads: dict[str, int] | None = None) -> list[str]:
    """What would make a forked child differ from a fresh process; empty when forking is safe."""
    hazards = []
    if openblas_threads is None and ORIGINAL_ENV_PREFIX + "OPENBLAS_NUM_THREADS" in os.environ:
        hazards.append("the thread count a fresh process gives OpenBLAS could not be measured")
    threads = thread_count()
    if threads != 1:
        hazards.append(f"{threads} threads are live in the zygote (a thread pool started before the fork)")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        hazards.append("CUDA is initialised in the zygote")
    return hazards


def _original_environment() -> dict[str, str]:
    """This zygote's environment as the runner gave it (``ZYGOTE_ONLY_ENV`` names back to the runner's values)."""
    environment = dict(os.environ)
    for name in ZYGOTE_ONLY_ENV:
        original = environment.pop(ORIGINAL_ENV_PREFIX + name, None)
        if original is None:
            continue
        environment.pop(name, None)
        if original:
            environment[name] = original
    return environment


def _start_openblas_probe(preload: tuple[str, ...]) -> subprocess.Popen | None:
    try:
        return subprocess.Popen(
            [sys.executable, "-c", _OPENBLAS_PROBE, *preload],
            env=_original_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
    except OSError:
        return None


def _finish_openblas_probe(probe: subprocess.Popen | None) -> dict[str, int] | None:
    """The probe's answer, or None when it could not tell (the zygote then refuses to fork)."""
    if probe is None:
        return None
    try:
        output, _ = probe.communicate(timeout=120)
        if probe.returncode != 0:
            return None
        return {str(k): int(v) for k, v in json.loads(output).items()}
    except (subprocess.TimeoutExpired, ValueError, TypeError, AttributeError):
        probe.kill()
        probe.wait()
        return None


def restore_thread_pools(openblas_threads: dict[str, int]) -> None:
    """Give each OpenBLAS the zygote loaded the thread count a fresh process would have."""
    if not openblas_threads:
        return
    import threadpoolctl

    for controller in threadpoolctl.ThreadpoolController().lib_controllers:
        wanted = openblas_threads.get(controller.filepath)
        if controller.internal_api == "openblas" and wanted:
            controller.set_num_threads(wanted)


def preload(names: tuple[str, ...]) -> tuple[list[str], dict[str, str | None]]:
    """Import ``names``: the modules a fresh worker of the zygote's specs imports before its library.

    Returns the names imported (one whose top-level package is not installed in this interpreter is
    skipped: its workers would not import it either) and what importing them did to the environment
    (name → new value, ``None`` where it removed one; scikit-learn, for one, sets two defaults), which
    each child applies again after taking the runner's environment, as the import would have in it.
    """
    import importlib.util

    before = dict(os.environ)
    loaded = []
    for name in names:
        if importlib.util.find_spec(name.split(".")[0]) is None:
            continue
        importlib.import_module(name)
        loaded.append(name)
    ours = set(ZYGOTE_ONLY_ENV) | {ORIGINAL_ENV_PREFIX + name for name in ZYGOTE_ONLY_ENV}
    changes: dict[str, str | None] = {k: v for k, v in os.environ.items() if before.get(k) != v and k not in ours}
    changes.update({k: None for k in before if k not in os.environ and k not in ours})
    return loaded, changes


def _flush_c_stdio() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)


class _Lines:
    """Newline-delimited JSON over a file descriptor."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd, self.write_fd = read_fd, write_fd
        self._buffer = b""

    def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(self.write_fd, data) :]

    def receive(self) -> dict[str, Any] | None:
        while b"\n" not in self._buffer:
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)


def _become_worker(request: dict[str, Any], zygote_pid: int, ready_fd: int, private_fds: tuple[int, ...]) -> None:
    """In the forked child: turn into the worker a fresh process would be, run it, never return."""
    code = 1
    forked_ns = time.time_ns()
    try:
        os.setsid()  # its own session and process group: the runner's timeout kills the group
        from harness.process import die_with_parent

        die_with_parent(zygote_pid)  # exits at once if the zygote died since the fork
        for fd in private_fds:
            os.close(fd)
        output = os.open(request["output"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.write(ready_fd, b"1")  # in its own group with its output in place: the runner may signal it
        os.close(ready_fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        for name, value in request.get("env_changes", {}).items():  # what the preloaded imports did to it
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        restore_thread_pools({k: int(v) for k, v in request.get("openblas_threads", {}).items()})
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            numpy.random.seed()  # fresh OS entropy, as a fresh import of NumPy would draw
        importlib.invalidate_caches()
        from harness import worker

        sys.argv = [worker.__file__, *request["argv"]]
        worker.forked(forked_ns)
        code = worker.main(list(request["argv"]))
    except SystemExit as exit_request:
        code = exit_request.code if isinstance(exit_request.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            import atexit

            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:
            pass
        _flush_c_stdio()
        os._exit(code)


def serve(
    channel: _Lines, openblas_threads: dict[str, int] | None, env_changes: dict[str, str | None] | None = None
) -> int:
    """Answer requests until the runner closes the pipe: ``status``, or ``run`` (fork, report pid and exit)."""
    private_fds = (channel.read_fd, channel.write_fd)
    while True:
        request = channel.receive()
        if request is None:
            return 0
        if request.get("op") == "status":
            torch = sys.modules.get("torch")
            channel.send(
                {
                    "threads": thread_count(),
                    "hazards": fork_hazards(openblas_threads),
                    "cuda_initialized": bool(torch is not None and torch.cuda.is_initialized()),
                    "openblas_threads": openblas_threads,
                    "modules": sorted(name for name in sys.modules if "." not in name),
                }
            )
            continue
        hazards = fork_hazards(openblas_threads)
        if hazards:
            channel.send({"refused": "; ".join(hazards)})
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        ready_read, ready_write = os.pipe()
        zygote_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(ready_read)
            child_request = {**request, "openblas_threads": openblas_threads or {}, "env_changes": env_changes or {}}
            _become_worker(child_request, zygote_pid, ready_write, private_fds)
        os.close(ready_write)
        os.read(ready_read, 1)  # empty if the child died first; waitpid below reports how
        os.close(ready_read)
        channel.send({"started": pid})
        _, status = os.waitpid(pid, 0)
        channel.send({"exited": pid, "returncode": os.waitstatus_to_exitcode(status)})


# --- the runner's side -------------------------------------------------------------------------

START_TIMEOUT_S = 300.0
"""How long a zygote may take to import torch and the harness (a fresh worker's start-up, loaded machine)."""
REPLY_TIMEOUT_S = 60.0
MAX_FAILURES = 2
"""Zygote failures in a row (start, death, refusal) after which the pool stops trying: fresh processes."""
STDERR_TAIL = 2000


class ZygoteError(RuntimeError):
    """The zygote cannot serve (it failed to start, died, or refused to fork); the message says why."""


class Zygote:
    """One running zygote, as the runner sees it: launch a worker, wait for it, close."""

    def __init__(
        self, python: str, env: dict[str, str], *, cwd: str, label: str = "", preload: tuple[str, ...] = ()
    ) -> None:
        import functools
        import tempfile

        from harness.process import die_with_parent

        self.python, self.env, self.preload = python, dict(env), tuple(preload)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (lives as long as the zygote; closed in close())
        command = [python, "-m", "harness.zygote", "--for-results", label]
        if self.preload:
            command += ["--preload", ",".join(self.preload)]
        self.process = subprocess.Popen(
            command,
            cwd=cwd,
            env=zygote_environment(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,  # no terminal signals: it goes when the runner goes
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        )
        self._channel = _Lines(self.process.stdout.fileno(), self.process.stdin.fileno())
        self.cwd = cwd
        self.running: int | None = None
        """The PID of the worker it forked and has not yet reported the end of."""
        ready = self._reply(START_TIMEOUT_S)
        if "ready" not in ready:
            self.close()
            raise ZygoteError(ready.get("failed") or f"unexpected first reply {ready}")
        self.import_s = float(ready.get("import_s", 0.0))
        self.preloaded: list[str] = list(ready.get("preloaded", []))
        """The ``preload`` modules it imported (one not installed in its interpreter is left out)."""
        if ready.get("hazards"):
            self.close()
            raise ZygoteError("; ".join(ready["hazards"]))

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stderr_tail(self) -> str:
        try:
            self._stderr.seek(0)
            return self._stderr.read()[-STDERR_TAIL:].decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""

    def _reply(self, timeout_s: float | None) -> dict[str, Any]:
        import select

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while b"\n" not in self._channel._buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([self._channel.read_fd], [], [], left)
            if not readable:
                raise TimeoutError
            chunk = os.read(self._channel.read_fd, 65536)
            if not chunk:
                self.process.wait()
                detail = self.stderr_tail()
                raise ZygoteError(
                    f"the zygote exited ({self._exit_text()})" + (f": {detail.splitlines()[-1]}" if detail else "")
                )
            self._channel._buffer += chunk
        return self._channel.receive()

    def _exit_text(self) -> str:
        code = self.process.returncode
        if code is not None and code < 0:
            import signal

            return f"killed by {signal.Signals(-code).name}"
        return f"code {code}"

    def _send(self, message: dict[str, Any]) -> None:
        try:
            self._channel.send(message)
        except (BrokenPipeError, OSError):
            self.process.wait()
            raise ZygoteError(f"the zygote is gone ({self._exit_text()})") from None

    def status(self) -> dict[str, Any]:
        """The zygote's own state (threads, hazards, loaded top-level modules), for checks and tests."""
        self._send({"op": "status"})
        return self._reply(REPLY_TIMEOUT_S)

    def launch(self, argv: list[str], *, output: str) -> int:
        """Fork a worker with ``argv`` (``harness.worker``'s arguments); returns its PID once it is in its own group."""
        self._send({"op": "run", "argv": argv, "env": self.env, "cwd": self.cwd, "output": output})
        try:
            reply = self._reply(REPLY_TIMEOUT_S)
        except TimeoutError:
            raise ZygoteError(f"the zygote did not fork within {REPLY_TIMEOUT_S:g} s") from None
        if "refused" in reply:
            raise ZygoteError(f"the zygote refused to fork: {reply['refused']}")
        self.running = int(reply["started"])
        return self.running

    def wait(self, pid: int, timeout_s: float | None) -> int | None:
        """The worker's exit code (negative: the signal that killed it), or None if ``timeout_s`` passed first."""
        try:
            reply = self._reply(timeout_s)
        except TimeoutError:
            return None
        if reply.get("exited") != pid:
            raise ZygoteError(f"the zygote answered {reply} while worker {pid} ran")
        self.running = None
        return int(reply["returncode"])

    def close(self) -> None:
        """End the zygote: end-of-file on its requests, then signals if it lingers.

        A worker still running (the runner was interrupted) goes with it: it dies with its zygote.
        """
        for stream in (self.process.stdin, self.process.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        try:
            if self.running is not None:
                self.process.kill()
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


class ZygotePool:
    """The runner's zygotes for the length of a suite: one per interpreter (so one per environment)
    and per set of preloaded modules (``preload_for``).

    A zygote is started on first use and replaced when the environment the runner would give a
    worker changes. When one fails to start, dies or refuses to fork, the pool says so in one line
    (``log``) and the spec runs in a fresh process; after ``MAX_FAILURES`` failures in a row for
    one interpreter and preload it stops trying there, and those specs run fresh.
    """

    def __init__(self, *, label: str = "", log=None) -> None:
        self.label = label
        self.log = log or (lambda line: print(f"bakeoff: {line}", file=sys.stderr, flush=True))
        self._zygotes: dict[tuple[str, tuple[str, ...]], Zygote] = {}
        self._failures: dict[tuple[str, tuple[str, ...]], int] = {}
        self.disabled: dict[tuple[str, tuple[str, ...]], str] = {}
        """(interpreter, preload) → why it no longer gets a zygote."""
        self.started = 0

    def get(self, python: str, env: dict[str, str], *, cwd: str, preload: tuple[str, ...] = ()) -> Zygote | None:
        """The zygote for this interpreter, environment and preload (started now if needed), or None: run fresh."""
        key = (python, tuple(preload))
        if key in self.disabled:
            return None
        current = self._zygotes.get(key)
        if current is not None:
            if current.alive() and current.env == env:
                return current
            if current.alive():  # the environment changed: not a failure, a new zygote for it
                self._drop(key)
            else:
                self.failed(python, f"the zygote exited ({current._exit_text()})", replaced_now=True, preload=preload)
                if key in self.disabled:
                    return None
        try:
            zygote = Zygote(python, env, cwd=cwd, label=self.label, preload=key[1])
        except (ZygoteError, OSError) as error:
            self.failed(python, f"could not start a zygote ({error})", preload=preload)
            return None
        self.started += 1
        self._zygotes[key] = zygote
        return zygote

    def _drop(self, key: tuple[str, tuple[str, ...]]) -> None:
        zygote = self._zygotes.pop(key, None)
        if zygote is not None:
            zygote.close()

    def failed(self, python: str, reason: str, *, replaced_now: bool = False, preload: tuple[str, ...] = ()) -> None:
        """Record a failure: the zygote is dropped; the spec at hand runs in a fresh process, or
        (``replaced_now``: it died between specs) gets a new zygote."""
        key = (python, tuple(preload))
        self._drop(key)
        self._failures[key] = self._failures.get(key, 0) + 1
        where = "" if python == sys.executable else f" ({python})"
        if self._failures[key] >= MAX_FAILURES:
            self.disabled[key] = reason
            self.log(
                f"zygote{where}: {reason}; {self._failures[key]} failures in a row, so the rest of the suite "
                "runs in fresh processes"
            )
        elif replaced_now:
            self.log(f"zygote{where}: {reason} between specs; a new zygote takes over")
        else:
            self.log(f"zygote{where}: {reason}; this spec runs in a fresh process, the next gets a new zygote")

    def succeeded(self, python: str, *, preload: tuple[str, ...] = ()) -> None:
        self._failures.pop((python, tuple(preload)), None)

    def close(self) -> None:
        for key in list(self._zygotes):
            self._drop(key)

    def __enter__(self) -> ZygotePool:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.zygote", description="Fork workers (internal).")
    parser.add_argument("--for-results", default="", help="the results folder it serves (shown in ps)")
    parser.add_argument("--preload", default="", help="comma-separated modules to import before forking")
    args = parser.parse_args(argv)
    names = tuple(name for name in args.preload.split(",") if name)
    # The protocol moves off stdin/stdout before anything can print.
    channel = _Lines(os.dup(0), os.dup(1))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    probe = _start_openblas_probe(names)
    started = time.perf_counter()
    try:
        import harness.worker  # noqa: F401  (torch, NumPy and the harness: what every worker imports first)
    except BaseException as error:
        channel.send({"failed": f"importing the worker failed: {type(error).__name__}: {error}"})
        return 1
    import_s = time.perf_counter() - started
    started = time.perf_counter()
    try:
        preloaded, env_changes = preload(names)
    except BaseException as error:
        channel.send({"failed": f"preloading {args.preload} failed: {type(error).__name__}: {error}"})
        return 1
    preload_s = time.perf_counter() - started
    openblas_threads = _finish_openblas_probe(probe)
    channel.send(
        {
            "ready": os.getpid(),
            "import_s": import_s,
            "preload_s": preload_s,
            "preloaded": preloaded,
            "hazards": fork_hazards(openblas_threads),
        }
    )
    return serve(channel, openblas_threads, env_changes)


if __name__ == "__main__":
    sys.exit(main())
