"""The zygote (harness.zygote): forked workers give what fresh ones give, share nothing, leave nothing.

Proofs, each able to fail: weights and losses equal to fresh processes on a library spec and the
native loop; state a library leaves behind (patched torch functions, default dtype, deterministic
flag, RNGs) invisible to the next spec, with an in-process control showing the check sees it; no
thread pool live in the zygote when it forks, and the child's thread pools the same as a fresh
process's; timeouts, zygote deaths and the orchestrator's death handled as for fresh workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace

import pytest

from harness import zygote
from harness.runner import RunOptions, _worker_env, forkable, preload_for, run_suite
from tests.conftest import REPO_ROOT, small_spec
from tests.harness.test_runner import _is_worker_for

pytestmark = pytest.mark.usefixtures("plugin_env")


def options(tmp_path, **kwargs) -> RunOptions:
    return RunOptions(results_dir=tmp_path, save_weights=False, **kwargs)


def comparable(result: dict) -> dict:
    summary = result["summary"]
    return {
        "status": result["status"],
        "weights_digest": result.get("weights_digest"),
        "losses": result["trajectory"]["losses"],
        "eval": (summary.get("eval_loss"), summary.get("eval_metric")),
        "data_digest": result["task"]["data_digest"],
    }


def test_forked_workers_match_fresh_workers_bit_for_bit(tmp_path, monkeypatch):
    # The environment defaults scikit-learn and joblib set when imported: out of this process's
    # environment (already imported here, they will not set them again), so a worker has them only
    # if it imported them itself, or had the zygote's preloading replayed.
    import joblib  # noqa: F401
    import sklearn  # noqa: F401

    for name in ("KMP_DUPLICATE_LIB_OK", "KMP_INIT_AT_FORK"):
        monkeypatch.delenv(name, raising=False)
    specs = [
        small_spec(steps=8),
        small_spec(adapter="lightning", steps=8, seed=1),
        small_spec(adapter="report-threads"),
        # A task whose data modules the zygote preloads (scikit-learn, and with it SciPy and pandas),
        # under a library that imports them itself too.
        small_spec(adapter="fastai", task="digits", steps=6),
        small_spec(adapter="report-threads", task="digits"),
    ]
    forked = run_suite(specs, options(tmp_path / "zygote", zygote=True))
    fresh = run_suite(specs, options(tmp_path / "fresh", zygote=False))
    assert [r["timing"]["launch"] for r in forked] == ["zygote"] * len(specs)
    assert [r["timing"]["launch"] for r in fresh] == ["fresh"] * len(specs)
    assert [comparable(r) for r in forked] == [comparable(r) for r in fresh]
    assert all(r["status"] == "ok" and r["weights_digest"] for r in forked)
    # The child's thread pools (torch's, OpenMP's, OpenBLAS's: SciPy's too where it was preloaded)
    # are a fresh process's, and so is what the preloaded imports put in the environment.
    for index in (2, 4):
        assert forked[index]["notes"]["thread_pools"] == fresh[index]["notes"]["thread_pools"]
        assert forked[index]["notes"]["environ"] == fresh[index]["notes"]["environ"]
    assert "openblas" in [pool[0] for pool in fresh[2]["notes"]["thread_pools"]["pools"]]
    openblas = [pool for pool in fresh[4]["notes"]["thread_pools"]["pools"] if pool[0] == "openblas"]
    assert len(openblas) >= 2  # NumPy's and SciPy's: the second was loaded in the zygote, at one thread
    assert fresh[4]["notes"]["environ"]["KMP_INIT_AT_FORK"] is not None  # the replay had something to replay

    # Start-up: the cold figure a user waits for exists only where it was measured, a fresh interpreter.
    for zygote_result, fresh_result in zip(forked, fresh):
        assert "startup_s" not in zygote_result["summary"]
        summary = fresh_result["summary"]
        assert summary["startup_s"] == pytest.approx(summary["launch_s"] + summary["library_startup_s"], abs=1e-6)
        assert zygote_result["summary"]["library_startup_s"] > 0
    # A fresh worker imports torch between launch and ready; a forked one does not.
    assert min(r["summary"]["launch_s"] for r in fresh) > max(r["summary"]["launch_s"] for r in forked)


def test_a_librarys_global_state_never_reaches_the_next_spec(tmp_path):
    plant = small_spec(adapter="leak-plant", steps=4, deterministic=False)
    check = small_spec(adapter="leak-check", steps=4, deterministic=False, seed=3)
    planted, checked = run_suite([plant, check], options(tmp_path / "zygote", zygote=True))
    assert planted["status"] == "ok" and planted["timing"]["launch"] == "zygote"
    assert checked["timing"]["launch"] == "zygote"
    assert checked["status"] == "ok", checked["error"]

    # Control: the same two specs in one process. The check must see every planted change.
    script = (
        "import json, sys; from pathlib import Path; from harness.spec import Spec; "
        "from harness.worker import run_inline; "
        "specs = [Spec.from_dict(json.loads(line)) for line in sys.argv[1:3]]; "
        "results = [run_inline(s, Path(sys.argv[3]), save_weights=False) for s in specs]; "
        "print(json.dumps([r['status'] for r in results] + [results[1]['error']]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, plant.canonical_json(), check.canonical_json(), str(tmp_path / "inline")],
        cwd=REPO_ROOT,
        env=_worker_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    plant_status, check_status, error = json.loads(done.stdout.strip().splitlines()[-1])
    assert (plant_status, check_status) == ("ok", "failed")
    for planted_change in (
        "torch.nn.functional.linear is patched",
        "torch.manual_seed is patched",
        "the default dtype is torch.float64",
        "deterministic algorithms are on",
        "BAKEOFF_PLANTED_STATE is in the environment",
        "bakeoff_planted_marker is in sys.modules",
        "torch's global RNG is not in its seeded state",
    ):
        assert planted_change in error


def test_no_thread_pool_is_live_when_the_zygote_forks(tmp_path):
    forker = zygote.Zygote(sys.executable, _worker_env(), cwd=str(REPO_ROOT))
    try:
        status = forker.status()
    finally:
        forker.close()
    assert status["threads"] == 1
    assert status["hazards"] == [] and status["cuda_initialized"] is False
    assert "torch" in status["modules"] and "numpy" in status["modules"]
    # Nothing a library brings: the zygote holds what every worker imports, no more.
    assert not {"lightning", "fastai", "keras", "transformers", "sklearn"} & set(status["modules"])
    # OpenBLAS started without its pool; children get back what a fresh process has.
    assert status["openblas_threads"] and all(n >= 1 for n in status["openblas_threads"].values())


def test_a_preloading_zygote_stays_single_threaded_and_skips_what_is_not_installed(tmp_path):
    preload = preload_for(small_spec(task="digits"))
    assert preload == ("torch._inductor.config", "sklearn.datasets")
    forker = zygote.Zygote(
        sys.executable, _worker_env(), cwd=str(REPO_ROOT), preload=(*preload, "bakeoff_not_installed")
    )
    try:
        status = forker.status()
    finally:
        forker.close()
    assert forker.preloaded == list(preload)
    # pyarrow's jemalloc would start a purge thread here without ZYGOTE_ONLY_ENV.
    assert status["threads"] == 1 and status["hazards"] == []
    assert {"sklearn", "scipy", "pandas"} <= set(status["modules"])
    assert "torch._dynamo" not in status["modules"]  # top-level names only; the compiler stack is under torch
    assert len(status["openblas_threads"]) >= 2  # SciPy's OpenBLAS too: its fresh count is known


def test_a_zygote_preloads_by_task_and_determinism_never_by_adapter():
    for adapter in ("native", "lightning", "fastai", "keras", "hf"):
        assert preload_for(small_spec(adapter=adapter, task="digits")) == ("torch._inductor.config", "sklearn.datasets")
        assert preload_for(small_spec(adapter=adapter)) == ("torch._inductor.config",)
        assert preload_for(small_spec(adapter=adapter, deterministic=False)) == ()
        assert preload_for(small_spec(adapter=adapter, task="tabular", deterministic=False)) == ("sklearn.datasets",)


def test_what_is_preloaded_is_what_a_worker_imports_anyway():
    """Each declared module is imported by the code it is declared for, in a fresh interpreter."""
    from harness.registry import BUILTIN_TASKS, get_task
    from kernels.determinism import DETERMINISM_IMPORTS

    declared = {name: get_task(name).preload for name in BUILTIN_TASKS}
    checks = [("from kernels.determinism import set_determinism; set_determinism(0)", DETERMINISM_IMPORTS)]
    checks += [
        (f"from harness.registry import get_task; t = get_task({name!r}); t.build_data(t.resolve_options({{}}))",
         modules)
        for name, modules in declared.items()
        if modules
    ]
    assert len(checks) >= 3  # determinism, digits and tabular at least
    for code, modules in checks:
        script = f"import sys; {code}; print(','.join(m for m in {tuple(modules)!r} if m not in sys.modules))"
        done = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=_worker_env(),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip().splitlines()[-1:] in ([], [""]), f"{code}: not imported: {done.stdout}"


def test_the_fork_check_sees_a_live_thread():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        hazards = zygote.fork_hazards({})
    finally:
        stop.set()
        thread.join()
    assert any("threads are live in the zygote" in hazard for hazard in hazards)


def test_a_dead_zygote_is_replaced_then_given_up_with_a_line_each_time(tmp_path, capsys):
    specs = [small_spec(steps=4), small_spec(adapter="fault-kill-zygote", steps=4), small_spec(steps=4, seed=1)]

    def kill_idle_zygote(index, total, spec, result, skipped, seconds):
        if index == 1:  # between specs: the zygote dies while it waits
            killed = [_Process(pid) for pid in _workers(tmp_path)]
            for process in killed:
                os.kill(int(process.pid), signal.SIGKILL)
            deadline = time.monotonic() + 30  # until it is dead (a zombie), so the runner sees it gone
            while time.monotonic() < deadline and any(process.is_alive() for process in killed):
                time.sleep(0.05)

    results = run_suite(specs, options(tmp_path), progress=kill_idle_zygote)
    # The second spec's zygote (a new one) died under it: the spec ran again in a fresh process,
    # where it trains normally. Two failures in a row: the third spec runs fresh without trying.
    assert [r["status"] for r in results] == ["ok", "ok", "ok"]
    assert [r["timing"]["launch"] for r in results] == ["zygote", "fresh", "fresh"]
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("bakeoff: zygote:")]
    assert len(lines) == 2, lines
    assert "the zygote exited (killed by SIGKILL) between specs; a new zygote takes over" in lines[0]
    assert "while a worker ran" in lines[1] and "the rest of the suite runs in fresh processes" in lines[1]


def test_forked_workers_die_with_their_orchestrator(tmp_path):
    """A runner killed mid-spec takes its zygote and the forked worker with it."""
    results = tmp_path / "results"
    script = (
        "import sys; from pathlib import Path; from harness.runner import RunOptions, run_suite; "
        "from tests.conftest import small_spec; "
        "run_suite([small_spec(adapter='fault-hang', steps=6)], "
        "RunOptions(results_dir=Path(sys.argv[1]), save_weights=False, zygote=True, timeout_s=600))"
    )
    runner = subprocess.Popen([sys.executable, "-c", script, str(results)], cwd=REPO_ROOT, env=_worker_env())
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(_workers(results)) < 2:  # the zygote and its child
            time.sleep(0.2)
        assert len(_workers(results)) >= 2, "no forked worker started within 180 s"
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _workers(results):
        time.sleep(0.2)
    assert _workers(results) == []


class _Process:
    def __init__(self, pid: str) -> None:
        self.pid = pid

    def is_alive(self) -> bool:
        """Running, not a zombie waiting for its parent to reap it."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
        except OSError:
            return False
        return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def _workers(results_dir) -> list[str]:
    return [pid for pid in os.listdir("/proc") if pid.isdigit() and _is_worker_for(pid, results_dir)]


def test_a_changed_environment_gets_a_new_zygote(tmp_path, monkeypatch):
    pool = zygote.ZygotePool()
    try:
        first = pool.get(sys.executable, _worker_env(), cwd=str(REPO_ROOT))
        assert pool.get(sys.executable, _worker_env(), cwd=str(REPO_ROOT)) is first
        monkeypatch.setenv("BAKEOFF_THREADS_PER_RANK", "1")
        second = pool.get(sys.executable, _worker_env(), cwd=str(REPO_ROOT))
        assert second is not first and not first.alive() and second.alive()
        assert second.env["BAKEOFF_THREADS_PER_RANK"] == "1"
    finally:
        pool.close()


def test_only_single_process_specs_are_forked(tmp_path):
    single = small_spec(steps=3)
    assert forkable(single, options(tmp_path))
    assert not forkable(replace(single, world_size=2, batch_size=8), options(tmp_path))  # DDP keeps torchrun
    assert not forkable(single, options(tmp_path, nnodes=2, rdzv_endpoint="127.0.0.1:29500"))
