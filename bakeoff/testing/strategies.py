"""Hypothesis strategies over specs, so a user's CI can property-test their own task across adapters.

::

    from hypothesis import given, settings
    from bakeoff.testing.strategies import specs

    @settings(max_examples=10, deadline=None)
    @given(spec=specs("mypkg.tasks:MyTask", adapters=["lightning", "fastai", "mypkg.train:train"]))
    def test_every_adapter_reproduces_native(bakeoff, spec):
        bakeoff.assert_spec_parity(spec)

Only combinations the adapter accepts are drawn (its ``check``: modes, precisions, world sizes,
its own ``refuse``), so an example never fails for asking the impossible; each drawn spec carries
its plugins' code identities. Requires hypothesis (a test dependency, not one of bakeoff's).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hypothesis import strategies as st

__all__ = ["combinations", "specs"]


def _default_adapters() -> list[str]:
    """The built-in adapters whose library is installed here and that need no environment of their own."""
    from harness.registry import describe_adapters

    return [
        row["name"]
        for row in describe_adapters()
        if row["origin"] == "built-in" and not row["problem"] and not row.get("environment")
    ]


def combinations(
    task: str,
    *,
    adapters: Iterable[str] | None = None,
    modes: Sequence[str] = ("aligned",),
    precisions: Sequence[str] = ("fp32", "bf16-mixed"),
    grad_accum: Sequence[int] = (1, 2),
    world_sizes: Sequence[int] = (1,),
    device: str = "cpu",
) -> list[tuple[str, str, str, int, int]]:
    """(adapter, mode, precision, grad_accum, world_size) tuples the adapters accept for ``task`` on ``device``."""
    from adapters.base import Request
    from harness.registry import RegistryError, get_adapter, get_task
    from kernels.precision import PrecisionError, make_precision

    task_object = get_task(task)
    found = []
    for adapter_name in adapters if adapters is not None else _default_adapters():
        try:
            adapter = get_adapter(adapter_name)
        except RegistryError:
            continue  # not available here: nothing to draw
        for mode in modes:
            for precision in precisions:
                try:
                    make_precision(precision, device)
                except PrecisionError:
                    continue
                for accumulation in grad_accum:
                    for ranks in world_sizes:
                        request = Request(
                            task=task_object,
                            mode=mode,
                            precision=precision,
                            world_size=ranks,
                            grad_accum=accumulation,
                            device_type=device,
                        )
                        if adapter.check(request) is None:
                            found.append((adapter_name, mode, precision, accumulation, ranks))
    return found


def specs(
    task: str,
    *,
    adapters: Iterable[str] | None = None,
    modes: Sequence[str] = ("aligned",),
    precisions: Sequence[str] = ("fp32", "bf16-mixed"),
    grad_accum: Sequence[int] = (1, 2),
    world_sizes: Sequence[int] = (1,),
    seeds: st.SearchStrategy[int] | None = None,
    steps: st.SearchStrategy[int] | None = None,
    batch_sizes: st.SearchStrategy[int] | None = None,
    options: Mapping[str, Any] | None = None,
    device: str = "cpu",
) -> st.SearchStrategy:
    """Specs of ``task`` over the accepted combinations; seeds, steps and batch sizes drawn too.

    Defaults: every installed main-environment built-in adapter, fp32 and bf16-mixed, accumulation
    1 and 2, one process, seeds 0-1000, 2-6 steps, the task's batch size.
    """
    from bakeoff.testing import make_spec

    choices = combinations(
        task,
        adapters=adapters,
        modes=modes,
        precisions=precisions,
        grad_accum=grad_accum,
        world_sizes=world_sizes,
        device=device,
    )
    if not choices:
        raise ValueError(f"no adapter accepts any of the requested combinations for task {task!r} on {device}")

    def build(choice, seed, step_count, batch_size):
        adapter, mode, precision, accumulation, ranks = choice
        return make_spec(
            task,
            adapter,
            mode=mode,
            precision=precision,
            grad_accum=accumulation,
            world_size=ranks,
            seed=seed,
            steps=step_count,
            batch_size=batch_size,
            options=options,
            device=device,
        )

    return st.builds(
        build,
        st.sampled_from(choices),
        seeds if seeds is not None else st.integers(0, 1000),
        steps if steps is not None else st.integers(2, 6),
        batch_sizes if batch_sizes is not None else st.none(),
    )
