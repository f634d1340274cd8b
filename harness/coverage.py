"""Sample coverage: which samples each rank trained on, epoch by epoch, counted (no torch here).

A fact about a run beside its parity verdict, never an input to it: did every epoch train every
sample exactly once, or were some repeated (padding a sampler to equal shards, ``even_batches``),
some dropped (a truncated last batch), some batches short, and does the data order follow the
spec's seed at all.

The worker hands :func:`coverage` each rank's trained batches, epoch by epoch (the harness
sampler's rebuilt from its seed; a library's own loader's recorded at dataset access, see
kernels/sampling.py), and stores the result as ``result["coverage"]``. :func:`describe` turns
one result's coverage into the short phrase a report shows.

``result["coverage"]`` (schema ``bakeoff.coverage/1``)::

    recorded            true; false with "reason" and nothing else when the ids could not be known
    source              "harness sampler" | "library loader"
    method              how the ids were obtained, in words
    sampler             the sampler that drew them (the library's own, as it built it)
    dataset_size        samples in the training set
    world_size, batch_size (per rank), grad_accum
    batches_per_epoch   per rank
    micro_batches_trained  per rank (from the probe: micro-batches of completed optimizer steps)
    samples_trained     over all ranks
    order               {"follows_spec_seed": bool|null, "seed_source": str, "digest": sha256 of every
                         rank's trained id sequence, "step_digest": sha256 of each optimizer step's sorted ids
                         over all ranks and micro-batches (equal for runs that train the same samples per step
                         whatever their world size or accumulation)}
    epochs              per epoch, in order:
        epoch           0-based
        complete        every rank trained at least batches_per_epoch batches of it (a run may stop mid-epoch;
                        a loader that replays an epoch shows more, and the replayed draws as duplicates)
        batches, samples   over all ranks
        distinct        distinct ids among them
        duplicates      samples - distinct: draws of an id already drawn in this epoch
        cross_rank      ids drawn on more than one rank in this epoch
        dropped         ids never drawn in this epoch (complete epochs only; null for a partial one)
        short_batches   batches smaller than batch_size; short_batch_sizes: their distinct sizes
        exactly_once    complete, no duplicates, nothing dropped
        per_rank        [{"rank", "batches", "samples", "duplicates" (within the rank), "short_batches"}]
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

SCHEMA = "bakeoff.coverage/1"

Batches = list[list[int]]
"""One epoch of one rank: its batches of sample ids, in training order."""


def not_recorded(reason: str) -> dict[str, Any]:
    return {"schema": SCHEMA, "recorded": False, "reason": reason}


def split_epochs(batches: Sequence[Sequence[int]], batches_per_epoch: int, trained: int) -> list[Batches]:
    """Fetched batches (in order) → the first ``trained`` of them, cut into epochs of ``batches_per_epoch``.

    A loader that fetches ahead (Lightning, accelerate) has fetched batches that never trained; they
    are the last ones, and dropped here.
    """
    if batches_per_epoch < 1:
        raise ValueError(f"batches per epoch must be positive, got {batches_per_epoch}")
    kept = [list(batch) for batch in batches[:trained]]
    return [kept[start : start + batches_per_epoch] for start in range(0, len(kept), batches_per_epoch)]


def trained_passes(passes: Sequence[tuple[int, Sequence[Sequence[int]]]], trained: int) -> list[Batches]:
    """``(epoch number, batches handed out)`` per pass, in order → the first ``trained`` batches, per epoch.

    Passes of the same epoch number are joined (first-seen order): a loader that iterates an epoch
    twice trains its samples twice, and joined they count as duplicates.
    """
    merged: dict[int, Batches] = {}
    remaining = trained
    for epoch, batches in passes:
        kept = [list(batch) for batch in batches[: max(remaining, 0)]]
        remaining -= len(kept)
        if kept:
            merged.setdefault(epoch, []).extend(kept)
    return list(merged.values())


def trim_epochs(epochs: Sequence[Sequence[Sequence[int]]], trained: int) -> list[Batches]:
    """Per-epoch batches (in order) → only the first ``trained`` batches overall, empty epochs dropped."""
    kept: list[Batches] = []
    remaining = trained
    for epoch in epochs:
        if remaining <= 0:
            break
        batches = [list(batch) for batch in epoch[:remaining]]
        remaining -= len(batches)
        if batches:
            kept.append(batches)
    return kept


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()


def step_sets(ranks: Sequence[Sequence[Batches]], grad_accum: int) -> list[list[int]]:
    """Each optimizer step's sample ids over all ranks and micro-batches, sorted."""
    flat = [[batch for epoch in epochs for batch in epoch] for epochs in ranks]
    steps = min((len(batches) for batches in flat), default=0) // grad_accum
    return [
        sorted(i for batches in flat for batch in batches[step * grad_accum : (step + 1) * grad_accum] for i in batch)
        for step in range(steps)
    ]


