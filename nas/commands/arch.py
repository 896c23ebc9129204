"""`nas arch RUN TRIAL`: one trial's architecture JSON, with the data shape its run searched at."""
from __future__ import annotations

import argparse
import sys

from nas.settings.flags import output_file, path_argument, trial_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=path_argument, help="run folder (results/<run>) or a run name under results/")
    parser.add_argument("trial", type=trial_argument, metavar="TRIAL", help="trial id (t0016) or number (16)")
    parser.add_argument("--out", type=output_file, default=None, metavar="FILE",
                        help="write the JSON to FILE (default: standard output)")


def run(args: argparse.Namespace) -> int:
    from nas.runs.archs import trial_arch
    from nas.runs.results import RunFolder
    from qkvnas_core.files import write_text_atomic

    found = trial_arch(args.run, args.trial)
    if found.shape is None:
        print(f"note: {RunFolder(found.run).settings_file} records no data shape (img_size, in_chans, "
              "num_classes): the JSON has none", file=sys.stderr)
    if args.out is None:
        print(found.to_json(), end="")
        return 0
    write_text_atomic(args.out, found.to_json())
    print(f"wrote {args.out}: trial {found.trial_id} of {found.run}, {found.arch.arch_id}")
    return 0
