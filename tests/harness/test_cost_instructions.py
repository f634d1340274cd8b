"""Instruction counts proven on known answers, under a real callgrind.

The fast test runs the production window machinery (client requests, ``WindowLog``, the dump
parser, ``collect``, the paired summary) over a pure-Python "training step" in a few seconds: an
A/A cell must give zero and a planted piece of fixed work must come back as exactly its own count.
A Python process starts in seconds under valgrind while torch takes minutes to import, so the same
proof over the real native loop (and the repeatability of two runs) is the slow test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness.cost.analysis import instruction_summary, relative_spread
from harness.cost.instructions import InstructionProtocol, Run, collect, measure, valgrind_options
from harness.spec import Spec

REPO = Path(__file__).resolve().parents[2]

STEPS_SCRIPT = textwrap.dedent(
    """
    import sys
    from itertools import repeat

    from harness.cost.analysis import balanced_orders
    from harness.cost.instructions import WindowLog
    from harness.cost.valgrind import client

    requests = client()
    log = WindowLog(requests, sys.argv[1])

    def planted(n):  # fixed work that allocates nothing, so its count does not depend on the heap's state
        flag = 0
        for _ in repeat(None, n):
            flag ^= 1
        return flag

    def step(extra):
        total = 0
        for i in range(3000):
            total += i * i
        if extra:
            planted(extra)

    requests.start_instrumentation()
    for cell, extra in (("aa", 0), ("planted", 1000), ("planted-twice", 2000)):
        for index, order in enumerate(balanced_orders(4, 0)):
            for arm in order:
                work = extra if arm == "adapter" else 0
                for _ in range(3):  # warm-up steps, outside the window
                    step(work)
                log.start()
                for _ in range(10):
                    step(work)
                log.end(cell_id=cell, round=index, arm=arm, order=list(order), steps=10)
    for cell, extra in (("alone", 1000), ("alone-twice", 2000)):  # the planted work counted on its own
        for _ in range(3):
            planted(extra)
        log.start()
        for _ in range(10):
            planted(extra)
        log.end(cell_id=cell, round=0, arm="native", order=["native"], steps=10)
    """
)


CELLS_SCRIPT = textwrap.dedent(
    """
    import os
    import signal
    import sys

    from harness.cost.instructions import WindowLog, run_cells
    from harness.cost.valgrind import client

    requests = client()
    log = WindowLog(requests, sys.argv[1])
    HOOKS = []  # a library's global registry: every step calls what is in it

    def step():
        total = 0
        for i in range(2000):
            total += i * i
        for hook in HOOKS:
            hook()

    def fit(leak, window, labels):
        if leak:
            HOOKS.extend([lambda: None] * 300)  # left behind after the fit, as global state is
        for _ in range(3):
            step()
        if window:
            log.start()
        for _ in range(10):
            step()
        if window:
            log.end(steps=10, **labels)

    def cell(key, leak=False, crash=False):
        def measure():
            fit(leak, False, {})  # the warm fit
            for index in range(2):
                fit(leak, True, {"cell_id": key, "round": index, "arm": "native", "order": ["native"]})
                if crash:
                    os.kill(os.getpid(), signal.SIGKILL)
        return key, measure

    requests.start_instrumentation()
    run_cells([cell("fork/first"), cell("fork/leaky", leak=True), cell("fork/crashes", crash=True),
               cell("fork/after")], log, fork=True)
    run_cells([cell("one/first"), cell("one/leaky", leak=True), cell("one/after")], log, fork=False)
    log.write({"event": "done"})
    """
)


def test_every_run_gets_the_repeatable_allocator_on_top_of_the_callers_tunables(tmp_path, monkeypatch,
                                                                                launch_environments):
    """The valgrind processes run with ``MALLOC_TUNABLES`` (after any tunables of the caller's own)."""
    from harness.cost import instructions

    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX512F")
    runs = [Run(index=i, folder=tmp_path / f"run-{i}") for i in (1, 2)]
    protocol = InstructionProtocol()
    launched = launch_environments(runs, hash_seed=7, malloc_tunables=protocol.malloc_tunables)
    expected = f"glibc.cpu.hwcaps=-AVX512F:{instructions.MALLOC_TUNABLES}"
    assert [env["GLIBC_TUNABLES"] for env in launched] == [expected, expected]
    assert "glibc.malloc.tcache_count=65535" in protocol.malloc_tunables
    assert all(env["PYTHONHASHSEED"] == "7" for env in launched)

    monkeypatch.delenv("GLIBC_TUNABLES")
    launched = launch_environments(runs, hash_seed=0, malloc_tunables="")
    assert all("GLIBC_TUNABLES" not in env for env in launched)  # "" = glibc's own defaults


def test_the_forking_process_fits_each_distinct_native_and_aligned_arm_once():
    """Their translations are what every forked cell inherits (a child's die with it); no defaults-mode
    fit runs there (its clock-timed code would leave a run-dependent state to every cell)."""
    from harness.cost.instructions import warm_shared_paths

    fitted = []

    class FakeArms:
        def __init__(self, adapter, mode, width=64):
            def spec(name):
                return Spec(task="scaling", adapter=name, mode=mode if name != "native" else "aligned",
                            batch_size=32, steps=25, lr=0.05, options={"width": width})
            self.specs = {"native": spec("native"), "adapter": spec(adapter)}

        def fit(self, arm, **hooks):
            assert not hooks  # no windows: nothing collected
            spec = self.specs[arm]
            fitted.append((spec.adapter, spec.mode, spec.options["width"]))

    warm_shared_paths([FakeArms("native", "aligned"), FakeArms("lightning", "aligned"), FakeArms("fastai", "defaults"),
                       FakeArms("lightning", "defaults"), FakeArms("keras", "aligned", width=16)])
    assert fitted == [("native", "aligned", 64), ("lightning", "aligned", 64), ("native", "aligned", 16),
                      ("keras", "aligned", 16)]


@pytest.fixture
def valgrind():
    if shutil.which("valgrind") is None:  # `make test-deps` installs it
        pytest.fail("valgrind is not installed: run `make test-deps` (or apt-get install valgrind)")


def _windows_of(script_text: str, tmp_path: Path) -> dict:
    """Run a script under the pass's callgrind options; its windows, collected as the pass does."""
    script = tmp_path / "script.py"
    script.write_text(script_text)
    run = Run(1, tmp_path / "run")
    run.folder.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": "0"}
    run.process = subprocess.Popen(
        [*valgrind_options(run.folder), sys.executable, str(script), str(run.log)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, stderr = run.process.communicate(timeout=300)
    assert run.process.returncode == 0, stderr.decode()[-2000:]
    return collect(run)


def test_windows_give_zero_for_a_a_and_recover_planted_work_exactly(tmp_path, valgrind):
    cells = _windows_of(STEPS_SCRIPT, tmp_path)
    assert set(cells) == {"aa", "planted", "planted-twice", "alone", "alone-twice"}

    def arms(cell):
        rounds = [cells[cell]["rounds"][i] for i in sorted(cells[cell]["rounds"])]
        return [r["native"]["per_step"] for r in rounds], [r["adapter"]["per_step"] for r in rounds]

    native, adapter = arms("aa")
    aa = instruction_summary(native, adapter)["difference"]
    assert aa["low"] <= 0.0 <= aa["high"], aa
    assert abs(aa["value"]) / native[0] < 1e-3
    assert relative_spread(native + adapter) < 1e-3  # the same step, counted again, repeats

    planted = instruction_summary(*arms("planted"))["difference"]
    twice = instruction_summary(*arms("planted-twice"))["difference"]
    alone, alone_twice = (cells[c]["rounds"][0]["native"]["per_step"] for c in ("alone", "alone-twice"))
    assert planted["low"] > 0 and planted["high"] - planted["low"] < 1e-3 * planted["value"]
    # The planted work counted on its own is the recovered difference, up to the calls around it
    # (a few thousand instructions of ~220k), and the second thousand iterations, counted inside a
    # step or alone, are the same instructions.
    assert planted["value"] == pytest.approx(alone, rel=0.02), (planted, alone)
    assert twice["value"] - planted["value"] == pytest.approx(alone_twice - alone, rel=1e-3)


def test_each_cell_starts_from_the_same_state_whatever_ran_before_it(tmp_path, valgrind):
    """Forked per cell, a cell after one that leaves global state behind counts what the first cell
    counts; in one process (``fork=False``) the leak lands in the next cell. A cell whose process
    dies is reported failed with how it ended, its finished windows are kept, and the next cell is
    still measured."""
    cells = _windows_of(CELLS_SCRIPT, tmp_path)
    assert "was killed by SIGKILL" in cells["fork/crashes"]["failed"]
    per_step = {
        key: [cell["rounds"][i]["native"]["per_step"] for i in sorted(cell["rounds"])] for key, cell in cells.items()
    }
    assert len(per_step["fork/crashes"]) == 1 and len(per_step["fork/after"]) == 2

    def mean(key):
        return sum(per_step[key]) / len(per_step[key])

    first = mean("fork/first")
    for key in ("fork/after", "fork/crashes"):  # both after the leaky cell, and neither inherits its hooks
        assert abs(mean(key) - first) / first < 1e-4, (key, first, mean(key))
    # The leak is real, and in one process the next cell inherits it: the leaky cell's 900 hooks cost
    # each later step 900 calls, tens of thousands of instructions.
    assert mean("one/after") - mean("one/first") > 20_000
    assert per_step["fork/leaky"][1] - per_step["fork/leaky"][0] > 20_000  # within a cell, the leak is the cell's


@pytest.mark.slow
def test_native_loop_a_a_and_two_runs_repeat(tmp_path, valgrind):
    """The real native loop under callgrind (minutes: torch imports under valgrind), two runs."""
    spec = Spec(task="scaling", adapter="native", batch_size=32, steps=30, lr=0.05, options={"width": 64})
    protocol = InstructionProtocol(rounds=2, steps=20, warmup=5, runs=2)
    (record,) = measure([spec], protocol, tmp_path, timeout_s=3000)
    assert record["status"] == "ok", record["error"]
    summary = record["summary"]
    assert summary["difference"]["low"] <= 0.0 <= summary["difference"]["high"]
    assert abs(summary["difference_per_step"]) / summary["native_per_step"] < 2e-3
    assert summary["repeatability"]["native"] <= 1e-3
    assert summary["repeatability"]["adapter"] <= 1e-3
    assert (tmp_path / f"instructions-{record['cell_id']}.json").exists()


ENTROPY_SCRIPT = textwrap.dedent(
    """
    import sys
    if sys.argv[1] != "free":
        from harness.cost.entropy import pin_entropy
        pin_entropy(int(sys.argv[1]))
    import os, random, secrets, uuid
    import numpy as np
    from scipy import stats  # its new distributions' docstring examples draw from an unseeded generator
    print(os.urandom(8).hex(), random.random(), secrets.token_hex(8), uuid.uuid4())
    print(np.random.default_rng().integers(1 << 62), hash(stats.Normal.__doc__))
    """
)


def test_pinned_entropy_repeats_what_libraries_draw_unseeded():
    def draws(seed: str) -> str:
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(
            [sys.executable, "-c", ENTROPY_SCRIPT, seed], cwd=REPO, env=env, capture_output=True, text=True, check=True
        )
        return done.stdout

    pinned = draws("0")
    assert pinned == draws("0")
    # Each source is live without the pin (two free processes tie on all with chance ~2^-64), and
    # the stream is the seed's: another seed draws other values.
    free = [draws("free").split() for _ in range(2)]
    assert all(a != b for a, b in zip(*free))
    assert all(a != b for a, b in zip(pinned.split(), draws("1").split()))
