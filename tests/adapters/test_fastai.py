"""fastai adapter: parity with the native loop, precision evidence, accumulation, DDP, defaults."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from adapters.base import Request, Unsupported
from adapters.fastai import CpuBf16, FastaiAdapter, fastai_optimizer
from harness.parity import compare_files
from harness.registry import get_adapter, get_task
from harness.runner import RunOptions, run_spec
from harness.spec import Spec
from tasks.base import OptimizerRecipe

# Tasks that need no files on disk (mnist/cifar10 read torchvision data from BAKEOFF_DATA).
TASKS = ("digits", "tabular", "charlm", "scaling")


def spec(**fields) -> Spec:
    values = {"task": "scaling", "adapter": "fastai", "batch_size": 16, "steps": 6, "lr": 0.05}
    values.update(fields)
    return Spec(**values)


def native_of(candidate: Spec, **changes) -> Spec:
    fields = candidate.to_dict()
    fields.update(adapter="native", mode="aligned", **changes)
    return Spec(**fields)


def verdict(inline, reference: Spec, candidate: Spec):
    ref, cand = inline(reference), inline(candidate)
    assert ref["status"] == "ok", ref.get("error")
    assert cand["status"] == "ok", cand.get("traceback") or cand.get("error")
    return compare_files(ref, cand, inline.results_dir), ref, cand


def declared(candidate: Spec) -> str:
    return FastaiAdapter().expected_parity(
        Request(
            task=get_task(candidate.task),
            mode=candidate.mode,
            precision=candidate.precision,
            world_size=candidate.world_size,
            grad_accum=candidate.grad_accum,
        )
    )


def test_registry_loads_the_real_library_not_this_module():
    adapter = get_adapter("fastai")
    assert isinstance(adapter, FastaiAdapter)
    import fastai

    assert fastai.__file__.endswith("site-packages/fastai/__init__.py")


@pytest.mark.parametrize("task", TASKS)
def test_aligned_fp32_is_bitwise_equal_to_native(inline, task):
    candidate = spec(task=task, steps=5)
    result, _, cand = verdict(inline, native_of(candidate), candidate)
    assert result.verdict == "bitwise" == declared(candidate), result.describe()
    assert len(cand["trajectory"]["losses"]) == 5
    assert cand["notes"]["precision_impl"] == "fp32"
    assert cand["notes"]["optimizer"].startswith("OptimWrapper(")
    assert "ProgressCallback" not in cand["notes"]["callbacks"]
    assert "SkipValidation" in cand["notes"]["callbacks"]


@pytest.mark.parametrize("task", ["digits", "tabular"])
def test_cpu_bf16_callback_equals_native_bf16_and_is_really_bf16(inline, task):
    candidate = spec(task=task, precision="bf16-mixed", steps=5)
    result, _, cand = verdict(inline, native_of(candidate), candidate)
    assert result.verdict == "bitwise" == declared(candidate), result.describe()
    assert "CpuBf16" in cand["notes"]["precision_impl"]
    fp32 = inline(spec(task=task, steps=5))
    assert fp32["trajectory"]["losses"] != cand["trajectory"]["losses"]  # it did not train in fp32


def _autocast_seen_in_forward(extra_callbacks) -> bool:
    """Train a tiny Learner one batch and report whether CPU bf16 autocast was on in the forward."""
    from fastai.callback.core import Callback, CancelFitException
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from torch.utils.data import DataLoader, TensorDataset

    class Spy(Callback):
        order = 11  # after MixedPrecision/CpuBf16 entered autocast in before_batch

        def before_batch(self):
            self.learn.autocast_seen = torch.is_autocast_enabled("cpu")

        def after_batch(self):
            raise CancelFitException()

    data = TensorDataset(torch.randn(8, 4), torch.randint(0, 2, (8,)))
    dls = DataLoaders(DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    learn = Learner(dls, torch.nn.Linear(4, 2), loss_func=torch.nn.functional.cross_entropy, default_cbs=False)
    from fastai.callback.core import TrainEvalCallback

    learn.add_cbs([TrainEvalCallback(), Spy(), *extra_callbacks])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        learn.fit(1)
    return learn.autocast_seen


def test_fastai_mixed_precision_is_a_silent_fp32_no_op_on_cpu_and_ours_is_not():
    from fastai.callback.fp16 import AMPMode, MixedPrecision

    assert not torch.cuda.is_available()
    assert _autocast_seen_in_forward([MixedPrecision(amp_mode=AMPMode.BF16)]) is False
    assert _autocast_seen_in_forward([CpuBf16()]) is True


def test_gradient_accumulation_counts_samples_and_matches_native(inline):
    candidate = spec(grad_accum=3, steps=4)
    result, _, cand = verdict(inline, native_of(candidate), candidate)
    assert result.verdict == "bitwise" == declared(candidate), result.describe()
    assert cand["notes"]["grad_accum_impl"] == "GradientAccumulation(n_acc=48)"
    assert len(cand["trajectory"]["losses"]) == 4
    # Same effective batch without accumulation: the same math up to summation order.
    big_batch = native_of(candidate, batch_size=48, grad_accum=1)
    result, _, _ = verdict(inline, big_batch, candidate)
    assert result.verdict in ("bitwise", "close"), result.describe()


def test_defaults_mode_runs_the_default_callbacks_and_fastai_optimizer(inline, capsys):
    candidate = spec(task="tabular", mode="defaults", batch_size=32, steps=16, lr=1e-3)
    result = inline(candidate)
    assert result["status"] == "ok", result.get("traceback")
    assert len(result["trajectory"]["losses"]) == 16  # cancelled after exactly job.steps, mid second epoch
    notes = result["notes"]
    assert {"Recorder", "ProgressCallback", "TrainEvalCallback"} <= set(notes["callbacks"])
    assert notes["optimizer"] == {"optimizer": "fastai.optimizer.Adam", "decouple_wd": True, "wd": 1e-2}
    assert notes["epochs"] == 2  # 455 rows // 32 = 14 batches per epoch: validation ran after the first
    assert "valid_loss" in capsys.readouterr().out  # the Recorder's epoch table
    reference = inline(native_of(candidate))
    assert compare_files(reference, result, inline.results_dir).verdict == "not-comparable" == declared(candidate)


def test_fastai_optimizer_mapping():
    sgd, _ = fastai_optimizer(OptimizerRecipe(optimizer=torch.optim.SGD, hyper={"momentum": 0.9}))
    assert sgd.keywords == {"mom": 0.9, "decouple_wd": False}
    adamw, _ = fastai_optimizer(
        OptimizerRecipe(optimizer=torch.optim.AdamW, hyper={"betas": (0.9, 0.95), "weight_decay": 0.1})
    )
    assert adamw.keywords == {"mom": 0.9, "sqr_mom": 0.95, "wd": 0.1, "decouple_wd": True}
    adam, _ = fastai_optimizer(OptimizerRecipe(optimizer=torch.optim.Adam, hyper={}))
    assert adam.keywords == {"decouple_wd": False}
    with pytest.raises(Unsupported, match="nesterov"):
        fastai_optimizer(OptimizerRecipe(optimizer=torch.optim.SGD, hyper={"momentum": 0.9, "nesterov": True}))
    with pytest.raises(Unsupported, match="RMSprop"):
        fastai_optimizer(OptimizerRecipe(optimizer=torch.optim.RMSprop))


def test_check_accepts_fp16_on_cpu_and_cuda():
    # On CPU through CpuMixedPrecision (fastai's callback, CPU device): tests/adapters/test_fp16.py
    adapter, task = FastaiAdapter(), get_task("scaling")
    common = {"task": task, "mode": "aligned", "world_size": 1}
    assert adapter.check(Request(precision="fp16-mixed", device_type="cpu", **common)) is None
    assert adapter.check(Request(precision="fp16-mixed", device_type="cuda", **common)) is None
    assert adapter.check(Request(precision="bf16-mixed", device_type="cpu", **common)) is None


@given(
    task=st.sampled_from(["scaling", "digits"]),
    seed=st.integers(0, 2**16),
    batch_size=st.integers(1, 24),
    steps=st.integers(1, 5),
    grad_accum=st.integers(1, 3),
    lr=st.floats(1e-3, 0.2),
    precision=st.sampled_from(["fp32", "bf16-mixed"]),
)
def test_property_aligned_matches_native_bitwise(
    tmp_path_factory, task, seed, batch_size, steps, grad_accum, lr, precision
):
    from harness.worker import run_inline

    results_dir = tmp_path_factory.mktemp("fastai-property")
    candidate = spec(
        task=task, seed=seed, batch_size=batch_size, steps=steps, grad_accum=grad_accum, lr=lr, precision=precision
    )
    ref = run_inline(native_of(candidate), results_dir)
    cand = run_inline(candidate, results_dir)
    assert cand["status"] == "ok", cand.get("traceback")
    result = compare_files(ref, cand, results_dir)
    assert result.verdict == declared(candidate), result.describe()


def test_ddp_aligned_is_bitwise_with_native_ddp(tmp_path):
    options = RunOptions(results_dir=tmp_path, timeout_s=300)
    candidate = spec(world_size=2, steps=4, batch_size=8)
    ref = run_spec(native_of(candidate), options)
    cand = run_spec(candidate, options)
    assert cand["status"] == "ok", cand.get("error")
    result = compare_files(ref, cand, tmp_path)
    assert result.verdict == "bitwise" == declared(candidate), result.describe()
    assert "distrib_ctx" in cand["notes"]["ddp_route"]


@pytest.fixture
def gloo_group(tmp_path):
    """A one-process gloo group in this process, torn down after the test."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_stock_distributed_dl_needs_cuda_and_the_gloo_subclass_does_not(gloo_group):
    from fastai.data.core import TfmdDL
    from fastai.distributed import DistributedDL
    from torch.utils.data import TensorDataset

    from adapters.fastai import GlooDistributedDL

    data = TensorDataset(torch.arange(12).float(), torch.arange(12))
    with pytest.raises(RuntimeError):  # LongTensor(idxs).cuda() on a machine without CUDA
        list(DistributedDL(TfmdDL(data, bs=4, shuffle=True, num_workers=0), rank=0, world_size=1))
    batches = list(GlooDistributedDL(TfmdDL(data, bs=4, shuffle=True, num_workers=0), rank=0, world_size=1))
    targets = torch.cat([targets for _, targets in batches])
    assert sorted(targets.tolist()) == list(range(12))


@pytest.mark.slow
def test_ddp_defaults_runs_under_gloo(tmp_path):
    options = RunOptions(results_dir=tmp_path, timeout_s=300)
    defaults = run_spec(spec(task="tabular", mode="defaults", world_size=2, steps=4, lr=1e-3), options)
    assert defaults["status"] == "ok", defaults.get("error")
    assert len(defaults["trajectory"]["losses"]) == 4
    assert "gloo" in defaults["notes"]["ddp_route"]
    assert defaults["notes"]["sync_bn"] is False  # SyncBatchNorm refuses CPU tensors
