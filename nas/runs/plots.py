"""The plots of a run: accuracy against a cost with the front marked (`plot_front`), the retrained models with their
intervals (`plot_retrained`), and the front's hypervolume against the epochs a search spent (`plot_hypervolume`).
Each is written as PNG and SVG, atomically; colours follow the QKV structure, the same in every run."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from qkvnas_core.files import atomic_path
from nas.settings.objectives import SCORE
from nas.runs.fronts import non_dominated, pareto_front, scored_trials
from nas.runs.results import TrialState
from search_spaces.arch import QKVConfig, structure_name


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
        for state, face in ((TrialState.COMPLETE, colour), (TrialState.STOPPED, "none")):
            part = group[group["state"] == state]
            ax.scatter(part[cost] * axis.scale, part[SCORE] * 100, s=28, facecolors=face, edgecolors=colour,
                       linewidths=1.2, zorder=3)
        handles.append(Line2D([], [], ls="", marker="o", color=colour, label=f"{name} ({len(group)})"))
    if (trials["state"] == TrialState.STOPPED).any():
        handles.append(Line2D([], [], ls="", marker="o", markerfacecolor="none", markeredgecolor="#555555",
                              label="hollow: stopped early\n(fewer epochs)"))

    steps = pareto_front(front, [cost], include_stopped=True) if len(front) else front
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


def plot_retrained(summary: pd.DataFrame, out_stem: Path, title: str) -> list[Path]:
    """Retrained models (a `seed_summary`): mean test top-1 against params, a 95% t interval bar where a model has
    two seeds or more, the models no other beats on both (by their means) ringed and joined; <out_stem>.png/.svg."""
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = summary.dropna(subset=["top1_mean"])
    front = shown[non_dominated(shown, "top1_mean", ["params"])].sort_values("params")
    figure = Figure(figsize=(7.5, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    for row in shown.itertuples():
        colour = STRUCTURE_COLOURS.get(str(row.structure), UNKNOWN_STRUCTURE_COLOUR)
        bar = None if pd.isna(row.top1_low) else [[(row.top1_mean - row.top1_low) * 100],
                                                    [(row.top1_high - row.top1_mean) * 100]]
        ax.errorbar(row.params * 1e-6, row.top1_mean * 100, yerr=bar, fmt="s" if row.role == "baseline" else "o",
                    color=colour, capsize=4, zorder=3)
        ax.annotate(f"{row.source} ({row.seeds} seed{'s' if row.seeds > 1 else ''})",
                    (row.params * 1e-6, row.top1_mean * 100), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.scatter(front["params"] * 1e-6, front["top1_mean"] * 100, s=140, facecolors="none", edgecolors="black",
               zorder=4)
    ax.step(front["params"] * 1e-6, front["top1_mean"] * 100, where="post", color="black", lw=1.0, zorder=2)
    ax.set_xlabel(AXES["params"].label)
    ax.set_ylabel("test top-1 (%), mean over seeds, 95% t interval")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    written = []
    with rc_context({"svg.fonttype": "none"}):
        for suffix in ("png", "svg"):
            path = out_stem.with_name(f"{out_stem.name}.{suffix}")
            out_stem.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as temporary:
                figure.savefig(temporary, format=suffix)
            written.append(path)
    return written


def plot_hypervolume(history: pd.DataFrame, out_stem: Path, title: str) -> list[Path]:
    """The front's hypervolume (column hypervolume) against the search's epochs spent (column epochs_spent) when
    each trial ended, as a step line; writes <out_stem>.png."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.step(history["epochs_spent"], history["hypervolume"], where="post", color="#1f77b4", lw=1.5)
    ax.scatter(history["epochs_spent"], history["hypervolume"], s=14, color="#1f77b4", zorder=3)
    ax.set_xlabel("epochs trained in the search (all trials, stopped ones included)")
    ax.set_ylabel("hypervolume (val_acc from 0, each cost to its limit)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    path = out_stem.with_name(f"{out_stem.name}.png")
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    return [path]
