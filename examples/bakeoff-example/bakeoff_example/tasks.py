"""A task: three interleaved spirals in the plane, classified by a small MLP.

Everything that must be identical across adapters lives here: the data (generated from a fixed
seed, so it never depends on the run's seed), the initial weights (``seeded_init``), the loss,
the metric, the optimizer recipe and the tolerances.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bakeoff import (
    STANDARD_DRIFT,
    STANDARD_TOLERANCES,
    Inferable,
    OptimizerRecipe,
    Task,
    TaskDefaults,
    fixed_split,
    seeded_init,
    tensor_data,
)

DATA_SEED = 7


def spirals(points_per_class: int, classes: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(DATA_SEED)
    radius = torch.linspace(0.05, 1.0, points_per_class)
    inputs, labels = [], []
    for label in range(classes):
        angle = radius * 4.0 + label * 2.0 * math.pi / classes
        angle = angle + noise * torch.randn(points_per_class, generator=generator)
        inputs.append(torch.stack([radius * torch.sin(angle), radius * torch.cos(angle)], dim=1))
        labels.append(torch.full((points_per_class,), label, dtype=torch.long))
    return torch.cat(inputs), torch.cat(labels)


class Spirals(Task):
    name = "example-spirals"
    description = "three interleaved 2-D spirals (generated), MLP classifier, accuracy"
    defaults = TaskDefaults(batch_size=32, steps=30, lr=0.1)
    optimizer = OptimizerRecipe(optimizer=torch.optim.SGD, hyper={"momentum": 0.9})
    tolerances = STANDARD_TOLERANCES
    precision_drift = STANDARD_DRIFT
    options = {"hidden": 64, "points": 512}
    target_metric = 0.6

    def validate_options(self, options) -> None:
        if not 4 <= options["hidden"] <= 4096:
            raise ValueError("task option 'hidden' must be between 4 and 4096")
        if not 64 <= options["points"] <= 100_000:
            raise ValueError("task option 'points' must be between 64 and 100000")

    def build_data(self, options):
        inputs, labels = spirals(options["points"], classes=3, noise=0.2)
        train, valid = fixed_split(len(labels), 0.25)
        return tensor_data(
            (inputs[train], labels[train]),
            (inputs[valid], labels[valid]),
            inferable=Inferable(num_classes=3, input_shape=(2,)),
            source=f"generated: 3 spirals x {options['points']} points, noise 0.2, seed {DATA_SEED}",
        )

    def build_model(self, seed, options, data):
        hidden = options["hidden"]

        def mlp() -> nn.Module:
            return nn.Sequential(
                nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 3)
            )

        return seeded_init(seed, mlp)
