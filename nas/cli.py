"""The `nas` command: one sub-command per job, each living in its own module.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`. Bad input raises
`UsageError`, which becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from core.errors import UsageError

COMMANDS: dict[str, tuple[str, str]] = {
    "search": ("nas.search_cmd", "search the QKV-embedding space under a parameter budget"),
    "pareto": ("nas.pareto_cmd", "draw accuracy against cost for a run and mark the Pareto front"),
    "show": ("nas.show_cmd", "summarise a run, or list the runs under results/"),
    "train": ("nas.train_cmd", "train one architecture (preset or arch.json) on a dataset"),
    "retrain": ("nas.retrain_cmd", "retrain a run's winners with a full recipe and test them once"),
    "transfer": ("nas.transfer_cmd", "fine-tune a retrained checkpoint on the transfer datasets"),
    "export": ("nas.export_cmd", "export a checkpoint as safetensors + arch JSON, or ONNX"),
    "describe": ("nas.describe_cmd", "print an architecture with its parameters and FLOPs"),
    "presets": ("nas.describe_cmd", "list the presets with their parameters and FLOPs"),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2 (argparse's own code)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="nas", description="qkvnas: search how tiny vision transformers compute their queries, "
                                             "keys and values, under a hard parameter budget.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for name, (module_name, help_text) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        add = getattr(module, f"add_{name}_arguments", None) or module.add_arguments
        add(sub)
        sub.set_defaults(module=module, command_name=name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run = getattr(args.module, f"run_{args.command_name}", None) or args.module.run
    try:
        return int(run(args) or 0)
    except UsageError as error:
        print(f"nas {args.command_name}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nas {args.command_name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
