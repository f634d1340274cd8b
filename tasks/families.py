"""Small sequence models, one per model family a training library may treat differently.

The four original tasks (a CNN, an MLP with BatchNorm and dropout, a small GPT, a plain MLP)
never reuse a weight within one forward pass, tie weights, pad embeddings or compute a loss
that reads low-precision logits. Declared parity is a claim about *any* model, so this task
puts each such family behind one option (``family``), on the same generated data: token
sequences (id 0 is padding) labelled with their most frequent token. Every family trains in
CPU seconds.

- ``recurrent``: an Elman cell written by hand (``tanh(W_x x_t + W_h h)``) applied over time:
  its two weights feed 12 matmuls per forward pass (runs in bf16 under autocast, unlike a
  CPU LSTM on some machines);
- ``lstm``: ``nn.LSTM`` (the fused recurrent kernel);
- ``tied``: the embedding matrix is also the output projection;
- ``padded``: ``nn.Embedding(padding_idx=0)`` with a mean over the non-padding tokens;
- ``batchnorm``: an MLP with ``BatchNorm1d`` (batch statistics, running buffers);
- ``dropout``: an MLP with dropout (draws from the RNG in every training step);
- ``fp32-loss``: the loss upcasts the (bf16 under autocast) logits to fp32 before its log-softmax;
- ``lowp-loss``: the same loss without the upcast, so under autocast its log-softmax runs in
  bf16 wherever the library leaves the logits in bf16.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from tasks.base import Inferable, OptimizerRecipe, Task, TaskDefaults, fixed_split, seeded_init, tensor_data
from tasks.tolerances import STANDARD_DRIFT, STANDARD_TOLERANCES

VOCAB = 16
"""Token ids 1..15; 0 is padding. The label is a token id, so there are 16 classes (0 never occurs)."""
LENGTH = 12
MIN_LENGTH = 4
DATA_SEED = 20240917

FAMILIES = {
    "recurrent": frozenset({"weight-reuse"}),
    "lstm": frozenset({"fused-rnn"}),
    "tied": frozenset({"tied-weights"}),
    "padded": frozenset({"padding-embedding"}),
    "batchnorm": frozenset({"batchnorm"}),
    "dropout": frozenset({"rng-in-forward"}),
    "fp32-loss": frozenset(),
    "lowp-loss": frozenset({"loss-precision-sensitive"}),
}
"""Family → the traits (tasks/traits.py) its model has; the tests check them against detection."""


def sequences(samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded token sequences of length 4-12 and, for each, its most frequent token (lowest id on ties)."""
    generator = torch.Generator()
    generator.manual_seed(DATA_SEED)
    lengths = torch.randint(MIN_LENGTH, LENGTH + 1, (samples,), generator=generator)
    tokens = torch.randint(1, VOCAB, (samples, LENGTH), generator=generator)
    tokens = tokens * (torch.arange(LENGTH) < lengths[:, None])
    counts = F.one_hot(tokens, VOCAB)[..., 1:].sum(dim=1)
    labels = counts.argmax(dim=1) + 1  # argmax returns the first maximum: the lowest id
    return tokens, labels


class ElmanRNN(nn.Module):
    """A recurrent cell applied over time; padding positions keep the previous state."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, width)
        self.input = nn.Linear(width, width)
        self.recurrent = nn.Linear(width, width, bias=False)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(tokens)
        keep = (tokens != 0).unsqueeze(-1)
        state = embedded.new_zeros(tokens.size(0), self.recurrent.in_features)
        for step in range(tokens.size(1)):
            candidate = torch.tanh(self.input(embedded[:, step]) + self.recurrent(state))
            state = torch.where(keep[:, step], candidate, state)
        return self.head(state)


class LSTMClassifier(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, width)
        self.lstm = nn.LSTM(width, width, batch_first=True)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(self.embedding(tokens))
        return self.head(hidden[-1])


class TiedBag(nn.Module):
    """Bag of embeddings, one hidden layer, and an output projection tied to the embedding."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, width)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, VOCAB)
        self.head.weight = self.embedding.weight  # the usual tying: one Parameter, two names

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embedding(tokens).mean(dim=1))))


