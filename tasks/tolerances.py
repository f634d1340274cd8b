"""Tolerances shared by the small tasks, declared before any result was seen.

fp32 ``close``: two implementations of the same math may reorder float reductions
(e.g. a library summing gradients in another order). One reorder costs ~1 ulp
(6e-8 relative); over tens to hundreds of SGD steps such differences compound, and for the
small models here we allow 1e-4 relative / 1e-6 absolute on every step loss and weight.
Anything beyond that is a different computation, not rounding.

bf16-mixed ``close``: autocast rounds matmul inputs to bf16 (8-bit mantissa, eps 7.8e-3).
Two libraries that autocast different regions (e.g. the loss inside or outside autocast)
differ by a few bf16 ulps per step; we allow 2e-2 relative on losses and 5e-2 on weights.

fp16-mixed ``close``: fp16 has a 10-bit mantissa (eps 9.8e-4) but GradScaler may skip
different steps; 1e-2 relative on losses, 2e-2 on weights.

Drift from fp32 (final loss of a mixed-precision run relative to the fp32 run of the same
spec): 10% for bf16, 5% for fp16 — mixed precision must train the same model, not a
bitwise-equal one.
"""

from __future__ import annotations

from tasks.base import Tolerance

STANDARD_TOLERANCES = {
    "fp32": Tolerance(loss_rtol=1e-4, loss_atol=1e-6, weight_rtol=1e-4, weight_atol=1e-6),
    "bf16-mixed": Tolerance(loss_rtol=2e-2, loss_atol=1e-4, weight_rtol=5e-2, weight_atol=1e-3),
    "fp16-mixed": Tolerance(loss_rtol=1e-2, loss_atol=1e-4, weight_rtol=2e-2, weight_atol=1e-3),
}

STANDARD_DRIFT = {"bf16-mixed": 0.10, "fp16-mixed": 0.05}
