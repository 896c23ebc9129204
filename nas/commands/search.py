"""`nas search --budget 3.1M`: the product's main job."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from qkvnas_core.errors import UsageError
from nas.flags import (argument_type, count_argument, fraction, non_negative_float, output_folder, path_argument, positive_float,
                       positive_int, run_name, seed_argument, share, space_argument)
from nas.objectives import EARLY_STOPPING, SAMPLERS, parse_objectives
from trainers.holdout import DEFAULT_VAL_FRACTION


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to search")
    what.add_argument("--budget", type=count_argument, help="parameter budget, e.g. 3.1M, 750K, 3.1e6 (required)")
    what.add_argument("--max-flops", type=count_argument, default=None, metavar="FLOPS",
                      help="optional FLOPs limit per image, e.g. 200M (2 FLOPs per multiply-add)")
    what.add_argument("--objectives", type=argument_type(parse_objectives), default=None, metavar="val_acc,COST",
                      help="val_acc, then the costs searched against it: params, flops (needs --max-flops); "
                           "default val_acc,params (the front); val_acc alone: single-objective")
    what.add_argument("--space", type=space_argument, default=None,
                      help="qkv (default), paper, lite, or path/to/file.py:function")
    what.add_argument("--patch-size", type=positive_int, default=None, help="patch size (default: the dataset's)")
    data = parser.add_argument_group("data (search scores on a validation split of the training set)")
    data.add_argument("--dataset", default=None, help="digits (default, built in), mnist5k (built in), cifar10, "
                      "cifar100, stl10, stanford_cars, imagenet, folder, synthetic")
    data.add_argument("--data-dir", type=path_argument, default=None,
                      help="folder holding the dataset in its own on-disk format")
    data.add_argument("--classes", type=positive_int, default=None, help="proxy: keep the first N classes")
    data.add_argument("--train-fraction", type=share, default=None, help="proxy: fraction of the training set "
                      "(default 1)")
    data.add_argument("--img-size", type=positive_int, default=None, help="proxy: resize images to this side")
    data.add_argument("--val-fraction", type=fraction, default=None,
                      help=f"share of the training set held out to score trials (default {DEFAULT_VAL_FRACTION})")
    run = parser.add_argument_group("trials and scheduling")
    run.add_argument("--trials", type=positive_int, default=None,
                     help="trials to train (default 16; infeasible draws do not count)")
    run.add_argument("--epochs", type=positive_int, default=None,
                     help="epochs of a trial that is not stopped early (default 10)")
    run.add_argument("--epoch-budget", type=positive_int, default=None, metavar="EPOCHS",
                     help="stop drawing trials once the trials' epochs add up to this (running ones finish)")
    run.add_argument("--sampler", choices=SAMPLERS, default=None,
                     help="tpe (default; multi-objective TPE with costs), nsga2, or random")
    run.add_argument("--early-stopping", choices=EARLY_STOPPING, default=None,
                     help="asha (default; multi-objective ASHA with costs) or none")
    run.add_argument("--grace-epochs", type=positive_int, default=None,
                     help="ASHA: epochs before a trial may be stopped (default 1)")
    run.add_argument("--reduction-factor", type=positive_int, default=None,
                     help="ASHA: rungs at epochs / N^k; keep 1 in N at each (default 4)")
    run.add_argument("--max-concurrent", type=positive_int, default=None,
                     help="trials at once (default: as resources allow)")
    run.add_argument("--cpus-per-trial", type=positive_float, default=None, help="CPUs per trial (default 1)")
    run.add_argument("--gpus-per-trial", type=non_negative_float, default=None,
                     help="GPUs per trial; 0.25 packs 4 on a GPU")
    run.add_argument("--address", default=None, help="join an existing Ray cluster (default: a local Ray)")
    run.add_argument("--seed", type=seed_argument, default=None,
                     help="seed of the sampler, the split and the trials (default 0)")
    out = parser.add_argument_group("output")
    out.add_argument("--name", type=run_name, default=None,
                     help="run name (default: <space>-<dataset>-<budget>-<time>)")
    out.add_argument("--results-dir", type=output_folder, default=None, help="parent folder of runs (default results)")
    out.add_argument("--resume", type=path_argument, metavar="RUN_DIR", default=None,
                     help="continue results/<run>: finished trials kept, --trials may be raised")
    out.add_argument("--verbose", action="store_true", default=None, help="show Ray's own output")


SETTINGS_FLAGS = ("budget", "max_flops", "objectives", "sampler", "early_stopping", "epoch_budget", "space", "patch_size", "dataset", "data_dir", "classes", "train_fraction",
                  "img_size", "val_fraction", "trials", "epochs", "grace_epochs", "reduction_factor", "max_concurrent",
                  "cpus_per_trial", "gpus_per_trial", "address", "seed", "name", "results_dir", "verbose")


def run(args: argparse.Namespace) -> int:
    given = {name: getattr(args, name) for name in SETTINGS_FLAGS if getattr(args, name) is not None}
    if args.resume:
        run_dir = Path(args.resume)
        from nas.search import resume_search

        return report(resume_search(run_dir, given, on_progress=say))
    from nas.search import SearchSettings, run_search

    if args.budget is None:
        raise UsageError("--budget is required: expected a parameter count such as 3.1M")
    name = given.pop("name", None) or (f"{(args.space or 'qkv').split(':')[-1]}-{args.dataset or 'digits'}-"
                                       f"{args.budget}-{time.strftime('%Y%m%d-%H%M%S')}")
    return report(run_search(SearchSettings(name=name, **given), on_progress=say))


def say(line: str) -> None:
    print(line, flush=True)


def report(result) -> int:
    """How the search ended (a nas.search.SearchResult): why it stopped early, the best trial, the front; the
    exit code: 0, 130 when interrupted, 2 when the space ran out before any score."""
    if result.note:
        print(result.note)
    best = result.best
    if best is None:
        print(f"{result.run_dir}: no trial has a score yet")
    else:
        print(f"best: {best['trial_id']} val_acc {best['val_acc']:.4f} with {best['params']:,} params "
              f"({best['structure']}); results in {result.run_dir}")
        print(f"Pareto front: {result.front}")
    return result.exit_code

