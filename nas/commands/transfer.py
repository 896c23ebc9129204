"""`nas transfer CHECKPOINT ...`: fine-tune retrained models on the transfer sets and print the paper's table.

Each checkpoint (a retrain folder, whose best-by-validation weights are used, or a TAG.json) is
fine-tuned on every dataset of --datasets at the image size it was trained at, with a new classifier
head and every other weight loaded strictly; each is tested once at the end. transfer.csv (one row per
model: test top-1 per dataset and their average) lands in the first checkpoint's run folder or --out.

Exit codes: 0 done; 1 a fine-tune diverged (the others still ran); 2 bad input; 130 interrupted.
"""
from __future__ import annotations

import argparse

from nas.flags import add_flag, add_recipe_arguments, path_argument, recipe_overrides
from search_spaces.model_tools.device import DEFAULT_DEVICE
from trainers.holdout import DEFAULT_SPLIT_SEED, TRANSFER_VAL_FRACTION
from trainers.recipe import TRANSFER

DISPLAY_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "stanford_cars": "Stanford Cars", "stl10": "STL-10"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", type=path_argument, nargs="*", metavar="CHECKPOINT",
                        help="a retrained model's folder (results/<run>/retrain/<arch-id>: its best checkpoint) "
                             "or a TAG.json")
    add_flag(parser, "--baseline", "a checkpoint fine-tuned as the others", action="append", metavar="CHECKPOINT")
    data = parser.add_argument_group("data")
    data.add_argument("--datasets", default=None, metavar="NAME,NAME",
                      help="transfer sets (default the paper's four: cifar10,cifar100,stanford_cars,stl10)")
    add_flag(data, "--data-dir", "a root holding each dataset's own folder (cifar-10-batches-py/, cifar-100-python/, "
                                 "stl10_binary/, stanford_cars/: torchvision's root), and/or NAME=DIR for one dataset "
                                 "(repeatable)", action="append", type=None, metavar="DIR|NAME=DIR")
    add_flag(data, "--download", "every missing dataset that can be (torchvision)")
    add_flag(data, "--val-fraction", f"of each training set (default {TRANSFER_VAL_FRACTION})",
             default=TRANSFER_VAL_FRACTION)
    add_flag(data, "--split-seed", f"default {DEFAULT_SPLIT_SEED}", default=DEFAULT_SPLIT_SEED)
    add_recipe_arguments(parser, TRANSFER.name)
    where = parser.add_argument_group("running")
    add_flag(where, "--seed", "of the new head's initialisation (default 0)", default=0)
    add_flag(where, "--out", "default: the first checkpoint's run folder")
    add_flag(where, "--resume", "interrupted fine-tunes continue, finished ones are skipped")
    add_flag(where, "--device", default=DEFAULT_DEVICE)
    add_flag(where, "--compile")


def paper_table(frame, datasets: list[str]) -> str:
    """The paper's layout: model, params, test top-1 (%) per dataset, average."""
    from qkvnas_core.units import format_count
    from nas.tables import percent, table_text

    shown = frame.copy()
    shown["model"] = [f"{row.source} ({row.arch_id}, {row.structure})" + (" [baseline]" if row.role == "baseline"
                                                                          else "") for row in frame.itertuples()]
    formats = {"model": str, "params": format_count}
    for name in datasets:
        shown[DISPLAY_NAMES.get(name, name)] = shown[f"{name}_top1"]
        formats[DISPLAY_NAMES.get(name, name)] = percent
    shown["average"] = shown["average_top1"]
    formats["average"] = percent
    return table_text(shown, formats)


def run(args: argparse.Namespace) -> int:
    from trainers.transfer import PAPER_DATASETS, TransferRequest, transfer_run

    request = TransferRequest(
        checkpoints=tuple(args.checkpoints), baselines=tuple(args.baseline or ()),
        datasets=args.datasets or ",".join(PAPER_DATASETS),
        data_dirs=tuple(args.data_dir or ()), download=args.download, val_fraction=args.val_fraction,
        split_seed=args.split_seed, recipe=args.recipe, overrides=recipe_overrides(args), seed=args.seed,
        out=args.out, resume=args.resume, device=args.device, compile=args.compile)
    outcome = transfer_run(request)  # a fine-tune that diverged: `nas transfer: error: ...` on stderr (nas/cli.py)
    if len(outcome.table):
        print(f"\ntransfer test top-1 (%), fine-tuned at each model's training resolution; params without the "
              f"classifier head -> {outcome.csv_path}")
        print(paper_table(outcome.table, outcome.datasets))
    return 1 if outcome.diverged else 0
