"""Multi-node DDP through torchrun's c10d rendezvous: 2 nodes x 1 process on loopback equals
the single-node 2-process run of the same spec."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor

from harness.runner import RunOptions, run_spec
from tests.conftest import small_spec


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_on_loopback_equal_one_node_with_two_processes(tmp_path):
    # Two "nodes" share this machine's cores: give every rank one thread in both layouts, as
    # two one-core nodes would have (CPU float reductions depend on the thread count).
    spec = small_spec(task="digits", batch_size=16, world_size=2, steps=6, threads=1)
    single = run_spec(spec, RunOptions(results_dir=tmp_path / "single", timeout_s=180, save_weights=False))
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        RunOptions(results_dir=tmp_path / f"node{i}", timeout_s=180, save_weights=False, nnodes=2,
                   rdzv_endpoint=endpoint)
        for i in range(2)
    ]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda options: run_spec(spec, options), nodes))
    written = [r for r in results if "elsewhere" not in r]
    assert len(written) == 1, results  # exactly one node held global rank 0 and wrote the result
    (multi,) = written
    assert single["status"] == multi["status"] == "ok", (single.get("error"), multi.get("error"))
    assert multi["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert multi["threads"]["per_rank"] == single["threads"]["per_rank"] == [1, 1]
    assert multi["weights_digest"] == single["weights_digest"]
    assert multi["trajectory"]["losses"] == single["trajectory"]["losses"]