def coverage(
    ranks: Sequence[Sequence[Batches]],
    *,
    dataset_size: int,
    batch_size: int,
    grad_accum: int = 1,
    batches_per_epoch: int | None,
    source: str,
    method: str,
    sampler: str | None = None,
    follows_spec_seed: bool | None = None,
    seed_source: str | None = None,
) -> dict[str, Any]:
    """The coverage record (see the module docstring) of ``ranks[r]`` = rank r's trained epochs.

    An epoch is complete when every rank trained ``batches_per_epoch`` batches of it; when that is
    unknown (None), every epoch but the last counts as complete.
    """
    world_size = len(ranks)
    epoch_count = max((len(epochs) for epochs in ranks), default=0)
    epochs = []
    for index in range(epoch_count):
        per_rank_batches = [epochs_of_rank[index] if index < len(epochs_of_rank) else [] for epochs_of_rank in ranks]
        if batches_per_epoch is not None:
            complete = all(len(batches) >= batches_per_epoch for batches in per_rank_batches)
        else:
            complete = index < epoch_count - 1
        epochs.append(_epoch(index, per_rank_batches, complete, dataset_size, batch_size))
    micro_batches = [sum(len(epoch) for epoch in epochs_of_rank) for epochs_of_rank in ranks]
    return {
        "schema": SCHEMA,
        "recorded": True,
        "source": source,
        "method": method,
        "sampler": sampler,
        "dataset_size": dataset_size,
        "world_size": world_size,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "batches_per_epoch": batches_per_epoch,
        "micro_batches_trained": micro_batches,
        "samples_trained": sum(epoch["samples"] for epoch in epochs),
        "order": {
            "follows_spec_seed": follows_spec_seed,
            "seed_source": seed_source,
            "digest": _digest([[batch for epoch in epochs_of_rank for batch in epoch] for epochs_of_rank in ranks]),
            "step_digest": _digest(step_sets(ranks, grad_accum)),
        },
        "epochs": epochs,
    }


def _epoch(
    index: int, per_rank: Sequence[Batches], complete: bool, dataset_size: int, batch_size: int
) -> dict[str, Any]:
    counts: Counter[int] = Counter()
    ranks_of: dict[int, set[int]] = {}
    rank_records = []
    short_sizes: set[int] = set()
    for rank, batches in enumerate(per_rank):
        ids = [i for batch in batches for i in batch]
        counts.update(ids)
        for i in ids:
            ranks_of.setdefault(i, set()).add(rank)
        short = [len(batch) for batch in batches if len(batch) < batch_size]
        short_sizes.update(short)
        rank_records.append(
            {
                "rank": rank,
                "batches": len(batches),
                "samples": len(ids),
                "duplicates": len(ids) - len(set(ids)),
                "short_batches": len(short),
            }
        )
    samples = sum(counts.values())
    distinct = len(counts)
    duplicates = samples - distinct
    dropped = dataset_size - distinct if complete else None
    return {
        "epoch": index,
        "complete": complete,
        "batches": sum(record["batches"] for record in rank_records),
        "samples": samples,
        "distinct": distinct,
        "duplicates": duplicates,
        "cross_rank": sum(1 for ranks in ranks_of.values() if len(ranks) > 1),
        "dropped": dropped,
        "short_batches": sum(record["short_batches"] for record in rank_records),
        "short_batch_sizes": sorted(short_sizes),
        "exactly_once": complete and duplicates == 0 and dropped == 0,
        "out_of_range": sum(1 for i in counts if not 0 <= i < dataset_size),
        "per_rank": rank_records,
    }


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else (plural or word + 's')}"


def _facts(epoch: dict[str, Any], dataset_size: int, world_size: int) -> list[str]:
    facts = []
    if epoch["duplicates"]:
        text = f"{_plural(epoch['duplicates'], 'duplicate')} of {dataset_size}"
        if world_size > 1:
            text += f" ({epoch['cross_rank']} across ranks)"
        facts.append(text)
    if epoch["dropped"]:
        facts.append(f"{epoch['dropped']} of {dataset_size} dropped")
    if epoch["short_batches"]:
        facts.append(_plural(epoch["short_batches"], "short batch", "short batches"))
    if epoch.get("out_of_range"):
        facts.append(f"{epoch['out_of_range']} ids outside the data set")
    return facts


def describe(record: dict[str, Any] | None) -> str:
    """One result's coverage in a short phrase for a report cell.

    ``exactly-once`` · ``per epoch: 11 duplicates of 101 (3 across ranks)`` · ``per epoch: 29 of 1437
    dropped`` · ``less than one epoch: no duplicates in 640 draws of 843`` ..., with ``; order
    ignores the spec seed`` when the record says so. Complete epochs that differ give the largest
    count of each kind (``up to``).
    """
    if not record:
        return "not recorded"
    if not record.get("recorded"):
        return f"not recorded: {record.get('reason', 'unknown')}"
    size, world = record["dataset_size"], record["world_size"]
    complete = [epoch for epoch in record["epochs"] if epoch["complete"]]
    if complete:
        shapes = {
            (e["duplicates"], e["cross_rank"], e["dropped"], e["short_batches"], e.get("out_of_range", 0))
            for e in complete
        }
        if len(shapes) == 1:
            facts = _facts(complete[0], size, world)
            text = f"per epoch: {', '.join(facts)}" if facts else "exactly-once"
        else:
            worst = {
                key: max(epoch.get(key) or 0 for epoch in complete)
                for key in ("duplicates", "cross_rank", "dropped", "short_batches", "out_of_range")
            }
            text = f"per epoch, up to: {', '.join(_facts(worst, size, world))}"
        if len(complete) > 1 and text == "exactly-once":
            text += f" ({len(complete)} epochs)"
    elif record["epochs"]:
        partial = record["epochs"][0]
        facts = _facts({**partial, "dropped": None}, size, world)
        drawn = f"{partial['samples']} draws of {size}"
        text = f"less than one epoch: {', '.join(facts) if facts else 'no duplicates'} in {drawn}"
    else:
        text = "no samples trained"
    if record["order"].get("follows_spec_seed") is False:
        text += "; order ignores the spec seed"
    return text
