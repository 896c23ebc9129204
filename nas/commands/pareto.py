"""`nas pareto results/<run>`: the run's Pareto front as pareto.csv and pareto.png / pareto.svg."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder (results/<run>) or a run name under results/")
    parser.add_argument("--cost", action="append", metavar="COST",
                        help="params, flops or latency; repeat or comma-separate for one front over several "
                             "(default params)")
    parser.add_argument("--reference", action="store_true",
                        help="mark XCiT-N12, the paper's F-SNE and DeiT-Tiny (ImageNet runs only)")
    parser.add_argument("--measure-latency", action="store_true",
                        help="time each front member and add latency_ms / throughput to pareto.csv")
    parser.add_argument("--device", default="auto", help="where latency is measured: auto (default), cpu, cuda or "
                                                         "cuda:N")
    parser.add_argument("--out", metavar="DIR", help="folder for the files (default: the run folder)")


def run(args: argparse.Namespace) -> int:
    from nas.pareto import parse_costs, write_pareto
    from nas.results import find_run

    write_pareto(find_run(args.run), costs=parse_costs(args.cost), reference=args.reference,
                 measure_latency=args.measure_latency, device=args.device, out_dir=args.out)
    return 0
