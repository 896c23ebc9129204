"""`nas describe` (one architecture) and `nas presets` (all of them), with parameters and FLOPs."""
from __future__ import annotations

import argparse

from nas.budget import format_count


def add_describe_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("arch", metavar="PRESET|arch.json", help="a preset name or an architecture JSON file")
    _add_size_arguments(parser)
    parser.add_argument("--patch-size", type=int, default=None, metavar="P",
                        help="override the architecture's patch size (e.g. 2 for 8 px images)")
    parser.add_argument("--json", action="store_true", help="print the architecture as JSON only")


def add_presets_arguments(parser: argparse.ArgumentParser) -> None:
    _add_size_arguments(parser)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (docs/presets.md)")


def _add_size_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-classes", type=int, default=1000, metavar="N", help="classifier size (default 1000)")
    parser.add_argument("--img-size", type=int, default=224, metavar="S", help="image side in px (default 224)")
    parser.add_argument("--in-chans", type=int, default=3, metavar="C", help="image channels (default 3)")


def run_describe(args: argparse.Namespace) -> int:
    from search_spaces.build import timm_reference_name
    from search_spaces.cost import count_flops, count_params
    from search_spaces.presets import load_arch

    arch = load_arch(args.arch)
    if args.patch_size is not None:
        arch = arch.replace(patch_size=args.patch_size)
    if args.json:
        print(arch.to_json(indent=2))
        return 0
    params = count_params(arch, args.num_classes, args.img_size, args.in_chans)
    flops = count_flops(arch, args.num_classes, args.img_size, args.in_chans)
    print(f"arch      {arch.arch_id}  {arch.summary()}")
    print(f"structure {arch.structure}")
    reference = timm_reference_name(arch)
    if reference:
        print(f"timm      {reference} (same parameters, keys and outputs)")
    print(f"params    {params:,} ({format_count(params)}) at {args.num_classes} classes")
    print(f"FLOPs     {flops / 1e9:.3f} G ({flops / 2e9:.3f} G multiply-adds) at {args.img_size} px")
    print(arch.to_json(indent=2))
    return 0


def run_presets(args: argparse.Namespace) -> int:
    from search_spaces.cost import count_flops, count_params
    from search_spaces.presets import PRESET_NOTES, PRESETS

    rows = []
    for name, arch in PRESETS.items():
        params = count_params(arch, args.num_classes, args.img_size, args.in_chans)
        flops = count_flops(arch, args.num_classes, args.img_size, args.in_chans)
        rows.append((name, params, flops, arch.structure, PRESET_NOTES[name]))
    if args.markdown:
        print(f"Presets at {args.img_size} px, {args.num_classes} classes, {args.in_chans} channels. "
              f"Made by `nas presets --markdown --img-size {args.img_size} --num-classes {args.num_classes}`.\n")
        print("| preset | params | GFLOPs | GMACs | QKV structure | what it is |")
        print("|---|---:|---:|---:|---|---|")
        for name, params, flops, structure, note in rows:
            print(f"| `{name}` | {params:,} | {flops / 1e9:.3f} | {flops / 2e9:.3f} | {structure} | {note} |")
        return 0
    print(f"{'preset':<15} {'params':>11} {'GFLOPs':>7} {'GMACs':>6}  structure  note")
    for name, params, flops, structure, note in rows:
        print(f"{name:<15} {params:>11,} {flops / 1e9:>7.3f} {flops / 2e9:>6.3f}  {structure:<9}  {note}")
    return 0
