"""Tasks: same seed ⇒ same weights; options validated; vision loaders read the real on-disk formats."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch

from harness.registry import get_task, task_names


@pytest.mark.parametrize("name", ["digits", "tabular", "charlm", "scaling", "families"])
def test_same_seed_same_weights_regardless_of_global_rng(name):
    task = get_task(name)
    options = task.resolve_options({})
    data = task.build_data(options)
    first = task.build_model(3, options, data).state_dict()
    torch.manual_seed(12345)  # the global RNG must not matter
    torch.rand(100)
    second = task.build_model(3, options, data).state_dict()
    other = task.build_model(4, options, data).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())
    assert data.digest == task.build_data(options).digest  # data is deterministic too


@pytest.mark.parametrize("name", ["digits", "tabular", "charlm", "scaling", "families"])
def test_model_output_fits_loss_and_metric(name):
    task = get_task(name)
    options = task.resolve_options({})
    data = task.build_data(options)
    model = task.build_model(0, options, data)
    inputs, targets = data.train[list(range(4))]
    output = model(inputs)
    loss = task.loss(output, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.isfinite(task.metric(output, targets))
    assert task.tolerances.keys() >= {"fp32", "bf16-mixed", "fp16-mixed"}


def test_charlm_reads_a_corpus_file(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("hello world, hello bakeoff. " * 200, encoding="utf-8")
    task = get_task("charlm")
    data = task.build_data(task.resolve_options({"corpus": str(corpus), "block_size": 16}))
    assert data.inferable.num_classes == len(set(corpus.read_text()))
    assert data.source == "file tiny.txt"
    with pytest.raises(ValueError, match="no such file"):
        task.resolve_options({"corpus": str(tmp_path / "missing.txt")})


def write_idx(path, array: np.ndarray) -> None:
    """MNIST's IDX format: magic (0x08 = unsigned byte, then the rank), big-endian dims, data."""
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_loads_tiny_files_in_torchvision_format(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", 40), ("t10k", 12)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (count,)))
    task = get_task("mnist")
    options = task.resolve_options({"root": str(tmp_path)})
    data = task.build_data(options)
    images, labels = data.train.tensors
    assert images.shape == (40, 1, 28, 28) and labels.shape == (40,)
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert data.inferable.num_classes == 10
    model = task.build_model(0, options, data)
    assert model(images[:2]).shape == (2, 10)


def test_cifar10_loads_tiny_pickles_in_torchvision_format(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 4).tolist()}
        (folder / name).write_bytes(pickle.dumps(batch))
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": classes}))
    task = get_task("cifar10")
    data = task.build_data(task.resolve_options({"root": str(tmp_path)}))
    images, _labels = data.train.tensors
    assert images.shape == (20, 3, 32, 32) and len(data.valid) == 4
    assert data.inferable.num_classes == 10


def test_missing_vision_data_is_a_clear_error(tmp_path):
    task = get_task("mnist")
    with pytest.raises(ValueError, match=f"no MNIST under {tmp_path}"):
        task.build_data(task.resolve_options({"root": str(tmp_path)}))


def test_every_registered_task_declares_defaults_and_tolerances():
    for name in task_names():
        task = get_task(name)
        assert task.defaults.batch_size > 0 and task.defaults.steps > 0 and task.defaults.lr > 0
        for precision in ("fp32", "bf16-mixed"):
            tolerance = task.tolerances[precision]
            assert 0 < tolerance.loss_rtol < 1 and 0 < tolerance.weight_rtol < 1