class PaddedBag(nn.Module):
    """Mean of the non-padding token embeddings (the padding row is zero and gets no gradient)."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, width, padding_idx=0)
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Linear(hidden, VOCAB))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        counts = (tokens != 0).sum(dim=1, keepdim=True).clamp_min(1)
        return self.net(self.embedding(tokens).sum(dim=1) / counts)


class FlatMLP(nn.Module):
    """Embeddings flattened into an MLP, with an optional BatchNorm or dropout in the hidden layer."""

    def __init__(self, width: int, hidden: int, *, batchnorm: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB, width)
        layers: list[nn.Module] = [nn.Linear(LENGTH * width, hidden)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.ReLU())
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden, VOCAB))
        self.net = nn.Sequential(*layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(self.embedding(tokens).flatten(1))


def log_softmax_loss(output: torch.Tensor, target: torch.Tensor, *, upcast: bool) -> torch.Tensor:
    """Mean negative log-likelihood from a hand-written log-softmax (``upcast``: in fp32 whatever the logits' dtype)."""
    logits = output.float() if upcast else output
    return F.nll_loss(torch.log_softmax(logits, dim=-1), target)


@functools.cache
def lstm_bf16_cpu_problem() -> str | None:
    """Why plain torch cannot train a bf16 LSTM on this CPU (no oneDNN bf16 kernel on some CPUs), or None.

    Asked of the machine, once per process, rather than assumed: one forward and backward pass of a tiny LSTM.
    """
    try:
        with torch.random.fork_rng(devices=[]):
            lstm = nn.LSTM(4, 4, batch_first=True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                output, _ = lstm(torch.randn(2, 3, 4))
            output.float().sum().backward()
    except Exception as error:
        first_line = str(error).splitlines()[0] if str(error) else ""
        return f"plain torch cannot train a bf16 LSTM on this CPU ({type(error).__name__}: {first_line[:200]})"
    return None


class Families(Task):
    name = "families"
    description = (
        "token sequences, one small model per family (option family: recurrent, lstm, tied, padded, batchnorm, "
        "dropout, fp32-loss, lowp-loss), accuracy"
    )
    defaults = TaskDefaults(batch_size=32, steps=30, lr=3e-3)
    optimizer = OptimizerRecipe(optimizer=torch.optim.AdamW, hyper={"weight_decay": 1e-2})
    tolerances = STANDARD_TOLERANCES
    precision_drift = STANDARD_DRIFT
    options = {"family": "recurrent", "width": 16, "hidden": 32, "samples": 1024, "dropout": 0.2}

    def validate_options(self, options) -> None:
        if options["family"] not in FAMILIES:
            raise ValueError(f"task option 'family' must be one of: {', '.join(FAMILIES)}")
        if not 1 <= options["width"] <= 1024 or not 1 <= options["hidden"] <= 4096:
            raise ValueError("task options 'width' (1-1024) and 'hidden' (1-4096) are out of range")
        if not 64 <= options["samples"] <= 1_000_000:
            raise ValueError("task option 'samples' must be between 64 and 1000000")
        if not 0.0 < options["dropout"] < 1.0:
            raise ValueError("task option 'dropout' must be in (0, 1)")

    def traits(self, options: Mapping[str, Any]) -> frozenset[str]:
        return FAMILIES[options["family"]]

    def is_batch_invariant(self, options: Mapping[str, Any]) -> bool:
        return options["family"] not in ("batchnorm", "dropout")

    def unsupported_reason(self, options, precision, device_type) -> str | None:
        if options["family"] == "lstm" and precision == "bf16-mixed" and device_type == "cpu":
            return lstm_bf16_cpu_problem()
        return super().unsupported_reason(options, precision, device_type)

    def loss_for(self, options: Mapping[str, Any]):
        if options["family"] == "fp32-loss":
            return functools.partial(log_softmax_loss, upcast=True)
        if options["family"] == "lowp-loss":
            return functools.partial(log_softmax_loss, upcast=False)
        return self.loss

    def build_data(self, options):
        tokens, labels = sequences(options["samples"])
        train_idx, valid_idx = fixed_split(len(labels), 0.2)
        return tensor_data(
            (tokens[train_idx], labels[train_idx]),
            (tokens[valid_idx], labels[valid_idx]),
            inferable=Inferable(num_classes=VOCAB, input_shape=(LENGTH,)),
            source=f"generated: {options['samples']} padded token sequences (length {MIN_LENGTH}-{LENGTH}, "
            f"vocabulary {VOCAB}), label = most frequent token",
        )

    def build_model(self, seed, options, data):
        family, width, hidden = options["family"], options["width"], options["hidden"]
        factories = {
            "recurrent": lambda: ElmanRNN(width),
            "lstm": lambda: LSTMClassifier(width),
            "tied": lambda: TiedBag(width),
            "padded": lambda: PaddedBag(width, hidden),
            "batchnorm": lambda: FlatMLP(width, hidden, batchnorm=True),
            "dropout": lambda: FlatMLP(width, hidden, dropout=options["dropout"]),
            "fp32-loss": lambda: FlatMLP(width, hidden),
            "lowp-loss": lambda: FlatMLP(width, hidden),
        }
        return seeded_init(seed, factories[family])
