"""`nas train`: train one architecture (preset or arch.json) on a dataset, checkpoint it, test it once.

Exit codes: 0 trained, 1 training diverged (NaN/inf loss; the last good checkpoint is kept), 2 bad input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nas.settings.flags import add_flag, add_recipe_arguments, path_argument, recipe_overrides
from search_spaces.model_tools.device import DEFAULT_DEVICE
from trainers.holdout import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION
from trainers.recipe import PROXY


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("arch", type=path_argument, metavar="PRESET|arch.json",
                        help="a preset name or an architecture JSON file")
    data = parser.add_argument_group("data")
    add_flag(data, "--dataset", "default digits", default="digits")
    add_flag(data, "--data-dir")
    add_flag(data, "--download")
    add_flag(data, "--img-size", "images resized to it (default: the dataset's own)")
    add_flag(data, "--image-cache", "image files only (imagenet, folder, stanford_cars)")
    add_flag(data, "--cache-dir", "with --image-cache, and for ImageNet 16/32/64")
    add_flag(data, "--patch-size", "default: the architecture's, or the dataset's when that does not fit")
    add_flag(data, "--val-fraction", f"default {DEFAULT_VAL_FRACTION}, as nas search", default=DEFAULT_VAL_FRACTION)
    add_flag(data, "--split-seed", f"default {DEFAULT_SPLIT_SEED}, as nas search", default=DEFAULT_SPLIT_SEED)
    add_recipe_arguments(parser, PROXY.name)
    where = parser.add_argument_group("running")
    add_flag(where, "--seed", "default 0", default=0)
    add_flag(where, "--out", "checkpoints go there (default results/train/<arch_id>-<dataset>)")
    add_flag(where, "--resume", "the one whose checkpoints are in --out")
    add_flag(where, "--device", default=DEFAULT_DEVICE)
    add_flag(where, "--compile")


def run(args: argparse.Namespace) -> int:
    from search_spaces.presets import load_arch
    from trainers.engine import TrainingDiverged
    from trainers.datasets.registry import DataRequest
    from trainers.from_scratch import train_arch
    from trainers.recipe import get_recipe

    overrides = recipe_overrides(args)
    data = DataRequest(args.dataset, args.data_dir, args.download, args.val_fraction, args.split_seed, args.img_size,
                       args.image_cache, args.cache_dir)
    try:
        train_arch(load_arch(args.arch), data, get_recipe(args.recipe, **overrides), overrides,
                   folder=None if args.out is None else Path(args.out), patch_size=args.patch_size, seed=args.seed,
                   resume=args.resume, device=args.device, compile=args.compile, source=args.arch)
    except TrainingDiverged as error:
        print(f"nas train: error: {error}", file=sys.stderr)
        return 1
    return 0
