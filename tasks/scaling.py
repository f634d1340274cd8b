"""A synthetic MLP whose width is a parameter, so per-step cost can be swept.

Sweeping ``width`` changes the compute per step while the library's per-step work stays the
same; fitting step time = fixed + proportional·FLOPs separates the two.
"""

from __future__ import annotations

import torch
from torch import nn

from tasks.base import Inferable, OptimizerRecipe, Task, TaskDefaults, fixed_split, seeded_init, tensor_data
from tasks.tolerances import STANDARD_DRIFT, STANDARD_TOLERANCES

IN_FEATURES = 32
NUM_CLASSES = 10


class ScalingMLP(nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(IN_FEATURES, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        layers.append(nn.Linear(width, NUM_CLASSES))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


def flops_per_sample(width: int, depth: int) -> int:
    """Forward + backward multiply-adds ×2 (≈ 6 × parameters of the linear layers)."""
    weights = IN_FEATURES * width + (depth - 1) * width * width + width * NUM_CLASSES
    return 6 * weights


class Scaling(Task):
    name = "scaling"
    description = "synthetic teacher-labelled data, MLP of adjustable width/depth, accuracy"
    defaults = TaskDefaults(batch_size=64, steps=100, lr=0.05)
    optimizer = OptimizerRecipe(optimizer=torch.optim.SGD, hyper={"momentum": 0.9})
    tolerances = STANDARD_TOLERANCES
    precision_drift = STANDARD_DRIFT
    options = {"width": 64, "depth": 2, "samples": 4096}

    def validate_options(self, options) -> None:
        if not 1 <= options["width"] <= 16384:
            raise ValueError("task option 'width' must be between 1 and 16384")
        if not 1 <= options["depth"] <= 64:
            raise ValueError("task option 'depth' must be between 1 and 64")
        if not 16 <= options["samples"] <= 1_000_000:
            raise ValueError("task option 'samples' must be between 16 and 1000000")

    def build_data(self, options):
        generator = torch.Generator()
        generator.manual_seed(20240607)
        features = torch.randn(options["samples"], IN_FEATURES, generator=generator)
        teacher = torch.randn(IN_FEATURES, NUM_CLASSES, generator=generator)
        labels = (features @ teacher).argmax(dim=1)
        train_idx, valid_idx = fixed_split(len(labels), 0.2)
        return tensor_data(
            (features[train_idx], labels[train_idx]),
            (features[valid_idx], labels[valid_idx]),
            inferable=Inferable(num_classes=NUM_CLASSES, input_shape=(IN_FEATURES,)),
            source=f"generated: {options['samples']} samples x {IN_FEATURES} features, linear teacher",
        )

    def build_model(self, seed, options, data):
        return seeded_init(seed, lambda: ScalingMLP(options["width"], options["depth"]))
