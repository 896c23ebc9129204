"""`nas pareto results/<run>`: the run's Pareto front as pareto.csv and pareto.png / pareto.svg."""
from __future__ import annotations

import argparse

from nas.settings.flags import add_flag, path_argument

from search_spaces.model_tools.device import DEFAULT_DEVICE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=path_argument, help="run folder (results/<run>) or a run name under results/")
    parser.add_argument("--cost", action="append", metavar="COST",
                        help="params, flops or latency; repeat or comma-separate for one front over several "
                             "(default params)")
    parser.add_argument("--reference", action="store_true",
                        help="mark XCiT-N12, the paper's F-SNE and DeiT-Tiny (ImageNet runs only)")
    parser.add_argument("--measure-latency", action="store_true",
                        help="time each front member and add latency_ms / throughput to pareto.csv")
    add_flag(parser, "--device", "latency is measured there", default=DEFAULT_DEVICE)
    add_flag(parser, "--include-stopped")
    add_flag(parser, "--out", "the files go there (default: the run folder)")


def run(args: argparse.Namespace) -> int:
    from nas.settings.objectives import SCORE
    from nas.runs.pareto import parse_costs, write_pareto
    from nas.runs.results import find_run

    outcome = write_pareto(find_run(args.run), costs=parse_costs(args.cost), reference=args.reference,
                           measure_latency=args.measure_latency, device=args.device, out_dir=args.out,
                           include_stopped=args.include_stopped)
    if outcome.references is not None:
        print("references: " + "; ".join(f"{row.name} {getattr(row, SCORE) * 100:.1f}% top-1, "
                                          f"{row.params / 1e6:.2f}M params, {row.flops / 1e9:.2f} GFLOPs"
                                          for row in outcome.references.itertuples(index=False)))
    elif args.reference:
        print(f"references left out: their accuracies are ImageNet top-1, not comparable with "
              f"{outcome.dataset or 'an unknown dataset'}")
    scored = (f"{outcome.scored} scored trials (stopped ones at fewer epochs)" if outcome.include_stopped
              else f"{outcome.full_fidelity} trials scored at {outcome.epochs or 'all'} epochs")
    print(f"front over {' + '.join(outcome.costs)}: {len(outcome.front)} of {scored}; "
          f"wrote {', '.join(path.name for path in outcome.written)} to {outcome.out}")
    return 0
