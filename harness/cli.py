"""``bakeoff`` — run training APIs side by side and compare them.

Every sub-command exits 2 with a one-line ``bakeoff: error: ...`` on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.spec import Spec, SpecError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
DEFAULT_RESULTS = Path(os.environ.get("BAKEOFF_RESULTS", "results"))


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other bad input
        raise UsageError(message)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _option(text: str) -> tuple[str, Any]:
    """``key=value`` with value parsed as JSON when it can be (numbers, booleans), else a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"task options look like key=value, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value


def _safe_dir(text: str) -> Path:
    path = Path(text)
    if any(part == ".." for part in path.parts):
        raise argparse.ArgumentTypeError(f"refusing a path that climbs out with '..': {text}")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bakeoff", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    run = commands.add_parser("run", help="run one spec and print a one-line summary (--against: and its verdict)")
    run.add_argument("--task", required=True,
                     help="task name (see `bakeoff list`) or import path package.module:TaskClass")
    run.add_argument("--adapter", default="native",
                     help="adapter name, import path package.module:AdapterClass, or your own training function "
                          "package.module:train (default: native)")
    run.add_argument("--mode", default="aligned", help="aligned | defaults (default: aligned)")
    run.add_argument("--precision", default="fp32", help="fp32 | bf16-mixed | fp16-mixed (default: fp32)")
    run.add_argument("--world-size", type=int, default=1, help="DDP processes via torchrun (default: 1)")
    run.add_argument("--seed", type=int, default=0)
    batch = run.add_mutually_exclusive_group()
    batch.add_argument("--batch-size", type=int,
                       help="micro-batch PER RANK (default: the task's); the global batch is this x --world-size x "
                            "--grad-accum")
    batch.add_argument("--global-batch", type=int, metavar="N",
                       help="samples per optimizer step over all ranks and micro-batches; the per-rank batch is "
                            "N / (--world-size x --grad-accum)")
    run.add_argument("--steps", type=int, help="optimizer steps (default: the task's)")
    run.add_argument("--lr", type=float, help="learning rate (default: the task's)")
    run.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    run.add_argument("--device", default="auto", help="cpu | cuda | auto (default: auto = cuda if present)")
    run.add_argument("--option", "-o", action="append", type=_option, default=[], metavar="KEY=VALUE",
                     help="task option, repeatable (e.g. -o width=256)")
    run.add_argument("--nondeterministic", action="store_true", help="allow non-deterministic kernels")
    _add_threads_option(run, "the run")
    run.add_argument("--compile", action="store_true",
                     help="torch.compile the model the way the adapter's library does (compile time is reported "
                          "on its own, outside the step times)")
    run.add_argument("--tf32", action="store_true", help="allow TF32 for fp32 matmuls and convolutions (CUDA only)")
    run.add_argument("--ddp", action="store_true",
                     help="at world size 1, still run under torchrun with a process group and DDP (NCCL on one GPU)")
    _add_run_options(run, default_dir=DEFAULT_RESULTS / "runs")
    run.add_argument("--nnodes", type=int, default=1, help="machines the DDP job spans (run this on each)")
    run.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="c10d rendezvous for --nnodes > 1")
    run.add_argument("--json", action="store_true", help="print the whole result JSON instead of a summary")
    run.add_argument("--against", metavar="ADAPTER",
                     help="also run (or reuse the result of) the same run on ADAPTER (aligned; e.g. native), print "
                          "the parity verdict, and exit 1 when it is worse than declared")
    run.add_argument("--against-world-size", type=int, metavar="N",
                     help="ranks of the --against partner (default: the same); its per-rank batch keeps the global "
                          "batch equal")
    run.add_argument("--expect", choices=("bitwise", "close", "diverged", "not-comparable"),
                     help="the verdict to hold the pair to (default: what the adapter declares against native)")
    run.add_argument("--no-tracking", action="store_true",
                     help="accepted for symmetry with bench: run never logs to MLflow (`bakeoff ingest DIR` does)")
    run.epilog = ("exit status: 0 the run finished (and, with --against, the verdict is as declared); 1 a run "
                  "failed or the verdict is worse than declared; 2 bad input (including a plugin that cannot load)")

    bench = commands.add_parser("bench", help="run a suite of specs (resumes: finished specs are skipped)")
    source = bench.add_mutually_exclusive_group()
    source.add_argument("--suite", default="quick", help="built-in suite name (default: quick)")
    source.add_argument("--suite-file", type=Path, help="a TOML suite file")
    bench.add_argument("--device", default="auto", help="cpu | cuda | auto (default: auto)")
    bench.add_argument("--dry-run", action="store_true", help="list the specs without running them")
    bench.add_argument("--retry-failed", action="store_true", help="rerun specs whose existing result failed")
    bench.add_argument("--shard", metavar="I/N", help="run only shard I of N (split by spec id; e.g. 1/2 and 2/2)")
    _add_threads_option(bench, "every spec that does not set its own")
    _add_run_options(bench, default_dir=None)
    _add_tracking_option(bench)
    bench.add_argument("--no-zygote", action="store_true",
                       help="start every worker as a fresh interpreter instead of forking it from a preloaded "
                            "zygote (same results, slower; also BAKEOFF_ZYGOTE=0)")
    bench.add_argument("--no-tracking", action="store_true",
                       help="keep results on disk only: no MLflow, no report (log them later with `bakeoff ingest`)")
    bench.epilog = ("exit status: 0 all specs ran; 1 a spec failed, or the tracking store failed after the suite "
                    "ran (the result files are kept: log them with `bakeoff ingest DIR`); 2 bad input or an "
                    "unreachable store before anything ran")

    ingest = commands.add_parser("ingest", help="log result files made elsewhere into MLflow (idempotent)")
    ingest.add_argument("results_dir", type=Path, metavar="DIR", help="folder of result files (e.g. results/quick)")
    ingest.add_argument("--suite", help="suite name the results belong to (default: the folder's name)")
    ingest.add_argument("--experiment", help="MLflow experiment (default: bakeoff-<suite>)")
    ingest.add_argument("--allow-partial", action="store_true",
                        help="exit 0 even when some files were unreadable or invalid (they are listed and skipped)")
    ingest.epilog = ("exit status: 0 every file logged (or already there); 1 some files were skipped (unless "
                     "--allow-partial) or the store failed; 2 bad input (no such folder, no valid result file)")
    _add_tracking_option(ingest)

    report = commands.add_parser("report", help="build a report (Markdown, HTML, CSV, JSON) from MLflow runs")
    which = report.add_mutually_exclusive_group()
    which.add_argument("--suite", help="newest run per spec of this suite's experiment (default: quick)")
    which.add_argument("--experiment", help="newest run per spec of this MLflow experiment")
    which.add_argument("--run-id", help="a bench/ingest invocation's parent run (or one result run)")
    report.add_argument("--out", type=Path, default=None,
                        help="output root (default: $BAKEOFF_REPORTS_OUT, else reports/out)")
    report.add_argument("--verify", type=Path, metavar="REPORT_DIR",
                        help="recompute a written report's tables and id from its raw.json: exit 0 if they match, "
                             "1 (listing what differs) if not; reads no tracking store")
    report.add_argument("--rebuild", type=Path, metavar="REPORT_DIR",
                        help="a new report from a written report's raw.json with the cost records of "
                             "--cost-records replacing those of the same kind and cell; reads no tracking store")
    report.add_argument("--cost-records", type=Path, metavar="DIR",
                        help="with --rebuild: a `bakeoff cost` results folder (its *.json records)")
    _add_tracking_option(report)

    compare = commands.add_parser(
        "compare", help="compare two result folders: per-cell overhead ratio to native, exit 1 on regression"
    )
    compare.add_argument("baseline", type=Path, help="folder of baseline result files")
    compare.add_argument("candidate", type=Path, help="folder of candidate result files")
    compare.add_argument("--threshold", type=_positive_float, default=0.10,
                         help="allowed growth of a cell's ratio to native (default 0.10 = 10%%)")
    compare.add_argument("--json", type=Path, help="also write the comparison as JSON to this file")

    ui = commands.add_parser("ui", help="print the MLflow UI's links to each suite's run table and start the UI")
    ui.add_argument("--port", type=int, default=5000, help="port of the local MLflow UI (default: 5000)")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    ui.add_argument("--no-server", action="store_true", help="print the links and exit (e.g. for a running server)")
    _add_tracking_option(ui)

    _add_cost_parser(commands)
    listing = commands.add_parser("list", help="list tasks, adapters and suites (without importing any library)")
    listing.add_argument("--check", action="store_true",
                         help="also import every task and adapter and say which cannot load (slower: imports every "
                              "library); exit 2 when a plugin is broken")
    commands.add_parser("env", help="print the environment a result would record")
    return parser


