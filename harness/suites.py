"""Named matrices of specs. Built-in suites are Python functions; users add TOML files.

Adapters are interleaved within each cell and repeats wrap around the whole matrix
(A B C A B C, not A A B B), so slow drifts of a shared machine spread over every adapter
instead of landing on one.
"""

from __future__ import annotations

import itertools
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from harness.registry import adapter_names, get_task
from harness.spec import Spec, SpecError, with_threads

MAX_SPECS = 20_000
_MEMO: dict = {}
"""Plugin code identities while a built-in suite expands (cleared by get_suite)."""


@dataclass(frozen=True, kw_only=True)
class Suite:
    name: str
    description: str
    specs: list[Spec] = field(default_factory=list)
    warmup: int = 5
    """Steps excluded from step statistics in every run of the suite."""
    repeats: int = 1
    eval_every: int = 0
    """Validation every N steps in every run, for time-to-target (0: only after training)."""
    fresh_processes: bool = False
    """Start every worker as a fresh interpreter (no zygote): a suite that measures cold start-up."""
    cost: str = "process"
    """``process``: cost from the process-per-spec runs only; ``paired``: also the paired in-process cost
    pass over the suite's cells (``bakeoff cost``), which ``bench`` runs after the specs."""
    cost_protocol: dict[str, Any] = field(default_factory=dict)
    """The paired pass's protocol (``harness.cost.paired.Protocol`` fields; ``imports``/``instructions`` sub-tables)."""


def _spec(task: str, adapter: str, device: str, **fields: Any) -> Spec:
    from harness.plugins import with_code_identity

    defaults = get_task(task).defaults
    values = {"batch_size": defaults.batch_size, "steps": defaults.steps, "lr": defaults.lr}
    values.update(fields)
    # Built-in suites list every installed adapter: one that cannot load becomes `unsupported`.
    return with_code_identity(Spec(task=task, adapter=adapter, device=device, **values), strict=False, memo=_MEMO)


def adapter_modes(adapters: list[str]) -> list[tuple[str, str]]:
    """(adapter, mode) pairs in a fixed order: native first, then each library's modes."""
    from harness.registry import RegistryError, get_adapter

    pairs = []
    for name in adapters:
        try:
            modes = get_adapter(name).modes
        except RegistryError:
            modes = ("aligned",)  # unavailable: still listed, becomes an `unsupported` result
        pairs += [(name, mode) for mode in modes]
    return pairs


def isolated(name: str) -> bool:
    """Whether the adapter runs in its own environment (built on first use: minutes)."""
    from harness.registry import RegistryError, get_adapter

    try:
        return get_adapter(name).environment is not None
    except RegistryError:
        return False


def _ordered_adapters(*, include_isolated: bool = True) -> list[str]:
    names = [n for n in adapter_names() if n != "native" and (include_isolated or not isolated(n))]
    return ["native", *names]


def _interleave(cells: list[list[Spec]], repeats: int) -> list[Spec]:
    ordered = []
    for repeat in range(repeats):
        for cell in cells:
            ordered += [replace(spec, repeat=repeat) for spec in cell]
    return ordered


def quick(device: str) -> Suite:
    """Every main-environment adapter on every small task in CPU minutes; a few bf16 and DDP cells."""
    # Adapters in isolated environments (flash) are left to `standard`: building one takes minutes.
    adapters = _ordered_adapters(include_isolated=False)
    pairs = adapter_modes(adapters)
    aligned = [(a, m) for a, m in pairs if m == "aligned"]
    cells: list[list[Spec]] = []
    cells.append([_spec("digits", a, device, mode=m) for a, m in pairs])
    cells.append([_spec("digits", a, device, mode=m, precision="bf16-mixed") for a, m in aligned])
    # Per-rank batch 32 on 2 ranks = the single-process global batch of 64: gets a parity verdict.
    cells.append([_spec("digits", a, device, mode=m, world_size=2, batch_size=32) for a, m in aligned])
    cells.append([_spec("tabular", a, device, mode=m) for a, m in aligned])
    cells.append([_spec("charlm", a, device, mode=m) for a, m in aligned])
    # A weight reused within one forward pass under bf16 autocast: Lightning >= 2.6 re-casts it at every use.
    recurrent = {"family": "recurrent"}
    cells.append([_spec("families", a, device, mode=m, precision="bf16-mixed", options=recurrent) for a, m in aligned])
    for width in (32, 256, 1024):
        cells.append([_spec("scaling", a, device, mode=m, options={"width": width}) for a, m in aligned])
    return Suite(name="quick", description=quick.__doc__, specs=_interleave(cells, 1), eval_every=10)


