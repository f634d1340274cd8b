"""Model-family traits: every built-in task declares what detection finds on its model, detection
finds each trait on a model planted with it (and nothing on one without), and it changes nothing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.registry import get_task
from tasks.base import cross_entropy
from tasks.families import FAMILIES
from tasks.traits import AUTOCAST_TRAITS, TRAITS, detect_traits

BUILT_IN = [("digits", {}), ("tabular", {}), ("charlm", {}), ("scaling", {})] + [
    ("families", {"family": family}) for family in sorted(FAMILIES)
]


def allowed_undetermined(task_name: str, options: dict, device_type: str = "cpu") -> set[str]:
    """The traits detection may leave undetermined: the autocast ones, exactly where the task itself
    refuses bf16 on this device (a CPU without oneDNN's bf16 LSTM kernel cannot run the probe either)."""
    task = get_task(task_name)
    refused = task.unsupported_reason(task.resolve_options(options), "bf16-mixed", device_type)
    return set(AUTOCAST_TRAITS) if refused else set()


def detected(task_name: str, options: dict) -> dict:
    task = get_task(task_name)
    resolved = task.resolve_options(options)
    data = task.build_data(resolved)
    model = task.build_model(0, resolved, data)
    inputs, targets = data.train[list(range(4))]
    return detect_traits(model, task.loss_for(resolved), inputs, targets, torch.device("cpu"))


@pytest.mark.parametrize(("task_name", "options"), BUILT_IN, ids=lambda value: str(value))
def test_built_in_declarations_match_detection(task_name, options):
    task = get_task(task_name)
    declared = task.traits(task.resolve_options(options))
    found = detected(task_name, options)
    allowed = allowed_undetermined(task_name, options)
    assert set(found["undetermined"]) == allowed, found["undetermined"]
    assert sorted(declared) == found["traits"] or (
        allowed and set(declared) - set(found["traits"]) <= allowed and set(found["traits"]) <= set(declared)
    ), f"{task_name} {options}: declared {sorted(declared)}"
    assert set(declared) <= set(TRAITS)
    # BatchNorm or dropout is what makes a task's math depend on the batch it sees.
    assert task.is_batch_invariant(task.resolve_options(options)) == (not {"batchnorm", "rng-in-forward"} & declared)


class Planted(nn.Module):
    """A linear classifier with one planted family trait (or none)."""

    def __init__(self, trait: str | None) -> None:
        super().__init__()
        self.trait = trait
        self.embedding = nn.Embedding(10, 8, padding_idx=0 if trait == "padding-embedding" else None)
        self.layer = nn.Linear(8, 8)
        self.norm = nn.BatchNorm1d(8) if trait == "batchnorm" else nn.Identity()
        self.head = nn.Linear(8, 10)
        if trait == "tied-weights":
            self.head.weight = self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.layer(self.embedding(tokens).mean(dim=1))
        if self.trait == "weight-reuse":  # the same layer applied twice: a Siamese or recurrent use
            hidden = self.layer(torch.tanh(hidden))
        if self.trait == "rng-in-forward":
            hidden = nn.functional.dropout(hidden, 0.5, self.training)  # functional: no module to find
        return self.head(self.norm(hidden))


def lowp_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.nll_loss(torch.log_softmax(output, dim=-1), target)


@pytest.mark.parametrize(
    "trait", [None, "weight-reuse", "tied-weights", "padding-embedding", "batchnorm", "rng-in-forward"]
)
def test_detection_finds_a_planted_trait_and_nothing_else(trait):
    torch.manual_seed(0)
    model = Planted(trait)
    tokens, targets = torch.randint(0, 10, (4, 5)), torch.randint(0, 10, (4,))
    assert detect_traits(model, cross_entropy, tokens, targets, torch.device("cpu"))["traits"] == (
        [trait] if trait else []
    )


def test_a_loss_that_reads_low_precision_logits_is_detected():
    torch.manual_seed(0)
    model, tokens, targets = Planted(None), torch.randint(0, 10, (4, 5)), torch.randint(0, 10, (4,))
    assert detect_traits(model, lowp_loss, tokens, targets, torch.device("cpu"))["traits"] == [
        "loss-precision-sensitive"
    ]


def test_detection_leaves_rng_buffers_and_modes_as_they_were():
    torch.manual_seed(0)
    model = Planted("batchnorm")
    model.norm.train()
    model.layer.eval()  # a library may keep a submodule in eval mode on purpose
    tokens, targets = torch.randint(0, 10, (4, 5)), torch.randint(0, 10, (4,))
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    rng = torch.get_rng_state()
    detect_traits(model, cross_entropy, tokens, targets, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(buffer, buffers[name]) for name, buffer in model.named_buffers())
    assert model.norm.training and not model.layer.training
    assert all(parameter.grad is None for parameter in model.parameters())
