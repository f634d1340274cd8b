"""The claims ledger: public claims about the libraries, each decided by this report's own figures.

``reports/claims.toml`` holds the claims: where each was made (URL, a short quote, a date), which
of bakeoff's results it is about (a selector) and the rule that decides it. The report evaluates
every claim that concerns a library it ran and says *supported*, *contradicted* or *not decidable
here*, with the numbers and the reason. The ledger as evaluated is kept in the report's raw data,
so ``--verify`` decides the same claims the same way offline.

Rules (``rule.kind``):

- ``overhead``: a per-step cost bound. ``at_most_us`` (µs per step) or ``at_most_s_per_epoch``
  with ``steps_per_epoch``; the figure is the adapter's paired overhead, else its width-sweep fixed
  term, else its difference of medians on a task. Supported when the whole 95% CI is within the
  bound, contradicted when the whole CI is beyond it, not decidable when the CI straddles it.
- ``parity``: comparisons of the selected runs (``role``: declared or single-process) must be
  ``at_least`` a verdict (bitwise > close). Contradicted by any comparable verdict worse than that.
- ``repeats``: repeated runs of the adapter are bitwise identical.
- ``trains_in``: the adapter's selected runs really computed in ``dtype``: contradicted when they
  were refused (``unsupported``) or the recorded implementation says otherwise. With ``flag =
  true`` the claim is about the library's own switch (``precision=16``, ``fp16=True``,
  ``to_fp16()``): also contradicted when the adapter had to reach ``dtype`` another way because
  the switch would not have meant it (the run's ``precision_route`` note says how and why).
- ``infers``: what the inference table says the API does with ``field`` (inferred or stated).
- ``not_decidable``: a claim bakeoff cannot measure here, with the reason (history, needs a GPU).

A claim whose ``requires`` names a device absent from the report (``cuda``) is not decidable here.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reports import numbers
from reports.analysis import Column, Table
from reports.findings import ANCHOR, link

LEDGER = Path(__file__).with_name("claims.toml")
SUPPORTED, CONTRADICTED, UNDECIDED = "supported", "contradicted", "not decidable here"
SEVERITY = {"bitwise": 0, "close": 1, "diverged": 2}
CLAIM_KEYS = {"id", "library", "adapter", "claim", "source", "selector", "rule", "requires"}
SOURCE_KEYS = {"url", "quote", "date"}
RULE_KINDS = {"overhead", "parity", "repeats", "trains_in", "infers", "not_decidable"}
SHORT_DTYPE = {"bfloat16": "bf16", "float16": "fp16"}


class LedgerError(ValueError):
    """A claims file that cannot be read; the message names the claim and the problem."""


def load(path: Path = LEDGER) -> list[dict[str, Any]]:
    """The ledger's claims, checked (unknown keys and rules are errors, not ignored)."""
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise LedgerError(f"claims ledger {path}: {error}") from None
    claims = document.get("claim", [])
    seen = set()
    for index, claim in enumerate(claims):
        where = f"claims ledger {Path(path).name}, claim {claim.get('id', index)!r}"
        unknown = sorted(set(claim) - CLAIM_KEYS)
        if unknown:
            raise LedgerError(f"{where}: unknown key {unknown[0]!r}")
        for key in ("id", "library", "claim", "source", "rule"):
            if key not in claim:
                raise LedgerError(f"{where}: missing {key!r}")
        if claim["id"] in seen:
            raise LedgerError(f"{where}: duplicate id")
        seen.add(claim["id"])
        if set(claim["source"]) - SOURCE_KEYS or not claim["source"].get("url"):
            raise LedgerError(f"{where}: source needs url, quote and date (and nothing else)")
        if claim["rule"].get("kind") not in RULE_KINDS:
            raise LedgerError(f"{where}: rule kind must be one of {', '.join(sorted(RULE_KINDS))}")
    return claims


@dataclass(frozen=True)
class Decision:
    status: str
    evidence: str
    """The numbers the decision rests on, with links to the tables they come from."""
    reason: str = ""


def _matches(row: Mapping[str, Any], selector: Mapping[str, Any]) -> bool:
    for key, wanted in selector.items():
        value = row.get(key)
        if key in ("world_size", "grad_accum") and isinstance(wanted, str) and wanted.startswith(">"):
            if not (value or 1) > int(wanted[1:]):
                return False
        elif value != wanted:
            return False
    return True


def _link(text: str, key: str) -> str:
    return link(text, ANCHOR[key])


