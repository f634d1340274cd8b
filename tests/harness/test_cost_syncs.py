"""The host-sync interposer on known code: what it counts, what it must not count, and where."""

from __future__ import annotations

import torch
from torch import nn

from harness.cost.syncs import SyncCounter

HERE = "tests/harness/test_cost_syncs.py"


def test_every_kind_of_device_read_counts_once_and_host_reads_do_not():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    device = torch.device("cpu")
    counter = SyncCounter(model)
    with counter:
        counter.start()
        batch = torch.randn(4, 3)  # a host tensor (no device named): reading it is free on a GPU too
        batch.sum().item()
        torch.randperm(5).tolist()
        batch = batch.to(device)  # a move to the training device, not a read
        out = model(batch)
        loss = out.pow(2).mean()
        loss.item()
        bool(loss > 0)
        float(loss)
        int(loss)
        loss.detach().tolist()
        loss.detach().numpy()
        host = loss.detach().cpu()  # one read; what comes back is a host copy
        host.item()
        loss.to("cpu")
        str(loss)  # printing formats many scalars inside torch: one read
        f"{loss:.3f}"
        out.nonzero()
        out[out > 0]  # a boolean mask index has a data-dependent size
        placed = torch.zeros(2, device=device)  # a factory that names the device
        placed.sum().item()
        counter.stop()
        loss.item()  # after the window: not counted
    summary = counter.summary(steps=1)
    assert summary["by_kind"] == {
        "bool": 1,
        "boolean-mask index": 1,
        "cpu": 1,
        "float": 1,
        "int": 1,
        "item": 2,
        "nonzero": 1,
        "numpy": 1,
        "print": 2,
        "to(cpu)": 1,
        "tolist": 1,
    }
    assert summary["per_step"] == 13
    assert all(site["site"].startswith(f"{HERE}:") for site in summary["sites"])
    assert all("(test_every_kind" in site["site"] for site in summary["sites"])


def test_gradients_and_optimizer_state_are_device_resident():
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    counter = SyncCounter(model)
    with counter:
        for _ in range(2):
            loss = model(torch.randn(8, 3)).pow(2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=False)
        counter.start()
        model.weight.grad.norm().item()
        optimizer.state[model.weight]["momentum_buffer"].abs().max().item()
        counter.stop()
    assert counter.summary(steps=1)["total"] == 2


def test_nothing_counts_outside_the_window_and_modes_are_removed_after():
    model = nn.Linear(2, 2)
    counter = SyncCounter(model)
    with counter:
        model(torch.ones(1, 2)).sum().item()
    assert counter.summary(steps=1)["total"] == 0
    assert not torch._C._is_torch_function_mode_enabled()
