"""MNIST and CIFAR-10 read from a local directory in torchvision's on-disk format.

Nothing downloads at run time: ``root`` must already hold the files (``MNIST/raw/*-ubyte`` or
``cifar-10-batches-py/``), fetched beforehand on a machine with a network.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from tasks.base import Inferable, OptimizerRecipe, Task, TaskDefaults, seeded_init, tensor_data
from tasks.tolerances import STANDARD_DRIFT, STANDARD_TOLERANCES

DEFAULT_ROOT = os.environ.get("BAKEOFF_DATA", "data")


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int, side: int, num_classes: int, channels: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(2 * channels * (side // 4) ** 2, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images).flatten(1))


def _images_to_tensor(data, channels_last: bool) -> torch.Tensor:
    images = torch.as_tensor(data).float() / 255.0
    if channels_last:  # CIFAR stores HWC uint8
        images = images.permute(0, 3, 1, 2)
    else:
        images = images.unsqueeze(1)
    return images.contiguous()


class _VisionTask(Task):
    defaults = TaskDefaults(batch_size=64, steps=100, lr=0.05)
    optimizer = OptimizerRecipe(optimizer=torch.optim.SGD, hyper={"momentum": 0.9})
    tolerances = STANDARD_TOLERANCES
    precision_drift = STANDARD_DRIFT
    options = {"root": None, "channels": 32, "limit": 0}
    in_channels: int
    side: int

    def validate_options(self, options) -> None:
        if options["limit"] < 0:
            raise ValueError("task option 'limit' must be >= 0 (0 means the whole split)")

    def root(self, options) -> Path:
        return Path(options["root"] or DEFAULT_ROOT)

    def load_split(self, root: Path, train: bool):
        raise NotImplementedError

    def build_data(self, options):
        root = self.root(options)
        train, valid = self.load_split(root, True), self.load_split(root, False)
        limit = options["limit"] or None
        channels_last = self.in_channels == 3
        train_x = _images_to_tensor(train.data[:limit], channels_last)
        valid_x = _images_to_tensor(valid.data[:limit], channels_last)
        train_y = torch.as_tensor(train.targets[:limit], dtype=torch.long)
        valid_y = torch.as_tensor(valid.targets[:limit], dtype=torch.long)
        return tensor_data(
            (train_x, train_y),
            (valid_x, valid_y),
            inferable=Inferable(num_classes=len(train.classes), input_shape=(self.in_channels, self.side, self.side)),
            source=f"torchvision {type(train).__name__} from {root}",
        )

    def build_model(self, seed, options, data):
        return seeded_init(
            seed, lambda: SmallCNN(self.in_channels, self.side, data.inferable.num_classes, options["channels"])
        )


class MNIST(_VisionTask):
    name = "mnist"
    description = "MNIST from a local torchvision-format directory (option root), small CNN, accuracy"
    in_channels, side = 1, 28

    def load_split(self, root, train):
        from torchvision.datasets import MNIST as TorchvisionMNIST

        try:
            return TorchvisionMNIST(str(root), train=train, download=False)
        except RuntimeError as error:
            raise ValueError(f"no MNIST under {root}: expected {root}/MNIST/raw/*-ubyte ({error})") from None


class CIFAR10(_VisionTask):
    name = "cifar10"
    description = "CIFAR-10 from a local torchvision-format directory (option root), small CNN, accuracy"
    in_channels, side = 3, 32

    def load_split(self, root, train):
        from torchvision.datasets import CIFAR10 as TorchvisionCIFAR10

        class LocalCIFAR10(TorchvisionCIFAR10):
            # torchvision checks each file against the MD5 of the official archive; a checksum
            # of None makes it check existence only, so any files in that format load (tests
            # build tiny ones). Our own data digest identifies what a run trained on.
            train_list = [(name, None) for name, _ in TorchvisionCIFAR10.train_list]
            test_list = [(name, None) for name, _ in TorchvisionCIFAR10.test_list]
            meta = {**TorchvisionCIFAR10.meta, "md5": None}

        try:
            return LocalCIFAR10(str(root), train=train, download=False)
        except RuntimeError as error:
            raise ValueError(f"no CIFAR-10 under {root}: expected {root}/cifar-10-batches-py ({error})") from None
