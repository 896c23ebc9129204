"""Search quality: does the multi-objective search find a better front than random search at the same compute?

    python benchmarks/search_quality.py --spaces lite --methods random mo-tpe+mo-asha   # 2 methods x 5 seeds
    python benchmarks/search_quality.py --dataset digits --methods random --spaces lite   # rung correlation, digits
    python benchmarks/search_quality.py --report                       # the tables and plot of the runs in --out
    python benchmarks/search_quality.py --report --export benchmarks/data/search_quality   # the tables to commit
    python benchmarks/search_quality.py --gpus-per-trial 0.25 --epochs 10 --epoch-budget 400 --train-fraction 1

Each method is a `nas search` given the same total of trained epochs (--epoch-budget): random search (random, no
early stopping), random + ASHA, TPE + ASHA (single objective, val_acc) and multi-objective TPE + MO-ASHA (val_acc,
params), and the levers on the last one: its first draws chosen by a training-free proxy (--startup), every trained
draw the best of a pool by a proxy (--screen, rung 0), the first rung later, a smaller reduction factor
(search_quality_report.METHODS). Each (dataset, space, method, seed) is one run folder under --out. A finished run
is skipped; a half-finished one (killed, or stopped by Ctrl-C) is resumed with nas.engine.search.resume_search: its
finished trials are kept and the epochs of the trials it cut short stay counted as spent (the search's own count),
so a resumed run trains at most max_concurrent x (epochs - 1) epochs fewer than one that ran straight through,
where rerunning it from scratch would discard every trial trained so far. A folder that holds no study yet (killed
while starting) is removed and run again. All runs share one local Ray. Seed k of every method draws the same first
architectures with the same trial seeds (TPE's first 8 draws are random search's), so the methods are compared on
common random numbers, seed by seed.

The report (after the runs, or alone with --report) reads every finished run in --out, grouped by dataset and
space. At a grid of epochs spent it takes, per run, the hypervolume of the trials scored at full length that
had ended by then (val_acc from 0, params up to the budget, as `nas search` measures it) and their best
val_acc; across seeds, the interquartile mean (IQM) and a seeded bootstrap 95% interval of the IQM. It also
gives the epochs each method needs to reach random search's final IQM hypervolume, and whether its interval
at half the epoch budget lies above random search's final interval (the goal of issue 15). From the runs
without early stopping (every trial full length) it measures how well each candidate rung ranks
architectures: Kendall's tau and Spearman's rho between val_acc after that epoch and the trial's score
(its best val_acc over all epochs), the trials of all seeds pooled. Written to --out: search_quality.md,
search_quality.csv (every grid point) and search_quality.png (hypervolume IQM against epochs, 95% bands).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qkvnas_core.errors import UsageError
from qkvnas_core.files import write_json_atomic, write_text_atomic
from qkvnas_core.log import Forward, handled_by
from qkvnas_core.units import parse_count

sys.path.insert(0, str(Path(__file__).resolve().parent))  # search_quality_report.py beside this file
from search_quality_report import DONE_ENDINGS, DONE_FILE, METHODS, export_runs, method_slug, report  # noqa: E402

if TYPE_CHECKING:
    from nas.settings.requests import SearchSettings


DEFAULT_OUT = Path("benchmarks/runs/search_quality")
# Sub-1M budgets that admit models of each space on mnist5k (28 px, patch 4): about 60% of lite's random draws
# and 30% of qkv's are within them.
DEFAULT_BUDGETS = {"lite": "300K", "qkv": "1M"}
RAY_PROCESSES_FILE = "ray_processes.json"
# Settings that define a run: an existing folder must hold the same, or --out mixes two benchmarks.
FIXED_SETTINGS = ("dataset", "space", "budget", "epochs", "train_fraction", "sampler", "early_stopping",
                  "objectives", "seed", "grace_epochs", "reduction_factor", "startup", "screen", "screen_pool",
                  "screen_train")


# ---------------------------------------------------------------------------------------------------- running


@dataclass(frozen=True)
class RunPlan:
    """One run of the benchmark: its search settings and where it stands."""

    settings: SearchSettings
    method: str

    @property
    def run_dir(self) -> Path:
        return self.settings.run_dir


def plan_runs(args: argparse.Namespace) -> list[RunPlan]:
    from nas.settings.requests import SearchSettings

    plans = []
    for space in args.spaces:
        for method in args.methods:
            spec = METHODS[method]
            for seed in range(args.seeds):
                plans.append(RunPlan(SearchSettings(
                    name=f"{args.dataset}-{space}-{method_slug(method)}-seed{seed}", results_dir=str(args.out),
                    budget=args.budget[space], dataset=args.dataset, space=space, seed=seed,
                    objectives=list(spec.objectives), sampler=spec.sampler, early_stopping=spec.early_stopping,
                    startup=spec.startup, screen=spec.screen,
                    epochs=args.epochs, epoch_budget=args.epoch_budget,
                    # Every trial trains at least one epoch: the epoch budget always binds before the trial count.
                    trials=args.epoch_budget, train_fraction=args.train_fraction,
                    grace_epochs=spec.grace_epochs or args.grace_epochs,
                    reduction_factor=spec.reduction_factor or args.reduction_factor,
                    max_concurrent=args.max_concurrent or trial_slots(args.cpus_per_trial, args.gpus_per_trial),
                    cpus_per_model=args.cpus_per_trial,
                    gpus_per_model=args.gpus_per_trial), method))
    return plans


def trial_slots(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """Trials this machine runs at once. Without a limit Ray draws a trial ahead of a free slot while the others
    run, so a search overshoots its epoch budget by a whole trial and TPE draws it knowing less."""
    import torch

    slots = int((os.cpu_count() or 1) // cpus_per_trial)
    if gpus_per_trial > 0:
        slots = min(slots, int(torch.cuda.device_count() // gpus_per_trial))
    return max(1, slots)


def run_state(plan: RunPlan) -> str:
    """new (no folder), done, fresh (a folder without a study: nothing trained) or resume."""
    run_dir = plan.run_dir
    if not run_dir.exists():
        return "new"
    from nas.runs.results import RunFolder

    folder = RunFolder(run_dir)
    if not folder.settings_file.is_file() or not folder.study_file.is_file():
        return "fresh"
    recorded = json.loads(folder.settings_file.read_text())
    wanted = plan.settings.to_dict()
    for name in FIXED_SETTINGS:
        if recorded.get(name) != wanted[name]:
            raise UsageError(f"--out {run_dir.parent}: run {run_dir.name} has {name}={recorded.get(name)!r}, this "
                             f"benchmark {wanted[name]!r}; expected a new --out for other settings")
    done_path = run_dir / DONE_FILE
    done = json.loads(done_path.read_text()) if done_path.is_file() else {}
    if done.get("ended") == "exhausted" or (done.get("ended") in DONE_ENDINGS
                                            and done.get("epoch_budget", 0) >= plan.settings.epoch_budget):
        return "done"
    return "resume"


def run_benchmark(args: argparse.Namespace) -> bool:
    """Run every planned search not done yet, one at a time on one Ray; False when one was interrupted."""
    from nas.runtime.ray_runtime import ray_processes, start_ray, stop_leftovers
    from nas.engine.search import resume_search, run_search

    plans = plan_runs(args)
    states = [run_state(plan) for plan in plans]
    todo = [(plan, state) for plan, state in zip(plans, states) if state != "done"]
    print(f"{len(plans)} runs in {args.out}: {len(plans) - len(todo)} done, {len(todo)} to run", flush=True)
    if not todo:
        return True
    import optuna
    import ray

    # This program owns its process: Optuna's INFO lines and Ray Tune's trial errors (the reason of a failed trial
    # is in its run's trials.csv) stay off its output, as `nas search` keeps them off.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    # Ray's agents outlive a benchmark killed with -9 for a minute or more: the next start stops them.
    leftovers = args.out / RAY_PROCESSES_FILE
    if leftovers.is_file():
        stop_leftovers([tuple(process) for process in json.loads(leftovers.read_text())])
    started_ray = start_ray(None, False)
    if started_ray:
        write_text_atomic(leftovers, json.dumps(ray_processes()))
    try:
        for index, (plan, state) in enumerate(todo, 1):
            settings = plan.settings
            print(f"[{index}/{len(todo)}] {settings.name}: {'resumed' if state == 'resume' else 'new run'}",
                  flush=True)
            start = time.monotonic()
            if state == "fresh":
                shutil.rmtree(plan.run_dir)
            if state == "resume":
                changes = {name: getattr(settings, name) for name in
                           ("trials", "epoch_budget", "max_concurrent", "cpus_per_model", "gpus_per_model")}
                with progress_lines(args.verbose):
                    result = resume_search(plan.run_dir, changes)
            else:
                with progress_lines(args.verbose):
                    result = run_search(settings)
            epochs = int(result.trials["epochs"].fillna(0).sum())
            print(f"    ended {result.ended} in {time.monotonic() - start:.0f} s: {epochs} epochs in "
                  f"{result.trained} trials, hypervolume {result.hypervolume:.4f}"
                  f"{f' ({result.note})' if result.note else ''}", flush=True)
            if result.ended == "interrupted":
                return False
            write_json_atomic(plan.run_dir / DONE_FILE, {"ended": result.ended, "epoch_budget": settings.epoch_budget})
    finally:
        if started_ray:
            ray.shutdown()
            leftovers.unlink(missing_ok=True)
    return True


def progress_lines(verbose: bool) -> contextlib.AbstractContextManager:
    """With --verbose, the search's lines (logged under "qkvnas") printed as they come, indented."""
    if not verbose:
        return contextlib.nullcontext()
    return handled_by(Forward(lambda line: print(f"    {line}", flush=True)))


