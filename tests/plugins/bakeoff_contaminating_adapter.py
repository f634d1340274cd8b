"""An adapter module whose *import* slows plain torch: a planted import contamination.

Importing it wraps ``torch.optim.SGD.step`` so every optimizer step — the native loop's too —
spends 1 ms more of the main thread's CPU time. The import-contamination measurement must find
that in processes that imported this module, and nothing like it in clean ones.
"""

from __future__ import annotations

import functools

import torch

from adapters.native import NativeAdapter

PLANTED_NS = 1_000_000


def _slowed(step):
    from bakeoff_cost_adapters import planted_busy_wait

    @functools.wraps(step)
    def slowed_step(self, *args, **kwargs):
        planted_busy_wait(PLANTED_NS)
        return step(self, *args, **kwargs)

    return slowed_step


torch.optim.SGD.step = _slowed(torch.optim.SGD.step)


class ContaminatingAdapter(NativeAdapter):
    name = "cost-contaminating"