def _add_threads_option(parser: argparse.ArgumentParser, applies_to: str) -> None:
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=f"intra-op CPU threads per rank for {applies_to}; part of the spec id "
                             "(default: $BAKEOFF_THREADS_PER_RANK, else CPU cores // ranks on the node)")


def _threads(args: argparse.Namespace) -> int | None:
    """The layout asked for on the command line, else by BAKEOFF_THREADS_PER_RANK (None: automatic)."""
    from harness.spec import MAX_THREADS, threads_from_environment

    if args.threads is not None:
        if not 1 <= args.threads <= MAX_THREADS:
            raise SpecError(f"--threads must be an integer from 1 to {MAX_THREADS}, got {args.threads}")
        return args.threads
    return threads_from_environment()


def _add_tracking_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///<repo>/mlflow.db)")


def _add_run_options(parser: argparse.ArgumentParser, default_dir: Path | None) -> None:
    where = f"(default: {default_dir})" if default_dir else "(default: results/<suite>)"
    parser.add_argument("--results-dir", type=_safe_dir, default=default_dir, help=f"where result files go {where}")
    parser.add_argument("--timeout", type=_positive_float, default=600.0, help="seconds per run (default: 600)")
    parser.add_argument("--warmup", type=int, default=None, help="steps excluded from step statistics")
    parser.add_argument("--eval-every", type=int, default=None, metavar="N",
                        help="validate every N steps for time-to-target, outside the measured step time "
                             "(default: the suite's setting; 0 = only after training)")
    parser.add_argument("--no-weights", action="store_true", help="do not save final weights next to results")


def _device(name: str) -> str:
    from harness.plan import best_device

    if name == "auto":
        return best_device()
    if name not in ("cpu", "cuda"):
        raise SpecError(f"unknown device {name!r}; choose one of: cpu, cuda, auto")
    return name


def _batch_size(args: argparse.Namespace, default: int) -> int:
    if args.global_batch is None:
        return args.batch_size if args.batch_size is not None else default
    split = args.world_size * args.grad_accum
    if args.global_batch < 1 or split < 1 or args.global_batch % split:
        raise SpecError(
            f"--global-batch {args.global_batch} does not split into --world-size {args.world_size} x "
            f"--grad-accum {args.grad_accum} equal micro-batches"
        )
    return args.global_batch // split