# ---------------------------------------------------------------------------------------------------- command


def budgets(values: list[str]) -> dict[str, int]:
    """['qkv=2M'] -> the default budgets with qkv's replaced."""
    chosen = {space: parse_count(text) for space, text in DEFAULT_BUDGETS.items()}
    for value in values:
        space, sep, text = value.partition("=")
        if not sep:
            raise UsageError(f"--budget {value}: expected SPACE=COUNT, e.g. lite=300K")
        chosen[space] = parse_count(text)
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", nargs="+", default=["lite", "qkv"], help="search spaces (default lite qkv)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 of each method (default 5)")
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--budget", action="append", default=[], metavar="SPACE=COUNT",
                        help="params budget of a space (default " + " ".join(f"{k}={v}" for k, v in
                                                                            DEFAULT_BUDGETS.items()) + ")")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of a trial run to full length")
    parser.add_argument("--epoch-budget", type=int, default=32, help="epochs all trials of one search add up to")
    parser.add_argument("--train-fraction", type=float, default=0.3)
    parser.add_argument("--grace-epochs", type=int, default=1,
                        help="default 1, as the recorded runs (nas search defaults to 2)")
    parser.add_argument("--reduction-factor", type=int, default=4)
    parser.add_argument("--max-concurrent", type=int, default=None,
                        help="trials at once (default: as the CPUs, and GPUs with --gpus-per-trial, allow)")
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--gpus-per-trial", type=float, default=0.0, help="e.g. 0.25 on a GPU (full scale)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"run folders and report (default {DEFAULT_OUT})")
    parser.add_argument("--report", action="store_true", help="only the report, from the finished runs in --out")
    parser.add_argument("--grid-step", type=int, default=None, help="epochs between compared points (default "
                                                                       "epoch budget / 40)")
    parser.add_argument("--bootstrap-seed", type=int, default=0)
    parser.add_argument("--export", type=Path, default=None, metavar="DIR",
                        help="copy each finished run's search.json, trials.csv and benchmark.json there (to commit)")
    parser.add_argument("--verbose", action="store_true", help="show each search's progress lines")
    args = parser.parse_args()
    try:
        args.budget = budgets(args.budget)
        unknown = [space for space in args.spaces if space not in args.budget]
        if unknown:
            raise UsageError(f"--spaces {' '.join(unknown)}: no budget; expected --budget {unknown[0]}=COUNT")
        if not args.report:
            args.out.mkdir(parents=True, exist_ok=True)
            if not run_benchmark(args):
                raise SystemExit(f"interrupted; run the same command again to resume it (--out {args.out})")
        print(report(args.out, args.grid_step, args.bootstrap_seed, args.grace_epochs, args.reduction_factor))
        print(f"written: {args.out / 'search_quality.md'}, search_quality.csv, search_quality.png")
        if args.export is not None:
            print(f"exported {export_runs(args.out, args.export)} runs' tables to {args.export}")
    except UsageError as error:
        raise SystemExit(f"error: {error}") from None


if __name__ == "__main__":
    main()
