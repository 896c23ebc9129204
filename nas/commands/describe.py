"""`nas describe PRESET|arch.json|RUN:TRIAL`: one architecture with its fields, parameters and FLOPs, counted at
the data shape it records (or is given), and saying which."""
from __future__ import annotations

import argparse

from nas.settings.flags import add_flag, add_size_arguments, path_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("arch", type=path_argument, metavar="PRESET|arch.json|RUN:TRIAL",
                        help="a preset name, an architecture JSON file, or a run's trial (results/run:t0016)")
    add_size_arguments(parser)
    add_flag(parser, "--patch-size", "overrides the architecture's (e.g. 2 for 8 px images)")
    parser.add_argument("--json", action="store_true", help="print the architecture as JSON only")


def run(args: argparse.Namespace) -> int:
    from nas.runs.archs import describe_arch
    from qkvnas_core.units import format_count

    described = describe_arch(args.arch, img_size=args.img_size, in_chans=args.in_chans,
                              num_classes=args.num_classes, patch_size=args.patch_size)
    if args.json:
        print(described.to_json())
        return 0
    arch, shape = described.arch, described.shape
    params, flops = described.params, described.flops
    assumed = " (assumed)" if described.assumed else ""
    print(f"arch      {arch.arch_id}  {arch.summary()}")
    print(f"structure {arch.structure}")
    if described.timm_reference:
        print(f"timm      {described.timm_reference} (same parameters, keys and outputs)")
    channels = "channel" if shape.in_chans == 1 else "channels"
    print(f"shape     {shape.img_size} px, {shape.in_chans} {channels}, {shape.num_classes} classes "
          f"({described.shape_source})")
    print(f"params    {params:,} ({format_count(params)}) at {shape.num_classes} classes{assumed}")
    print(f"FLOPs     {flops:,} ({flops / 1e9:.3f} G, {flops / 2e9:.3f} G multiply-adds) at {shape.img_size} px"
          f"{assumed}")
    print(described.to_json())
    return 0
