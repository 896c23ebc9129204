"""Non-dominated sets of a run's trials, and the plot of accuracy against cost that shows them.

Domination rule: trial a dominates b when a's val_acc is at least b's and every cost of a is at most
b's, and a is strictly better in at least one of them. Equal points dominate neither; they are one
point, represented by the first of them in trial_id (string) order. moocore decides it (`non_dominated`).
Only trials scored at full fidelity (complete: every epoch ran) take part, unless stopped trials are asked
for too (`include_stopped`: ASHA scored them after fewer epochs, so they are not comparable); and only
those with a value for every cost.
"""
from __future__ import annotations

import itertools
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import moocore
import numpy as np
import pandas as pd

from qkvnas_core.errors import UsageError
from qkvnas_core.files import atomic_path
from qkvnas_core.log import logger
from nas.settings.objectives import COST_LIMIT_SETTINGS, FRONT_COSTS, SCORE
from nas.settings.requests import ParetoRequest
from nas.runs.results import SCORED_STATES, Run, TrialState, find_run, read_run, state_counts
from nas.runs.seed_stats import read_retrain, seed_summary
from search_spaces.arch import QKVConfig, structure_name
from search_spaces.model_tools.device import DEFAULT_DEVICE
from search_spaces.shape import DataShape

log = logger(__name__)
# The column of trials.csv (pareto.csv for latency) that holds each cost a front may be drawn against.
COST_COLUMNS = dict(zip(FRONT_COSTS, ("params", "flops", "latency_ms")))
LATENCY_COLUMNS = ("latency_ms", "throughput", "latency_device")
# (label, preset, ImageNet top-1, published params or None when the preset's count is the published one).
# The paper's F-SNE has 3.1M params; its hidden width is not given, so our preset (hidden ratio 1, 2.87M)
# only stands in for its FLOPs.
REFERENCE_MODELS = (("XCiT-N12", "xcit-n12", 0.699, None), ("F-SNE (paper)", "xcit-n12-fsne", 0.714, 3_100_000),
                    ("DeiT-Tiny", "deit-tiny", 0.722, None))


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


def scored_trials(table: pd.DataFrame, include_stopped: bool = True) -> pd.DataFrame:
    """The trials that have a score: complete (scored at full fidelity), and stopped ones unless
    `include_stopped` is False; each with a val_acc."""
    states = SCORED_STATES if include_stopped else (TrialState.COMPLETE,)
    return table[table["state"].isin(states) & table[SCORE].notna()]


def non_dominated(rows: pd.DataFrame, maximised: str, minimised: Sequence[str]) -> np.ndarray:
    """Which `rows` no other row dominates (the module's rule: `maximised` at least, each of `minimised` at most,
    one strictly better), by moocore; of equal rows only the first is non-dominated."""
    points = rows[[maximised, *minimised]].to_numpy(dtype=float)
    return moocore.is_nondominated(points, maximise=[True] + [False] * len(minimised), keep_weakly=False)


def pareto_front(table: pd.DataFrame, costs: Sequence[str], include_stopped: bool = False) -> pd.DataFrame:
    """The non-dominated trials scored at full fidelity (and stopped ones when `include_stopped`) over max val_acc
    and min `costs` (one front over all), sorted by costs[0]."""
    costs = list(costs)
    if not costs:
        raise ValueError("pareto front without a cost: expected at least one cost column, e.g. params")
    missing = [name for name in [SCORE, "state", "trial_id", *costs] if name not in table.columns]
    if missing:
        raise UsageError(f"trials table lacks column(s) {', '.join(missing)}: expected them to draw a Pareto front")
    # In trial_id order, so the first of equal trials is the one kept.
    candidates = scored_trials(table, include_stopped).dropna(subset=costs).sort_values("trial_id", kind="stable")
    front = candidates[non_dominated(candidates, SCORE, costs)]
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


def _run_shape(run: Run, why: str) -> DataShape:
    """The data shape the run's trials were built for, from its search.json."""
    return DataShape(img_size=int(run.setting("img_size", why)), in_chans=int(run.settings.get("in_chans", 3)),
                     num_classes=int(run.setting("num_classes", why)))


def _with_latency(table: pd.DataFrame, rows: pd.Index, run: Run, device: str) -> pd.DataFrame:
    """`table` plus latency columns, measured for `rows` (one measurement per distinct architecture)."""
    from search_spaces.arch import ArchConfig
    from search_spaces.build import build_model
    from search_spaces.model_tools.device import parse_device
    from search_spaces.model_tools.latency import device_name, measure_latency

    torch_device = parse_device(device)
    why = "to build the models whose latency is measured"
    shape = _run_shape(run, why)
    if "arch" not in table.columns:
        raise UsageError(f"{run.folder.trials_file} has no arch column: expected it {why}")
    table = table.copy()
    for column in LATENCY_COLUMNS:
        table[column] = pd.Series(dtype=str if column == "latency_device" else float)
    log.info(f"measuring latency of {table.loc[rows, 'arch'].nunique()} architectures on {device}")
    measured: dict[str, dict[str, float]] = {}
    for index in rows:
        arch_json = table.at[index, "arch"]
        if arch_json not in measured:
            model = build_model(ArchConfig.from_json(str(arch_json)), shape)
            measured[arch_json] = measure_latency(model, shape, torch_device)
        table.loc[index, ["latency_ms", "throughput"]] = [measured[arch_json]["latency_ms"],
                                                          measured[arch_json]["throughput"]]
        table.loc[index, "latency_device"] = device_name(torch_device)
    return table


