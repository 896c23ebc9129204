"""`nas transfer CHECKPOINT ...`: fine-tune retrained models on the transfer sets and print the paper's table.

Each checkpoint (a retrain folder, whose best-by-validation weights are used, or a TAG.json) is
fine-tuned on every dataset of --datasets at the image size it was trained at, with a new classifier
head and every other weight loaded strictly; each is tested once at the end. transfer.csv (one row per
model: test top-1 per dataset and their average) lands in the first checkpoint's run folder or --out.

Exit codes: 0 done; 1 a fine-tune diverged (the others still ran); 2 bad input; 130 interrupted.
"""
from __future__ import annotations

import argparse

from nas.settings.flags import add_recipe_arguments, path_argument, recipe_overrides
from nas.settings.requests import TRANSFER_GROUPS, TransferRequest, add_setting_flags, given_settings
from trainers.recipe import TRANSFER

DISPLAY_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "stanford_cars": "Stanford Cars", "stl10": "STL-10"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The checkpoints; every other flag is a TransferRequest field's (nas/settings/requests.py)."""
    parser.add_argument("checkpoints", type=path_argument, nargs="*", metavar="CHECKPOINT",
                        help="a retrained model's folder (results/<run>/retrain/<arch-id>: its best checkpoint) "
                             "or a TAG.json")
    add_setting_flags(parser, TransferRequest, TRANSFER_GROUPS, lambda: add_recipe_arguments(parser, TRANSFER.name))


def paper_table(frame, datasets: list[str]) -> str:
    """The paper's layout: model, params, test top-1 (%) per dataset, average."""
    from qkvnas_core.units import format_count
    from qkvnas_core.tables import percent, table_text

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
    from nas.winners.transfer import transfer_run

    request = TransferRequest(checkpoints=tuple(args.checkpoints), overrides=recipe_overrides(args),
                              **given_settings(args, TransferRequest))
    outcome = transfer_run(request)  # a fine-tune that diverged: `nas transfer: error: ...` on stderr (nas/cli.py)
    if len(outcome.table):
        print(f"\ntransfer test top-1 (%), fine-tuned at each model's training resolution; params without the "
              f"classifier head -> {outcome.csv_path}")
        print(paper_table(outcome.table, outcome.datasets))
    return 1 if outcome.diverged else 0
