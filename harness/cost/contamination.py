"""Import contamination: does importing a training library slow the plain torch loop?

fastai patches ``Tensor`` methods at import, Keras and Lightning set global state; the paired
measurement runs both arms with the library imported, so its native arm is "native with the library
loaded". This measures the gap to a clean process: the native loop in processes that imported only
torch and the harness, against processes that also imported one adapter's module (as the paired
worker does). Each process is one replicate (several fits, the median of their per-step means);
processes run one at a time in blocks, one process per variant per block in a random order, and a
library's figure is the per-block paired difference ``with library − clean`` with a bootstrap CI
over blocks (wall and main-thread CPU clocks), so a drift of the machine hits every variant.

    python -m harness.cost.contamination child --module adapters.lightning --spec SPEC.json ...   (internal)
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import environment
from harness.cost import record as cost_record
from harness.cost.analysis import Interval, arm_figures, meets_target, paired
from harness.cost.paired import Arms, arm_specs
from harness.environment import REPO_ROOT
from harness.process import ORCHESTRATOR_ENV, die_with_parent, orchestrator_token, watch_orchestrator
from harness.registry import adapter_table
from harness.spec import Spec, SpecError, split_adapter

LIBRARY_MODULES = ("lightning", "fastai", "keras", "transformers", "accelerate")
"""Top-level packages a clean process must not have imported (checked, and recorded per child)."""


@dataclass(frozen=True, kw_only=True)
class ContaminationProtocol:
    blocks: int = 6
    """Repeats: each block runs one process per variant (clean and every library), shuffled."""
    fits: int = 3
    """Native fits per process; the process's figure is the median of their per-step means."""
    steps: int = 100
    warmup: int = 20
    threads: int = 1
    order_seed: int = 0

    def __post_init__(self) -> None:
        cost_record.check_counts(self, "contamination protocol")
        if self.blocks < 2 or self.fits < 1 or self.threads < 1:
            raise SpecError("contamination needs at least 2 blocks, 1 fit per process and 1 thread")
        if self.steps < self.warmup + 2:
            raise SpecError(f"contamination steps ({self.steps}) must exceed warmup ({self.warmup}) by 2")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


# --------------------------------------------------------------------------- child process


def child(module: str | None, spec_path: Path, protocol: ContaminationProtocol, out: Path) -> int:
    """Import ``module`` (None: nothing beyond torch and the harness), then time native fits.

    The library is imported here, not at the top: this process exists to compare with and without it.
    """
    torch.set_num_threads(protocol.threads)
    started = time.perf_counter()
    if module:
        importlib.import_module(module)
    imported_s = time.perf_counter() - started
    spec = Spec.from_dict(json.loads(spec_path.read_text()))
    with tempfile.TemporaryDirectory(prefix="contamination-") as scratch:
        arms = Arms(spec, steps=protocol.steps, warmup=protocol.warmup, workroot=Path(scratch))
        arms.fit("native")  # first-fit costs, as the paired worker's warm-up round
        figures = []
        for _ in range(protocol.fits):
            probe = arms.fit("native")
            figures.append(arm_figures(probe.wall_end_ns(), probe.thread_end_ns, protocol.warmup))
    loaded = sorted(name for name in LIBRARY_MODULES if name in sys.modules)
    result = {
        "module": module,
        "libraries_loaded": loaded,
        "import_s": imported_s,
        "fits": figures,
        "wall_us": statistics.median(f["wall_mean_us"] for f in figures),
        "thread_us": statistics.median(f["thread_mean_us"] for f in figures),
    }
    out.write_text(json.dumps(result))
    return 0


# --------------------------------------------------------------------------- orchestrator


def variants(adapters: Sequence[str]) -> dict[str, str | None]:
    """``{"clean": None, "lightning": "adapters.lightning", ...}``: what each variant imports."""
    table = adapter_table()
    out: dict[str, str | None] = {"clean": None}
    for name in adapters:
        base, version = split_adapter(name)
        if name == "native" or version is not None or base not in table:
            continue
        out[name] = table[base].target.partition(":")[0]
    return out


