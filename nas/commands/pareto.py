"""`nas pareto results/<run>`: the run's Pareto front as pareto.csv and pareto.png / pareto.svg."""
from __future__ import annotations

import argparse

from nas.settings.flags import path_argument
from nas.settings.requests import PARETO_GROUPS, ParetoRequest, add_setting_flags, given_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=path_argument, help="run folder (results/<run>) or a run name under results/")
    add_setting_flags(parser, ParetoRequest, PARETO_GROUPS)


def run(args: argparse.Namespace) -> int:
    from nas.settings.objectives import SCORE
    from nas.runs.pareto import write_pareto

    request = ParetoRequest(run=args.run, **given_settings(args, ParetoRequest))
    outcome = write_pareto(request)
    if outcome.references is not None:
        print("references: " + "; ".join(f"{row.name} {getattr(row, SCORE) * 100:.1f}% top-1, "
                                          f"{row.params / 1e6:.2f}M params, {row.flops / 1e9:.2f} GFLOPs"
                                          for row in outcome.references.itertuples(index=False)))
    elif request.reference:
        print(f"references left out: their accuracies are ImageNet top-1, not comparable with "
              f"{outcome.dataset or 'an unknown dataset'}")
    scored = (f"{outcome.scored} scored trials (stopped ones at fewer epochs)" if outcome.include_stopped
              else f"{outcome.full_fidelity} trials scored at {outcome.epochs or 'all'} epochs")
    print(f"front over {' + '.join(outcome.costs)}: {len(outcome.front)} of {scored}; "
          f"wrote {', '.join(path.name for path in outcome.written)} to {outcome.out}")
    return 0
