"""Runner faults: every way a worker can fail ends as a `failed` result and the suite goes on."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest

from harness.result import read_result, result_path
from harness.runner import RunOptions, run_spec, run_suite
from harness.spec import Spec
from tests.conftest import small_spec

pytestmark = pytest.mark.usefixtures("plugin_env")


def options(tmp_path, **kwargs) -> RunOptions:
    return RunOptions(results_dir=tmp_path, save_weights=False, **kwargs)


def test_suite_survives_raise_nan_and_hang_and_resumes(tmp_path):
    specs = [
        small_spec(adapter="fault-raise", steps=6),
        small_spec(adapter="fault-nan", steps=6),
        small_spec(adapter="fault-hang", steps=6),
        small_spec(adapter="native", steps=6),
    ]
    seen = []
    results = run_suite(specs, options(tmp_path, timeout_s=25), progress=lambda *a: seen.append(a[2].adapter))
    by_adapter = {r["spec"]["adapter"]: r for r in results}
    assert seen == ["fault-raise", "fault-nan", "fault-hang", "native"]

    raised = by_adapter["fault-raise"]
    assert raised["status"] == "failed"
    assert "planted failure inside the training loop" in raised["error"]
    assert len(raised["trajectory"]["losses"]) == 2  # the partial trajectory up to the fault

    nan = by_adapter["fault-nan"]
    assert nan["status"] == "failed"
    assert nan["error"].startswith("non-finite loss") and "at step 2" in nan["error"]

    hung = by_adapter["fault-hang"]
    assert hung["status"] == "failed"
    assert hung["error"] == "timed out after 25 s"

    assert by_adapter["native"]["status"] == "ok"
    assert by_adapter["native"]["timing"]["launch"] == "zygote"  # a suite forks its workers by default
    for spec in specs:  # every spec has a valid result file on disk
        assert read_result(result_path(tmp_path, spec))["spec_id"] == spec.spec_id

    # Resume: nothing is rerun, so the suite returns instantly with the same results.
    again = run_suite(specs, options(tmp_path, timeout_s=25))
    assert [r["spec_id"] for r in again] == [r["spec_id"] for r in results]
    assert [r["status"] for r in again] == [r["status"] for r in results]


def test_worker_killed_by_signal_becomes_failed_result(tmp_path):
    result = run_spec(small_spec(adapter="fault-kill", steps=6), options(tmp_path, timeout_s=60))
    assert result["status"] == "failed"
    assert result["error"] == "killed by signal SIGKILL without a result"


def test_no_worker_process_outlives_a_timeout(tmp_path):
    spec = small_spec(adapter="fault-hang", steps=6)
    run_spec(spec, options(tmp_path, timeout_s=20))
    leftovers = [pid for pid in os.listdir("/proc") if pid.isdigit() and _is_worker_for(pid, tmp_path)]
    assert leftovers == []


def _is_worker_for(pid: str, results_dir) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            command = handle.read().decode(errors="replace")
    except OSError:
        return False
    # A fresh worker's command names harness.worker and its results folder; a zygote and the
    # workers it forks share the zygote's command line, which names the folder it serves.
    return ("harness.worker" in command or "harness.zygote" in command) and str(results_dir) in command


def _race_for_claim(results_dir: str, spec_json: str, start_at: float, queue, done) -> None:
    from harness.runner import Claim

    claim = Claim(Path(results_dir), Spec.from_dict(json.loads(spec_json)))
    while time.time() < start_at:  # every racer leaves the gate at the same instant
        pass
    queue.put(claim.acquire())
    # Stay alive until every racer has answered: a winner that exited early would leave a claim
    # with a dead PID, which a late racer may rightly take over (that is resume, not a race).
    done.wait(60)


@pytest.mark.parametrize("stale_owner", [False, True])
def test_claims_race_has_exactly_one_winner(tmp_path, stale_owner):
    """Six processes claim one spec at once, 10 rounds: one winner each round, also when taking over a
    dead process's claim (the race that once let two bench processes run the same spec)."""
    import multiprocessing

    from harness.runner import Claim

    spec = Spec(task="digits", adapter="native", device="cpu", batch_size=8, steps=2, lr=0.1)
    context = multiprocessing.get_context("fork")
    for round_ in range(10):
        folder = tmp_path / f"round{round_}"
        folder.mkdir()
        if stale_owner:
            dead = context.Process(target=int)
            dead.start()
            dead.join()
            (folder / f"{spec.spec_id}.claim").write_text(str(dead.pid))
        queue, done = context.Queue(), context.Event()
        start_at = time.time() + 1.0
        racers = [context.Process(target=_race_for_claim,
                                  args=(str(folder), json.dumps(spec.to_dict()), start_at, queue, done))
                  for _ in range(6)]
        for racer in racers:
            racer.start()
        outcomes = [queue.get(timeout=60) for _ in racers]
        done.set()
        for racer in racers:
            racer.join(timeout=60)
        assert outcomes.count(True) == 1, (round_, outcomes)
        # The winner's claim names this host and a process (gone now, so the claim is stale and cleanable).
        claim = Claim(folder, spec)
        host, pid = claim.path.read_text().split()
        assert host == socket.gethostname() and int(pid) > 0
        claim.clear_if_stale()
        assert not claim.path.exists()
        assert not list(folder.glob(".claim-*"))  # nothing left aside


def test_a_claim_from_another_host_is_honoured_until_it_expires(tmp_path):
    """A shared folder (SLURM array): another node's PID means nothing here, so its claim is not stale
    because that PID is absent locally; it is abandoned only after the expiry."""
    from harness.runner import Claim

    spec = Spec(task="digits", adapter="native", device="cpu", batch_size=8, steps=2, lr=0.1)
    claim = Claim(tmp_path, spec, foreign_expiry_s=3600)
    claim.path.write_text("some-other-node 999999999")
    assert not claim.acquire()
    claim.clear_if_stale()
    assert claim.path.exists()
    hours_ago = time.time() - 2 * 3600
    os.utime(claim.path, (hours_ago, hours_ago))
    assert claim.acquire() and claim.path.read_text().split()[0] == socket.gethostname()
    claim.release()
    assert not claim.path.exists()


@pytest.mark.parametrize("missing", ["hard links", "flock"])
def test_claims_work_on_filesystems_without_hard_links_or_flock(tmp_path, monkeypatch, missing):
    from harness import locks, runner

    def unsupported(*args, **kwargs):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(runner.os if missing == "hard links" else locks.fcntl,
                        "link" if missing == "hard links" else "flock", unsupported)
    spec = Spec(task="digits", adapter="native", device="cpu", batch_size=8, steps=2, lr=0.1)
    first, second = runner.Claim(tmp_path, spec), runner.Claim(tmp_path, spec)
    assert first.acquire() and not second.acquire()
    assert first.path.read_text() == f"{socket.gethostname()} {os.getpid()}"
    first.release()
    assert second.acquire()
    second.release()
    assert not list(tmp_path.glob("*.claim")) and not list(tmp_path.glob(".claim-*"))
