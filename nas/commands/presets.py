"""`nas presets`: every named architecture with its parameters and FLOPs (`--markdown` for docs/presets.md)."""
from __future__ import annotations

import argparse

from nas.flags import add_size_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_size_arguments(parser)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (docs/presets.md)")


def run(args: argparse.Namespace) -> int:
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
