"""`nas search --budget 3.1M`: the product's main job.

The settings come from the flags, over a config file's when --config is given (nas/config.py); `nas search RUN
--resume` continues a run. The search prints nothing itself: its progress lines come here, drawn as a live bar
where a terminal is attached and printed as they are otherwise (a log keeps every one).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from qkvnas_core.errors import UsageError
from nas.flags import (add_flag, add_hidden_alias, add_recipe_arguments, argument_type, count_argument,
                       path_argument, positive_int, recipe_overrides, run_name, share, space_argument,
                       startup_argument)
from nas.objectives import EARLY_STOPPING, SAMPLERS, parse_objectives
from nas.tracking import parse_loggers
from trainers.holdout import DEFAULT_VAL_FRACTION
from trainers.recipe import PROXY

USAGE = """%(prog)s --budget PARAMS [options]
       %(prog)s --config FILE [options]
       %(prog)s RUN --resume [--trials N] [options a resume may change]"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.usage = USAGE
    parser.add_argument("run", type=path_argument, nargs="?", metavar="RUN",
                        help="with --resume: the run to continue, a folder (results/<run>) or a run name under "
                             "--results-dir")
    what = parser.add_argument_group("what to search (--budget, or a --config file that gives it)")
    what.add_argument("--budget", type=count_argument, metavar="PARAMS",
                      help="parameter budget, e.g. 3.1M, 750K, 3.1e6")
    what.add_argument("--config", type=path_argument, default=None, metavar="FILE",
                      help="settings from a YAML or JSON file (a run's search.json reruns that search as a new "
                           "run); flags given override it")
    what.add_argument("--max-flops", type=count_argument, default=None, metavar="FLOPS",
                      help="optional FLOPs limit per image, e.g. 200M (2 FLOPs per multiply-add)")
    what.add_argument("--objectives", type=argument_type(parse_objectives), default=None, metavar="val_acc,COST",
                      help="val_acc, then the costs searched against it: params, flops (needs --max-flops); "
                           "default val_acc,params (the front); val_acc alone: single-objective")
    what.add_argument("--space", type=space_argument, default=None, metavar="SPACE",
                      help="qkv (default), paper, lite, or path/to/file.py:function")
    add_flag(what, "--patch-size", "default: the dataset's")
    data = parser.add_argument_group("data (search scores on a validation split of the training set)")
    add_flag(data, "--dataset", "default digits")
    add_flag(data, "--data-dir")
    data.add_argument("--classes", type=positive_int, default=None, metavar="N",
                      help="proxy: keep the first N classes")
    data.add_argument("--train-fraction", type=share, default=None, metavar="F",
                      help="proxy: fraction of the training set (default 1)")
    add_flag(data, "--img-size", "images resized to it (default: the dataset's own)")
    add_flag(data, "--val-fraction", f"it scores the trials (default {DEFAULT_VAL_FRACTION})")
    add_flag(data, "--split-seed", "default: --seed")
    run = parser.add_argument_group("trials and scheduling")
    run.add_argument("--trials", type=positive_int, default=None, metavar="N",
                     help="trials to train (default 16; infeasible draws do not count)")
    run.add_argument("--epoch-budget", type=positive_int, default=None, metavar="EPOCHS",
                     help="stop drawing trials once the trials' epochs add up to this (running ones finish)")
    run.add_argument("--sampler", choices=SAMPLERS, default=None,
                     help="tpe (default; multi-objective TPE with costs), nsga2, or random")
    run.add_argument("--startup", type=startup_argument, default=None, metavar="random|proxy:NAME",
                     help="the first draws: the sampler's random ones (random, default), or proxy:zico (the best "
                          "8 of 64 feasible draws by the training-free proxy, trained first; see docs/search.md)")
    run.add_argument("--early-stopping", choices=EARLY_STOPPING, default=None,
                     help="asha (default; multi-objective ASHA with costs) or none")
    run.add_argument("--grace-epochs", type=positive_int, default=None, metavar="N",
                     help="ASHA: epochs before a trial may be stopped (default 2)")
    run.add_argument("--reduction-factor", type=positive_int, default=None, metavar="N",
                     help="ASHA: rungs at epochs / N^k; keep 1 in N at each (default 4)")
    run.add_argument("--max-concurrent", type=positive_int, default=None, metavar="N",
                     help="trials at once (default: as resources allow)")
    cpus = add_flag(run, "--cpus-per-model", "each trial trains one (default 1)", dest="cpus_per_trial")
    gpus = add_flag(run, "--gpus-per-model", "each trial trains one (default 0)", dest="gpus_per_trial")
    add_hidden_alias(run, "--cpus-per-trial", cpus)
    add_hidden_alias(run, "--gpus-per-trial", gpus)
    add_flag(run, "--address", "default: a local Ray started for the search")
    add_flag(run, "--seed", "also seeds the sampler (default 0)")
    add_recipe_arguments(parser, None, PROXY.name, "--epochs is a trial's length unless ASHA stops it")
    out = parser.add_argument_group("output")
    out.add_argument("--name", type=run_name, default=None, metavar="NAME",
                     help="run name (default: <space>-<dataset>-<budget>-<time>)")
    add_flag(out, "--results-dir", "the run folder goes there (default results)")
    add_flag(out, "--resume", "the run RUN, also to extend it (raise --trials)")
    out.add_argument("--logger", dest="loggers", type=argument_type(parse_loggers), default=None, metavar="NAMES",
                     help="where each trial's epochs are logged: tensorboard (default; event files in the run "
                          "folder), mlflow, wandb (both local unless configured), comma-separated, or none")
    out.add_argument("--verbose", action="store_true", default=None, help="show Ray's own output")


