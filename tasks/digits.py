"""scikit-learn's bundled 8×8 handwritten digits with a small CNN (no download)."""

from __future__ import annotations

import torch
from torch import nn

from tasks.base import (
    Inferable,
    OptimizerRecipe,
    Task,
    TaskDefaults,
    fixed_split,
    seeded_init,
    tensor_data,
)
from tasks.tolerances import STANDARD_DRIFT, STANDARD_TOLERANCES


class DigitsCNN(nn.Module):
    def __init__(self, channels: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(2 * channels * 4 * 4, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images).flatten(1))


class Digits(Task):
    name = "digits"
    description = "scikit-learn handwritten digits (1797 8x8 images), 2-conv CNN, accuracy"
    defaults = TaskDefaults(batch_size=64, steps=60, lr=0.05)
    optimizer = OptimizerRecipe(optimizer=torch.optim.SGD, hyper={"momentum": 0.9})
    tolerances = STANDARD_TOLERANCES
    precision_drift = STANDARD_DRIFT
    preload = ("sklearn.datasets",)
    options = {"channels": 16}
    target_metric = 0.9

    def validate_options(self, options) -> None:
        if not 1 <= options["channels"] <= 512:
            raise ValueError("task option 'channels' must be between 1 and 512")

    def build_data(self, options):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
        labels = torch.tensor(bunch.target, dtype=torch.long)
        train_idx, valid_idx = fixed_split(len(labels), 0.2)
        return tensor_data(
            (images[train_idx], labels[train_idx]),
            (images[valid_idx], labels[valid_idx]),
            inferable=Inferable(num_classes=10, input_shape=(1, 8, 8)),
            source="sklearn.datasets.load_digits",
        )

    def build_model(self, seed, options, data):
        return seeded_init(seed, lambda: DigitsCNN(options["channels"], data.inferable.num_classes))
