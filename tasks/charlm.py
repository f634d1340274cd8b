"""A small GPT-style character model (causal attention via scaled_dot_product_attention).

The corpus is generated deterministically from a tiny grammar by default, or read from a text
file given by the ``corpus`` option; validation loss and perplexity are reported.

``preset`` names a size: ``gpt2-100m`` is GPT-2-small's shape (width 768, 12 heads, 1024-token
context) with 14 layers, so that with a character vocabulary (no 38M-parameter token embedding)
it has ~100M parameters; it is the GPU task size. Options given next to a preset override it.
"""

from __future__ import annotations

import math
import random
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from tasks.base import Inferable, OptimizerRecipe, Task, TaskDefaults, Tolerance, seeded_init, tensor_data
from tasks.tolerances import STANDARD_DRIFT

_SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "a child", "the engineer", "our team"]
_VERBS = ["sees", "likes", "builds", "finds", "trains", "measures", "writes", "reads"]
_OBJECTS = ["a model", "the loop", "a small tree", "the red ball", "a long report", "the data"]
_ENDINGS = ["today", "again", "at night", "with care", "in the garden", "very slowly"]


def generated_corpus(characters: int, seed: int = 7) -> str:
    """Sentences from a small grammar: learnable structure, no download, always the same text."""
    rng = random.Random(seed)
    parts: list[str] = []
    length = 0
    while length < characters:
        sentence = f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_ENDINGS)}. "
        parts.append(sentence)
        length += len(sentence)
    return "".join(parts)[:characters]


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, width = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(width, dim=2)
        q, k, v = (t.view(batch, time, self.heads, width // self.heads).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, time, width))
        return x + self.mlp(self.norm2(x))


class CharGPT(nn.Module):
    def __init__(self, vocab: int, block_size: int, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.token = nn.Embedding(vocab, width)
        self.position = nn.Embedding(block_size, width)
        self.blocks = nn.Sequential(*[Block(width, heads) for _ in range(layers)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.size(1), device=tokens.device)
        x = self.token(tokens) + self.position(positions)
        return self.head(self.norm(self.blocks(x)))


PRESETS = {
    "gpt2-100m": {"width": 768, "heads": 12, "layers": 14, "block_size": 1024, "characters": 2_000_000},
}
"""Named sizes: each fills the options it names unless the spec gives them."""


def perplexity(loss: float) -> float:
    """exp(mean cross entropy), capped so a diverged run reports a large finite number."""
    return math.exp(min(loss, 50.0))


class CharLM(Task):
    name = "charlm"
    description = "GPT-style character model (SDPA causal attention) on a generated corpus, perplexity"
    defaults = TaskDefaults(batch_size=16, steps=40, lr=3e-3)
    optimizer = OptimizerRecipe(optimizer=torch.optim.AdamW, hyper={"betas": (0.9, 0.95), "weight_decay": 0.1})
    # Attention and LayerNorm reduce over more elements than the small CNN/MLP tasks, so the
    # fp32 reorder allowance is doubled; mixed-precision allowances are the shared ones.
    tolerances = {
        "fp32": Tolerance(loss_rtol=2e-4, loss_atol=1e-6, weight_rtol=2e-4, weight_atol=2e-6),
        "bf16-mixed": Tolerance(loss_rtol=2e-2, loss_atol=1e-4, weight_rtol=5e-2, weight_atol=1e-3),
        "fp16-mixed": Tolerance(loss_rtol=1e-2, loss_atol=1e-4, weight_rtol=2e-2, weight_atol=1e-3),
    }
    precision_drift = STANDARD_DRIFT
    options = {
        "preset": None,
        "corpus": None,
        "characters": 60_000,
        "block_size": 64,
        "width": 64,
        "layers": 2,
        "heads": 4,
    }
    metric_name = "perplexity"
    higher_is_better = False
    metric_from_loss = staticmethod(perplexity)

    @staticmethod
    def metric(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.exp(F.cross_entropy(output.reshape(-1, output.size(-1)), target.reshape(-1)))

    def resolve_options(self, given):
        preset = given.get("preset")
        if preset is not None and preset not in PRESETS:
            raise ValueError(f"task option 'preset': unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        return super().resolve_options({**PRESETS.get(preset, {}), **given})

    def validate_options(self, options) -> None:
        if options["corpus"] is not None and not Path(options["corpus"]).is_file():
            raise ValueError(f"task option 'corpus': no such file {options['corpus']!r}")
        if not 1_000 <= options["characters"] <= 50_000_000:
            raise ValueError("task option 'characters' must be between 1000 and 50000000")
        if not 4 <= options["block_size"] <= 4096:
            raise ValueError("task option 'block_size' must be between 4 and 4096")
        if options["width"] % options["heads"] != 0 or options["heads"] < 1:
            raise ValueError("task option 'width' must be a positive multiple of 'heads'")
        if not 1 <= options["layers"] <= 96:
            raise ValueError("task option 'layers' must be between 1 and 96")

    def build_data(self, options):
        if options["corpus"] is None:
            text, source = generated_corpus(options["characters"]), "generated grammar corpus"
        else:
            text = Path(options["corpus"]).read_text(encoding="utf-8")[: options["characters"]]
            source = f"file {Path(options['corpus']).name}"
        vocabulary = sorted(set(text))
        lookup = {character: index for index, character in enumerate(vocabulary)}
        tokens = torch.tensor([lookup[c] for c in text], dtype=torch.long)
        block = options["block_size"]
        windows = (len(tokens) - 1) // block
        if windows < 10:
            raise ValueError(f"corpus too short: {len(tokens)} characters for block_size {block}")
        inputs = tokens[: windows * block].view(windows, block)
        targets = tokens[1 : windows * block + 1].view(windows, block)
        split = windows - max(1, windows // 10)  # the last 10% of the text validates
        return tensor_data(
            (inputs[:split], targets[:split]),
            (inputs[split:], targets[split:]),
            inferable=Inferable(num_classes=len(vocabulary), input_shape=(block,)),
            source=source,
        )

    def build_model(self, seed, options, data):
        vocab = data.inferable.num_classes
        return seeded_init(
            seed,
            lambda: CharGPT(vocab, options["block_size"], options["width"], options["layers"], options["heads"]),
        )