# The flags that set a SearchSettings field of the same name (the recipe flags come through recipe_overrides).
SETTINGS_FLAGS = ("budget", "max_flops", "objectives", "sampler", "startup", "early_stopping", "epoch_budget",
                  "space", "patch_size", "dataset", "data_dir", "classes", "train_fraction", "img_size", "val_fraction",
                  "split_seed", "trials", "grace_epochs", "reduction_factor", "max_concurrent", "cpus_per_trial",
                  "gpus_per_trial", "address", "seed", "name", "results_dir", "verbose", "loggers", "recipe")


def given_settings(args: argparse.Namespace) -> dict[str, object]:
    """The settings given on the command line, by SearchSettings field (--epochs is one, the other recipe flags are
    recipe_overrides)."""
    given = {name: getattr(args, name) for name in SETTINGS_FLAGS if getattr(args, name, None) is not None}
    overrides = recipe_overrides(args)
    if "epochs" in overrides:
        given["epochs"] = overrides.pop("epochs")
    if overrides:
        given["recipe_overrides"] = overrides
    return given


def run(args: argparse.Namespace) -> int:
    given = given_settings(args)
    view = LiveView(sys.stdout)
    if args.resume:
        from nas.results import find_run
        from nas.search import resume_search

        if args.run is None:
            raise UsageError("--resume: expected the run to continue, nas search RUN --resume (results/<run>)")
        if args.config is not None:
            raise UsageError(f"--config {args.config} with --resume: a resumed run keeps its own settings; expected "
                             "one of them")
        run_dir = find_run(args.run, Path(given.pop("results_dir", "results")))
        with view:
            result = resume_search(run_dir, given, on_progress=view.say)
        return report(result)
    if args.run is not None:
        raise UsageError(f"{args.run}: a run to continue takes --resume; expected --name NAME for a new run")
    from nas.config import search_settings
    from nas.search import run_search

    settings = search_settings(given, args.config)
    with view:
        result = run_search(settings, on_progress=view.say)
    return report(result)


class LiveView:
    """Where the search's progress goes: a tqdm bar on `out` when it is a terminal (trained of target, running,
    best val_acc, hypervolume, time left; other lines printed above it), else every line printed as it comes."""

    def __init__(self, out: TextIO, terminal: bool | None = None) -> None:
        self.out = out
        self.terminal = out.isatty() if terminal is None else terminal
        self.bar = None

    def __getstate__(self) -> dict[str, object]:
        # Ray pickles the searcher, and with it this callback, to restore an experiment; a copy draws nothing.
        return {"out": None, "terminal": False, "bar": None}

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def say(self, line: str) -> None:
        from nas.progress import ProgressLine

        if not self.terminal:
            print(line, file=self.out, flush=True)
        elif not isinstance(line, ProgressLine):
            from tqdm import tqdm

            tqdm.write(line, file=self.out)
        else:
            self.draw(line)

    def draw(self, line) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=line.target, initial=line.trained, file=self.out, dynamic_ncols=True, desc="search",
                            bar_format="{l_bar}{bar}| {n}/{total} trained [{elapsed}]{postfix}")
        self.bar.n = line.trained
        self.bar.set_postfix_str(line.summary, refresh=True)


def report(result) -> int:
    """How the search ended (a nas.search.SearchResult): why it stopped early, the best trial, the front; the
    exit code: 0, 130 when interrupted, 2 when the space ran out before any score."""
    if result.note:
        print(result.note)
    best = result.best
    if best is None:
        print(f"{result.run_dir}: no trial has a score yet")
    else:
        print(f"best: {best['trial_id']} val_acc {best['val_acc']:.2%} with {best['params']:,} params "
              f"({best['structure']}); results in {result.run_dir}")
        print(f"Pareto front: {result.front}")
    return result.exit_code
