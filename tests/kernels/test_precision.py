from __future__ import annotations

import pytest
import torch

from kernels.precision import MixedPrecision, Precision, PrecisionError, make_precision


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


def test_fp16_needs_cuda_and_unknown_names_list_the_choices():
    with pytest.raises(PrecisionError, match="fp16-mixed needs a CUDA device"):
        make_precision("fp16-mixed", "cpu")
    with pytest.raises(PrecisionError, match="choose one of: fp32, bf16-mixed, fp16-mixed"):
        make_precision("fp8", "cpu")
