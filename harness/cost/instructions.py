"""Instructions per step: the clock that does not drift. One callgrind process measures every cell.

Wall and CPU time on a shared machine move ±10–20% from one round to the next; the number of
instructions a step executes does not depend on what else the machine runs. So the paired
alternation of :mod:`harness.cost.paired` runs again under ``valgrind --tool=callgrind``:

- one valgrind process imports torch and every library **once**, uninstrumented
  (``--instr-atstart=no``: importing torch under instrumentation takes minutes), then switches
  instrumentation on with a client request (:mod:`harness.cost.valgrind`) before the first fit;
- collection is off (``--collect-atstart=no``) except inside each arm's steady-state window: the
  cost probe's window hooks toggle it on after the last warm-up step and, at the last step, toggle
  it off and dump, so every dump is exactly one (cell, round, arm) window; a log line per window
  records which;
- ``--separate-threads=yes``: only the main thread's dump counts (the thread the steps run on; a
  progress-bar monitor or the orchestrator watch waking elsewhere does not land in the figure);
- ``PYTHONHASHSEED`` is fixed, so dict and set orders — and with them the instructions — repeat;
  two such processes (run concurrently, one per core) show how well the figures repeat;
- the worker's Python-level entropy is a fixed stream (:mod:`harness.cost.entropy`), drawn from
  before any library is imported: what a library draws unseeded repeats too;
- the worker runs from a stage (:mod:`harness.cost.surroundings`): a folder of links to the
  project's packages, fixed-length paths and a reduced environment, so what lies around the
  repository or which shell started the pass does not move the counts;
- each cell runs in a child forked from the worker once everything is imported and instrumented
  (``InstructionProtocol.fork_per_cell``), so every cell starts from the same process state and its
  figures do not depend on which cells ran before it.

Each dump's per-function costs attribute the extra instructions to C-level functions (the
interpreter, torch's dispatcher, allocators), complementing the Python-level profile.

Limit: code that throttles itself by wall-clock time (a progress bar redrawing at most every
50 ms) runs more often per step under valgrind's ~50× slowdown than natively; its instruction
share is an upper bound of its native share.

    python -m harness.cost.instructions worker --plan PLAN.json --log WINDOWS.jsonl   (under valgrind)
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# isort: split
from harness.cost import layout  # first of all the project's imports: shifts the heap before torch exists

# isort: split
import torch

from harness import environment
from harness.cost import callgrind
from harness.cost import record as cost_record
from harness.cost.analysis import balanced_orders, instruction_summary, relative_spread
from harness.cost.entropy import pin_entropy
from harness.cost.paired import Arms, arm_specs, cell_description, cell_id
from harness.cost.surroundings import STAGED, Stage, counting_environment
from harness.cost.valgrind import client, instrumentation_can_start
from harness.environment import REPO_ROOT
from harness.process import die_with_parent
from harness.registry import RegistryError, get_adapter
from harness.spec import Spec, SpecError

SETTLE_S = 0.0
TOP_FUNCTIONS = 40


MALLOC_TUNABLES = (
    "glibc.malloc.tcache_count=65535:glibc.malloc.mmap_threshold=33554432:"
    "glibc.malloc.trim_threshold=1073741824:glibc.malloc.top_pad=67108864"
)
"""glibc malloc configured so a steady-state step's allocations take the same path in every process.

With the defaults, two runs of one plan disagreed by 0.12-0.55% per step, and the per-function
diff of the two runs' native windows put nearly all of it in glibc's allocator (``_int_malloc``,
``_int_free``, ``unlink_chunk``, ``malloc_consolidate``): which path a malloc takes depends on the
heap's history (bins, fragmentation, a dynamic mmap threshold, trimming the top), and that history
differs between processes. A thread cache that holds every chunk a step frees (65535 per size
instead of 7), fixed mmap and trim thresholds and a fixed top pad take those history-dependent paths
out: on the same three cells the runs then agreed to 0.019-0.029% instead of 0.12-0.18%. Both arms
run under it; it lowers native's count by ~2% and moved the paired differences by 0.1-0.3%. The
wall-clock passes keep glibc's defaults: they measure the process as users run it."""


