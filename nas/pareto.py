"""Non-dominated sets of a run's trials, and the plot of accuracy against cost that shows them.

Domination rule: trial a dominates b when a's val_acc is at least b's and every cost of a is at most
b's, and a is strictly better in at least one of them. Equal points dominate neither; they are one
point, represented by the first of them in trial_id (string) order. Only complete and stopped trials
with a val_acc take part, and only those with a value for every cost.
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from search_spaces.arch import QKVConfig, structure_name
from core.errors import UsageError
from core.files import atomic_path

SCORE = "val_acc"
SCORED_STATES = ("complete", "stopped")


@dataclass(frozen=True)
class Axis:
    """How a cost column is drawn: its label with unit, and the factor from the stored value to that unit."""

    label: str
    scale: float
    unit: str
    limit_name: str


AXES: dict[str, Axis] = {
    "params": Axis("parameters (M)", 1e-6, "M params", "budget"),
    "flops": Axis("GFLOPs per image (2 per multiply-add)", 1e-9, "GFLOPs", "FLOPs cap"),
    "latency_ms": Axis("latency at batch 1 (ms)", 1.0, "ms", "latency cap"),
}


def _all_structures() -> list[str]:
    """Every structure name the QKV family can produce, in a fixed order, so colours match across runs."""
    names = []
    for depth in (1, 2, 3):
        for layers in itertools.product(("separate", "shared"), repeat=depth):
            names.append(structure_name(QKVConfig(layers=layers, code_size=8 if "shared" in layers else 0)))
    return names


_PALETTE = ("#7f7f7f", "#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
            "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#c5b0d5")
STRUCTURE_COLOURS: dict[str, str] = dict(zip(_all_structures(), _PALETTE))
UNKNOWN_STRUCTURE_COLOUR = "#333333"


def scored_trials(table: pd.DataFrame) -> pd.DataFrame:
    """The trials that have a score to compare: complete or stopped, with a val_acc."""
    return table[table["state"].isin(SCORED_STATES) & table[SCORE].notna()]


def _dominated(points: np.ndarray) -> np.ndarray:
    """Row i is dominated when another row is <= in every column and < in one (all columns minimised)."""
    dominated = np.zeros(len(points), dtype=bool)
    for index, point in enumerate(points):
        at_most = np.all(points <= point, axis=1)
        below = np.any(points < point, axis=1)
        dominated[index] = bool(np.any(at_most & below))
    return dominated


def pareto_front(table: pd.DataFrame, costs: Sequence[str]) -> pd.DataFrame:
    """The non-dominated scored trials over max val_acc and min `costs` (one front over all), sorted by costs[0]."""
    costs = list(costs)
    if not costs:
        raise UsageError("pareto front without a cost: expected at least one cost column, e.g. params")
    missing = [name for name in [SCORE, "state", "trial_id", *costs] if name not in table.columns]
    if missing:
        raise UsageError(f"trials table lacks column(s) {', '.join(missing)}: expected them to draw a Pareto front")
    candidates = scored_trials(table).dropna(subset=costs)
    candidates = candidates.sort_values("trial_id", kind="stable").drop_duplicates(subset=[SCORE, *costs])
    # Accuracy is negated so every column is minimised.
    points = np.column_stack([-candidates[SCORE].to_numpy(dtype=float),
                              *(candidates[name].to_numpy(dtype=float) for name in costs)])
    front = candidates[~_dominated(points)]
    return front.sort_values([costs[0], SCORE, "trial_id"], ascending=[True, False, True],
                             kind="stable").reset_index(drop=True)


def plot_front(table: pd.DataFrame, front: pd.DataFrame, cost: str, budget: float | None, out_stem: Path,
               references: pd.DataFrame | None = None, title: str = "") -> list[Path]:
    """Draw every scored trial (val_acc against `cost`) with the front; write <out_stem>.png and .svg.

    Colour is the QKV structure; hollow markers are trials ASHA stopped early. `front` is drawn as rings,
    and its members that are non-dominated in this cost alone as a step line. `budget` is the run's limit
    on this cost (a vertical line), None for none. `references` has columns name, val_acc and the cost.
    """
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    axis = AXES.get(cost, Axis(cost, 1.0, "", "limit"))
    trials = scored_trials(table).dropna(subset=[cost])
    figure = Figure(figsize=(8.5, 5.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    handles: list[Line2D] = []
    present = set(trials["structure"].astype(str)) if "structure" in trials else set()
    ordered = [name for name in STRUCTURE_COLOURS if name in present] + sorted(present - set(STRUCTURE_COLOURS))
    for name in ordered:
        colour = STRUCTURE_COLOURS.get(name, UNKNOWN_STRUCTURE_COLOUR)
        group = trials[trials["structure"].astype(str) == name]
        for state, face in (("complete", colour), ("stopped", "none")):
            part = group[group["state"] == state]
            ax.scatter(part[cost] * axis.scale, part[SCORE] * 100, s=28, facecolors=face, edgecolors=colour,
                       linewidths=1.2, zorder=3)
        handles.append(Line2D([], [], ls="", marker="o", color=colour, label=f"{name} ({len(group)})"))
    if (trials["state"] == "stopped").any():
        handles.append(Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="#555555",
                              label="hollow: stopped early\n(fewer epochs)"))

    steps = pareto_front(front, [cost]) if len(front) else front
    ax.scatter(front[cost] * axis.scale, front[SCORE] * 100, s=110, facecolors="none", edgecolors="black",
               linewidths=1.0, zorder=4)
    ax.step(steps[cost] * axis.scale, steps[SCORE] * 100, where="post", color="black", lw=1.3, zorder=2)
    handles.append(Line2D([], [], color="black", marker="o", markerfacecolor="none", markersize=10,
                          label=f"Pareto front ({len(front)})"))
    if budget is not None:
        ax.axvline(budget * axis.scale, color="#d62728", ls="--", lw=1.2, zorder=1)
        handles.append(Line2D([], [], color="#d62728", ls="--",
                              label=f"{axis.limit_name} {budget * axis.scale:.3g} {axis.unit}"))
    if references is not None and len(references) and cost in references:
        ax.scatter(references[cost] * axis.scale, references[SCORE] * 100, marker="*", s=160, color="black",
                   zorder=5)
        right_edge = max(trials[cost].max(), references[cost].max()) * axis.scale
        for reference in references.itertuples(index=False):
            x, accuracy = getattr(reference, cost) * axis.scale, getattr(reference, SCORE) * 100
            # Labels near the right edge go to the left of their marker, or they run out of the axes.
            on_right = x > 0.7 * right_edge
            ax.annotate(f"{reference.name} {accuracy:.1f}%", (x, accuracy),
                        textcoords="offset points", xytext=(-7 if on_right else 7, 4),
                        ha="right" if on_right else "left", fontsize=8)
        handles.append(Line2D([], [], ls="", marker="*", color="black", markersize=10,
                              label="published (ImageNet top-1)"))

    ax.set_xlabel(axis.label)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title or f"validation accuracy against {cost}")
    ax.grid(True, alpha=0.3)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    # Text stays text in the SVG: smaller, searchable and editable.
    with rc_context({"svg.fonttype": "none"}):
        for suffix in ("png", "svg"):
            path = out_stem.with_name(f"{out_stem.name}.{suffix}")
            with atomic_path(path) as temporary:
                figure.savefig(temporary, format=suffix)
            written.append(path)
    return written