def _spec_from_args(args: argparse.Namespace) -> Spec:
    from harness.plugins import with_code_identity
    from harness.registry import RegistryError, get_task

    try:
        defaults = get_task(args.task).defaults
    except RegistryError as error:
        raise SpecError(str(error)) from None
    options = dict(args.option)
    spec = Spec(
        task=args.task,
        adapter=args.adapter,
        mode=args.mode,
        precision=args.precision,
        world_size=args.world_size,
        seed=args.seed,
        batch_size=_batch_size(args, defaults.batch_size),
        steps=args.steps if args.steps is not None else defaults.steps,
        lr=args.lr if args.lr is not None else defaults.lr,
        grad_accum=args.grad_accum,
        device=_device(args.device),
        options=options,
        deterministic=not args.nondeterministic,
        threads=_threads(args),
        compile=args.compile,
        tf32=args.tf32,
        ddp=args.ddp,
    )
    return with_code_identity(spec)  # a plugin's code is part of the spec id; a broken plugin: exit 2


def _run_options(args: argparse.Namespace, results_dir: Path, warmup: int, eval_every: int = 0):
    from harness.runner import RunOptions

    if args.warmup is not None and args.warmup < 0:
        raise SpecError(f"--warmup must be >= 0, got {args.warmup}")
    if args.eval_every is not None and args.eval_every < 0:
        raise SpecError(f"--eval-every must be >= 0, got {args.eval_every}")
    nnodes = getattr(args, "nnodes", 1)
    if nnodes < 1:
        raise SpecError(f"--nnodes must be >= 1, got {nnodes}")
    if nnodes > 1 and not args.rdzv_endpoint:
        raise SpecError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
    return RunOptions(
        nnodes=nnodes,
        rdzv_endpoint=getattr(args, "rdzv_endpoint", None),
        results_dir=results_dir,
        timeout_s=args.timeout,
        warmup=warmup if args.warmup is None else args.warmup,
        eval_every=eval_every if args.eval_every is None else args.eval_every,
        save_weights=not args.no_weights,
        retry_failed=getattr(args, "retry_failed", False),
    )


def one_line(result: dict[str, Any]) -> str:
    summary = result.get("summary", {})
    spec = Spec.from_dict(result["spec"])
    parts = [spec.label, result["status"]]
    if result["status"] == "ok":
        parts.append(f"{summary.get('median_step_us', float('nan')):.1f} us/step")
        parts.append(f"final loss {summary.get('final_loss', float('nan')):.4f}")
        metric = result.get("task", {}).get("metric_name", "metric")
        if "eval_metric" in summary:
            parts.append(f"{metric} {summary['eval_metric']:.4f}")
        if summary.get("mfu") is not None:
            parts.append(f"MFU {100 * summary['mfu']:.2f}%")
        elif summary.get("achieved_over_measured_peak"):
            parts.append(f"MFU unknown ({summary['achieved_over_measured_peak']:.2f}x the measured peak)")
        if summary.get("compile_s"):
            parts.append(f"compile {summary['compile_s']:.1f} s")
        parts.append(f"weights {str(result.get('weights_digest'))[:16]}")
        if "coverage" in result:
            from harness.coverage import describe

            parts.append(f"samples {describe(result['coverage'])}")
    else:
        parts.append(str(result.get("error")))
    return " | ".join(parts)


def unsupported_result(spec: Spec, reason: str, results_dir: Path) -> dict[str, Any]:
    from harness.result import base_result, result_path, write_result

    result = base_result(spec, status="unsupported", error=reason)
    write_result(result_path(results_dir, spec), result)
    return result


def batch_line(spec: Spec) -> str:
    """How the global batch is made, said out loud for DDP and accumulation runs."""
    global_batch = spec.batch_size * spec.world_size * spec.grad_accum
    return (f"batch: {spec.batch_size} per rank x {spec.world_size} ranks x {spec.grad_accum} micro-batches "
            f"= global batch {global_batch}")


def command_run(args: argparse.Namespace) -> int:
    from harness.plan import check_spec, unsupported_reason
    from harness.result import result_path
    from harness.runner import run_spec

    spec = _spec_from_args(args)
    check_spec(spec)
    options = _run_options(args, args.results_dir, warmup=5)
    if options.nnodes > 1 and spec.world_size % options.nnodes:
        raise SpecError(f"--world-size {spec.world_size} does not split over --nnodes {options.nnodes}")
    if args.against is None and (args.against_world_size is not None or args.expect is not None):
        raise SpecError("--against-world-size and --expect only make sense with --against ADAPTER")
    if args.against is not None:
        return _run_against(args, spec, options)
    if not args.json and (spec.world_size > 1 or spec.grad_accum > 1):
        print(batch_line(spec))
    reason = unsupported_reason(spec)
    result = unsupported_result(spec, reason, options.results_dir) if reason else run_spec(spec, options)
    if args.json:
        print(json.dumps(result, indent=1, sort_keys=True))
    else:
        print(one_line(result))
        print(f"result: {result_path(options.results_dir, spec)}")
    return EXIT_OK if result["status"] == "ok" else EXIT_FAILED