@dataclass(frozen=True, kw_only=True)
class InstructionProtocol:
    rounds: int = 6
    """Rounds per cell (each: one fit per arm, the order balanced: native first in half of them). Each
    fit's objects land at other addresses, which moves its count by ~0.2% (address-hashed caches and
    sets); averaging rounds brings a pure-Python step's figure within 0.1%. On the real loop the
    runs' remaining disagreement was glibc malloc's (``malloc_tunables``)."""
    steps: int = 25
    warmup: int = 5
    warm_rounds: int = 1
    """Fits of each arm per cell run first, outside any window (collection off): the process's and the
    cell's first fits pay one-off costs (first calls, caches, the allocator's first fill) that would
    otherwise land on whichever arm the first round runs first: 0.3-0.45% of an A/A cell's step with
    2 rounds (``tests/harness/test_cost_instructions.py``)."""
    threads: int = 1
    order_seed: int = 0
    runs: int = 2
    """Independent valgrind processes over the same plan (repeatability)."""
    layouts: int = 1
    """Heap layouts the runs cycle through (``harness.cost.layout``): run ``i`` (from 1) gets layout
    ``(i - 1) % layouts``. With 1, every run has the same layout and their spread is the count's
    repeatability at this code. With more, the spread across layouts is the layout bias, about what an
    unrelated code change moves the counts by; the figures are then the mean over layouts."""
    hash_seed: int = 0
    """PYTHONHASHSEED of every run, and the seed of its fixed entropy stream (``harness.cost.entropy``)."""
    malloc_tunables: str = MALLOC_TUNABLES
    """``GLIBC_TUNABLES`` of every run ("" for glibc's defaults): see ``MALLOC_TUNABLES``."""
    fork_per_cell: bool = True
    """Each cell runs in a child forked from the worker after the imports and the start of
    instrumentation, so every cell starts from the same state. In one process, whatever a cell's fits
    left behind (objects at other addresses, type-attribute cache slots, a library's global state, or
    anything a progress bar's timing changed) moved the next cells' counts: Keras aligned agreed
    between the two runs to 0.44% after four other cells and to 0.0075% measured alone."""

    def __post_init__(self) -> None:
        cost_record.check_counts(self, "instruction protocol", text=("malloc_tunables",), flags=("fork_per_cell",))
        if self.rounds < 1 or self.runs < 1 or self.threads < 1:
            raise SpecError("instruction protocol needs at least 1 round, 1 run and 1 thread")
        if not 1 <= self.layouts <= self.runs:
            raise SpecError(f"instruction protocol layouts ({self.layouts}) must be between 1 and runs ({self.runs})")
        if self.steps < self.warmup + 2:
            raise SpecError(f"instruction protocol steps ({self.steps}) must exceed warmup ({self.warmup}) by 2")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def layout_of(self, run: int) -> int:
        """The heap layout of run ``run`` (numbered from 1): the runs cycle through the layouts."""
        return (run - 1) % self.layouts


