"""`nas describe PRESET|arch.json`: one architecture with its fields, parameters and FLOPs."""
from __future__ import annotations

import argparse

from nas.flags import add_size_arguments, path_argument, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("arch", type=path_argument, metavar="PRESET|arch.json",
                        help="a preset name or an architecture JSON file")
    add_size_arguments(parser)
    parser.add_argument("--patch-size", type=positive_int, default=None, metavar="P",
                        help="override the architecture's patch size (e.g. 2 for 8 px images)")
    parser.add_argument("--json", action="store_true", help="print the architecture as JSON only")


def run(args: argparse.Namespace) -> int:
    from qkvnas_core.units import format_count
    from search_spaces.build import timm_reference_name
    from search_spaces.cost import count_flops, count_params
    from search_spaces.presets import load_arch, shape_of

    arch = load_arch(args.arch)
    shape = shape_of(args.arch, args.img_size, args.num_classes, args.in_chans)
    if args.patch_size is not None:
        arch = arch.replace(patch_size=args.patch_size)
    if args.json:
        print(arch.to_json(indent=2))
        return 0
    params = count_params(arch, shape)
    flops = count_flops(arch, shape)
    print(f"arch      {arch.arch_id}  {arch.summary()}")
    print(f"structure {arch.structure}")
    reference = timm_reference_name(arch)
    if reference:
        print(f"timm      {reference} (same parameters, keys and outputs)")
    print(f"params    {params:,} ({format_count(params)}) at {shape.num_classes} classes")
    print(f"FLOPs     {flops / 1e9:.3f} G ({flops / 2e9:.3f} G multiply-adds) at {shape.img_size} px")
    print(arch.to_json(indent=2))
    return 0