VERSION_MATRIX = ("lightning@2.1.4",)
"""Older library releases the standard suite runs beside the current ones (each in its own environment)."""


def standard(device: str) -> Suite:
    """The reference CPU suite: 2x steps, both modes, bf16, fp16, DDP, accumulation, widths, Lightning 2.1.4, 3 runs."""
    adapters = _ordered_adapters()
    pairs = adapter_modes(adapters)
    aligned = [(a, m) for a, m in pairs if m == "aligned"]
    cells: list[list[Spec]] = []
    versions = adapter_modes(list(VERSION_MATRIX))
    for task in ("digits", "tabular", "charlm"):
        steps = get_task(task).defaults.steps * 2
        cells.append([_spec(task, a, device, mode=m, steps=steps) for a, m in pairs + versions])
        cells.append([_spec(task, a, device, mode=m, steps=steps, precision="bf16-mixed") for a, m in aligned])
    cells.append([_spec("digits", a, device, mode=m, world_size=2, batch_size=32) for a, m in aligned])
    cells.append([_spec("digits", a, device, mode=m, grad_accum=2, batch_size=32) for a, m in aligned])
    # Their one-process partner at the same global batch (64) and steps: what "DDP / accumulation
    # equals a bigger batch" is measured against.
    cells.append([_spec("digits", "native", device)])
    # The libraries' own samplers under DDP (padding, even_batches): what the coverage column shows.
    defaults = [(a, m) for a, m in pairs if m == "defaults"]
    cells.append([_spec("tabular", a, device, mode=m, world_size=2, batch_size=32) for a, m in defaults])
    # Model families where declarations depend on the model: weight reuse, a loss that reads bf16 logits.
    for family in ("recurrent", "lowp-loss"):
        options = {"family": family}
        cells.append(
            [_spec("families", a, device, mode=m, precision="bf16-mixed", options=options) for a, m in aligned]
        )
    # fp16 with each library's own GradScaler route (on the MLP: CPU fp16 convolutions are ~50x slower).
    cells.append([_spec("scaling", a, device, mode=m, precision="fp16-mixed", options={"width": 64})
                  for a, m in aligned])
    for width in (16, 64, 256, 1024, 2048):
        cells.append([_spec("scaling", a, device, mode=m, steps=200, options={"width": width}) for a, m in aligned])
    return Suite(name="standard", description=standard.__doc__, specs=_interleave(cells, 3), repeats=3, eval_every=10)


def cost(device: str) -> Suite:
    """Per-step cost in both modes: digits and scaling at 3 widths, every main-environment adapter, 2 repeats."""
    pairs = adapter_modes(_ordered_adapters(include_isolated=False))
    cells = [[_spec("digits", a, device, mode=m) for a, m in pairs]]
    for width in (32, 256, 1024):
        cells.append([_spec("scaling", a, device, mode=m, options={"width": width}) for a, m in pairs])
    return Suite(name="cost", description=cost.__doc__, specs=_interleave(cells, 2), repeats=2)


def smoke(device: str) -> Suite:
    """The native loop alone on digits: a seconds-long check that the machinery works."""
    return Suite(name="smoke", description=smoke.__doc__, specs=[_spec("digits", "native", device, steps=10)])


