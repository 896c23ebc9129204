"""`nas retrain results/<run>`: retrain a run's winners (and baselines) with a full recipe, then test each once.

Winners come from the run's Pareto front (`--top K`), its trial ids (`--trials`) or architectures
(`--arch`); `--baseline` adds a reference model under the very same recipe. Each model trains in
results/<run>/retrain/<arch-id>/ and results/<run>/retrain.csv gets its row when it finishes.

Exit codes: 0 every model trained; 1 a model's training diverged (the others still ran); 2 bad input;
130 interrupted (the last finished epoch of the model in training is kept; --resume continues it).
"""
from __future__ import annotations

import argparse

from nas.settings.flags import add_recipe_arguments, path_argument, recipe_overrides
from nas.settings.requests import RETRAIN_GROUPS, RetrainRequest, add_setting_flags, given_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run; every other flag is a RetrainRequest field's (nas/settings/requests.py)."""
    parser.add_argument("run", type=path_argument, help="run folder (results/<run>) or a run name under results/")
    add_setting_flags(parser, RetrainRequest, RETRAIN_GROUPS,
                      lambda: add_recipe_arguments(parser, None, "xcit, or small on digits"))


def run(args: argparse.Namespace) -> int:
    from qkvnas_core.units import format_count
    from nas.winners.retrain import retrain_run
    from nas.runs.seed_stats import summary_text
    from qkvnas_core.tables import percent, table_text

    request = RetrainRequest(run=args.run, overrides=recipe_overrides(args), **given_settings(args, RetrainRequest))
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

