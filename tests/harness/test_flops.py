"""FLOPs per step against hand-counted answers, the peak cache, MFU arithmetic, and the fields a run stores."""

from __future__ import annotations

import json

import pytest

from harness import flops
from harness.registry import get_task
from tests.conftest import small_spec


def counted(task_name: str, options: dict, batch_size: int, *, grad_accum: int = 1, world_size: int = 1) -> dict:
    task = get_task(task_name)
    resolved = task.resolve_options(options)
    return flops.step_flops(
        task, resolved, task.build_data(resolved), batch_size=batch_size, grad_accum=grad_accum, world_size=world_size
    )


def test_mlp_flops_are_the_hand_count():
    # scaling: Linear(32, w) -> ReLU -> Linear(w, w) -> ReLU -> Linear(w, 10), batch 16.
    width, batch = 24, 16
    weights = 32 * width + width * width + width * 10
    record = counted("scaling", {"width": width}, batch)
    assert record["forward_per_micro_batch"] == 2 * batch * weights
    # Backward: grads of inputs and of weights for every layer (2x forward), except the input
    # gradient of the first layer, whose input (the data) needs none.
    assert record["backward_per_micro_batch"] == 4 * batch * weights - 2 * batch * 32 * width
    assert record["per_step"] == record["per_step_per_rank"] == 6 * batch * weights - 2 * batch * 32 * width
    assert record["optimizer_counted"] is False


def test_accumulation_and_ranks_multiply_the_micro_batch_count():
    one = counted("scaling", {"width": 8}, 16)
    both = counted("scaling", {"width": 8}, 16, grad_accum=3, world_size=2)
    assert both["per_step_per_rank"] == 3 * one["per_step_per_rank"]
    assert both["per_step"] == 6 * one["per_step_per_rank"]


def test_attention_is_counted_for_the_character_model():
    """SDPA's two batched matmuls are counted (the meta device takes the math path; on CPU the
    fused flash kernel has no FLOP formula and would count zero)."""
    options = {"width": 32, "heads": 4, "layers": 1, "block_size": 16, "characters": 4000}
    batch, width, block = 4, 32, 16
    task = get_task("charlm")
    resolved = task.resolve_options(options)
    data = task.build_data(resolved)
    vocab = data.inferable.num_classes
    record = flops.step_flops(task, resolved, data, batch_size=batch, grad_accum=1, world_size=1)
    tokens = batch * block
    linear = 2 * tokens * (width * 3 * width + width * width + 2 * width * 4 * width + width * vocab)
    attention = 2 * 2 * batch * block * block * width  # QK^T and AV over all heads
    assert record["forward_per_micro_batch"] == linear + attention


def test_the_gpu_preset_is_about_100m_parameters_and_its_flops_are_about_6n_per_token():
    import torch

    task = get_task("charlm")
    resolved = task.resolve_options({"preset": "gpt2-100m", "characters": 200_000})
    data = task.build_data(resolved)
    with torch.device("meta"):
        parameters = sum(p.numel() for p in task.build_model(0, resolved, data).parameters())
    assert 95e6 < parameters < 105e6
    assert (resolved["width"], resolved["heads"], resolved["layers"], resolved["block_size"]) == (768, 12, 14, 1024)
    record = flops.step_flops(task, resolved, data, batch_size=2, grad_accum=1, world_size=1)
    tokens = 2 * 1024
    attention = 12 * resolved["layers"] * resolved["block_size"] * resolved["width"] * tokens  # fwd+bwd, all heads
    # Embeddings are parameters without matmuls, so the count sits a little under 6N per token + attention.
    assert 0.97 < record["per_step"] / (6 * parameters * tokens + attention) < 1.0


def test_presets_fill_only_what_the_spec_leaves_out():
    task = get_task("charlm")
    assert task.resolve_options({"preset": "gpt2-100m", "layers": 2})["layers"] == 2
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        task.resolve_options({"preset": "huge"})


def test_utilisation_arithmetic():
    figures = flops.utilisation(2_000_000, 1_000.0, 4e9, devices=2)
    assert figures["achieved_flops_per_s"] == pytest.approx(2e9)
    assert figures["mfu"] == pytest.approx(0.25)
    assert flops.utilisation(None, 1_000.0, 4e9, devices=1) == {}
    assert "mfu" not in flops.utilisation(1, 1.0, None, devices=1)
    assert flops.devices_used("cpu", 2, 0) == 2  # each CPU rank's peak is measured at its own threads
    assert flops.devices_used("cuda", 2, 1) == 1  # two ranks sharing one GPU share its peak
    assert flops.peak_dtype("fp32", tf32=True, device_type="cuda") == "tf32"
    assert flops.peak_dtype("fp32", tf32=True, device_type="cpu") == "fp32"
    assert flops.peak_dtype("fp16-mixed", tf32=False, device_type="cpu") == "fp16"


