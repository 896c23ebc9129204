"""Counts, sizes and durations as people write and read them: 3.1M, 750K, 3.1e6; 15.7 GB; 1m07s, 2h03m."""
from __future__ import annotations

import math
import re

from qkvnas_core.errors import UsageError

SUFFIXES = {"": 1, "k": 1_000, "m": 1_000_000, "g": 1_000_000_000, "b": 1_000_000_000}
# A count is written to JSON and read back as a 64-bit integer.
MAX_COUNT = 2**63
COUNT_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgb]?)\s*$", re.IGNORECASE)


def parse_count(text: str, what: str = "budget") -> int:
    """'3.1M' -> 3100000. Anything else than a positive count with an optional K/M/G suffix is a UsageError."""
    match = COUNT_PATTERN.match(str(text))
    if not match:
        raise UsageError(f"{what} {text!r}: expected a positive count such as 3.1M, 750K, 3100000 or 3.1e6")
    value = float(match.group(1)) * SUFFIXES[match.group(2).lower()]
    if not math.isfinite(value) or value < 1:
        raise UsageError(f"{what} {text!r}: expected a positive count of at least 1, such as 3.1M")
    if value >= MAX_COUNT:
        raise UsageError(f"{what} {text!r}: expected a count below 2**63 (9.2e18), such as 3.1M")
    return int(round(value))


def format_count(count: float) -> str:
    """3053224 -> '3.05M'; for tables and messages."""
    for suffix, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.3g}{suffix}"
    return f"{count:g}"


def format_duration(seconds: float) -> str:
    """9 -> '9s', 67 -> '1m07s', 7384 -> '2h03m'."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def format_bytes(count: int) -> str:
    """15_740_000_000 -> '15.7 GB' (decimal units, as disks are sold)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count:,} bytes"
