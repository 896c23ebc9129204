"""`nas search --budget 3.1M`: the product's main job."""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from core.errors import UsageError
from nas.flags import count_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_argument_group("what to search")
    what.add_argument("--budget", type=count_argument, help="parameter budget, e.g. 3.1M, 750K, 3.1e6 (required)")
    what.add_argument("--max-flops", type=count_argument, default=None, metavar="FLOPS",
                      help="optional FLOPs limit per image, e.g. 200M (2 FLOPs per multiply-add)")
    what.add_argument("--space", default="qkv", help="qkv (default), paper, or path/to/file.py:function")
    what.add_argument("--patch-size", type=int, default=None, help="patch size (default: the dataset's)")
    data = parser.add_argument_group("data (search scores on a validation split of the training set)")
    data.add_argument("--dataset", default="digits", help="digits (default, built in), cifar10, cifar100, stl10, "
                      "stanford_cars, imagenet, folder, synthetic")
    data.add_argument("--data-dir", default=None, help="folder holding the dataset in its own on-disk format")
    data.add_argument("--classes", type=int, default=None, help="proxy: keep the first N classes")
    data.add_argument("--train-fraction", type=float, default=1.0, help="proxy: fraction of the training set")
    data.add_argument("--img-size", type=int, default=None, help="proxy: resize images to this side")
    data.add_argument("--val-fraction", type=float, default=0.2, help="share of the training set held out to score trials")
    run = parser.add_argument_group("trials and scheduling")
    run.add_argument("--trials", type=int, default=None, help="trials to train (default 16; infeasible draws do not count)")
    run.add_argument("--epochs", type=int, default=10, help="epochs of a trial that is not stopped early (default 10)")
    run.add_argument("--grace-epochs", type=int, default=3, help="ASHA: epochs before a trial may be stopped")
    run.add_argument("--reduction-factor", type=int, default=3, help="ASHA: keep 1 in N at each rung")
    run.add_argument("--max-concurrent", type=int, default=None, help="trials at once (default: as resources allow)")
    run.add_argument("--cpus-per-trial", type=float, default=None, help="CPUs per trial (default 1)")
    run.add_argument("--gpus-per-trial", type=float, default=None, help="GPUs per trial; 0.25 packs 4 on a GPU")
    run.add_argument("--address", default=None, help="join an existing Ray cluster (default: a local Ray)")
    run.add_argument("--seed", type=int, default=0, help="seed of the sampler, the split and the trials")
    out = parser.add_argument_group("output")
    out.add_argument("--name", default=None, help="run name (default: <space>-<dataset>-<budget>-<time>)")
    out.add_argument("--results-dir", default="results", help="parent folder of runs (default results)")
    out.add_argument("--resume", metavar="RUN_DIR", default=None,
                     help="continue results/<run>: finished trials kept, --trials may be raised")
    out.add_argument("--verbose", action="store_true", default=None, help="show Ray's own output")


def run(args: argparse.Namespace) -> int:
    from nas.search import RESUMABLE, SearchSettings, resume_search, run_search

    if args.resume:
        changes = {name: getattr(args, name) for name in RESUMABLE if getattr(args, name) is not None}
        return resume_search(Path(args.resume), changes)
    if args.budget is None:
        raise UsageError("--budget is required: expected a parameter count such as 3.1M")
    name = args.name or f"{args.space.split(':')[-1]}-{args.dataset}-{args.budget}-{time.strftime('%Y%m%d-%H%M%S')}"
    return run_search(SearchSettings(
        name=name, budget=args.budget, results_dir=args.results_dir, max_flops=args.max_flops, dataset=args.dataset,
        data_dir=args.data_dir, classes=args.classes, train_fraction=args.train_fraction, img_size=args.img_size,
        val_fraction=args.val_fraction, space=args.space, patch_size=args.patch_size,
        trials=args.trials if args.trials is not None else 16, epochs=args.epochs, grace_epochs=args.grace_epochs,
        reduction_factor=args.reduction_factor, max_concurrent=args.max_concurrent,
        cpus_per_trial=args.cpus_per_trial if args.cpus_per_trial is not None else 1.0,
        gpus_per_trial=args.gpus_per_trial or 0.0, address=args.address, seed=args.seed, verbose=bool(args.verbose)))