STARTUP_STEPS = 10


def startup(device: str) -> Suite:
    """Cold start-up per adapter (launch to first step, torch import included): fresh processes, 3 repeats."""
    # Fresh interpreters on purpose: this is the figure a user starting one run waits for, which
    # suites forked from the zygote do not measure (they report the library's own start-up).
    pairs = adapter_modes(_ordered_adapters(include_isolated=False))
    cells = [[_spec("digits", a, device, mode=m, steps=STARTUP_STEPS) for a, m in pairs]]
    return Suite(
        name="startup",
        description=startup.__doc__,
        specs=_interleave(cells, 3),
        repeats=3,
        warmup=2,
        fresh_processes=True,
    )


def gpu(device: str) -> Suite:
    """What a lent GPU must show (harness/gpucheck.py): alignment in fp32/bf16/fp16/TF32, compile, DDP, ~100M charlm."""
    from harness.gpucheck import gpu_suite

    return replace(gpu_suite(device), description=gpu.__doc__)


BUILTIN: dict[str, Callable[[str], Suite]] = {
    "smoke": smoke,
    "quick": quick,
    "cost": cost,
    "standard": standard,
    "startup": startup,
    "gpu": gpu,
}


def suite_names() -> list[str]:
    return sorted(BUILTIN)


def get_suite(name: str, device: str) -> Suite:
    if name not in BUILTIN:
        raise SpecError(f"unknown suite {name!r}; choose one of: {', '.join(suite_names())} (or --suite-file)")
    _MEMO.clear()  # identify plugin code as it is now, not as it was at the last expansion
    return BUILTIN[name](device)


SUITE_KEYS = {"name", "description", "warmup", "repeats", "eval_every", "fresh_processes", "threads", "runs", "cost",
              "cost_protocol"}
COST_MODES = ("process", "paired")


def load_suite_file(path: Path, device: str) -> Suite:
    """A TOML suite: top-level name, description, warmup, repeats, eval_every, fresh_processes, threads,
    cost, cost_protocol and ``[[runs]]`` tables.

    Each value in a run table may be a list; the run expands to the product of its lists.
    Keys inside ``options`` expand the same way. Missing batch_size/steps/lr come from the task.
    A top-level ``threads`` is the thread layout of every run that does not set its own.
    """
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as error:
        raise SpecError(f"cannot read suite file {path}: {error.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SpecError(f"suite file {path} is not valid TOML: {error}") from None
    unknown = sorted(set(document) - SUITE_KEYS)
    if unknown:
        raise SpecError(f"suite file: unknown key {unknown[0]!r} (keys: {', '.join(sorted(SUITE_KEYS))})")
    name = document.get("name", Path(path).stem)
    if not isinstance(name, str) or not name.replace("-", "").replace("_", "").isalnum():
        raise SpecError(f"suite name must be letters, digits, '-' or '_', got {name!r}")
    warmup, repeats = document.get("warmup", 5), document.get("repeats", 1)
    eval_every = document.get("eval_every", 0)
    for key, value, low, high in (
        ("warmup", warmup, 0, 10_000),
        ("repeats", repeats, 1, 100),
        ("eval_every", eval_every, 0, 1_000_000),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise SpecError(f"suite {key} must be an integer from {low} to {high}, got {value!r}")
    runs = document.get("runs")
    if not isinstance(runs, list) or not runs or not all(isinstance(run, dict) for run in runs):
        raise SpecError("suite file needs at least one [[runs]] table")
    threads = document.get("threads")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise SpecError(f"suite threads must be a positive integer, got {threads!r}")
    memo: dict = {}
    cells = [[with_threads(spec, threads) for spec in expand_run(run, device, memo=memo)] for run in runs]
    specs = _interleave(cells, repeats)
    if len(specs) > MAX_SPECS:
        raise SpecError(f"suite expands to {len(specs)} runs, over the limit of {MAX_SPECS}")
    description = document.get("description", "")
    if not isinstance(description, str):
        raise SpecError("suite description must be a string")
    fresh_processes = document.get("fresh_processes", False)
    if not isinstance(fresh_processes, bool):
        raise SpecError(f"suite fresh_processes must be true or false, got {fresh_processes!r}")
    cost, cost_protocol = document.get("cost", "process"), document.get("cost_protocol", {})
    if cost not in COST_MODES:
        raise SpecError(f"suite cost must be one of: {', '.join(COST_MODES)}, got {cost!r}")
    if not isinstance(cost_protocol, dict):
        raise SpecError("suite cost_protocol must be a table")
    return Suite(
        name=name,
        description=description,
        specs=specs,
        warmup=warmup,
        repeats=repeats,
        eval_every=eval_every,
        fresh_processes=fresh_processes,
        cost=cost,
        cost_protocol=cost_protocol,
    )


def _axes(table: Mapping[str, Any]) -> list[dict[str, Any]]:
    keys = list(table)
    values = [v if isinstance(v, list) else [v] for v in table.values()]
    if any(len(v) == 0 for v in values):
        raise SpecError("suite file: an empty list expands to no runs")
    total = 1
    for v in values:
        total *= len(v)
        if total > MAX_SPECS:
            raise SpecError(f"suite file: a run expands to more than {MAX_SPECS} specs")
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*values)]


