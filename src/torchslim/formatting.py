"""How sizes, MAC counts and times read in tables (the report's and `torchslim compare`'s alike).

Light on purpose: `torchslim compare` formats with it without importing torch.
"""
from __future__ import annotations

from typing import Any

DASH = "—"  # a value that was not measured


def fmt_si(n: Any) -> str:
    """A count with an SI suffix: ``fmt_si(166400) == '166.40 K'``; anything but a number reads as a dash."""
    if not isinstance(n, (int, float)):  # None, or a value a hand-edited report.json got wrong (compare reads those)
        return DASH
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)


def fmt_kb(n: Any) -> str:
    """Bytes as KB (1 KB = 1000 bytes): ``fmt_kb(19600) == '19.6'``."""
    return f"{n / 1000:,.1f}" if isinstance(n, (int, float)) else DASH


def fmt_ms(x: float | None) -> str:
    """Milliseconds: three decimals below 10 ms, one above."""
    if x is None:
        return DASH
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"
