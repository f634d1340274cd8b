"""scikit-learn's bundled breast-cancer table with an MLP using BatchNorm and dropout."""

from __future__ import annotations

import torch
from torch import nn

from tasks.base import Inferable, OptimizerRecipe, Task, TaskDefaults, fixed_split, seeded_init, tensor_data
from tasks.tolerances import STANDARD_DRIFT, STANDARD_TOLERANCES


class TabularMLP(nn.Module):
    def __init__(self, in_features: int, hidden: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class Tabular(Task):
    name = "tabular"
    description = "scikit-learn breast cancer (569 rows, 30 features), MLP + BatchNorm + dropout, accuracy"
    defaults = TaskDefaults(batch_size=32, steps=60, lr=1e-3)
    optimizer = OptimizerRecipe(optimizer=torch.optim.AdamW, hyper={"weight_decay": 1e-2})
    tolerances = STANDARD_TOLERANCES
    precision_drift = STANDARD_DRIFT
    preload = ("sklearn.datasets",)
    options = {"hidden": 64, "dropout": 0.1}
    target_metric = 0.93
    batch_invariant = False  # BatchNorm statistics and dropout masks depend on the batch
    declared_traits = frozenset({"batchnorm", "rng-in-forward"})

    def validate_options(self, options) -> None:
        if not 1 <= options["hidden"] <= 8192:
            raise ValueError("task option 'hidden' must be between 1 and 8192")
        if not 0.0 <= options["dropout"] < 1.0:
            raise ValueError("task option 'dropout' must be in [0, 1)")

    def build_data(self, options):
        from sklearn.datasets import load_breast_cancer

        bunch = load_breast_cancer()
        features = torch.tensor(bunch.data, dtype=torch.float32)
        labels = torch.tensor(bunch.target, dtype=torch.long)
        train_idx, valid_idx = fixed_split(len(labels), 0.2)
        # Standardize with training statistics only, as a careful user would.
        mean = features[train_idx].mean(0)
        std = features[train_idx].std(0).clamp_min(1e-6)
        features = (features - mean) / std
        return tensor_data(
            (features[train_idx], labels[train_idx]),
            (features[valid_idx], labels[valid_idx]),
            inferable=Inferable(num_classes=2, input_shape=(features.shape[1],)),
            source="sklearn.datasets.load_breast_cancer",
        )

    def build_model(self, seed, options, data):
        in_features = data.inferable.input_shape[0]
        return seeded_init(
            seed,
            lambda: TabularMLP(in_features, options["hidden"], data.inferable.num_classes, options["dropout"]),
        )