def _run_against(args: argparse.Namespace, spec: Spec, options) -> int:
    """``run --against ADAPTER``: the run, its partner (run or found), the verdict line, exit 1 if worse."""
    from harness.against import partner_for, run_against
    from harness.plan import check_spec
    from harness.result import result_path
    from harness.runner import run_spec

    if args.nnodes > 1:
        raise SpecError("--against runs both partners on this machine; it does not combine with --nnodes")
    if args.against_world_size is not None and args.against_world_size < 1:
        raise SpecError(f"--against-world-size must be a positive integer, got {args.against_world_size}")
    partner = partner_for(spec, args.against, world_size=args.against_world_size)
    check_spec(partner)
    if not args.json and (spec.world_size > 1 or spec.grad_accum > 1 or partner.world_size != spec.world_size):
        print(batch_line(spec))

    def progress(role: str, result: dict[str, Any], reused: bool) -> None:
        if not args.json:
            suffix = {"partner": " (partner)", "candidate": ""}[role]
            if reused:
                suffix = " (partner, found in the results folder)"
            print(one_line(result) + suffix, flush=True)

    outcome = run_against(spec, partner, results_dir=options.results_dir, run=lambda s: run_spec(s, options),
                          expect=args.expect, progress=progress)
    if args.json:
        print(json.dumps({"candidate": outcome.candidate, "partner": outcome.partner,
                          "verdict": outcome.verdict.to_dict(), "declared": outcome.declared,
                          "as_declared": outcome.as_declared}, indent=1, sort_keys=True))
    else:
        print(outcome.line())
        print(f"results: {result_path(options.results_dir, spec)} vs {result_path(options.results_dir, partner)}")
    ran = outcome.candidate["status"] == "ok" and outcome.partner["status"] in ("ok", "unsupported")
    return EXIT_OK if ran and outcome.as_declared else EXIT_FAILED


@dataclass
class BenchOutcome:
    """What running a suite left: its exit code, every spec's result, where they are."""

    code: int
    suite: Any = None
    results: list[dict[str, Any]] = field(default_factory=list)
    results_dir: Path | None = None
    summary: Any = None
    """``() -> str``: the suite's closing line, its time taken when it is called."""


def run_bench(args: argparse.Namespace) -> BenchOutcome:
    """Expand and run the suite (or list it with --dry-run); no tracking.

    Prints each spec's progress line and returns the closing line unprinted (``outcome.summary``):
    the caller prints it last, after logging and the report.
    """
    from dataclasses import replace

    from harness import progress as bench_progress
    from harness.plan import check_spec, unsupported_reason
    from harness.runner import existing_result, run_suite
    from harness.suites import get_suite, load_suite_file, with_suite_threads

    started = time.monotonic()  # the user's wait starts here, before the suite's checks import the libraries
    device = _device(args.device)
    suite = load_suite_file(args.suite_file, device) if args.suite_file else get_suite(args.suite, device)
    suite = with_suite_threads(suite, _threads(args))
    for spec in suite.specs:
        check_spec(spec)
    if args.shard:
        from dataclasses import replace as _replace

        from harness.suites import parse_shard, shard

        index, count = parse_shard(args.shard)
        suite = _replace(suite, specs=shard(suite.specs, index, count))
    results_dir = args.results_dir or DEFAULT_RESULTS / suite.name
    options = _run_options(args, results_dir, warmup=suite.warmup, eval_every=suite.eval_every)
    if args.no_zygote or suite.fresh_processes:
        options = replace(options, zygote=False)
    cost_plan = None
    if suite.cost == "paired":  # the paired in-process cost of the suite's cells too; checked before anything runs
        from harness.cost.plan import plan_for_suite

        cost_plan = plan_for_suite(suite, results_dir / "cost", device)
    if args.dry_run:
        for spec in suite.specs:
            print(f"{spec.spec_id}  {spec.label}")
        print(f"{len(suite.specs)} specs in suite {suite.name!r}")
        return BenchOutcome(EXIT_OK, suite)
    _check_writable_folder(results_dir, "--results-dir")
    launch = bench_progress.launch_text(options.zygote)
    print(f"suite {suite.name}: {len(suite.specs)} specs on {device}, results in {results_dir}; {launch}", flush=True)
    runnable, results = [], {}
    for spec in suite.specs:
        reason = unsupported_reason(spec)
        if reason:
            results[spec.spec_id] = unsupported_result(spec, reason, results_dir)
        else:
            runnable.append(spec)
    done_before = []
    for spec in runnable:
        done = existing_result(spec, results_dir)
        if done is not None and not (options.retry_failed and done["status"] == "failed"):
            done_before.append(spec.spec_id)
    tracker = bench_progress.SuiteProgress(runnable, done_before, started=started)
    if tracker.opening_line():
        print(tracker.opening_line(), flush=True)

    def progress(index, total, spec, result, skipped, seconds):
        print(tracker.line(index, total, one_line(result), spec, skipped, seconds), flush=True)

    for result in run_suite(runnable, options, progress=progress):
        results[result["spec_id"]] = result
    counts: dict[str, int] = {}
    for result in results.values():
        counts[result["status"]] = counts.get(result["status"], 0) + 1
    ordered = [results[spec.spec_id] for spec in suite.specs]

    def summary() -> str:
        return bench_progress.summary_line(suite.name, ordered, tracker.elapsed, launch, results_dir)

    for spec in suite.specs:
        result = results[spec.spec_id]
        if result["status"] == "unsupported":
            print(f"  unsupported: {spec.label}: {result['error']}")
    cost_failed = cost_plan is not None and cost_plan.run(print) != EXIT_OK
    code = EXIT_OK if counts.get("failed", 0) == 0 and not cost_failed else EXIT_FAILED
    return BenchOutcome(code, suite, ordered, results_dir, summary)


def _tracking_uri(args: argparse.Namespace) -> str:
    """The store to use, checked before anything else happens (exit 2 when it does not answer)."""
    from harness.store import TrackingError, check_store, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    try:
        check_store(uri)
    except TrackingError as error:
        hint = "; nothing was run" if args.command == "bench" else ""
        raise UsageError(f"{error}{hint} (choose a store with --tracking-uri or MLFLOW_TRACKING_URI)") from None
    return uri


