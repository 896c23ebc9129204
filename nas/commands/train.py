"""`nas train`: train one architecture (preset or arch.json) on a dataset, checkpoint it, test it once.

Exit codes: 0 trained, 1 training diverged (NaN/inf loss; the last good checkpoint is kept), 2 bad input.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nas.settings.flags import add_recipe_arguments, path_argument, recipe_overrides
from nas.settings.requests import TRAIN_GROUPS, TrainRequest, add_setting_flags, given_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("arch", type=path_argument, metavar="PRESET|arch.json",
                        help="a preset name or an architecture JSON file")
    add_setting_flags(parser, TrainRequest, TRAIN_GROUPS,
                      add_recipe=lambda: add_recipe_arguments(parser, TrainRequest.recipe))


def run(args: argparse.Namespace) -> int:
    from search_spaces.presets import load_arch
    from trainers.engine import TrainingDiverged
    from trainers.datasets.registry import DataRequest
    from trainers.from_scratch import train_arch
    from trainers.recipe import get_recipe

    request = TrainRequest(arch=args.arch, overrides=recipe_overrides(args), **given_settings(args, TrainRequest))
    data = DataRequest(request.dataset, request.data_dir, download=request.download,
                       val_fraction=request.val_fraction, split_seed=request.split_seed, img_size=request.img_size,
                       image_cache=request.image_cache, cache_dir=request.cache_dir)
    try:
        train_arch(load_arch(request.arch), data, get_recipe(request.recipe, **request.overrides), request.overrides,
                   folder=None if request.out is None else Path(request.out), patch_size=request.patch_size,
                   seed=request.seed, resume=request.resume, device=request.device, compile=request.compile,
                   source=request.arch)
    except TrainingDiverged as error:
        print(f"nas train: error: {error}", file=sys.stderr)
        return 1
    return 0
