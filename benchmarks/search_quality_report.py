"""The analysis of benchmarks/search_quality.py's runs: the methods compared (as `nas search` settings), and what
the runs show, read back from their folders.

At a grid of epochs spent it takes, per run, the hypervolume of the trials scored at full length that had ended by
then (val_acc from 0, params up to the budget, as `nas search` measures it) and their best val_acc; across seeds,
the interquartile mean (IQM) and a seeded bootstrap 95% interval of the IQM. It gives the epochs each method needs
to reach random search's final IQM hypervolume, and whether its interval at half the epoch budget lies above
random search's final interval. From the runs without early stopping it measures how well each candidate rung ranks
architectures (Kendall's tau and Spearman's rho against the full-length score). Written to the runs' folder:
search_quality.md, search_quality.csv and search_quality.png (hypervolume IQM against epochs, 95% bands).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from qkvnas_core.errors import UsageError
from qkvnas_core.files import write_text_atomic
from qkvnas_core.units import format_count

BASELINE = "random"
# Written into a run folder when its search returned; the run is done unless it was interrupted.
DONE_FILE = "benchmark.json"
DONE_ENDINGS = ("finished", "exhausted", "already trained")
# An exported run's per-epoch val_acc of its complete trials (the study it came from is not exported).
CURVES_FILE = "curves.csv"
IQM_TRIM = 0.25
BOOTSTRAP_RESAMPLES = 9999
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Method:
    """One searcher of the comparison, as `nas search` flags; grace_epochs and reduction_factor None: the
    benchmark's (--grace-epochs, --reduction-factor)."""

    sampler: str
    early_stopping: str
    objectives: tuple[str, ...]
    startup: str | None = None
    screen: str | None = None
    grace_epochs: int | None = None
    reduction_factor: int | None = None


MO = ("val_acc", "params")
METHODS = {
    "random": Method("random", "none", ("val_acc",)),
    "random+asha": Method("random", "asha", ("val_acc",)),
    "tpe+asha": Method("tpe", "asha", ("val_acc",)),
    "mo-tpe+mo-asha": Method("tpe", "asha", MO),
    # The multi-objective search whose first 8 draws are ZiCo's best of 64 (nas search --startup proxy:zico).
    "zico+mo-tpe+mo-asha": Method("tpe", "asha", MO, startup="proxy:zico"),
    # The levers of issue 29, one at a time. A rung 0: every trial the best of 8 TPE draws by ZiCo (--screen).
    "screen-zico+mo-tpe+mo-asha": Method("tpe", "asha", MO, screen="proxy:zico"),
    # The same with SNIP, the proxy that ranks the lite space's ranking set best (ZiCo ranks the qkv space's).
    "screen-snip+mo-tpe+mo-asha": Method("tpe", "asha", MO, screen="proxy:snip"),
    # The first rung later: at epoch 2 of 4 (grace 2, factor 2: rungs 2, 4) instead of 1 (rungs 1, 4).
    "mo-tpe+mo-asha-rung2": Method("tpe", "asha", MO, grace_epochs=2, reduction_factor=2),
    # The reduction factor 2 from the same first rung (rungs 1, 2, 4).
    "mo-tpe+mo-asha-rf2": Method("tpe", "asha", MO, reduction_factor=2),
}


def method_slug(method: str) -> str:
    """The method's name in a folder name, which keeps to letters, digits and '-' (it ends up in Ray's storage
    path and study.db's SQLite URL)."""
    return method.replace("+", "-")