def _check_writable_folder(path: Path, option: str) -> None:
    """A folder we will write into: it may not exist yet, but it must not be a file or unwritable."""
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    if existing is None:
        return
    if not existing.is_dir():
        what = "is a file" if existing == path else f"cannot be created: {existing} is a file"
        raise UsageError(f"{option} {path} {what}, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path}: {existing} is not writable")


def _write_report(uri: str, selection, out: Path | None = None) -> Path:
    """Build and write the report; returns its folder."""
    from reports.build import build_report, default_out, write_report
    from reports.source import SourceError

    root = out if out is not None else default_out()
    _check_writable_folder(root, "--out" if out is not None else "the report folder")
    try:
        report = build_report(uri, selection)
    except SourceError as error:
        raise UsageError(str(error)) from None
    try:
        folder = write_report(report, root)
    except OSError as error:
        raise UsageError(f"cannot write the report under {root}: {error.strerror or error}") from None
    print(f"report {report.report_id}, runs {report.counts_line}: {folder / 'report.html'}")
    print(f"  also {folder / 'report.md'}, {folder / 'results.csv'}, {folder / 'report.json'}, "
          f"raw data {folder / 'raw.json'}, {folder / 'steps.csv'}")
    return folder


def _typed(results: list[dict[str, Any]]) -> list:
    from harness.result import Result

    return [Result.from_dict(result) for result in results]


def command_bench(args: argparse.Namespace) -> int:
    """``bench``: check the store, run the suite, log its results to MLflow, write the report."""
    from harness import progress as bench_progress
    from harness.ingest import log_results
    from harness.store import DEFAULT_TRACKING_URI, TrackingError, experiment_name

    tracked = not args.dry_run and not args.no_tracking
    uri = _tracking_uri(args) if tracked else None
    if tracked:
        from reports.build import default_out

        _check_writable_folder(default_out(), "the report folder ($BAKEOFF_REPORTS_OUT)")
    outcome = run_bench(args)
    if outcome.summary is None:  # --dry-run
        return outcome.code
    if not tracked:
        print(outcome.summary())
        return outcome.code
    try:
        logged = log_results(_typed(outcome.results), results_dir=outcome.results_dir, suite=outcome.suite.name,
                             uri=uri, command="bench")
    except TrackingError as error:
        print(outcome.summary())
        # One line: the suite ran and its result files are on disk; only the logging is left to do.
        print(f"bakeoff: error: {error}; the results are intact in {outcome.results_dir}: log them later with "
              f"`bakeoff ingest {outcome.results_dir}`", file=sys.stderr)
        return EXIT_FAILED
    parent = f"parent run {logged.parent_run_id}" if logged.parent_run_id else "nothing new, no parent run"
    print(f"mlflow: {len(logged.logged)} runs logged, {len(logged.existing)} already there, in {logged.seconds:.1f} s "
          f"({parent}, store {uri})")
    if outcome.suite.cost == "paired" and (outcome.results_dir / "cost").is_dir():
        cost_code = _log_cost(outcome.results_dir / "cost", uri, experiment_name(outcome.suite.name),
                              suite=outcome.suite.name, parent_run_id=logged.parent_run_id)
        outcome.code = max(outcome.code, cost_code)
    from reports.source import Selection

    run_ids = tuple(logged.run_ids[result["spec_id"]] for result in outcome.results
                    if result["spec_id"] in logged.run_ids)
    ui = bench_progress.mlflow_ui_hint(uri, default_uri=DEFAULT_TRACKING_URI, experiment_id=logged.experiment_id)
    try:
        folder = _write_report(uri, Selection(suite=outcome.suite.name, run_ids=run_ids))
    except Exception as error:  # the runs are safely in MLflow; only the report is missing
        print(outcome.summary())
        print("\n".join(bench_progress.where_lines(None, ui)))
        print(f"bakeoff: error: building the report failed ({type(error).__name__}: {error}); rebuild it with "
              f"`bakeoff report --suite {outcome.suite.name}`", file=sys.stderr)
        return EXIT_FAILED
    print(outcome.summary())
    print("\n".join(bench_progress.where_lines(folder / "report.html", ui)))
    return outcome.code


def command_ingest(args: argparse.Namespace) -> int:
    from harness.ingest import log_results, read_result_dir
    from harness.store import TrackingError, experiment_name

    folder = args.results_dir
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file; ingest takes a folder of result files")
    if not folder.is_dir():
        raise UsageError(f"no such folder: {folder}")
    results, problems = read_result_dir(folder)
    for problem in problems:
        print(f"bakeoff: skipping {problem}", file=sys.stderr)
    if not results:
        raise UsageError(f"no valid result files in {folder}" + (f" ({len(problems)} unreadable)" if problems else ""))
    uri = _tracking_uri(args)
    suite = args.suite or folder.resolve().name
    try:
        logged = log_results(results, results_dir=folder, suite=suite, uri=uri, command="ingest",
                             experiment=args.experiment)
    except TrackingError as error:
        print(f"bakeoff: error: {error}", file=sys.stderr)
        return EXIT_FAILED
    cost_code = EXIT_OK
    if (folder / "cost").is_dir():
        cost_code = _log_cost(folder / "cost", uri, args.experiment or experiment_name(suite), suite=suite,
                              parent_run_id=logged.parent_run_id)
    parent = f" under parent run {logged.parent_run_id}" if logged.parent_run_id else ""
    extra = "".join([f", {logged.parity_updated} stored runs' verdicts updated" if logged.parity_updated else "",
                     f", {logged.deleted_incomplete} half-logged runs replaced" if logged.deleted_incomplete else ""])
    print(f"ingested {folder}: {len(logged.logged)} new runs{parent}, {len(logged.existing)} already in {uri} "
          f"(experiment id {logged.experiment_id}, {logged.seconds:.1f} s){extra}")
    if problems:
        verdict = "" if args.allow_partial else ": exit 1 (--allow-partial accepts this)"
        print(f"bakeoff: {len(problems)} of {len(problems) + len(results)} files in {folder} were skipped (listed "
              f"above); the valid ones are logged{verdict}", file=sys.stderr)
        return max(cost_code, EXIT_OK if args.allow_partial else EXIT_FAILED)
    return cost_code


