from __future__ import annotations

import pytest
import torch

from kernels.precision import (
    MixedPrecision,
    Precision,
    PrecisionError,
    make_precision,
    set_tf32,
    skipped_from_scales,
    tf32_flags,
)


def test_fp32_is_plain():
    precision = make_precision("fp32", "cpu")
    assert type(precision) is Precision and precision.autocast_dtype is None
    layer = torch.nn.Linear(4, 4)
    with precision.forward_context():
        assert layer(torch.ones(1, 4)).dtype == torch.float32


def test_bf16_autocasts_matmuls_and_has_no_scaler():
    precision = make_precision("bf16-mixed", "cpu")
    assert isinstance(precision, MixedPrecision) and precision.scaler is None
    layer = torch.nn.Linear(4, 4)
    with precision.forward_context():
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    assert layer.weight.dtype == torch.float32  # master weights stay fp32


def test_fp16_on_cpu_autocasts_to_half_with_a_cpu_grad_scaler():
    precision = make_precision("fp16-mixed", "cpu")
    assert isinstance(precision, MixedPrecision) and precision.scaler is not None
    assert precision.scaler.is_enabled() and precision.describe_scaler() == "torch.amp.GradScaler('cpu')"
    layer = torch.nn.Linear(4, 4)
    with precision.forward_context():
        assert layer(torch.ones(1, 4)).dtype == torch.float16
    assert layer.weight.dtype == torch.float32


def _train(precision, losses_scale):
    """Steps of a tiny regression where step i's loss is multiplied by ``losses_scale[i]``.

    The loss is taken in fp32 (as the tasks' cross entropy is under autocast) and scaled by 1e-2 so
    that its scaled gradients (x 65536, the initial scale) stay inside fp16's range: only the planted
    steps overflow.
    """
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.01)
    weights = []
    for scale in losses_scale:
        with precision.forward_context():
            loss = (layer(torch.ones(8, 4)).float() - 1).pow(2).mean() * 1e-2 * scale
        precision.backward(loss)
        precision.optimizer_step(optimizer)
        optimizer.zero_grad(set_to_none=True)
        weights.append(layer.weight.detach().clone())
    return weights


def test_grad_scaler_skips_exactly_the_overflowed_steps_on_cpu():
    precision = make_precision("fp16-mixed", "cpu")
    # 1e38 * 65536 overflows even fp32: the scaled backward produces inf, the step is skipped.
    weights = _train(precision, [1.0, 1e38, 1.0, 1e38, 1e38, 1.0])
    assert precision.skipped_steps == 3
    assert torch.equal(weights[1], weights[0])  # skipped: the weights did not move
    assert not torch.equal(weights[2], weights[1])
    assert precision.scaler.get_scale() == 65536.0 / 2**3
    clean = make_precision("fp16-mixed", "cpu")
    _train(clean, [1.0] * 4)
    assert clean.skipped_steps == 0
    assert make_precision("bf16-mixed", "cpu").skipped_steps == 0


def test_skipped_from_scales_counts_drops_not_growth():
    scales = [torch.tensor(v) for v in (65536.0, 32768.0, 32768.0, 65536.0, 16384.0)]
    assert skipped_from_scales(65536.0, scales) == 2
    assert skipped_from_scales(65536.0, []) == 0


def test_unknown_names_list_the_choices():
    with pytest.raises(PrecisionError, match="choose one of: fp32, bf16-mixed, fp16-mixed"):
        make_precision("fp8", "cpu")
    with pytest.raises(PrecisionError, match="unknown device type 'tpu'"):
        make_precision("fp32", "tpu")


def test_tf32_is_cuda_only_and_off_means_both_flags_off():
    with pytest.raises(PrecisionError, match="CUDA tensor-core mode"):
        set_tf32(True, "cpu")
    assert set_tf32(False, "cpu") == {"matmul": False, "cudnn": False}  # cuDNN's default is on: set off explicitly
    assert tf32_flags() == {"matmul": False, "cudnn": False}
