"""Per-step cost that settles the argument: paired, in-process, counted and attributed.

- :mod:`harness.cost.paired` — one process per cell alternates the native loop and the adapter on
  identical jobs (random order within each round), wall and main-thread CPU clocks;
- :mod:`harness.cost.instructions` — the same alternation under callgrind: instructions per step,
  deterministic, with per-function costs;
- :mod:`harness.cost.contamination` — does importing a library slow plain torch (clean vs
  library-imported processes, interleaved);
- :mod:`harness.cost.attribution` — a deterministic profile of steady-state steps: where the extra
  time goes, shares scaled to the unprofiled paired total;
- :mod:`harness.cost.syncs` — host syncs per step (``.item()``, ``.cpu()``, ``bool(tensor)``…) with
  their call sites;
- :mod:`harness.cost.analysis`, :mod:`harness.cost.callgrind`, :mod:`harness.cost.record` — the
  torch-free parts: statistics, the callgrind file parser, the result format (``bakeoff.cost/1``).
"""
