"""`nas presets`: every named architecture with its parameters and FLOPs (`--markdown` for docs/presets.md).

Each preset is counted at the data shape it was published at (ImageNet's 224 px and 1,000 classes, ViX's
32 px CIFAR-10, mLiT's 36 px CIFAR-100) unless --img-size / --num-classes / --in-chans say otherwise.
"""
from __future__ import annotations

import argparse

from nas.settings.flags import add_size_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_size_arguments(parser)
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table (docs/presets.md)")


def run(args: argparse.Namespace) -> int:
    from qkvnas_core.errors import UsageError
    from search_spaces.cost import count_flops, count_params
    from search_spaces.presets import PRESET_NOTES, PRESETS, shape_of

    rows = []
    for name, arch in PRESETS.items():
        shape = shape_of(name, args.img_size, args.num_classes, args.in_chans)
        try:
            params = count_params(arch, shape)
            flops = count_flops(arch, shape)
        except UsageError as error:
            raise UsageError(f"preset {name}: {error}") from None
        rows.append((name, f"{shape.img_size} px, {shape.num_classes}", params, flops, arch.structure,
                     PRESET_NOTES[name]))
    if args.markdown:
        flags = " ".join(f"--{flag} {value}" for flag, value in (("img-size", args.img_size),
                         ("num-classes", args.num_classes), ("in-chans", args.in_chans)) if value is not None)
        print(f"Presets with every parameter counted (the budget's count), at the data shape each was published "
              f"at unless given. Made by `nas presets --markdown{' ' + flags if flags else ''}`.\n")
        print("| preset | at (px, classes) | params | GFLOPs | GMACs | QKV structure | what it is |")
        print("|---|---|---:|---:|---:|---|---|")
        for name, at, params, flops, structure, note in rows:
            print(f"| `{name}` | {at} | {params:,} | {flops / 1e9:.3f} | {flops / 2e9:.3f} | {structure} | {note} |")
        return 0
    print(f"{'preset':<15} {'at':<14} {'params':>11} {'GFLOPs':>7} {'GMACs':>6}  structure  note")
    for name, at, params, flops, structure, note in rows:
        print(f"{name:<15} {at:<14} {params:>11,} {flops / 1e9:>7.3f} {flops / 2e9:>6.3f}  {structure:<9}  {note}")
    return 0
