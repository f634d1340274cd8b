"""How the report prints numbers: three significant figures, CIs as ``561 µs (362–769)``, ``p < 0.001``.

The CSV and JSON keep every figure at full precision; these are for people.
"""

from __future__ import annotations

import math
from typing import Any

MISSING = "–"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def sig(value: Any, figures: int = 3) -> str:
    """``value`` to ``figures`` significant figures, without an exponent for everyday magnitudes."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not math.isfinite(value):
        return "∞" if value > 0 else "−∞"
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= 6 or magnitude < -4:
        return f"{value:.{figures - 1}e}"
    if magnitude >= figures:  # 69977 → 70000: three significant figures, not five
        text = str(int(round(value, figures - 1 - magnitude)))
        return text.replace("-", "−", 1)
    decimals = max(0, figures - 1 - magnitude)
    rounded = round(value, decimals)
    if rounded != 0 and math.floor(math.log10(abs(rounded))) > magnitude:  # 999.6 → 1000: one digit fewer
        decimals = max(0, decimals - 1)
    text = f"{value:.{decimals}f}"
    return text.replace("-", "−", 1) if text.startswith("-") else text


def with_ci(value: Any, low: Any, high: Any, unit: str = "") -> str:
    """``561 µs (362–769)``; the interval is left out when it is not known."""
    suffix = f" {unit}" if unit else ""
    if not _finite(value):
        return MISSING
    if _finite(low) and _finite(high):
        # An en dash beside a minus sign reads as a subtraction: a range that starts below zero says "to".
        between = " to " if float(low) < 0 else "–"
        return f"{sig(value)}{suffix} ({sig(low)}{between}{sig(high)})"
    return f"{sig(value)}{suffix}"


def signed(value: Any, unit: str = "") -> str:
    """A difference, with its sign: ``+561 µs``, ``−12 µs``."""
    if not _finite(value):
        return MISSING
    text = sig(abs(value))
    sign = "+" if value > 0 else ("−" if value < 0 else "±")
    return f"{sign}{text}" + (f" {unit}" if unit else "")


def signed_ci(value: Any, low: Any, high: Any, unit: str = "") -> str:
    """``+561 µs (+362 to +769)``: a difference whose interval may cross zero."""
    if not _finite(value):
        return MISSING
    main = signed(value, unit)
    if _finite(low) and _finite(high):
        return f"{main} ({signed(low)} to {signed(high)})"
    return main


def compact_ci(value: Any, low: Any, high: Any) -> str:
    """A signed difference for a table cell whose header carries the unit: ``+561 (362–769)``,
    ``+759 (−2080 to +1380)`` when the interval crosses zero."""
    if not _finite(value):
        return MISSING
    if not (_finite(low) and _finite(high)):
        return signed(value)
    if low > 0:
        return f"{signed(value)} ({sig(low)}–{sig(high)})"
    return f"{signed(value)} ({signed(low)} to {signed(high)})"


def p_value(p: Any) -> str:
    if not _finite(p):
        return MISSING
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.2g}"


def seconds(value: Any) -> str:
    return f"{sig(value)} s" if _finite(value) else MISSING


def microseconds(value: Any) -> str:
    return f"{sig(value)} µs" if _finite(value) else MISSING


def times(value: Any) -> str:
    """A ratio: ``×1.33``."""
    return f"×{sig(value)}" if _finite(value) else MISSING
