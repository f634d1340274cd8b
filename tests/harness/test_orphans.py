"""No worker or rank outlives its orchestrator, however it dies and whenever."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import process
from tests.conftest import REPO_ROOT


def _processes_of(orchestrator: int) -> list[int]:
    """PIDs of every process started (directly or not) by the orchestrator: they carry its token."""
    marker = f"{process.ORCHESTRATOR_ENV}={orchestrator}:".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in environ and state != "Z":
            found.append(int(entry.name))
    return found


def _ranks(pids: list[int]) -> list[int]:
    ranks = []
    for pid in pids:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"harness.worker" in command and b"torch.distributed.run" not in command:
            ranks.append(pid)
    return ranks


@pytest.mark.timeout(400)
def test_killing_the_orchestrator_as_a_ddp_run_starts_leaves_no_rank_behind(tmp_path):
    orchestrator = subprocess.Popen(
        [sys.executable, "-m", "harness.cli", "run", "--task", "digits", "--world-size", "2", "--batch-size", "32",
         "--steps", "100000", "--device", "cpu", "--no-weights", "--results-dir", str(tmp_path / "results")],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while len(_ranks(_processes_of(orchestrator.pid))) < 2:  # both ranks exist: the DDP run is starting
            assert orchestrator.poll() is None, "the run ended before its ranks could be seen"
            assert time.monotonic() < deadline, "the ranks never started"
            time.sleep(0.05)
        started = _processes_of(orchestrator.pid)
        orchestrator.send_signal(signal.SIGKILL)
        orchestrator.wait()
        deadline = time.monotonic() + 120  # a rank still importing torch on a loaded machine checks when it is done
        while (alive := _processes_of(orchestrator.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert alive == [], f"{len(alive)} of {len(started)} processes outlived the orchestrator"
    finally:
        for pid in _processes_of(orchestrator.pid):
            os.kill(pid, signal.SIGKILL)


def test_the_parent_death_check_catches_a_parent_that_died_before_prctl(tmp_path):
    # The child expects a parent PID that is not its parent (as if the parent died before prctl and
    # the child was re-parented): it must exit at once instead of living on unsignalled.
    child = subprocess.run(
        [sys.executable, "-c", "import sys; from harness.process import die_with_parent; die_with_parent(1); "
         "print('still alive'); sys.exit(0)"],
        cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=60,
    )
    assert child.returncode == 1 and "still alive" not in child.stdout


def test_the_orchestrator_token_tells_a_dead_or_reused_pid_from_a_live_one():
    assert process.alive(process.orchestrator_token())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    token = process.orchestrator_token(sleeper.pid)
    assert process.alive(token)
    pid, ticks = token.split(":")
    assert not process.alive(f"{pid}:{int(ticks) + 1}")  # same PID, another start time: another process
    sleeper.kill()
    sleeper.wait()
    assert not process.alive(token)
