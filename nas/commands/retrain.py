"""`nas retrain results/<run>`: retrain a run's winners (and baselines) with a full recipe, then test each once.

Winners come from the run's Pareto front (`--top K`), its trial ids (`--trials`) or architectures
(`--arch`); `--baseline` adds a reference model under the very same recipe. Each model trains in
results/<run>/retrain/<arch-id>/ and results/<run>/retrain.csv gets its row when it finishes.

Exit codes: 0 every model trained; 1 a model's training diverged (the others still ran); 2 bad input;
130 interrupted (the last finished epoch of the model in training is kept; --resume continues it).
"""
from __future__ import annotations

import argparse
import sys

from nas.flags import (add_recipe_arguments, fraction, non_negative_float, output_folder, path_argument,
                       positive_float, positive_int, recipe_overrides, seed_argument, split_list)
from search_spaces.device import DEFAULT_DEVICE, DEVICE_HELP


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=path_argument, help="run folder (results/<run>) or a run name under results/")
    picks = parser.add_argument_group("models", "at least one of --top, --trial-ids, --arch, --baseline")
    picks.add_argument("--top", type=positive_int, default=None, metavar="K",
                       help="the K best members of the run's Pareto front (params), best val_acc first")
    picks.add_argument("--include-stopped", action="store_true",
                       help="--top: let trials ASHA stopped early (scored after fewer epochs) onto the front")
    picks.add_argument("--trial-ids", action="append", metavar="ID,ID", help="trials of the run, by id (t0003 or 3)")
    picks.add_argument("--arch", type=path_argument, action="append", metavar="PRESET|arch.json",
                       help="an architecture (repeatable)")
    picks.add_argument("--baseline", type=path_argument, action="append", metavar="PRESET|arch.json",
                       help="a reference model trained under the same recipe, e.g. xcit-n12 (repeatable)")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=None, help="dataset to retrain on (default: the run's), e.g. imagenet")
    data.add_argument("--data-dir", type=path_argument, default=None, metavar="DIR",
                      help="folder holding the dataset's files (default: the run's when it is the run's dataset)")
    data.add_argument("--download", action="store_true", help="download the dataset into --data-dir if missing")
    data.add_argument("--img-size", type=positive_int, default=None, metavar="PX",
                      help="resize images (default: native)")
    data.add_argument("--patch-size", type=positive_int, default=None, metavar="P",
                      help="patch size of every model (default: each arch's, or the dataset's where it does not fit)")
    data.add_argument("--val-fraction", type=fraction, default=None, metavar="F",
                      help="share of the training set held out for validation (default: the run's)")
    data.add_argument("--split-seed", type=seed_argument, default=None, metavar="S",
                      help="seed of the validation split (default: the run's seed)")
    add_recipe_arguments(parser, None, "xcit, or small on digits")
    where = parser.add_argument_group("running")
    where.add_argument("--seed", type=seed_argument, default=0, metavar="S",
                       help="seed of initialisation, data order and augmentation (default 0)")
    where.add_argument("--out", type=output_folder, default=None, metavar="DIR",
                       help="output folder instead of the run folder")
    where.add_argument("--resume", action="store_true",
                       help="continue interrupted models exactly and skip finished ones")
    where.add_argument("--device", default=DEFAULT_DEVICE, help=DEVICE_HELP)
    where.add_argument("--compile", action="store_true", help="torch.compile the models (worth it on CUDA)")
    where.add_argument("--address", default=None, metavar="ADDR",
                       help="run the models at once as Ray tasks on this cluster (auto, ray://host:10001, or local)")
    where.add_argument("--gpus-per-model", type=non_negative_float, default=0.0, metavar="G",
                       help="GPUs per Ray task, at most 1 (default 0: CPU)")
    where.add_argument("--cpus-per-model", type=positive_float, default=1.0, metavar="C",
                       help="CPUs per Ray task (default 1)")


def run(args: argparse.Namespace) -> int:
    from qkvnas_core.units import format_count
    from nas.retrain import RetrainRequest, retrain_run
    from nas.tables import percent, table_text

    request = RetrainRequest(
        run=args.run, top=args.top, include_stopped=args.include_stopped, trials=tuple(split_list(args.trial_ids)), archs=tuple(args.arch or ()),
        baselines=tuple(args.baseline or ()), dataset=args.dataset, data_dir=args.data_dir, download=args.download,
        img_size=args.img_size, patch_size=args.patch_size, val_fraction=args.val_fraction,
        split_seed=args.split_seed, recipe=args.recipe, overrides=recipe_overrides(args), seed=args.seed,
        out=args.out, resume=args.resume, device=args.device, compile=args.compile, address=args.address,
        gpus_per_model=args.gpus_per_model, cpus_per_model=args.cpus_per_model)
    outcome = retrain_run(request, warn=lambda line: print(f"nas retrain: error: {line}", file=sys.stderr,
                                                           flush=True))
    if len(outcome.table):
        print(f"\nretrained on {outcome.info.name} (test top-1 / top-5 in %, best-by-validation weights) -> "
              f"{outcome.csv_path}")
        print(table_text(outcome.table, {
            "arch_id": str, "role": str, "source": str, "structure": str,
            "params": lambda value: f"{int(value):,}", "flops": format_count,
            "top1": percent, "top5": percent, "best_val_acc": percent, "epochs": lambda value: f"{int(value)}",
            "recipe": str, "seconds": lambda value: f"{float(value):.0f}s"}))
    return 1 if outcome.diverged else 0
