"""Rewrite the golden native trajectories. Run only on purpose, when a change to a task, a
kernel or the native loop is meant to change results:

    .venv/bin/python -m tests.golden.regenerate

Each file records the spec, the per-step losses (exact float64 repr), the weights digest and
the machine that produced them (CPU model and kernel instruction set, torch version, threads),
because bitwise equality
is only promised on the same machine class and library build.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from harness.registry import get_task
from harness.spec import Spec

GOLDEN_DIR = Path(__file__).resolve().parent
GOLDEN_TASKS = ("digits", "tabular", "charlm", "scaling")


def golden_spec(task: str) -> Spec:
    defaults = get_task(task).defaults
    return Spec(task=task, adapter="native", batch_size=defaults.batch_size, steps=12, lr=defaults.lr, seed=0)


def machine() -> dict:
    import torch

    from harness.environment import cpu_capability, cpu_model

    return {"cpu_model": cpu_model(), "cpu_capability": cpu_capability(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads()}


def record(task: str) -> dict:
    from harness.worker import run_inline

    spec = golden_spec(task)
    with tempfile.TemporaryDirectory() as folder:
        result = run_inline(spec, Path(folder), save_weights=False)
    if result["status"] != "ok":
        raise RuntimeError(f"{task}: native run failed: {result['error']}")
    return {
        "spec": spec.to_dict(),
        "spec_id": spec.spec_id,
        "losses": result["trajectory"]["losses"],
        "weights_digest": result["weights_digest"],
        "machine": machine(),
    }


def main() -> int:
    for task in GOLDEN_TASKS:
        path = GOLDEN_DIR / f"{task}.json"
        path.write_text(json.dumps(record(task), indent=1) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
