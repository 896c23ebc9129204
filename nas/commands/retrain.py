"""`nas retrain results/<run>`: retrain a run's winners (and baselines) with a full recipe, then test each once.

Winners come from the run's Pareto front (`--top K`), its trial ids (`--trials`) or architectures
(`--arch`); `--baseline` adds a reference model under the very same recipe. Each model trains in
results/<run>/retrain/<arch-id>/ and results/<run>/retrain.csv gets its row when it finishes.

Exit codes: 0 every model trained; 1 a model's training diverged (the others still ran); 2 bad input;
130 interrupted (the last finished epoch of the model in training is kept; --resume continues it).
"""
from __future__ import annotations

import argparse

from nas.flags import (add_flag, add_recipe_arguments, path_argument, positive_int, recipe_overrides, seeds_argument,
                       split_list)
from search_spaces.device import DEFAULT_DEVICE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=path_argument, help="run folder (results/<run>) or a run name under results/")
    picks = parser.add_argument_group("models", "at least one of --top, --trial-ids, --arch, --baseline")
    picks.add_argument("--top", type=positive_int, default=None, metavar="K",
                       help="the K best members of the run's Pareto front (params), best val_acc first")
    add_flag(picks, "--include-stopped", "with --top")
    picks.add_argument("--trial-ids", action="append", metavar="ID,ID", help="trials of the run, by id (t0003 or 3)")
    picks.add_argument("--arch", type=path_argument, action="append", metavar="PRESET|arch.json",
                       help="an architecture (repeatable)")
    add_flag(picks, "--baseline", "an architecture trained under the same recipe, e.g. xcit-n12",
             action="append", metavar="PRESET|arch.json")
    data = parser.add_argument_group("data")
    add_flag(data, "--dataset", "the one to retrain on (default: the run's), e.g. imagenet")
    add_flag(data, "--data-dir", "default: the run's when it is the run's dataset")
    add_flag(data, "--download")
    add_flag(data, "--img-size", "images resized to it (default: the dataset's own)")
    add_flag(data, "--patch-size", "of every model (default: each arch's, or the dataset's where it does not fit)")
    add_flag(data, "--val-fraction", "default: the run's")
    add_flag(data, "--split-seed", "default: the run's")
    add_recipe_arguments(parser, None, "xcit, or small on digits")
    where = parser.add_argument_group("running")
    add_flag(where, "--seed", "the first of --seeds; default 0", default=0)
    where.add_argument("--seeds", type=seeds_argument, default=1, metavar="N|S,S",
                       help="train every model N times, with seeds --seed ... --seed + N - 1, or with the seeds "
                            "listed (0,3,7; one seed alone as 7,); the split stays. The table then gives each "
                            "model's mean and 95%% interval, and the paired difference to each --baseline (default 1)")
    add_flag(where, "--out", "instead of the run folder")
    add_flag(where, "--resume", "interrupted models continue exactly, finished ones are skipped")
    add_flag(where, "--device", default=DEFAULT_DEVICE)
    add_flag(where, "--compile")
    add_flag(where, "--address", "the models train at once as Ray tasks there (default: one after another here)")
    add_flag(where, "--gpus-per-model", "with --address, at most 1 (default 0: CPU)", default=0.0)
    add_flag(where, "--cpus-per-model", "with --address (default 1)", default=1.0)


def run(args: argparse.Namespace) -> int:
    from qkvnas_core.units import format_count
    from nas.retrain import RetrainRequest, retrain_run
    from nas.seed_stats import summary_text
    from nas.tables import percent, table_text

    request = RetrainRequest(
        run=args.run, top=args.top, include_stopped=args.include_stopped, trials=tuple(split_list(args.trial_ids)), archs=tuple(args.arch or ()),
        baselines=tuple(args.baseline or ()), dataset=args.dataset, data_dir=args.data_dir, download=args.download,
        img_size=args.img_size, patch_size=args.patch_size, val_fraction=args.val_fraction,
        split_seed=args.split_seed, recipe=args.recipe, overrides=recipe_overrides(args), seed=args.seed,
        seeds=args.seeds, out=args.out, resume=args.resume, device=args.device, compile=args.compile, address=args.address,
        gpus_per_model=args.gpus_per_model, cpus_per_model=args.cpus_per_model)
    outcome = retrain_run(request)  # a model that diverged: `nas retrain: error: ...` on stderr (nas/cli.py)
    if len(outcome.table):
        print(f"\nretrained on {outcome.info.name} (test top-1 / top-5 in %, best-by-validation weights) -> "
              f"{outcome.csv_path}")
        print(table_text(outcome.table, {
            "arch_id": str, "role": str, "source": str, "structure": str, "seed": lambda value: f"{int(value)}",
            "params": lambda value: f"{int(value):,}", "flops": format_count,
            "top1": percent, "top5": percent, "best_val_acc": percent, "epochs": lambda value: f"{int(value)}",
            "recipe": str, "seconds": lambda value: f"{float(value):.0f}s"}))
        if outcome.table.duplicated("arch_id").any():
            print("\n" + summary_text(outcome.summary, outcome.comparison))
    return 1 if outcome.diverged else 0