def command_report(args: argparse.Namespace) -> int:
    from reports.source import Selection

    if args.verify is not None and args.rebuild is not None:
        raise UsageError("--verify and --rebuild are alternatives: give one")
    if (args.rebuild is None) != (args.cost_records is None):
        raise UsageError("--rebuild REPORT_DIR and --cost-records DIR go together")
    if args.verify is not None:
        return _verify_report(args.verify)
    if args.rebuild is not None:
        return _rebuild_report(args.rebuild, args.cost_records, args.out)
    uri = _tracking_uri(args)
    suite = None if (args.experiment or args.run_id) else (args.suite or "quick")
    _write_report(uri, Selection(suite=suite, experiment=args.experiment, run_id=args.run_id), args.out)
    return EXIT_OK


def _report_folder(folder: Path, option: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file; {option} takes a report folder (the one holding report.json)")
    if not folder.is_dir():
        raise UsageError(f"no such report folder: {folder}")
    missing = [name for name in ("raw.json", "report.json") if not (folder / name).is_file()]
    if missing:
        raise UsageError(f"{folder} is not a complete report folder: {' and '.join(missing)} missing")


def _rebuild_report(folder: Path, records_folder: Path, out: Path | None) -> int:
    """``report --rebuild``: the written report's runs with cost records measured again."""
    from harness.cost.record import read_folder
    from reports.build import default_out, rebuild_report, write_report

    _report_folder(folder, "--rebuild")
    if not records_folder.is_dir():
        raise UsageError(f"no such cost records folder: {records_folder}")
    records, problems = read_folder(records_folder)
    if problems:
        raise UsageError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    if not records:
        raise UsageError(f"no cost records in {records_folder} (a `bakeoff cost` results folder holds *.json records)")
    root = out if out is not None else default_out()
    _check_writable_folder(root, "--out" if out is not None else "the report folder")
    try:
        report = rebuild_report(folder, records)
    except ValueError as error:
        raise UsageError(f"{folder}: {error}") from None
    try:
        written = write_report(report, root)
    except OSError as error:
        raise UsageError(f"cannot write the report under {root}: {error.strerror or error}") from None
    print(f"report {report.report_id} (rebuilt from {folder.name} with {len(records)} cost records), "
          f"runs {report.counts_line}: {written / 'report.html'}")
    return EXIT_OK


def _verify_report(folder: Path) -> int:
    """``report --verify``: recompute every file of a report folder from its raw data."""
    from reports.build import verify_report

    _report_folder(folder, "--verify")
    report_id, problems = verify_report(folder)
    if problems:
        print(f"report {report_id} in {folder} does NOT match its raw data:")
        for problem in problems:
            print(f"  - {problem}")
        return EXIT_FAILED
    print(f"report {report_id} in {folder} verified: every file recomputed from raw.json matches")
    return EXIT_OK


def command_compare(args: argparse.Namespace) -> int:
    from harness.compare import compare_sets, format_table, load_results, write_json
    from harness.result import ResultError

    try:
        baseline, candidate = load_results(args.baseline), load_results(args.candidate)
    except ResultError as error:
        raise UsageError(str(error)) from None
    comparison = compare_sets(baseline, candidate, threshold=args.threshold)
    print(format_table(comparison))
    if args.json:
        write_json(comparison, args.json)
    return EXIT_FAILED if comparison["regressions"] else EXIT_OK


def command_ui(args: argparse.Namespace) -> int:
    """``ui``: the links that open each bakeoff experiment's run table with its columns; then the server."""
    from harness.store import (
        ARTIFACTS_FOLDER,
        EXPERIMENT_PREFIX,
        VIEW_KEY,
        client,
        resolve_tracking_uri,
        set_view,
        sqlite_path,
        view_url,
    )

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {args.port}")
    uri = resolve_tracking_uri(args.tracking_uri)
    database = sqlite_path(uri)
    served = uri if uri.startswith(("http://", "https://")) else f"http://{args.host}:{args.port}"
    if database is not None and not database.exists():
        print(f"no MLflow store at {database} yet: run `make bench` (or `bakeoff bench`) first")
        experiments = []
    else:
        mlflow_client = client(uri)
        experiments = [e for e in mlflow_client.search_experiments() if e.name.startswith(EXPERIMENT_PREFIX)]
        for experiment in experiments:  # older experiments get the saved view too
            set_view(mlflow_client, experiment.experiment_id, int(time.time() * 1000))
    for experiment in sorted(experiments, key=lambda e: e.name):
        print(f"{experiment.name}: {view_url(served, experiment.experiment_id)}")
    if experiments:
        print(f"(the view '{VIEW_KEY}' shows adapter, mode, precision, parity and µs/step as columns)")
    if args.no_server or database is None:
        return EXIT_OK
    import shutil

    mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if mlflow is None:
        raise UsageError("the mlflow command is not installed in this environment (make install)")
    print(f"MLflow UI on {served} over {uri} (Ctrl-C stops it)", flush=True)
    command = [mlflow, "server", "--host", args.host, "--port", str(args.port), "--workers", "1",
               "--backend-store-uri", uri, "--default-artifact-root", str(database.resolve().parent / ARTIFACTS_FOLDER)]
    os.execve(mlflow, command, {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    return EXIT_OK  # not reached


def _task_line(row: dict[str, Any]) -> str:
    if row["origin"] != "built-in":
        return f"plugin ({row['origin']} {row['target']} of {row.get('distribution')} {row.get('version')})"
    options = ", ".join(f"{k}={v}" for k, v in row["options"].items())
    return row["description"] + (f" [options: {options}]" if options else "")


def _adapter_line(row: dict[str, Any]) -> str:
    if row["origin"] != "built-in":
        return f"plugin ({row['origin']} {row['target']} of {row.get('distribution')} {row.get('version')})"
    if row["problem"]:
        return f"unavailable: {row['problem']}"
    library = row["library"] or "torch"
    if row.get("library_version"):
        library += f" {row['library_version']}"
    line = f"style={row['style']} library={library} modes={','.join(row['modes'])}"
    if row.get("environment"):
        built = {True: "built", False: "built on first use", None: "cannot be read"}[row.get("environment_built")]
        line += f" (own environment {row['environment']!r}: {built})"
    return line


def _checked_task_line(name: str) -> tuple[str, bool]:
    from harness.registry import PluginError, get_task, task_entry

    try:
        task = get_task(name)
    except PluginError as error:
        return f"BROKEN: {error}", task_entry(name).plugin
    options = ", ".join(f"{k}={v}" for k, v in task.options.items())
    return task.description + (f" [options: {options}]" if options else "") + " (loads)", False


def _checked_adapter_line(name: str) -> tuple[str, bool]:
    from harness.registry import PluginError, adapter_entry, get_adapter

    try:
        adapter = get_adapter(name)
    except PluginError as error:
        plugin = adapter_entry(name).plugin
        return (f"BROKEN: {error}" if plugin else f"unavailable: {error}"), plugin
    library, modes = adapter.library or "torch", ",".join(adapter.modes)
    return f"style={adapter.style} library={library} modes={modes} (loads)", False


def command_list(args: argparse.Namespace) -> int:
    """Tasks, adapters and suites. Nothing is imported unless --check: it answers in about a second."""
    from harness.registry import describe_adapters, describe_tasks
    from harness.suites import BUILTIN

    tasks, adapters = describe_tasks(), describe_adapters()
    width = max(10, *(len(row["name"]) for row in tasks + adapters))
    broken = 0
    print("tasks:")
    for row in tasks:
        line, is_broken = _checked_task_line(row["name"]) if args.check else (_task_line(row), False)
        broken += is_broken
        print(f"  {row['name']:{width}} {line}")
    print(f"  {'(yours)':{width}} --task package.module:TaskClass (a bakeoff.Task subclass; README: Bring your own)")
    print("adapters:")
    for row in adapters:
        line, is_broken = _checked_adapter_line(row["name"]) if args.check else (_adapter_line(row), False)
        broken += is_broken
        print(f"  {row['name']:{width}} {line}")
    print(f"  {'(yours)':{width}} --adapter package.module:AdapterClass, or your own training function "
          "package.module:train")
    print(f"  {'versions:':{width}} an adapter with a library also runs as <adapter>@<version> in its own environment,")
    print(f"  {'':{width}} built on first use (e.g. lightning@2.1.4; `python -m harness.envs build lightning@2.1.4`)")
    print("suites:")
    for name, factory in BUILTIN.items():
        print(f"  {name:{width}} {factory.__doc__}")
    if broken:
        print(f"bakeoff: error: {broken} plugin(s) cannot be loaded (see BROKEN above)", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def command_env(args: argparse.Namespace) -> int:
    from harness import environment

    libraries = ("lightning", "fastai", "keras", "transformers", "accelerate", "mlflow")
    print(json.dumps(environment.capture(libraries), indent=1))
    return EXIT_OK


def _add_cost_parser(commands) -> None:
    cost = commands.add_parser(
        "cost",
        help="per-step cost, paired in one process: µs/step overhead with CIs, syncs, attribution, instructions",
        description=(
            "Measure what each adapter adds per optimizer step over the native loop. Each cell (task, adapter, "
            "mode, precision) gets one process that alternates native and adapter fits round by round (random "
            "order), timing every step by wall clock and main-thread CPU; then counts host syncs per step and "
            "profiles where the extra time goes. Other passes: `imports` (does importing a library slow plain "
            "torch: clean vs library processes, interleaved) and `instructions` (callgrind instruction counts "
            "per step, deterministic; one valgrind process per run, two runs). Without --suite/--suite-file the "
            "cells are the issue's target: scaling width 64, batch 32, every main-environment adapter in both "
            "modes, plus native against itself (the A/A check)."
        ),
    )
    source = cost.add_mutually_exclusive_group()
    source.add_argument("--suite", help="the cells of a built-in suite")
    source.add_argument("--suite-file", type=Path, help="the cells of a TOML suite (its [cost_protocol] table applies)")
    cost.add_argument("--task", default="scaling", help="task of the default cells (default: scaling)")
    cost.add_argument("--option", "-o", action="append", type=_option, default=None, metavar="KEY=VALUE",
                      help="task option of the default cells (default for scaling: width=64)")
    cost.add_argument("--batch-size", type=int, default=32, help="batch of the default cells (default: 32)")
    cost.add_argument("--adapters", help="comma-separated adapters of the default cells (default: every main one)")
    cost.add_argument("--modes", default="aligned,defaults", help="modes of the default cells (default: both)")
    cost.add_argument("--precision", default="fp32", help="precision of the default cells (default: fp32)")
    cost.add_argument("--no-aa", action="store_true", help="leave out the native-vs-native (A/A) cell")
    cost.add_argument("--passes", default=None,
                      help="comma-separated: paired, imports, instructions (default: paired,imports)")
    cost.add_argument("--device", default="cpu", help="cpu | cuda | auto (default: cpu)")
    paired = cost.add_argument_group("paired pass (defaults: the suite's [cost_protocol], else these)")
    for flag, text in (("rounds", "measured rounds per cell (40)"), ("steps", "steps per fit, warm-up included (100)"),
                       ("warmup", "steps left out of each fit (20)"), ("threads", "torch threads (1)"),
                       ("warm-rounds", "discarded rounds first (1)"), ("sync-fits", "fits per arm under the sync "
                       "counter (1)"), ("profile-rounds", "rounds under the profiler (2)")):
        paired.add_argument(f"--{flag}", type=int, default=None, help=text)
    other = cost.add_argument_group("imports and instructions passes")
    other.add_argument("--import-blocks", type=int, default=None, help="blocks of processes (6)")
    other.add_argument("--instruction-runs", type=int, default=None, help="valgrind processes (2, for repeatability)")
    other.add_argument("--instruction-layouts", type=int, default=None,
                       help="heap layouts the runs cycle through (1); more states the counts' layout bias as a "
                       "spread, e.g. --instruction-runs 3 --instruction-layouts 3")
    other.add_argument("--instruction-rounds", type=int, default=None, help="rounds per cell (6)")
    other.add_argument("--instruction-steps", type=int, default=None, help="steps per fit (25)")
    other.add_argument("--instruction-warmup", type=int, default=None, help="steps left out (5)")
    cost.add_argument("--results-dir", type=_safe_dir, default=None, help="where records go (default: results/cost)")
    cost.add_argument("--timeout", type=_positive_float, default=1800.0,
                      help="seconds per cell process (default: 1800)")
    cost.add_argument("--force", action="store_true", help="measure again cells already measured with this protocol")
    cost.add_argument("--dry-run", action="store_true", help="list the cells and the protocol without measuring")
    _add_tracking_option(cost)
    cost.add_argument("--experiment", default=None,
                      help="MLflow experiment the records go to (default: the suite's, else bakeoff-cost); "
                           "bakeoff-standard puts the cost tables into the standard suite's report")
    cost.add_argument("--no-tracking", action="store_true", help="write the record files only, log nothing")
    cost.epilog = ("exit status: 0 every cell measured (or unsupported); 1 a measurement failed; 2 bad input. "
                   "Records (bakeoff.cost/1 JSON) go to the results folder; see notes/issue-16.md for the fields.")


def command_cost(args: argparse.Namespace) -> int:
    from harness.cost.plan import plan_from_args
    from harness.store import experiment_name

    plan = plan_from_args(args)
    tracked = not plan.dry_run and not args.no_tracking
    uri = _tracking_uri(args) if tracked else None  # a bad store is bad input before anything is measured
    code = plan.run(print)
    if not tracked:
        return code
    experiment = args.experiment or experiment_name(plan.suite_name or "cost")
    return max(code, _log_cost(plan.results_dir, uri, experiment, suite=plan.suite_name or "cost"))


def _log_cost(folder: Path, uri: str, experiment: str, *, suite: str, parent_run_id: str | None = None) -> int:
    """Log the cost records in ``folder`` to the store; EXIT_FAILED (with one line) when that fails."""
    from harness.cost.record import read_folder
    from harness.ingest import log_cost_records
    from harness.store import TrackingError

    records, problems = read_folder(folder)
    for problem in problems:
        print(f"bakeoff: skipping {problem}", file=sys.stderr)
    if not records:
        return EXIT_FAILED if problems else EXIT_OK
    try:
        logged = log_cost_records(records, uri=uri, experiment=experiment, suite=suite, parent_run_id=parent_run_id)
    except TrackingError as error:
        print(f"bakeoff: error: {error}; the cost records are intact in {folder}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as error:  # the store failed mid-way: the records are on disk, say so in one line
        print(f"bakeoff: error: logging cost records to {uri} failed ({type(error).__name__}: {error}); "
              f"the records are intact in {folder}", file=sys.stderr)
        return EXIT_FAILED
    print(f"mlflow: {logged.logged} cost records logged, {logged.existing} already there (experiment {experiment})")
    return EXIT_FAILED if problems else EXIT_OK


COMMANDS = {
    "run": command_run,
    "bench": command_bench,
    "ingest": command_ingest,
    "compare": command_compare,
    "report": command_report,
    "ui": command_ui,
    "list": command_list,
    "env": command_env,
    "cost": command_cost,
}


def _plugin_path_here() -> None:
    """Import paths (``--task mypkg.tasks:MyTask``) also resolve from the current directory, as a user
    expects, after everything else on the path, and in the workers too (they inherit the variable)."""
    from harness.registry import PLUGIN_PATH_ENV

    folders = [folder for folder in os.environ.get(PLUGIN_PATH_ENV, "").split(os.pathsep) if folder]
    here = os.getcwd()
    if here not in folders:
        os.environ[PLUGIN_PATH_ENV] = os.pathsep.join([*folders, here])


def main(argv: list[str] | None = None) -> int:
    import warnings

    # A library imported for `list`/`bench` checks (fastai) scripts with torch.jit, which torch
    # 2.14 deprecates loudly; it says nothing about the user's command.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated")
    parser = build_parser()
    _plugin_path_here()
    try:
        args = parser.parse_args(argv)
        return COMMANDS[args.command](args)
    except (UsageError, SpecError) as error:
        print(f"bakeoff: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("bakeoff: interrupted; finished results are kept and `bench` resumes from them", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
