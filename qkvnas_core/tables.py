"""Aligned text tables for the terminal: values through per-column formatters, empty where missing."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd


def percent(value: Any) -> str:
    """A fraction in [0, 1] as a percentage with two decimals."""
    return f"{float(value) * 100:.2f}"


def signed_points(value: Any) -> str:
    """A difference of two fractions in percentage points, with its sign."""
    return f"{float(value) * 100:+.2f}"


def interval_text(low: Any, high: Any, signed: bool = False) -> str:
    """[low, high] of fractions in % (points with a sign when `signed`); empty where there is no interval."""
    if pd.isna(low) or pd.isna(high):
        return ""
    show = signed_points if signed else percent
    return f"[{show(low)}, {show(high)}]"


def table_text(frame: pd.DataFrame, formats: dict[str, Callable[[Any], str]]) -> str:
    """The columns of `formats` that `frame` has, each value through its formatter (empty when missing)."""
    shown = pd.DataFrame({name: ["" if value is None or (not isinstance(value, str) and pd.isna(value))
                                 else format_value(value) for value in frame[name]]
                          for name, format_value in formats.items() if name in frame.columns})
    return shown.to_string(index=False)
