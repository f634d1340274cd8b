"""The claims ledger on a small synthetic result set: one claim each supported, contradicted and not decidable.

The runs are synthetic results (no training): a native and a Lightning run with equal losses and
weights (bitwise), a Lightning fp16 run on the CPU whose notes say the adapter had to route around
``Trainer(precision="16-mixed")``, and nothing on a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reports import claims as ledger
from reports.build import assemble
from reports.source import records_from_results
from tests.reports.synthetic import make_result, save, spec

LEDGER = '''
[[claim]]
id = "parity"
library = "PyTorch Lightning"
adapter = "lightning"
claim = "Same losses as plain PyTorch."
source = { url = "https://example.org/parity", quote = "the losses match", date = "2024" }
selector = { precision = "fp32", world_size = 1, grad_accum = 1 }
rule = { kind = "parity", at_least = "close" }

[[claim]]
id = "flag"
library = "PyTorch Lightning"
adapter = "lightning"
claim = "Trainer(precision=16) trains in float16 on the CPU."
source = { url = "https://example.org/flag", quote = "can be used on CPU", date = "2024" }
selector = { precision = "fp16-mixed", device = "cpu" }
rule = { kind = "trains_in", dtype = "float16", flag = true }

[[claim]]
id = "gpu"
library = "PyTorch Lightning"
adapter = "lightning"
claim = "Lightning on a GPU is as fast as plain PyTorch."
source = { url = "https://example.org/gpu", quote = "as fast", date = "2024" }
requires = "cuda"
rule = { kind = "overhead", at_most_us = 5 }

[[claim]]
id = "short-name"
library = "PyTorch Lightning"
adapter = "lightning"
claim = "bf16-mixed trains in bfloat16."
source = { url = "https://example.org/bf16", quote = "bfloat16", date = "2024" }
selector = { precision = "bf16-mixed" }
rule = { kind = "trains_in", dtype = "bfloat16" }

[[claim]]
id = "keras-only"
library = "Keras"
adapter = "keras"
claim = "About a library this report did not run."
source = { url = "https://example.org/keras", quote = "x", date = "2024" }
rule = { kind = "repeats" }
'''
ROUTE = "plugins=[MixedPrecision('16-mixed', 'cpu', GradScaler('cpu'))]: Trainer(precision='16-mixed') on CPU is bf16"


@pytest.fixture
def decided(tmp_path):
    path = tmp_path / "claims.toml"
    path.write_text(LEDGER)
    claims = ledger.load(path)
    results = []
    for adapter in ("native", "lightning"):
        result = make_result(spec(adapter=adapter), digest="a" * 64)
        save(tmp_path, result)
        results.append(result)
    fp16 = make_result(spec(adapter="lightning", precision="fp16-mixed"))
    fp16["notes"] = {"precision_impl": "MixedPrecision plugin: float16 autocast, GradScaler('cpu')",
                     "precision_route": ROUTE}
    save(tmp_path, fp16)
    results.append(fp16)
    bf16 = make_result(spec(adapter="lightning", precision="bf16-mixed"))
    bf16["notes"] = {"precision_impl": "Trainer(precision='bf16-mixed'): torch.autocast(cpu, bf16)"}
    save(tmp_path, bf16)
    results.append(bf16)
    report = assemble(records_from_results(results, tmp_path), {"experiment": "bakeoff-claims", "suite": "claims"},
                      claims=claims, samples=100, with_figures=False)
    return {row["id"]: row for row in report.tables["claims"].rows}


def test_one_claim_each_supported_contradicted_and_not_decidable(decided):
    assert decided["parity"]["status"] == ledger.SUPPORTED, decided["parity"]
    assert "1 bitwise" in decided["parity"]["evidence"] and "of 1 compared" in decided["parity"]["evidence"]
    assert decided["flag"]["status"] == ledger.CONTRADICTED, decided["flag"]
    assert decided["flag"]["reason"] == ROUTE  # the reason is what the run recorded, not a canned sentence
    assert decided["gpu"]["status"] == ledger.UNDECIDED and "needs a CUDA device" in decided["gpu"]["reason"]
    assert decided["short-name"]["status"] == ledger.SUPPORTED, decided["short-name"]  # "bf16" names bfloat16
    assert "keras-only" not in decided  # no Keras run: the claim is not listed at all
    order = [row["status"] for row in decided.values()]
    assert order == sorted(order, key=[ledger.CONTRADICTED, ledger.SUPPORTED, ledger.UNDECIDED].index)


def test_a_ledger_with_an_unknown_rule_or_key_is_refused_with_the_claim_named(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(LEDGER.replace('kind = "repeats"', 'kind = "vibes"'))
    with pytest.raises(ledger.LedgerError, match="claim 'keras-only': rule kind must be one of"):
        ledger.load(path)
    path.write_text(LEDGER.replace('requires = "cuda"', 'requires = "cuda"\nnotes = "x"'))
    with pytest.raises(ledger.LedgerError, match="claim 'gpu': unknown key 'notes'"):
        ledger.load(path)


def test_the_shipped_ledger_loads_and_has_at_least_twelve_sourced_claims():
    claims = ledger.load(Path(ledger.__file__).with_name("claims.toml"))
    assert len(claims) >= 12
    assert all(c["source"]["url"].startswith("https://") and c["source"].get("quote") for c in claims)