def test_peak_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BAKEOFF_CACHE_DIR", str(tmp_path))
    calls = []
    real = flops.measure_peak

    def counting(device_type, dtype, **kwargs):
        calls.append((device_type, dtype))
        return real(device_type, dtype, size=128, budget_s=0.0)

    monkeypatch.setattr(flops, "measure_peak", counting)
    first = flops.peak("cpu", "fp32")
    again = flops.peak("cpu", "fp32")
    assert calls == [("cpu", "fp32")] and first["cached"] is False and again["cached"] is True
    assert again["flops_per_s"] == first["flops_per_s"] > 0
    device, _, _, dtype, threads, method = first["key"].split(" | ")
    assert (device, dtype, method) == ("cpu", "fp32", "best of sizes") and threads.endswith(" threads")
    stored = json.loads((tmp_path / "peak.json").read_text())
    assert set(stored) == {first["key"]} and stored[first["key"]]["repetitions"] >= 3
    assert stored[first["key"]]["sizes_tried"] == [64, 128]  # on a CPU the smaller products are timed too
    flops.peak("cpu", "fp32", refresh=True)
    flops.peak("cpu", "bf16")
    assert calls == [("cpu", "fp32"), ("cpu", "fp32"), ("cpu", "bf16")]


def test_the_peak_matmul_counts_its_own_flops_right():
    """A known answer: 2 n^3 FLOPs per product, so the rate times the best time is the FLOP count."""
    record = flops.measure_peak("cpu", "fp32", size=256, budget_s=0.0)
    # Which size wins is the machine's business (128 beat 256 on CI's CPU); the count is not.
    size = record["size"]
    assert record["sizes_tried"] == [64, 128, 256] and size in record["sizes_tried"]
    assert record["matmul"] == f"{size}x{size}x{size} float32" and record["repetitions"] >= 3
    assert record["flops_per_s"] * record["best_s"] == pytest.approx(2 * size**3)
    assert record["flops_per_s"] >= record["median_flops_per_s"] > 0


def test_every_run_stores_flops_peak_and_mfu(inline, tmp_path, monkeypatch):
    monkeypatch.setenv("BAKEOFF_CACHE_DIR", str(tmp_path / "cache"))
    result = inline(small_spec(options={"width": 8}, steps=6))
    summary = result["summary"]
    assert result["flops"]["per_step"] == summary["flops_per_step"] > 0
    assert result["peak_flops"]["dtype"] == "fp32" and result["peak_flops"]["cached"] is False
    assert summary["achieved_flops_per_s"] == pytest.approx(
        summary["flops_per_step"] / (summary["median_step_us"] / 1e6)
    )
    assert summary["mfu"] == pytest.approx(summary["achieved_flops_per_s"] / summary["peak_flops_per_s"])
    assert 0 < summary["mfu"] < 1


def test_a_cpu_peak_is_the_best_rate_of_any_size_and_mfu_is_never_above_one(monkeypatch):
    """An emulated dtype can run fastest from cache: the peak takes the best size, and a run faster than
    the measured peak gets no MFU rather than an impossible one."""
    rates = {64: 5e9, 128: 9e9, 256: 7e9}
    monkeypatch.setattr(flops, "_time_matmul", lambda torch, device, dtype, size, budget: {
        "flops_per_s": rates[size], "median_flops_per_s": rates[size], "size": size, "repetitions": 3})
    record = flops.measure_peak("cpu", "fp16", size=256, budget_s=0.0)
    assert record["flops_per_s"] == 9e9 and record["matmul"] == "128x128x128 float16"
    assert record["sizes_tried"] == [64, 128, 256]
    assert flops.utilisation(9_000, 1.0, 1e10, 1)["mfu"] == pytest.approx(0.9)  # 9e9 achieved of a 1e10 peak
    above = flops.utilisation(9_000, 1.0, 8e9, 1)
    assert above["achieved_flops_per_s"] == 9e9 and above["mfu"] is None
    assert above["achieved_over_measured_peak"] == pytest.approx(9e9 / 8e9)