def _overhead(claim, tables, frame) -> Decision:
    rule, selector = claim["rule"], dict(claim.get("selector", {}))
    adapter = selector.get("adapter", claim.get("adapter"))
    figure = None
    paired = tables.get("paired")
    for row in paired.rows if paired else []:
        if row.get("adapter") == adapter and row.get("mode", "aligned") == selector.get("mode", "aligned") \
                and row.get("overhead_us") is not None:
            figure = (row["overhead_us"], row.get("overhead_low"), row.get("overhead_high"), "paired", "paired")
            break
    if figure is None:
        for row in tables["scaling"].rows:
            if row["adapter"] == adapter and row["mode"] == selector.get("mode", "aligned") \
                    and row["precision"] == "fp32" and row.get("fixed_minus_native_us") is not None:
                figure = (row["fixed_minus_native_us"], row.get("fixed_minus_native_low"),
                          row.get("fixed_minus_native_high"), "width-sweep fixed term", "scaling")
                break
    if figure is None:
        return Decision(UNDECIDED, "", f"no per-step cost of {adapter} measured in this report")
    value, low, high, what, table = figure
    scale, unit, bound = 1.0, "µs/step", rule.get("at_most_us")
    if "at_most_s_per_epoch" in rule:
        scale, unit, bound = rule["steps_per_epoch"] / 1e6, "s/epoch", rule["at_most_s_per_epoch"]
    if low is None or high is None:
        return Decision(UNDECIDED, f"{numbers.signed(value * scale, unit)} ({what}, no CI)", "no confidence interval")
    shown = numbers.signed_ci(value * scale, low * scale, high * scale, unit)
    evidence = _link(shown, table) + f" ({what}" + (
        f", × {rule['steps_per_epoch']} steps per epoch" if "steps_per_epoch" in rule else "") + ")"
    if high * scale <= bound:
        return Decision(SUPPORTED, evidence, f"the whole 95% CI is at most {numbers.sig(bound)} {unit}")
    if low * scale > bound:
        return Decision(CONTRADICTED, evidence, f"the whole 95% CI is above {numbers.sig(bound)} {unit}")
    return Decision(UNDECIDED, evidence, f"the 95% CI straddles {numbers.sig(bound)} {unit}")


def _parity(claim, tables, frame) -> Decision:
    rule = claim["rule"]
    selector = {"adapter": claim.get("adapter"), "mode": "aligned", **claim.get("selector", {})}
    role = rule.get("role", "declared")
    rows = [r for r in tables["parity"].rows if r["role"] == role and _matches(r, selector)]
    comparable = [r for r in rows if r["verdict"] in SEVERITY]
    if not comparable:
        return Decision(UNDECIDED, "", "no comparable runs of that kind in this report")
    wanted = rule.get("at_least", "close")
    worse = [r for r in comparable if SEVERITY[r["verdict"]] > SEVERITY[wanted]]
    counts: dict[str, int] = {}
    for row in comparable:
        counts[row["verdict"]] = counts.get(row["verdict"], 0) + 1
    evidence = _link(", ".join(f"{n} {v}" for v, n in sorted(counts.items(), key=lambda i: SEVERITY[i[0]])),
                     "parity") + f" of {len(comparable)} compared"
    if worse:
        return Decision(CONTRADICTED, evidence, f"{worse[0]['run']}: {worse[0]['verdict']}, not {wanted}")
    return Decision(SUPPORTED, evidence, f"every comparison is {wanted} or better")


def _repeats(claim, tables, frame) -> Decision:
    adapter = claim.get("adapter")
    rows = [r for r in tables["repeats"].rows if f" {adapter} " in f" {r['cell']} "]
    if not rows:
        return Decision(UNDECIDED, "", f"no repeated runs of {adapter} in this report")
    different = [r for r in rows if r["bitwise"] != "yes"]
    evidence = _link(f"{len(rows) - len(different)} of {len(rows)} repeated cells bitwise identical", "repeats")
    if different:
        return Decision(CONTRADICTED, evidence, f"{different[0]['cell']}: repeats differ")
    return Decision(SUPPORTED, evidence, "same seed, same run: identical losses and weights")


