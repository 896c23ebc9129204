"""`nas train`: train one architecture (preset or arch.json) on a dataset, checkpoint it, test it once.

Exit codes: 0 trained, 1 training diverged (NaN/inf loss; the last good checkpoint is kept), 2 bad input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nas.flags import finite_float, fraction, integer, output_folder, path_argument, positive_int, seed_argument
from search_spaces.device import DEFAULT_DEVICE, DEVICE_HELP
from trainers.holdout import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION
from trainers.recipe import PROXY, RECIPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("arch", type=path_argument, metavar="PRESET|arch.json",
                        help="a preset name or an architecture JSON file")
    parser.add_argument("--dataset", default="digits", help="dataset name (default digits)")
    parser.add_argument("--epochs", type=integer, default=None, metavar="N", help="epochs (default: the recipe's)")
    parser.add_argument("--recipe", default=PROXY.name, help=f"{', '.join(RECIPES)} (default {PROXY.name})")
    parser.add_argument("--out", type=output_folder, default=None, metavar="DIR",
                        help="checkpoint folder (default results/train/<arch_id>-<dataset>)")
    parser.add_argument("--resume", action="store_true", help="continue the run whose checkpoints are in --out")
    parser.add_argument("--seed", type=seed_argument, default=0, metavar="S",
                        help="seed of initialisation, data order and augmentation (default 0)")
    parser.add_argument("--patch-size", type=positive_int, default=None, metavar="P",
                        help="patch size (default: the architecture's, or the dataset's when that does not fit)")
    parser.add_argument("--data-dir", type=path_argument, default=None, metavar="DIR",
                        help="folder holding the dataset's files")
    parser.add_argument("--val-fraction", type=fraction, default=DEFAULT_VAL_FRACTION, metavar="F",
                        help=f"share of the training set held out for validation (default {DEFAULT_VAL_FRACTION}, "
                             "as nas search)")
    parser.add_argument("--split-seed", type=seed_argument, default=DEFAULT_SPLIT_SEED, metavar="S",
                        help=f"seed of the validation split (default {DEFAULT_SPLIT_SEED}; a search's --seed)")
    parser.add_argument("--download", action="store_true", help="download the dataset into --data-dir if missing")
    parser.add_argument("--device", default=DEFAULT_DEVICE, help=DEVICE_HELP)
    parser.add_argument("--batch-size", type=integer, default=None, metavar="B",
                        help="global batch (default: recipe's)")
    parser.add_argument("--lr", type=finite_float, default=None, metavar="LR",
                        help="base learning rate at batch 512; the run uses LR x batch / 512 (default: recipe's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (worth it on CUDA)")


def run(args: argparse.Namespace) -> int:
    from search_spaces.presets import load_arch
    from trainers.engine import TrainingDiverged
    from trainers.data import DataRequest
    from trainers.from_scratch import train_arch
    from trainers.recipe import get_recipe

    overrides = {name: value for name, value in (("epochs", args.epochs), ("batch_size", args.batch_size),
                                                 ("lr", args.lr)) if value is not None}
    data = DataRequest(args.dataset, args.data_dir, args.download, args.val_fraction, args.split_seed)
    try:
        train_arch(load_arch(args.arch), data, get_recipe(args.recipe, **overrides), overrides,
                   folder=None if args.out is None else Path(args.out), patch_size=args.patch_size, seed=args.seed,
                   resume=args.resume, device=args.device, compile=args.compile, source=args.arch)
    except TrainingDiverged as error:
        print(f"nas train: error: {error}", file=sys.stderr)
        return 1
    return 0