def measure(
    adapters: Sequence[str],
    spec,
    protocol: ContaminationProtocol,
    results_dir: Path,
    *,
    progress: Callable[[str], None] | None = None,
    python: str = sys.executable,
    timeout_s: float = 600.0,
) -> list[dict[str, Any]]:
    """Run the interleaved blocks of processes and write one ``contamination`` record per library."""
    table = variants(adapters)
    names = list(table)
    native_spec = arm_specs(spec, protocol.steps)["native"]
    rng = np.random.default_rng(protocol.order_seed)
    blocks: list[dict[str, dict[str, Any]]] = []
    errors: dict[str, str] = {}
    total = protocol.blocks * len(names)
    count = 0
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env[ORCHESTRATOR_ENV] = orchestrator_token()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bakeoff-contamination-") as scratch:
        spec_path = Path(scratch) / "spec.json"
        spec_path.write_text(native_spec.canonical_json())
        for block in range(protocol.blocks):
            order = list(rng.permutation(names))
            figures: dict[str, dict[str, Any]] = {}
            for name in order:
                count += 1
                out = Path(scratch) / f"{block}-{name}.json"
                command = [python, "-m", "harness.cost.contamination", "child", "--spec", str(spec_path)]
                command += ["--out", str(out), "--protocol", json.dumps(protocol.to_dict())]
                if table[name]:
                    command += ["--module", table[name]]
                completed = subprocess.run(
                    command,
                    cwd=REPO_ROOT,
                    env=env,
                    capture_output=True,
                    timeout=timeout_s,
                    preexec_fn=functools.partial(die_with_parent, os.getpid()),
                )
                if completed.returncode != 0 or not out.exists():
                    tail = completed.stderr.decode("utf-8", "replace")[-600:]
                    errors[name] = f"process exited with {completed.returncode}: {tail}"
                    continue
                figures[name] = json.loads(out.read_text())
                if progress is not None:
                    elapsed = time.perf_counter() - started
                    progress(
                        f"[{count}/{total}] block {block + 1} {name}: native {figures[name]['wall_us']:.1f} us/step "
                        f"wall, {figures[name]['thread_us']:.1f} thread ({elapsed:.0f} s)"
                    )
            blocks.append({"order": order, "figures": figures})
    env_record = environment.capture(tuple(n for n in ("lightning", "fastai", "keras", "transformers")))
    records = []
    clean_loaded = sorted(
        {library for b in blocks if "clean" in b["figures"] for library in b["figures"]["clean"]["libraries_loaded"]}
    )
    for name in names[1:]:
        record: dict[str, Any] = {
            "schema": cost_record.SCHEMA,
            "kind": "contamination",
            "library": name,
            "module": table[name],
            "spec": native_spec.to_dict(),
            "status": "ok",
            "error": None,
            "protocol": protocol.to_dict(),
            "environment": env_record,
        }
        problem = errors.get(name) or errors.get("clean")
        if problem:
            record.update(status="failed", error=problem)
        elif clean_loaded:
            record.update(status="failed", error=f"the clean processes had libraries loaded: {clean_loaded}")
        else:
            record["blocks"] = [
                {"order": b["order"], "clean": b["figures"]["clean"], "library": b["figures"][name]} for b in blocks
            ]
            summary = {}
            for clock in ("wall", "thread"):
                figures = paired(
                    [b["clean"][f"{clock}_us"] for b in record["blocks"]],
                    [b["library"][f"{clock}_us"] for b in record["blocks"]],
                )
                clean = figures["native"]
                summary[clock] = {k: v.to_dict() if isinstance(v, Interval) else v for k, v in figures.items()}
                summary[clock]["target"] = meets_target(figures["difference"], clean.value if clean else None)
            summary["libraries_loaded"] = record["blocks"][0]["library"]["libraries_loaded"]
            record["summary"] = summary
        cost_record.write(Path(results_dir) / cost_record.file_name("contamination", name), record)
        records.append(record)
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.cost.contamination", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("child", help="(internal) one process: import a module, time native fits")
    one.add_argument("--module", default=None, help="module to import first (omit for a clean process)")
    one.add_argument("--spec", required=True, type=Path)
    one.add_argument("--protocol", required=True, help="protocol JSON")
    one.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    die_with_parent()
    watch_orchestrator()
    return child(args.module, args.spec, ContaminationProtocol(**json.loads(args.protocol)), args.out)


if __name__ == "__main__":
    sys.exit(main())
