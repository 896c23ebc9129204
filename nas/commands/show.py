"""`nas show results/<run>`: a run's settings, progress, best trials and front; `nas show`: every run listed."""
from __future__ import annotations

import argparse
from pathlib import Path

from nas.settings.flags import add_flag, path_argument, positive_int

from qkvnas_core.errors import UsageError

SETTINGS_SHOWN = ("name", "dataset", "space", "budget", "max_flops", "objectives", "sampler", "early_stopping",
                  "img_size", "num_classes", "in_chans", "train_count", "val_count", "images_from", "trials", "epochs",
                  "recipe", "recipe_overrides", "seed", "split_seed", "started", "finished")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=path_argument, nargs="?",
                        help="run folder (results/<run>) or a run name; omit to list the runs")
    add_flag(parser, "--results-dir", "the runs listed are there (default results)", default="results")
    parser.add_argument("--best", type=positive_int, default=5, metavar="N",
                        help="how many of the best trials (by val_acc) to show (default 5)")


def trials_text(trials) -> str:
    """Trials as an aligned table with readable units (params in K/M, GFLOPs, accuracy in %)."""
    from qkvnas_core.units import format_count, format_duration
    from qkvnas_core.tables import table_text

    return table_text(trials, {"trial_id": str, "state": str, "structure": str, "params": format_count,
                               "flops": format_count, "val_acc": lambda accuracy: f"{accuracy * 100:.2f}%",
                               "epochs": lambda epochs: f"{epochs:g}", "seconds": format_duration})


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def run_summary(run, shown: int) -> str:
    """The terminal summary of one run (a nas.runs.results.Run)."""
    from qkvnas_core.units import format_count, format_duration
    from nas.settings.objectives import SCORE
    from nas.runs.fronts import pareto_front, scored_trials
    from nas.runs.results import state_counts
    from search_spaces.arch import ArchConfig

    table = run.table
    settings = {key: run.settings[key] for key in SETTINGS_SHOWN if run.settings.get(key) is not None}
    if "budget" in settings:
        settings["budget"] = f"{format_count(settings['budget'])} params"
    if "max_flops" in settings:
        settings["max_flops"] = f"{settings['max_flops'] / 1e9:.3g} GFLOPs"
    if settings.get("recipe_overrides") == {}:
        del settings["recipe_overrides"]
    if "objectives" in settings:
        settings["objectives"] = ",".join(settings["objectives"])
    lines = [f"run {run.path}"]
    lines += [f"  {key:<12} {value}" for key, value in settings.items()]
    lines.append(f"trials: {len(table)} ({state_counts(table) if len(table) else 'none yet'})")
    trial_seconds = table["seconds"].sum() if "seconds" in table else 0.0
    wall = run.settings.get("seconds")
    lines.append(f"time: {format_duration(wall) + ' wall, ' if wall is not None else ''}"
                 f"{format_duration(trial_seconds)} summed over trials")
    scored = scored_trials(table)
    if scored.empty:
        lines.append("no trial has a validation accuracy yet")
        return "\n".join(lines)
    best = scored.sort_values([SCORE, "params", "trial_id"], ascending=[False, True, True], kind="stable")
    lines += [f"top {min(shown, len(best))} by {SCORE}:", _indent(trials_text(best.head(shown)))]
    full = scored_trials(table, include_stopped=False)
    front = pareto_front(table, ["params"])
    lines.append(f"Pareto front over params ({len(front)} of the {len(full)} trials scored at full fidelity, "
                 f"{run.settings.get('epochs', 'all')} epochs):")
    lines += [_indent(trials_text(front))] if len(front) else []
    hypervolume = run.settings.get("hypervolume")
    if hypervolume is not None:
        reference = ", ".join(f"{name} {format_count(value) if name != SCORE else f'{value:g}'}"
                              for name, value in (run.settings.get("hypervolume_reference") or {}).items())
        lines.append(f"hypervolume of that front: {hypervolume:.4f} (reference point: {reference}; each cost "
                     "axis divided by its limit)")
    winner = best.iloc[0]
    if isinstance(winner.get("arch"), str):
        lines.append(f"best: trial {winner['trial_id']} {ArchConfig.from_json(winner['arch']).summary()}")
    return "\n".join(lines)


def retrain_summary(folder: Path) -> str | None:
    """What `nas retrain` wrote into the run: per model its seeds' mean and interval, and the paired differences to
    its baselines; None when nothing was retrained."""
    from nas.runs.results import RunFolder
    from nas.runs.seed_stats import baseline_comparison, read_retrain, seed_summary, summary_text

    table = read_retrain(folder)
    if table is None or table.empty:
        return None
    summary = seed_summary(table)
    return (f"retrained ({RunFolder(Path(folder)).retrain_file}: {len(summary)} models, {len(table)} runs, each "
            "tested once):\n"
            + _indent(summary_text(summary, baseline_comparison(table))))


def runs_overview(results_dir: Path) -> str:
    """One row per run folder under `results_dir`: its settings and best figures."""
    import pandas as pd

    from qkvnas_core.units import format_count
    from nas.settings.objectives import SCORE
    from nas.runs.fronts import scored_trials
    from nas.runs.results import ENDED_STATES, RunFolder, TrialState, read_run

    if not results_dir.is_dir():
        raise UsageError(f"results folder {results_dir}: not found; expected the folder `nas search` writes "
                         "runs into (set it with --results-dir)")
    rows = []
    for folder in sorted(path for path in results_dir.iterdir() if RunFolder(path).trials_file.is_file()):
        try:
            run = read_run(folder)
        except UsageError as error:
            rows.append({"run": folder.name, "note": f"unreadable: {error}"})
            continue
        table = run.table
        scored = scored_trials(table)
        budget = run.settings.get("budget")
        row = {"run": run.name, "dataset": run.settings.get("dataset", ""),
               "budget": format_count(budget) if budget is not None else "",
               "trained": int(table["state"].isin(ENDED_STATES).sum()),
               "infeasible": int((table["state"] == TrialState.INFEASIBLE).sum()), "best val_acc": "", "its params": ""}
        if not scored.empty:
            best = scored.sort_values([SCORE, "params"], ascending=[False, True], kind="stable").iloc[0]
            row.update({"best val_acc": f"{best[SCORE] * 100:.2f}%", "its params": format_count(best["params"])})
        rows.append(row)
    if not rows:
        return f"no runs under {results_dir}/ yet (a run is a folder with trials.csv, written by `nas search`)"
    return pd.DataFrame(rows).fillna("").to_string(index=False)


def run(args: argparse.Namespace) -> int:
    from nas.runs.results import RunFolder, find_run, read_run

    results_dir = Path(args.results_dir)
    if args.run is None:
        print(runs_overview(results_dir))
        return 0
    folder = find_run(args.run, results_dir)
    retrained = retrain_summary(folder)
    if retrained is not None and not RunFolder(folder).trials_file.is_file():
        print(retrained)  # a folder of retrains alone (nas retrain FOLDER --arch ...)
        return 0
    print(run_summary(read_run(folder), args.best))
    if retrained is not None:
        print(retrained)
    return 0
