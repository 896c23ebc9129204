"""Search overhead: driver seconds per feasible config sampled, and the epochs ASHA saved on a run.

    python benchmarks/search_overhead.py                           # sampling cost at a 3.1M budget
    python benchmarks/search_overhead.py --configs 20 --repeats 1  # quicker, as issue 24 measured it
    python benchmarks/search_overhead.py --budget 0.7M --space lite
    python benchmarks/search_overhead.py --run results/<run>       # plus ASHA's savings on that run

Sampling is timed through the real searcher (Optuna TPE on SQLite, meta-device parameter counting,
infeasible draws told and recorded, trials.csv written after each record), with each feasible trial told a
score so TPE works as in a search. Each shape is timed twice in the same process, alternating per repeat: as a
search without a FLOPs limit draws (each model built on the meta device only) and with the full check (each
model within the budget also run there, its FLOPs counted), so the ratio holds on a busy machine too. Each
timing starts with empty count caches, as a new search does.
"""
from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from qkvnas_core.units import parse_count
from nas.engine.budget import Budget
from nas.runs.results import RunFolder, load_settings, load_trials, write_trials
from nas.engine.searcher import BudgetedSearcher, open_study, render_trials
from search_spaces.arch import ArchConfig
from search_spaces.cost import count_flops, count_params
from search_spaces.shape import IMAGENET, DataShape
from search_spaces.spaces import load_space

SHAPES = {"digits": DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=2), "imagenet": IMAGENET}


class FullCheck(Budget):
    """The baseline: every draw within the budget also runs on the meta device and has its FLOPs counted, as a
    search with a FLOPs limit or objective does (and every search did before issue 24)."""

    def measure(self, arch: ArchConfig, flops: bool = False) -> tuple[int, int | None]:
        return super().measure(arch, flops=True)


def time_sampling(space_name: str, budget: Budget, configs: int, seed: int) -> tuple[float, int]:
    """(seconds per feasible config, infeasible draws). trials.csv is rendered from the study and written after
    every record, as in a search."""
    count_params.cache_clear()
    count_flops.cache_clear()
    with tempfile.TemporaryDirectory() as folder:
        run = RunFolder(Path(folder))
        study = open_study(run.storage, "benchmark", seed)
        searcher = BudgetedSearcher(
            load_space(space_name), budget, study, seed, epochs=1,
            on_record=lambda ended: write_trials(run.trials_file, render_trials(study)))
        scores = random.Random(seed)
        start = time.perf_counter()
        for index in range(configs):
            trial_id = f"bench{index}"
            searcher.suggest(trial_id)
            searcher.on_trial_complete(trial_id, {"best_val_acc": scores.random(), "training_iteration": 1})
        seconds = time.perf_counter() - start
        return seconds / configs, int((render_trials(study)["state"] == "infeasible").sum())


def asha_savings(run_dir: Path) -> tuple[float, int, int]:
    """(fraction of full-length epochs not run, epochs run, epochs a full run of every trial would take)."""
    settings = load_settings(run_dir)
    table = load_trials(run_dir)
    trained = table[table["state"].isin(["complete", "stopped"])]
    full = len(trained) * int(settings["epochs"])
    ran = int(trained["epochs"].sum())
    return (1 - ran / full if full else 0.0), ran, full


def main() -> None:
    import optuna

    # This process is the application: Optuna's line per study created would bury the figures.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="3.1M")
    parser.add_argument("--space", default="qkv")
    parser.add_argument("--configs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run", type=Path, default=None, help="a finished run folder to read ASHA's savings from")
    args = parser.parse_args()
    budget = parse_count(args.budget)
    for name, shape in SHAPES.items():
        built, full = [], []
        time_sampling(args.space, FullCheck(budget, None, shape), 1, seed=args.repeats)  # untimed: first-use costs
        for repeat in range(args.repeats):
            seconds, infeasible = time_sampling(args.space, Budget(budget, None, shape), args.configs, seed=repeat)
            built.append(seconds)
            full.append(time_sampling(args.space, FullCheck(budget, None, shape), args.configs, seed=repeat)[0])
        fast, slow = statistics.median(built), statistics.median(full)
        print(f"sampling, space {args.space}, budget {args.budget}, {name} shapes: {fast:.3f} s per feasible config "
              f"built only, {slow:.3f} s with the full check (FLOPs counted): {fast / slow:.2f}x (medians of "
              f"{args.repeats} x {args.configs}; the last repeat drew {infeasible} infeasible) | target < 0.2 s")
    if args.run is not None:
        fraction, ran, full = asha_savings(args.run)
        print(f"ASHA on {args.run}: {ran} of {full} full-length epochs run, {fraction:.0%} saved")


if __name__ == "__main__":
    main()
