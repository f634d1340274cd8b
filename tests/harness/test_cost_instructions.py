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


def test_every_run_gets_the_repeatable_allocator_on_top_of_the_callers_tunables(tmp_path, monkeypatch):
    """The valgrind processes run with ``MALLOC_TUNABLES`` (after any tunables of the caller's own)."""
    from harness.cost import instructions

    launched = []

    class FakeProcess:
        pid = 1

        def __init__(self, command, *, env, **kwargs) -> None:
            launched.append(env)

    monkeypatch.setattr(instructions.subprocess, "Popen", FakeProcess)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX512F")
    runs = [Run(index=i, folder=tmp_path / f"run-{i}") for i in (1, 2)]
    protocol = InstructionProtocol()
    instructions.launch(runs, tmp_path / "plan.json", python=sys.executable, hash_seed=7,
                        malloc_tunables=protocol.malloc_tunables)
    expected = f"glibc.cpu.hwcaps=-AVX512F:{instructions.MALLOC_TUNABLES}"
    assert [env["GLIBC_TUNABLES"] for env in launched] == [expected, expected]
    assert "glibc.malloc.tcache_count=65535" in protocol.malloc_tunables
    assert all(env["PYTHONHASHSEED"] == "7" for env in launched)

    launched.clear()
    monkeypatch.delenv("GLIBC_TUNABLES")
    instructions.launch(runs, tmp_path / "plan.json", python=sys.executable, hash_seed=0, malloc_tunables="")
    assert all("GLIBC_TUNABLES" not in env for env in launched)  # "" = glibc's own defaults


@pytest.fixture
def valgrind():
    if shutil.which("valgrind") is None:  # `make test-deps` installs it
        pytest.fail("valgrind is not installed: run `make test-deps` (or apt-get install valgrind)")


def test_windows_give_zero_for_a_a_and_recover_planted_work_exactly(tmp_path, valgrind):
    script = tmp_path / "steps.py"
    script.write_text(STEPS_SCRIPT)
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
    cells = collect(run)
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
