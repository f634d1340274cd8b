"""The cost result format, ``bakeoff.cost/1``: one JSON file per measured thing, written atomically.

Three kinds share the schema string and the top-level keys ``schema``, ``kind``, ``status``,
``error``, ``cell_id`` (or ``library``), ``protocol`` and ``environment``:

- ``paired`` — one (task, adapter, mode, precision) cell measured against the native loop in one
  process: rounds, both clocks' paired summaries, syncs per step, attribution;
- ``instructions`` — the same cell under callgrind: instructions per steady-state step per arm and
  round, per-function instruction differences, and the runs' repeatability;
- ``contamination`` — the native loop in clean processes vs processes with one library imported.

Every field is described in ``notes/issue-16.md``. Torch-free, so reports read it without torch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

SCHEMA = "bakeoff.cost/1"
KINDS = ("paired", "instructions", "contamination")
STATUSES = ("ok", "failed", "unsupported")
REQUIRED = ("schema", "kind", "status", "error", "protocol", "environment")


class CostRecordError(ValueError):
    """A cost file that is unreadable, of another schema or missing what its kind needs."""


def file_name(kind: str, key: str) -> str:
    """``paired-<cell_id>.json``, ``instructions-<cell_id>.json``, ``contamination-<library>.json``."""
    if kind not in KINDS:
        raise ValueError(f"unknown cost record kind {kind!r}")
    return f"{kind}-{key}.json"


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def write(path: Path, record: dict[str, Any]) -> Path:
    from harness.result import atomic_write_text  # imported here: harness.result imports torch

    validate(record, where=str(path))
    atomic_write_text(Path(path), json.dumps(_finite(record), indent=1, sort_keys=True, allow_nan=False) + "\n")
    return Path(path)


def validate(record: Any, *, where: str = "cost record") -> None:
    if not isinstance(record, dict):
        raise CostRecordError(f"{where}: a cost record must be a JSON object")
    if record.get("schema") != SCHEMA:
        raise CostRecordError(f"{where}: schema {record.get('schema')!r} is not {SCHEMA!r}")
    missing = [key for key in REQUIRED if key not in record]
    if missing:
        raise CostRecordError(f"{where}: missing {', '.join(missing)}")
    if record["kind"] not in KINDS:
        raise CostRecordError(f"{where}: unknown kind {record['kind']!r}")
    if record["status"] not in STATUSES:
        raise CostRecordError(f"{where}: unknown status {record['status']!r}")
    key = "library" if record["kind"] == "contamination" else "cell_id"
    if not record.get(key):
        raise CostRecordError(f"{where}: a {record['kind']} record needs {key!r}")
    if record["status"] == "ok":
        needed = {"paired": ("rounds", "summary"), "instructions": ("runs", "summary"), "contamination": ("summary",)}
        absent = [name for name in needed[record["kind"]] if name not in record]
        if absent:
            raise CostRecordError(f"{where}: an ok {record['kind']} record needs {', '.join(absent)}")


def read(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CostRecordError(f"{path}: not a readable cost record ({error})") from None
    validate(record, where=str(path))
    return record


def read_folder(folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every cost record in a folder (``paired-*``, ``instructions-*``, ``contamination-*``), and problems."""
    records, problems = [], []
    for path in sorted(Path(folder).glob("*.json")):
        if not path.name.startswith(tuple(f"{kind}-" for kind in KINDS)):
            continue
        try:
            records.append(read(path))
        except CostRecordError as error:
            problems.append(str(error))
    return records, problems


def key_of(record: dict[str, Any]) -> str:
    """What the record measured: ``<kind>:<cell_id>`` or ``contamination:<library>`` (a rerun replaces it)."""
    return f"{record['kind']}:{record.get('cell_id') or record.get('library')}"


def publishable(record: dict[str, Any]) -> dict[str, Any]:
    """The record without the machine's own paths (the interpreter's location) or bulky failure output."""
    out = {key: value for key, value in record.items() if key not in ("traceback", "output_tail")}
    environment = dict(out.get("environment") or {})
    if environment.get("executable"):
        environment["executable"] = environment["executable"].replace("\\", "/").rsplit("/", 1)[-1]
    out["environment"] = environment
    return out


def check_counts(protocol: Any, what: str, *, text: tuple[str, ...] = (), flags: tuple[str, ...] = ()) -> None:
    """Every field of a protocol dataclass but those named in ``text`` (which must be strings) and
    ``flags`` (booleans) is a non-negative integer; raise SpecError naming the first that is not."""
    from dataclasses import fields

    from harness.spec import SpecError

    for item in fields(protocol):
        value = getattr(protocol, item.name)
        if item.name in text:
            if not isinstance(value, str):
                raise SpecError(f"{what} {item.name} must be a string, got {value!r}")
            continue
        if item.name in flags:
            if not isinstance(value, bool):
                raise SpecError(f"{what} {item.name} must be true or false, got {value!r}")
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise SpecError(f"{what} {item.name} must be a non-negative integer, got {value!r}")