def reference_points(run: Run) -> pd.DataFrame | None:
    """The published models at the run's image size and classes, or None off ImageNet (their accuracies are
    ImageNet top-1, comparable with no other dataset)."""
    if run.settings.get("dataset") != "imagenet":
        return None
    from search_spaces.cost import count_flops, count_params
    from search_spaces.presets import get_preset

    why = "to count the reference models' parameters and FLOPs"
    shape = _run_shape(run, why)
    rows = [{"name": name, "preset": preset, SCORE: accuracy,
             "params": published or count_params(get_preset(preset), shape),
             "flops": count_flops(get_preset(preset), shape)}
            for name, preset, accuracy, published in REFERENCE_MODELS]
    return pd.DataFrame(rows)


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False)


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)


@dataclass
class ParetoOutcome:
    """What `write_pareto` computed and wrote: the front over `costs`, out of `scored` trials, and its files (the
    csv first); references are the published models drawn, None when not asked for or off ImageNet."""

    front: pd.DataFrame
    costs: list[str]
    scored: int
    dataset: str | None
    out: Path
    written: list[Path]
    references: pd.DataFrame | None
    full_fidelity: int  # trials scored at full fidelity (complete), the front's candidates unless include_stopped
    epochs: int | None  # the run's full number of epochs
    include_stopped: bool

    @property
    def csv_path(self) -> Path:
        return self.written[0]


def write_pareto(request: ParetoRequest) -> ParetoOutcome:
    """`nas pareto`: the run folder read back (checked against its study), its front drawn (`draw_front`), with
    the retrained models' plot when the run has retrain.csv."""
    run = read_run(find_run(request.run))
    return draw_front(run, request.costs, request.reference, request.measure_latency, request.device, request.out,
                      include_stopped=request.include_stopped, retrained=read_retrain(run.path))


def draw_front(run: Run, costs: Sequence[str] = ("params",), reference: bool = False, measure_latency: bool = False,
               device: str = DEFAULT_DEVICE, out_dir: str | Path | None = None, name: str | None = None,
               include_stopped: bool = False, retrained: pd.DataFrame | None = None) -> ParetoOutcome:
    """Write <name>.csv (the front over all `costs`) and one plot per cost into `out_dir` (default: the run), from
    the run as given (a search's session passes what it holds; nothing is read back).

    With several costs, plots are <name>_<cost>.png/.svg and the first is also <name>.png/.svg. The front is
    drawn from trials scored at the full number of epochs unless `include_stopped`; stopped trials are drawn hollow.
    `nas search` writes its own front as `search_front.*`, so a front a user drew with `nas pareto` (pareto.*)
    is never overwritten by a resumed search. Logs a line while latency is measured.
    """
    costs = list(dict.fromkeys(costs))
    out = Path(out_dir) if out_dir is not None else run.path
    name = name or run.folder.pareto.name
    table = run.table
    scored = scored_trials(table)
    if scored.empty:
        raise UsageError(f"{run.folder.trials_file} has no scored trial ({state_counts(table)}): "
                         "expected at least one complete or stopped trial with a val_acc")
    epochs = run.settings.get("epochs")
    full_fidelity = scored_trials(table, include_stopped=False)
    if full_fidelity.empty and not include_stopped:
        raise UsageError(f"{run.folder.trials_file} has no trial scored at full fidelity (every epoch run; "
                         f"{state_counts(table)}): expected a complete trial, or --include-stopped to draw a front "
                         "of trials ASHA scored after fewer epochs")
    for cost in costs:
        column = COST_COLUMNS[cost]
        if cost != "latency" and (column not in table.columns or scored[column].isna().all()):
            raise UsageError(f"{run.folder.trials_file} has no {column} values for its scored trials: "
                             f"expected a {column} column to use cost {cost!r}")
    if "latency" in costs:
        # Any scored trial may be on a front that includes latency, so all of them are measured.
        table = _with_latency(table, scored.index, run, device)
    front = pareto_front(table, [COST_COLUMNS[cost] for cost in costs], include_stopped)
    if measure_latency and "latency" not in costs:
        front = _with_latency(front, front.index, run, device)
    references = reference_points(run) if reference else None

    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{name}.csv"
    _write_csv(front, csv_path)
    fidelity = (f"front of {len(full_fidelity)} trials scored at {epochs or 'all'} epochs" if not include_stopped
                else f"front of {len(scored)} trials, stopped ones scored at fewer epochs")
    title = f"{run.name} ({run.settings.get('dataset', 'dataset unknown')}): {fidelity}"
    written = [csv_path]
    for cost in costs:
        stem = out / (name if len(costs) == 1 else f"{name}_{cost}")
        limit = run.settings.get(COST_LIMIT_SETTINGS[cost]) if cost in COST_LIMIT_SETTINGS else None
        plots = plot_front(table, front, COST_COLUMNS[cost], limit, stem, references, title=title)
        written += plots
        if len(costs) > 1 and cost == costs[0]:
            for plot in plots:
                _copy(plot, out / f"{name}{plot.suffix}")
                written.append(out / f"{name}{plot.suffix}")
    if retrained is not None and len(retrained):
        written += plot_retrained(seed_summary(retrained), out / f"{name}_retrained",
                                  f"{run.name}: retrained models, each seed tested once ({len(retrained)} runs)")
    return ParetoOutcome(front=front, costs=costs, scored=len(scored), dataset=run.settings.get("dataset"), out=out,
                         written=written, references=references, full_fidelity=len(full_fidelity), epochs=epochs,
                         include_stopped=include_stopped)