def method_of(settings: dict, grace_epochs: int, reduction_factor: int) -> str:
    """The method a run's search.json describes (the recorded settings, not the folder name, are the truth), given
    the benchmark's own grace epochs and reduction factor (a method that sets neither uses them)."""
    found = (settings.get("sampler", "tpe"), settings.get("early_stopping", "asha"),
             tuple(settings.get("objectives") or ("val_acc",)), settings.get("startup"), settings.get("screen"),
             settings.get("grace_epochs", grace_epochs), settings.get("reduction_factor", reduction_factor))
    for name, method in METHODS.items():
        if found == (method.sampler, method.early_stopping, method.objectives, method.startup, method.screen,
                     method.grace_epochs or grace_epochs, method.reduction_factor or reduction_factor):
            return name
    return (f"{found[0]}+{found[1]} ({','.join(found[2])}, rungs from {found[5]} by {found[6]}"
            f"{f', screen {found[4]}' if found[4] else ''}{f', startup {found[3]}' if found[3] else ''})")


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle half (scipy trims a quarter of the values from each end)."""
    return float(stats.trim_mean(np.asarray(values, dtype=float), IQM_TRIM))


def iqm_interval(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval of the IQM over `values` (seeded); NaN with fewer than two values."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return math.nan, math.nan
    with np.errstate(invalid="ignore"):
        result = stats.bootstrap((values,), lambda sample, axis: stats.trim_mean(sample, IQM_TRIM, axis=axis),
                                 n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=CONFIDENCE, method="percentile",
                                 vectorized=True, rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def value_at(x: np.ndarray, y: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """A step function's value at each grid point: y of the last x <= that point (x ascending), 0 ahead of the
    first (nothing found yet)."""
    if len(x) == 0:
        return np.zeros(len(grid))
    index = np.searchsorted(np.asarray(x, dtype=float), grid, side="right") - 1
    return np.where(index >= 0, np.asarray(y, dtype=float)[np.maximum(index, 0)], 0.0)


def full_fidelity(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials scored at full length (state complete), ordered by the epochs spent when each ended."""
    from nas.runs.fronts import scored_trials

    frame = scored_trials(trials, include_stopped=False)
    return frame[frame["epochs_spent"].notna()].sort_values("epochs_spent", kind="stable")


def hypervolume_at(trials: pd.DataFrame, budget: int, grid: np.ndarray) -> np.ndarray:
    """The hypervolume of the full-fidelity trials ended by each grid point, as `nas search` measures it."""
    from nas.engine.hypervolume import hypervolume_history
    from nas.settings.objectives import SCORE, reference_limits

    complete = full_fidelity(trials)
    limits = reference_limits(budget, None)
    history = hypervolume_history(complete, [SCORE, *limits], limits)
    return value_at(history["epochs_spent"].to_numpy(float), history["hypervolume"].to_numpy(float), grid)


def best_val_acc_at(trials: pd.DataFrame, budget: int, grid: np.ndarray) -> np.ndarray:
    """The best val_acc of full-fidelity trials within the budget ended by each grid point; 0 before any, as
    the hypervolume counts an empty front."""
    complete = full_fidelity(trials)
    complete = complete[complete["params"] <= budget]
    best = complete["val_acc"].astype(float).cummax()
    return value_at(complete["epochs_spent"].to_numpy(float), best.to_numpy(), grid)


def first_reach(x: np.ndarray, y: np.ndarray, target: float) -> float:
    """The first x at which y reaches `target`; inf if it never does."""
    reached = np.flatnonzero(np.asarray(y, dtype=float) >= target - 1e-12)
    return float(x[reached[0]]) if len(reached) else math.inf


@dataclass(frozen=True)
class FinishedRun:
    path: Path
    dataset: str
    space: str
    method: str
    seed: int
    budget: int
    epochs: int
    epoch_budget: int
    early_stopping: str
    study_name: str
    trials: pd.DataFrame


def study_name_of(settings: dict) -> str:
    return settings.get("study_name") or settings["name"]


def read_finished_runs(out: Path, grace_epochs: int, reduction_factor: int) -> list[FinishedRun]:
    """Every run folder under `out` whose search returned without interruption (its method told apart with the
    benchmark's grace epochs and reduction factor)."""
    from nas.runs.results import load_settings, load_trials

    runs = []
    for done_path in sorted(out.glob(f"*/{DONE_FILE}")):
        if json.loads(done_path.read_text()).get("ended") not in DONE_ENDINGS:
            continue
        run_dir = done_path.parent
        settings = load_settings(run_dir)
        runs.append(FinishedRun(run_dir, settings["dataset"], settings["space"],
                                method_of(settings, grace_epochs, reduction_factor),
                                settings["seed"], settings["budget"], settings["epochs"], settings["epoch_budget"],
                                settings.get("early_stopping", "asha"), study_name_of(settings),
                                load_trials(run_dir)))
    return runs