def _trains_in(claim, tables, frame) -> Decision:
    rule = claim["rule"]
    selector = {"adapter": claim.get("adapter"), **claim.get("selector", {})}
    rows = [r for r in frame.to_dict(orient="records") if _matches(r, selector)]
    if not rows:
        return Decision(UNDECIDED, "", "no such runs in this report")
    refused = [r for r in rows if r["status"] == "unsupported"]
    if refused:
        return Decision(CONTRADICTED, _link(f"{len(refused)} run(s) refused", "runs"), str(refused[0]["error"]))
    dtype = rule["dtype"]
    if rule.get("flag"):
        routed = [r for r in rows if r["status"] == "ok" and isinstance(r.get("precision_route"), str)]
        if routed:
            return Decision(CONTRADICTED, _link(f"{len(routed)} run(s) needed another route", "runs"),
                            routed[0]["precision_route"])
    ran = [r for r in rows if r["status"] == "ok" and isinstance(r.get("precision_impl"), str)]
    if not ran:
        return Decision(UNDECIDED, "", "the runs did not record what their precision implementation was")
    names = (dtype, SHORT_DTYPE.get(dtype, dtype))  # implementations say bfloat16 or bf16, float16 or fp16
    wrong = [r for r in ran if not any(name in r["precision_impl"] for name in names)
             or "fp32" in r["precision_impl"].split(":")[0]]
    if wrong:
        return Decision(CONTRADICTED, _link(f"{len(wrong)} of {len(ran)} runs", "runs"), wrong[0]["precision_impl"])
    return Decision(SUPPORTED, _link(f"{len(ran)} runs", "runs"), ran[0]["precision_impl"])


def _infers(claim, tables, frame) -> Decision:
    rule = claim["rule"]
    rows = [r for r in tables["inference"].rows if r["library"].startswith(rule["library"])
            and r["entry_point"].startswith(rule.get("entry_point", ""))]
    if not rows:
        return Decision(UNDECIDED, "", "the inference table has no such entry point for this report's libraries")
    row = rows[0]
    found = row[rule["field"]]
    holds = found.startswith(rule["expect"])
    evidence = _link(f"{rule['field']}: {found.split(':')[0]}", "inference") + f" ({row['library']})"
    return Decision(SUPPORTED if holds else CONTRADICTED, evidence, found)


RULES = {"overhead": _overhead, "parity": _parity, "repeats": _repeats, "trains_in": _trains_in, "infers": _infers}


def decide(claim: Mapping[str, Any], tables: dict[str, Table], frame, devices: set[str]) -> Decision:
    kind = claim["rule"]["kind"]
    if kind == "not_decidable":
        return Decision(UNDECIDED, "", claim["rule"].get("reason", "not a measurement"))
    if claim.get("requires") and claim["requires"] not in devices:
        return Decision(UNDECIDED, "", f"needs a {claim['requires'].upper()} device; this report ran on "
                                       f"{', '.join(sorted(devices)) or 'nothing'}")
    return RULES[kind](claim, tables, frame)


def applicable(claim: Mapping[str, Any], adapters: set[str]) -> bool:
    """Whether the report ran the claim's library (a claim about no library run here is left out)."""
    wanted = claim.get("adapter")
    return wanted is None or any(a == wanted or a.partition("@")[0] == wanted for a in adapters)


def claims_table(ledger: list[dict[str, Any]], tables: dict[str, Table], frame) -> Table:
    adapters = {str(a) for a in frame["adapter"].dropna()}
    devices = {str(d) for d in frame["device"].dropna()}
    rows = []
    for claim in ledger:
        if not applicable(claim, adapters):
            continue
        decision = decide(claim, tables, frame, devices)
        source = claim["source"]
        quote = source.get("quote", "")
        rows.append({
            "id": claim["id"], "library": claim["library"], "claim": claim["claim"],
            "source": f"[{source.get('date', 'undated')}]({source['url']})" + (f": “{quote}”" if quote else ""),
            "status": decision.status, "evidence": decision.evidence or numbers.MISSING, "reason": decision.reason,
        })
    order = {CONTRADICTED: 0, SUPPORTED: 1, UNDECIDED: 2}
    rows.sort(key=lambda r: (order[r["status"]], r["library"], r["id"]))
    columns = [Column("claim", "claim", numeric=False), Column("library", "library", numeric=False),
               Column("status", "verdict here", numeric=False),
               Column("evidence", "evidence", numeric=False, markup=True),
               Column("reason", "why", numeric=False), Column("source", "source", numeric=False, markup=True)]
    note = ("Public claims about the libraries compared here, from their docs and the public debate "
            "(`reports/claims.toml`: source, the results each claim is about and the rule that decides it). "
            "Contradicted claims come first. *Not decidable here* says why: the measurement needs a GPU, the claim "
            "is history, or this report holds no such runs.")
    return Table("claims", "Claims", columns, rows, note)
