"""bakeoff's orchestration: spec, suites, registry, runner/worker, probe, environment, CLI."""

__version__ = "0.1.0"