class WindowLog:
    """Collection on at a window's start; off, dumped and logged at its end (one dump per window)."""

    def __init__(self, requests, path: Path) -> None:
        self.requests = requests
        self.path = Path(path)
        self.dumps = 0
        self.open = False

    def in_child(self) -> None:
        """A forked child numbers its dumps from 1 again (callgrind names them by its own pid)."""
        self.dumps = 0
        self.open = False

    def start(self) -> None:
        self.open = True
        self.requests.toggle_collect()

    def end(self, **labels: Any) -> None:
        self.requests.toggle_collect()
        self.requests.dump_stats()
        self.open = False
        self.dumps += 1
        self.write({"part": self.dumps, "pid": os.getpid(), **labels})

    def abandon(self, **labels: Any) -> None:
        """Close a window a failed fit left open: its dump is marked discarded."""
        if self.open:
            self.end(discarded=True, **labels)

    def write(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")


def read_log(path: Path) -> list[dict[str, Any]]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# --------------------------------------------------------------------------- worker (under valgrind)


def worker(plan: dict[str, Any], log_path: Path, workroot: Path | None = None) -> int:
    """Measure every cell of the plan in this process; collection only inside the windows."""
    requests = client()

    protocol = InstructionProtocol(**plan["protocol"])
    pin_entropy(protocol.hash_seed)  # before the cells' libraries are imported: see harness.cost.entropy
    torch.set_num_threads(protocol.threads)
    log = WindowLog(requests, log_path)
    workroot = Path(workroot or plan["workroot"])
    cells = []
    for spec_data in plan["cells"]:  # building the arms imports every library before instrumentation
        spec = Spec.from_dict(spec_data)
        try:
            arms = Arms(spec, steps=protocol.steps, warmup=protocol.warmup, workroot=workroot)
            reason = arms.unsupported()
        except Exception as error:
            arms, reason = None, f"{type(error).__name__}: {error}"
        cells.append((cell_id(spec), arms, reason))
    log.write({"event": "imported", "on_valgrind": requests.running_on_valgrind(), "layout": layout.LAYOUT,
               "padding_objects": len(layout.PADDING)})
    requests.start_instrumentation()
    measurable = []
    for key, arms, reason in cells:
        if arms is None or reason:
            log.write({"event": "skipped", "cell_id": key, "reason": reason})
        else:
            measurable.append((key, arms))
    if protocol.fork_per_cell:
        warm_shared_paths([arms for _, arms in measurable])
    run_cells([(key, functools.partial(measure_cell, arms, protocol, log, key)) for key, arms in measurable], log,
              fork=protocol.fork_per_cell)
    log.write({"event": "done"})
    return 0


def warm_shared_paths(cells: Sequence[Arms]) -> None:
    """In the process the cells fork from, collection off: one fit of each distinct native arm and of
    each distinct adapter arm in aligned mode.

    valgrind translates (instruments) code the first time it runs, and a forked child's translations
    die with it: the first instrumented fit of the native loop took 96 s against 4.5 s for the next.
    Translated here, torch's, the harness's and each library's own paths are inherited by every cell;
    what only a defaults-mode fit runs is translated in its cell. (Measured on the nine-cell pass, it
    did not shorten it beyond the machine's noise: 22 min 18 s without, 23 min 47 s with.) Aligned
    mode runs no progress bar, logger or other code timed by the clock, so these fits leave the same
    state in every run; a defaults-mode fit here could leave a run-dependent one to every cell. Every
    cell starts from the imports and these fits: the same state for each cell of a plan, whatever
    ran before it, though not the same as in a plan of other cells.
    """
    seen = set()
    for arms in cells:
        for arm in ("native", "adapter"):
            spec = arms.specs[arm]
            if arm == "adapter" and spec.mode != "aligned":
                continue
            key = json.dumps(spec.to_dict(), sort_keys=True)
            if key not in seen:
                seen.add(key)
                arms.fit(arm)


def measure_cell(arms: Arms, protocol: InstructionProtocol, log: WindowLog, key: str) -> None:
    """One cell: the warm fits (nothing collected), then each round's two windows."""
    window = protocol.steps - protocol.warmup
    for _ in range(protocol.warm_rounds):
        for arm in ("native", "adapter"):
            arms.fit(arm)  # no window hooks: nothing is collected
    for index, order in enumerate(balanced_orders(protocol.rounds, protocol.order_seed)):
        for arm in order:
            labels = {"cell_id": key, "round": index, "arm": arm, "order": list(order), "steps": window}
            arms.fit(arm, on_window_start=log.start, on_window_end=lambda labels=labels: log.end(**labels))


def run_cells(cells: Sequence[tuple[str, Callable[[], None]]], log: WindowLog, *, fork: bool = True) -> None:
    """Run each cell's measurement, each in a child forked from this process when ``fork``.

    Forked, every cell starts from this process's state, whatever the cells before it did; a cell that
    raises, or whose process dies, is logged as failed and the next cell still runs.
    """
    for key, measure in cells:
        if not fork:
            _measure_logging_failure(key, measure, log)
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: measure, then leave without running the parent's exit handlers
            code = 70
            try:
                log.in_child()
                _measure_logging_failure(key, measure, log)
                code = 0
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            log.write({"event": "failed", "cell_id": key, "error": f"the cell's process {_ended(status)}"})


def _measure_logging_failure(key: str, measure: Callable[[], None], log: WindowLog) -> None:
    try:
        measure()
    except Exception as error:
        log.abandon(cell_id=key)
        log.write({"event": "failed", "cell_id": key, "error": f"{type(error).__name__}: {error}"[:2000]})


def _ended(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    return f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"


# --------------------------------------------------------------------------- orchestrator


def valgrind_options(out_dir: Path) -> list[str]:
    """callgrind counting nothing until a window opens, main thread separately, function-level costs."""
    return [
        "valgrind",
        "--tool=callgrind",
        f"--instr-atstart={'no' if instrumentation_can_start() else 'yes'}",
        "--collect-atstart=no",
        "--separate-threads=yes",
        "--dump-line=no",
        f"--callgrind-out-file={Path(out_dir).resolve()}/callgrind.out.%p",  # the worker runs elsewhere
    ]


def valgrind_command(out_dir: Path, python: str, plan_path: Path, log_path: Path, workroot: Path) -> list[str]:
    """The worker under callgrind; each run's fits get their own scratch folder, since runs go side by
    side and their folder names are the same on purpose (deterministic)."""
    return [
        *valgrind_options(out_dir),
        python,
        "-m",
        "harness.cost.instructions",
        "worker",
        "--plan",
        str(plan_path),
        "--log",
        str(log_path),
        "--workroot",
        str(workroot),
    ]


def valgrind_version() -> str | None:
    try:
        return subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


@dataclass
class Run:
    index: int
    folder: Path
    layout: int = 0
    process: subprocess.Popen | None = None
    started: float = 0.0

    @property
    def log(self) -> Path:
        return self.folder / "windows.jsonl"


ADDR_NO_RANDOMIZE = 0x0040000  # <sys/personality.h>


def no_address_randomization() -> bool:
    """Turn off address-space randomization for this process and what it executes (``setarch -R``).

    Memory addresses reach instruction counts: CPython's type-attribute cache and sets of objects
    hash by address, and so do torch's autograd sets of nodes; with randomized addresses two runs
    of one plan differed by up to 0.5%. Returns whether the kernel accepted it.
    """
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        current = libc.personality(0xFFFFFFFF)
        return current != -1 and libc.personality(current | ADDR_NO_RANDOMIZE) != -1
    except (OSError, AttributeError):
        return False


def _prepare_child(parent: int) -> None:
    no_address_randomization()
    die_with_parent(parent)  # valgrind keeps both across exec


def with_tunables(current: str | None, ours: str) -> str | None:
    """``GLIBC_TUNABLES`` with ``ours`` after the caller's own (glibc takes the last of a repeated name)."""
    if not ours:
        return current
    return f"{current}:{ours}" if current else ours


def prepare_folders(runs: Sequence[Run]) -> None:
    for run in runs:
        if run.folder.exists():
            shutil.rmtree(run.folder)
        run.folder.mkdir(parents=True)


def launch(runs: Sequence[Run], stage: Stage, *, python: str, hash_seed: int, malloc_tunables: str = "") -> None:
    """Start each run's valgrind process in ``stage`` (its folders made by :func:`prepare_folders`)."""
    valgrind = shutil.which("valgrind") or "valgrind"
    for run in runs:
        env = counting_environment(os.environ, repo_root=REPO_ROOT, stage=stage.root, python=python, tools=[valgrind])
        env["PYTHONHASHSEED"] = str(hash_seed)
        env.pop(layout.ENV, None)  # the run's layout is the plan's, never the caller's
        if run.layout:
            env[layout.ENV] = str(run.layout)
        tunables = with_tunables(env.get("GLIBC_TUNABLES"), malloc_tunables)
        if tunables:
            env["GLIBC_TUNABLES"] = tunables
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("BAKEOFF_ORCHESTRATOR_PID", None)  # no watch thread waking inside the measured process
        output = open(run.folder / "valgrind.log", "wb")  # noqa: SIM115 (closed when the process ends)
        command = valgrind_command(
            run.folder, python, stage.plan_path, stage.log_path(run.index), stage.workroot(run.index)
        )
        run.process = subprocess.Popen(
            [valgrind, *command[1:]],
            cwd=stage.root,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=functools.partial(_prepare_child, os.getpid()),
        )
        run.started = time.perf_counter()


def wait(
    runs: Sequence[Run], expected_windows: int, timeout_s: float, progress: Callable[[str], None] | None
) -> list[str]:
    """Wait for every run, printing progress from their window logs; returns the problems."""
    deadline = time.perf_counter() + timeout_s
    reported = -1
    while any(run.process.poll() is None for run in runs):
        if time.perf_counter() > deadline:
            for run in runs:
                if run.process.poll() is None:
                    os.killpg(run.process.pid, signal.SIGKILL)
                    run.process.wait()
            return [f"timed out after {timeout_s:.0f} s"]
        done = [sum(1 for e in read_log(run.log) if "part" in e) for run in runs]
        if progress is not None and sum(done) != reported:
            reported = sum(done)
            elapsed = time.perf_counter() - runs[0].started
            parts = ", ".join(f"run {run.index}: {count}/{expected_windows} windows" for run, count in zip(runs, done))
            progress(f"{parts} ({elapsed:.0f} s)")
        time.sleep(2.0)
    problems = []
    for run in runs:
        if run.process.returncode != 0:
            tail = (run.folder / "valgrind.log").read_bytes()[-1500:].decode("utf-8", "replace")
            problems.append(f"run {run.index} exited with {run.process.returncode}: {tail}")
    return problems


def collect(run: Run) -> dict[str, Any]:
    """One run's windows: per cell, per round and arm, instructions and per-function costs."""
    entries = read_log(run.log)
    default_pid = run.process.pid if run.process is not None else None
    files: dict[int | None, dict[int, Path]] = {}  # per process: a forked cell's dumps carry its pid
    cells: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if "part" in entry:
            if entry.get("discarded"):
                continue
            pid = entry.get("pid", default_pid)
            if pid not in files:
                files[pid] = callgrind.dump_files(run.folder, pid=pid)
            path = files[pid].get(entry["part"])
            if path is None:
                raise RuntimeError(f"run {run.index}: no callgrind dump for window {entry['part']} of process {pid}")
            dump = callgrind.parse(path)
            if dump.trigger != "Client Request":
                raise RuntimeError(f"run {run.index}: dump {entry['part']} was not written by a window end")
            cell = cells.setdefault(entry["cell_id"], {"rounds": {}, "functions": {"native": {}, "adapter": {}}})
            rounds = cell["rounds"].setdefault(entry["round"], {"index": entry["round"], "order": entry["order"]})
            rounds[entry["arm"]] = {
                "instructions": dump.total,
                "steps": entry["steps"],
                "per_step": dump.total / entry["steps"],
            }
            functions = cell["functions"][entry["arm"]]
            for name, cost in dump.functions.items():
                functions[name] = functions.get(name, 0) + cost
            functions["__steps__"] = functions.get("__steps__", 0) + entry["steps"]
        elif entry.get("event") in ("failed", "skipped"):
            cells.setdefault(entry["cell_id"], {"rounds": {}, "functions": {"native": {}, "adapter": {}}})
            cells[entry["cell_id"]][entry["event"]] = entry.get("error") or entry.get("reason")
    return cells


def function_table(functions: dict[str, dict[str, int]], top: int = TOP_FUNCTIONS) -> dict[str, Any]:
    """Own instructions per step of each C-level function in both arms; the top by extra, and by object."""
    steps = {arm: max(functions[arm].get("__steps__", 0), 1) for arm in ("native", "adapter")}
    names = (set(functions["native"]) | set(functions["adapter"])) - {"__steps__"}
    rows = []
    for name in names:
        native = functions["native"].get(name, 0) / steps["native"]
        adapter = functions["adapter"].get(name, 0) / steps["adapter"]
        rows.append({"function": name, "group": callgrind.group_of(name), "native": native, "adapter": adapter})
    for row in rows:
        row["extra"] = row["adapter"] - row["native"]
    total = sum(row["extra"] for row in rows)
    rows.sort(key=lambda row: -abs(row["extra"]))
    groups: dict[str, float] = {}
    for row in rows:
        groups[row["group"]] = groups.get(row["group"], 0.0) + row["extra"]
    for row in rows:
        row["share"] = row["extra"] / total if total > 0 else None
    return {
        "extra_per_step": total,
        "top": rows[:top],
        "groups": [
            {"group": name, "extra": value, "share": value / total if total > 0 else None}
            for name, value in sorted(groups.items(), key=lambda item: -item[1])
        ],
    }


def cell_record(
    spec, protocol: InstructionProtocol, runs: list[dict[str, Any]], key: str, environment: dict
) -> dict[str, Any]:
    """The ``instructions`` record of one cell from every run's windows."""
    specs = arm_specs(spec, protocol.steps)
    record: dict[str, Any] = {
        "schema": cost_record.SCHEMA,
        "kind": "instructions",
        "cell_id": key,
        "cell": cell_description(specs["adapter"]),
        "spec": specs["adapter"].to_dict(),
        "baseline_spec": specs["native"].to_dict(),
        "status": "ok",
        "error": None,
        "protocol": protocol.to_dict(),
        "environment": environment,
        "valgrind": {
            "version": valgrind_version(),
            "tool": "callgrind",
            "counted": "Ir, main thread",
            "malloc_tunables": protocol.malloc_tunables or None,
            "entropy": f"Python-level sources pinned (seed {protocol.hash_seed}, harness.cost.entropy)",
            "surroundings": STAGED,
        },
    }
    per_run = []
    for index, cells in enumerate(runs, start=1):
        cell = cells.get(key)
        if cell is None or "skipped" in cell or "failed" in cell:
            reason = (cell or {}).get("skipped") or (cell or {}).get("failed") or "no windows recorded"
            status = "unsupported" if cell and "skipped" in cell and reason and "Error" not in reason else "failed"
            record.update(status=status, error=f"run {index}: {reason}")
            return record
        rounds = [cell["rounds"][i] for i in sorted(cell["rounds"])]
        if any("native" not in r or "adapter" not in r for r in rounds):
            record.update(status="failed", error=f"run {index}: a round is missing an arm")
            return record
        per_run.append({"run": index, "layout": protocol.layout_of(index), "rounds": rounds,
                        "functions": function_table(cell["functions"])})
    record["runs"] = per_run
    record["summary"] = instruction_figures(per_run)
    return record


def _spreads(native: Sequence[float], adapter: Sequence[float]) -> dict[str, float | None]:
    differences = [a - n for n, a in zip(native, adapter, strict=True)]
    return {
        "native": relative_spread(native),
        "adapter": relative_spread(adapter),
        "difference": relative_spread(differences) if all(d != 0 for d in differences) else None,
    }


def instruction_figures(per_run: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A cell's figures from its runs' rounds: the paired rounds, the runs' repeatability, the layout spread.

    One layout: the figures are the first run's, and the runs' spread is their repeatability. Several:
    each round's count is averaged over the layouts (the runs of one layout averaged first), so the
    figures are the mean over layouts; the spread of the layouts' means is ``layout_spread``, and
    ``repeatability`` is the worst spread among runs that share a layout (None when none do).
    """
    means = {
        arm: [sum(r[arm]["per_step"] for r in run["rounds"]) / len(run["rounds"]) for run in per_run]
        for arm in ("native", "adapter")
    }
    by_layout: dict[int, list[int]] = {}
    for position, run in enumerate(per_run):
        by_layout.setdefault(run.get("layout", 0), []).append(position)
    within = [_spreads([means["native"][i] for i in members], [means["adapter"][i] for i in members])
              for members in by_layout.values() if len(members) > 1]
    repeatability = {key: max((w[key] for w in within if w[key] is not None), default=None)
                     for key in ("native", "adapter", "difference")}
    repeatability.update(runs_native_per_step=means["native"], runs_adapter_per_step=means["adapter"])

    def per_round(arm: str, members: Sequence[int]) -> list[float]:
        rounds = zip(*(per_run[i]["rounds"] for i in members), strict=True)
        return [sum(r[arm]["per_step"] for r in group) / len(group) for group in rounds]

    if len(by_layout) == 1:
        chosen = {arm: per_round(arm, [0]) for arm in ("native", "adapter")}
        layout_spread = None
    else:
        layout_rounds = {key: {arm: per_round(arm, members) for arm in ("native", "adapter")}
                         for key, members in sorted(by_layout.items())}
        chosen = {arm: [sum(values) / len(values) for values in zip(*(lr[arm] for lr in layout_rounds.values()))]
                  for arm in ("native", "adapter")}
        layout_means = {arm: [sum(lr[arm]) / len(lr[arm]) for lr in layout_rounds.values()]
                        for arm in ("native", "adapter")}
        layout_spread = {
            **_spreads(layout_means["native"], layout_means["adapter"]),
            "layouts": sorted(layout_rounds),
            "native_per_step": layout_means["native"],
            "adapter_per_step": layout_means["adapter"],
        }
    summary = instruction_summary(chosen["native"], chosen["adapter"])
    native, adapter = (sum(chosen[arm]) / len(chosen[arm]) for arm in ("native", "adapter"))
    summary.update(
        native_per_step=native,
        adapter_per_step=adapter,
        difference_per_step=adapter - native,
        runs=len(per_run),
        layouts=len(by_layout),
        repeatability=repeatability,
        layout_spread=layout_spread,
        functions=per_run[0]["functions"],
    )
    return summary


def measure(
    specs: Sequence,
    protocol: InstructionProtocol,
    results_dir: Path,
    *,
    progress: Callable[[str], None] | None = None,
    timeout_s: float = 3600.0,
    python: str = sys.executable,
    parallel: bool = True,
) -> list[dict[str, Any]]:
    """Run the plan in ``protocol.runs`` valgrind processes and write one record per cell."""
    if valgrind_version() is None:
        raise SpecError("valgrind is not installed (the instruction pass runs under valgrind's callgrind)")
    folder = Path(results_dir) / "callgrind"
    folder.mkdir(parents=True, exist_ok=True)
    plan = {
        "cells": [spec.to_dict() for spec in specs],
        "protocol": protocol.to_dict(),
    }  # the staged copy the worker reads adds its scratch folder ("workroot")
    plan_path = folder / "plan.json"
    plan_path.write_text(json.dumps(plan, indent=1, sort_keys=True))
    runs = [Run(i, folder / f"run-{i}", layout=protocol.layout_of(i)) for i in range(1, protocol.runs + 1)]
    expected = len(specs) * protocol.rounds * 2
    problems: list[str] = []
    batches = [runs] if parallel else [[run] for run in runs]
    prepare_folders(runs)
    with Stage.create(REPO_ROOT, plan, {run.index: run.log for run in runs}) as stage:
        for batch in batches:
            launch(batch, stage, python=python, hash_seed=protocol.hash_seed, malloc_tunables=protocol.malloc_tunables)
            problems += wait(batch, expected, timeout_s, progress)
    collected = [collect(run) for run in runs] if not problems else []
    libraries = sorted({library for library in _libraries(specs) if library})
    env = environment.capture(tuple(libraries))
    records = []
    for spec in specs:
        key = cell_id(spec)
        if problems:
            record = {
                "schema": cost_record.SCHEMA,
                "kind": "instructions",
                "cell_id": key,
                "cell": cell_description(arm_specs(spec, protocol.steps)["adapter"]),
                "status": "failed",
                "error": "; ".join(problems)[:4000],
                "protocol": protocol.to_dict(),
                "environment": env,
            }
        else:
            record = cell_record(spec, protocol, collected, key, env)
        cost_record.write(Path(results_dir) / cost_record.file_name("instructions", key), record)
        records.append(record)
    return records


def _libraries(specs: Sequence) -> list[str | None]:
    names = []
    for spec in specs:
        try:
            names.append(get_adapter(spec.adapter).library)
        except RegistryError:
            names.append(None)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.cost.instructions", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    work = commands.add_parser("worker", help="(internal) measure a plan; run under valgrind")
    work.add_argument("--plan", required=True, type=Path)
    work.add_argument("--log", required=True, type=Path)
    work.add_argument("--workroot", type=Path, default=None, help="scratch folder for the fits (default: the plan's)")
    args = parser.parse_args(argv)
    return worker(json.loads(args.plan.read_text()), args.log, args.workroot)


if __name__ == "__main__":
    sys.exit(main())