def grid_for(epoch_budget: int, step: int | None) -> np.ndarray:
    """Epochs spent at which methods are compared: every `step` (default: about 40 points) up to the budget."""
    step = step or max(1, epoch_budget // 40)
    return np.unique(np.append(np.arange(step, epoch_budget + 1, step), epoch_budget)).astype(float)


def check_same(runs: list[FinishedRun], names: tuple[str, ...]) -> None:
    for name in names:
        values = sorted({getattr(run, name) for run in runs})
        if len(values) > 1:
            raise UsageError(f"runs of {runs[0].dataset}/{runs[0].space} in {runs[0].path.parent} differ in {name} "
                             f"({', '.join(map(str, values))}): expected one benchmark per --out")


def quality_curves(runs: list[FinishedRun], grid_step: int | None, seed: int) -> pd.DataFrame:
    """Per (dataset, space, method) and grid point: seeds, IQM and 95% interval of the hypervolume and of the best
    val_acc."""
    rows = []
    for (dataset, space), group in _groups(runs):
        check_same(group, ("budget", "epochs", "epoch_budget"))
        grid = grid_for(group[0].epoch_budget, grid_step)
        for method in _methods(group):
            members = [run for run in group if run.method == method]
            hypervolume = np.array([hypervolume_at(run.trials, run.budget, grid) for run in members])
            best = np.array([best_val_acc_at(run.trials, run.budget, grid) for run in members])
            for column, epochs in enumerate(grid):
                row = {"dataset": dataset, "space": space, "method": method, "seeds": len(members),
                       "epochs_spent": int(epochs)}
                for name, values in (("hypervolume", hypervolume[:, column]), ("best_val_acc", best[:, column])):
                    low, high = iqm_interval(values, seed)
                    row.update({name: iqm(values), f"{name}_low": low, f"{name}_high": high})
                rows.append(row)
    return pd.DataFrame(rows)


def goal_table(runs: list[FinishedRun], curves: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Per (dataset, space, method): the epochs to reach random search's final IQM hypervolume (per seed, then IQM
    and interval; the IQM curve's first grid point), and its interval at half the epoch budget against random
    search's final interval."""
    rows = []
    for (dataset, space), group in _groups(runs):
        mine = curves[(curves["dataset"] == dataset) & (curves["space"] == space)]
        baseline = mine[mine["method"] == BASELINE]
        if baseline.empty:
            continue
        final = baseline.iloc[-1]
        half_epochs = mine["epochs_spent"][mine["epochs_spent"] <= group[0].epoch_budget / 2].max()
        for method in _methods(group):
            members = [run for run in group if run.method == method]
            grid = np.arange(1, group[0].epoch_budget + 1, dtype=float)
            per_seed = np.array([first_reach(grid, hypervolume_at(run.trials, run.budget, grid), final["hypervolume"])
                                 for run in members])
            curve = mine[mine["method"] == method]
            half = curve[curve["epochs_spent"] == half_epochs]
            low, high = iqm_interval(per_seed, seed)
            rows.append({"dataset": dataset, "space": space, "method": method, "seeds": len(members),
                         "target": final["hypervolume"], "epochs_iqm": iqm(per_seed), "epochs_low": low,
                         "epochs_high": high, "seeds_reached": int(np.isfinite(per_seed).sum()),
                         "iqm_reaches_at": first_reach(curve["epochs_spent"].to_numpy(float),
                                                       curve["hypervolume"].to_numpy(float), final["hypervolume"]),
                         "half_epochs": half_epochs,
                         "half_low": float(half["hypervolume_low"].iloc[0]) if len(half) else math.nan,
                         "final_high": final["hypervolume_high"],
                         "half_above_final": bool(len(half) and half["hypervolume_low"].iloc[0]
                                                  > final["hypervolume_high"])})
    return pd.DataFrame(rows)


def complete_curves(run_dir: Path, study_name: str) -> dict[str, list[float]]:
    """val_acc after each epoch of a run's complete trials, by trial id: from its study, or from the CURVES_FILE
    an export wrote in its place."""
    from nas.engine.searcher import curve_of
    from nas.runs.results import RunFolder
    from nas.settings.trial_ids import format_trial_id

    folder = RunFolder(run_dir)
    if not folder.study_file.is_file():
        table = pd.read_csv(run_dir / CURVES_FILE)
        return {trial_id: rows.sort_values("epoch")["val_acc"].tolist() for trial_id, rows in table.groupby("trial_id")}
    study = folder.load_study(study_name)
    return {format_trial_id(trial.number): curve_of(trial) for trial in study.get_trials(deepcopy=False)
            if trial.user_attrs.get("state") == "complete"}


def write_curves(run_dir: Path, curves: dict[str, list[float]]) -> None:
    """CURVES_FILE in `run_dir`: one row per trial and epoch, as complete_curves reads it back."""
    rows = [{"trial_id": trial_id, "epoch": epoch, "val_acc": score}
            for trial_id, curve in curves.items() for epoch, score in enumerate(curve, 1)]
    table = pd.DataFrame(rows, columns=["trial_id", "epoch", "val_acc"])
    write_text_atomic(run_dir / CURVES_FILE, table.to_csv(index=False))


def rung_correlation(runs: list[FinishedRun]) -> pd.DataFrame:
    """Per (dataset, space) and candidate rung epoch: Kendall's tau and Spearman's rho between val_acc after that
    epoch and the score at full length (best val_acc over the epochs), over the full-length trials of the runs
    without early stopping, seeds pooled."""
    rows = []
    for (dataset, space), group in _groups([run for run in runs if run.early_stopping == "none"]):
        check_same(group, ("epochs",))
        epochs = group[0].epochs
        curves = [curve for run in group for curve in complete_curves(run.path, run.study_name).values()
                  if len(curve) == epochs]
        if len(curves) < 3:
            continue
        scores = np.array(curves, dtype=float)
        final = scores.max(axis=1)
        for rung in range(1, epochs):
            tau = stats.kendalltau(scores[:, rung - 1], final)
            rho = stats.spearmanr(scores[:, rung - 1], final)
            rows.append({"dataset": dataset, "space": space, "rung_epoch": rung, "epochs": epochs,
                         "trials": len(curves), "seeds": len(group), "kendall_tau": float(tau.statistic),
                         "kendall_p": float(tau.pvalue), "spearman_rho": float(rho.statistic),
                         "spearman_p": float(rho.pvalue)})
    return pd.DataFrame(rows)


def _groups(runs: list[FinishedRun]) -> list[tuple[tuple[str, str], list[FinishedRun]]]:
    keys = sorted({(run.dataset, run.space) for run in runs})
    return [(key, [run for run in runs if (run.dataset, run.space) == key]) for key in keys]


def _methods(runs: list[FinishedRun]) -> list[str]:
    present = {run.method for run in runs}
    return [name for name in METHODS if name in present] + sorted(present - set(METHODS))


# ---------------------------------------------------------------------------------------------------- output


def _interval(value: float, low: float, high: float, digits: int = 3) -> str:
    if math.isnan(value):
        return "-"
    if math.isnan(low):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _number(value: float) -> str:
    return "- (one seed)" if math.isnan(value) else f"{value:.3f}"


def _epochs(value: float) -> str:
    return "not reached" if not math.isfinite(value) else f"{value:.0f}"


def markdown_report(curves: pd.DataFrame, goal: pd.DataFrame, rungs: pd.DataFrame, runs: list[FinishedRun]) -> str:
    lines = []
    for (dataset, space), group in _groups(runs):
        mine = curves[(curves["dataset"] == dataset) & (curves["space"] == space)]
        if mine.empty:
            continue
        first = group[0]
        budget_epochs = first.epoch_budget
        marks = sorted({mine["epochs_spent"][mine["epochs_spent"] <= budget_epochs * share].max()
                        for share in (0.25, 0.5, 0.75, 1.0)})
        lines += [f"### {dataset}, space {space}, budget {format_count(first.budget)} params, {first.epochs} epochs a "
                  f"trial, {budget_epochs} epochs a search", "",
                  "IQM over seeds [bootstrap 95% interval] at equal epochs spent; full-fidelity trials only.", ""]
        for name, title in (("hypervolume", "hypervolume"), ("best_val_acc", "best val_acc")):
            lines += [f"| {title} | seeds | " + " | ".join(f"{mark} epochs" for mark in marks) + " |",
                      "|---|---:|" + "---:|" * len(marks)]
            for method in _methods(group):
                rows = mine[mine["method"] == method].set_index("epochs_spent")
                cells = [_interval(rows.loc[mark, name], rows.loc[mark, f"{name}_low"], rows.loc[mark, f"{name}_high"])
                         for mark in marks]
                lines.append(f"| {method} | {int(rows['seeds'].iloc[0])} | " + " | ".join(cells) + " |")
            lines.append("")
        reached = goal[(goal["dataset"] == dataset) & (goal["space"] == space)] if len(goal) else goal
        if len(reached):
            target = reached["target"].iloc[0]
            half = int(reached["half_epochs"].iloc[0])
            lines += [f"Epochs to reach random search's final IQM hypervolume ({target:.3f}); goal: at most half of "
                      f"random's {budget_epochs}, the interval at {half} epochs above random's final interval "
                      f"(upper end {_number(reached['final_high'].iloc[0])}).", "",
                      "| method | seeds reaching it | epochs, IQM over seeds [95%] | IQM curve reaches it at | "
                      f"interval at {half} epochs: low end | above random's final interval |",
                      "|---|---:|---:|---:|---:|---|"]
            for row in reached.itertuples():
                epochs = (f"{_epochs(row.epochs_iqm)} [{_epochs(row.epochs_low)}, {_epochs(row.epochs_high)}]"
                          if not math.isnan(row.epochs_low) else _epochs(row.epochs_iqm))
                lines.append(f"| {row.method} | {row.seeds_reached} of {row.seeds} | {epochs} | "
                             f"{_epochs(row.iqm_reaches_at)} | {_number(row.half_low)} | "
                             f"{'yes' if row.half_above_final else 'no'} |")
            lines.append("")
    if len(rungs):
        lines += ["### Rung correlation", "",
                  "Runs without early stopping: val_acc after the rung epoch against the trial's score at full length "
                  "(best val_acc over its epochs), full-length trials of all seeds pooled.", "",
                  "| dataset | space | rung epoch (of) | trials (seeds) | Kendall tau | Spearman rho |",
                  "|---|---|---:|---:|---:|---:|"]
        for row in rungs.itertuples():
            lines.append(f"| {row.dataset} | {row.space} | {row.rung_epoch} ({row.epochs}) | {row.trials} ({row.seeds}) "
                         f"| {row.kendall_tau:.3f} (p {row.kendall_p:.2g}) | {row.spearman_rho:.3f} "
                         f"(p {row.spearman_p:.2g}) |")
        lines.append("")
    return "\n".join(lines)


def plot_curves(curves: pd.DataFrame, goal: pd.DataFrame, path: Path) -> None:
    """Hypervolume IQM against epochs spent with its 95% band, one panel per (dataset, space)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    groups = sorted(set(zip(curves["dataset"], curves["space"])))
    figure = Figure(figsize=(6.5 * len(groups), 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    for index, (dataset, space) in enumerate(groups, 1):
        ax = figure.add_subplot(1, len(groups), index)
        mine = curves[(curves["dataset"] == dataset) & (curves["space"] == space)]
        for method in [name for name in METHODS if name in set(mine["method"])] + sorted(
                set(mine["method"]) - set(METHODS)):
            rows = mine[mine["method"] == method]
            line, = ax.step(rows["epochs_spent"], rows["hypervolume"], where="post", lw=1.6,
                            label=f"{method} ({int(rows['seeds'].iloc[0])} seeds)")
            ax.fill_between(rows["epochs_spent"], rows["hypervolume_low"], rows["hypervolume_high"], step="post",
                            color=line.get_color(), alpha=0.18, lw=0)
        target = goal[(goal["dataset"] == dataset) & (goal["space"] == space)] if len(goal) else goal
        if len(target):
            ax.axhline(target["target"].iloc[0], color="grey", ls="--", lw=0.8)
            ax.axvline(target["half_epochs"].iloc[0], color="grey", ls=":", lw=0.8)
        ax.set_xlabel("epochs trained in the search (all trials)")
        ax.set_ylabel("hypervolume, IQM over seeds (95% band)")
        ax.set_title(f"{dataset}, space {space}: full-fidelity front", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    figure.savefig(path, format="png")


def report(out: Path, grid_step: int | None, seed: int, grace_epochs: int, reduction_factor: int) -> str:
    """Read the finished runs in `out`, write search_quality.md/.csv/.png there; returns the markdown."""
    runs = read_finished_runs(out, grace_epochs, reduction_factor)
    if not runs:
        raise UsageError(f"--out {out}: no finished run of this benchmark; expected folders it wrote")
    curves = quality_curves(runs, grid_step, seed)
    goal = goal_table(runs, curves, seed)
    rungs = rung_correlation(runs)
    text = markdown_report(curves, goal, rungs, runs)
    write_text_atomic(out / "search_quality.md", text + "\n")
    curves.to_csv(out / "search_quality.csv", index=False)
    if len(rungs):
        rungs.to_csv(out / "rung_correlation.csv", index=False)
    plot_curves(curves, goal, out / "search_quality.png")
    return text


def export_runs(out: Path, to: Path) -> int:
    """Each finished run's record (search.json, trials.csv, benchmark.json, and its complete trials' per-epoch
    val_acc as CURVES_FILE; not study.db or Ray's folders) copied into `to`/<run>/: small text files to commit,
    which `report` reads back as it reads the runs. Returns how many runs were copied."""
    from nas.runs.results import RunFolder, load_settings

    copied = 0
    for done_path in sorted(out.glob(f"*/{DONE_FILE}")):
        if json.loads(done_path.read_text()).get("ended") not in DONE_ENDINGS:
            continue
        source, target = RunFolder(done_path.parent), RunFolder(to / done_path.parent.name)
        target.path.mkdir(parents=True, exist_ok=True)
        for kept, copy in ((source.settings_file, target.settings_file), (source.trials_file, target.trials_file),
                           (done_path, target.path / DONE_FILE)):
            write_text_atomic(copy, kept.read_text())
        write_curves(target.path, complete_curves(source.path, study_name_of(load_settings(source.path))))
        copied += 1
    return copied
