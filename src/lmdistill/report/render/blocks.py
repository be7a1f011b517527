"""Building blocks of the report (tables, images, callouts, ...) and how numbers are written."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

# --------------------------------------------------------------------------------------------- blocks


NUMERIC = re.compile(r"^[+\-−]?[\d.,]")


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]

    def numeric(self, column: int) -> bool:
        """Right-align a column whose cells (n/a aside) all start with a number."""
        cells = [row[column] for row in self.rows if column < len(row) and not row[column].startswith("n/a")]
        return column > 0 and bool(cells) and all(NUMERIC.match(c) for c in cells)


@dataclass
class Image:
    filename: str
    caption: str
    png: bytes


@dataclass
class Callout:
    text: str
    kind: str = "note"  # "headline" | "summary" | "caveat" | "note"


@dataclass
class Code:
    text: str


@dataclass
class Bullets:
    items: list[str]


Block = str | Table | Image | Callout | Code | Bullets


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)


# --------------------------------------------------------------------------------------------- numbers


def finite(x: Any) -> bool:
    """A real, finite number (not None, not a bool, not NaN/inf)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def na(reason: str) -> str:
    return f"n/a ({reason})" if reason else "n/a"


def sig(x: float, digits: int = 3) -> str:
    """``digits`` significant digits, thousands separators, never scientific notation."""
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"


def si(x: Any, unit: str, reason: str = "not measured") -> str:
    """A quantity with an SI prefix chosen so that 1 <= mantissa < 1000: 0.0123 s -> '12.3 ms'."""
    if not finite(x):
        return na(reason)
    if x == 0:
        return f"0 {unit}"
    x = float(f"{x:.3g}")  # round first, so that 999.96 ms becomes 1.00 s, not 1,000 ms
    prefixes = [(1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n")]
    scale, prefix = next(((s, p) for s, p in prefixes if abs(x) >= s), prefixes[-1])
    return f"{sig(x / scale)} {prefix}{unit}"


def count(x: Any, reason: str = "not measured") -> str:
    """A parameter count: 4,386,563 -> '4.39 M'."""
    if not finite(x):
        return na(reason)
    scale, suffix = next(((s, p) for s, p in [(1e9, " B"), (1e6, " M"), (1e3, " k")] if x >= s), (1, ""))
    return f"{sig(x / scale)}{suffix}" if scale > 1 else f"{x:,.0f}"


def duration(x: Any, reason: str = "not recorded") -> str:
    """Wall time: '48.2 s', '12.5 min', '3 h 05 min'."""
    if not finite(x):
        return na(reason)
    if x < 60:
        return si(x, "s")
    if x < 3600:
        return f"{x / 60:.1f} min"
    hours, minutes = divmod(round(x / 60), 60)
    return f"{hours} h {minutes:02d} min"


def size(x: Any, reason: str = "not measured") -> str:
    """Bytes in decimal units: 17,612,345 -> '17.6 MB'."""
    return si(x, "B", reason)


def ratio(x: Any, reason: str) -> str:
    """A factor: 3.21 -> '3.2×'."""
    return f"{x:.1f}×" if finite(x) and x < 10 else f"{x:.0f}×" if finite(x) else na(reason)


def divide(a: Any, b: Any) -> float | None:
    return a / b if finite(a) and finite(b) and b != 0 else None


def get(mapping: Any, *keys: str) -> Any:
    """mapping[k1][k2]..., or None where any level is missing."""
    for key in keys:
        if not isinstance(mapping, dict):
            return None
        mapping = mapping.get(key)
    return mapping