def expand_run(run: Mapping[str, Any], device: str, *, memo: dict | None = None) -> list[Spec]:
    run = dict(run)
    options = run.pop("options", {})
    if not isinstance(options, dict):
        raise SpecError("suite file: options must be a table")
    if "repeat" in run:
        raise SpecError("suite file: use the top-level 'repeats', not 'repeat' in a run")
    specs = []
    for fields in _axes(run):
        for option_values in _axes(options) if options else [{}]:
            task = fields.get("task")
            if not isinstance(task, str):
                raise SpecError(f"suite file: every run needs a task name, got {task!r}")
            try:
                defaults = get_task(task).defaults
            except ValueError as error:
                raise SpecError(str(error)) from None
            values = {"batch_size": defaults.batch_size, "steps": defaults.steps, "lr": defaults.lr, "device": device}
            values.update(fields)
            values["options"] = option_values
            specs.append(_identified(Spec.from_dict(values), {} if memo is None else memo))
    return specs


def _identified(spec: Spec, memo: dict) -> Spec:
    """A suite file's spec with its plugins' code identities; a plugin named there that cannot load is bad input."""
    from harness.plugins import with_code_identity

    return with_code_identity(spec, memo=memo)
def with_suite_threads(suite: Suite, threads: int | None) -> Suite:
    """Every spec of ``suite`` that leaves its thread layout automatic gets ``threads`` (None: no change).

    The command line's ``--threads`` (or ``BAKEOFF_THREADS_PER_RANK``) lands in the specs, and so in
    their ids: resuming under another layout runs new specs instead of mixing two layouts' results.
    """
    if threads is None:
        return suite
    return replace(suite, specs=[with_threads(spec, threads) for spec in suite.specs])


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` with 1 <= i <= n (1-based, as people count machines)."""
    index, sep, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise SpecError(f"--shard looks like i/n (e.g. 1/2), got {text!r}") from None
    if not sep or not 1 <= i <= n or n > 10_000:
        raise SpecError(f"--shard i/n needs 1 <= i <= n <= 10000, got {text!r}")
    return i, n


def shard(specs: list[Spec], index: int, count: int) -> list[Spec]:
    """This machine's part of a suite: specs whose id falls in shard ``index`` of ``count``.

    Keyed by spec id, not position, so adding a spec to a suite never moves the others to
    another shard; the shards of one suite are disjoint and together are the whole suite.
    """
    return [spec for spec in specs if int(spec.spec_id, 16) % count == index - 1]
