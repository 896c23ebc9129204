"""The `nas` command: one sub-command per job, each a module of `nas.commands`.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`. Only the chosen command's module
is imported, so `nas --help` starts without torch or Ray. Bad input raises `UsageError`, which becomes one
line on stderr and exit code 2. The libraries log their lines (qkvnas_core.log): for the command's duration each
INFO line is printed on stdout (or shown by the module's VIEW, a logging.Handler made with stdout: `nas search`
draws a live bar), each warning or error on stderr as `nas COMMAND: error: ...`.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys

from qkvnas_core.errors import UsageError
from qkvnas_core.log import handled_by, line

# libgomp's idle threads spin 300,000 rounds before they sleep; beside another CPU job that spinning takes the cores
# the other needs (a second training ran 7.4x slower, not 2x). 3,000 rounds: 2.2x, and one job alone about 10%
# slower (benchmarks/cpu_sharing.py). Read when torch loads, so set before any command imports it; yours wins.
THREAD_ENV = {"GOMP_SPINCOUNT": "3000"}

COMMANDS: dict[str, str] = {
    "search": "search the QKV-embedding space under a parameter budget",
    "pareto": "draw accuracy against cost for a run and mark the Pareto front",
    "show": "summarise a run, or list the runs under results/",
    "train": "train one architecture (preset or arch.json) on a dataset",
    "retrain": "retrain a run's winners with a full recipe and test them once",
    "transfer": "fine-tune a retrained checkpoint on the transfer datasets",
    "export": "export a checkpoint as safetensors + arch JSON, or ONNX",
    "describe": "print an architecture with its parameters and FLOPs",
    "arch": "write one trial's architecture JSON (with its data shape) out of a run",
    "presets": "list the presets with their parameters and FLOPs",
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and exit code 2 (argparse's own code)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


class _Problems(logging.Handler):
    """A library's warning or error on stderr, one line: `nas retrain: error: <model>: <why>`."""

    def __init__(self, command: str) -> None:
        super().__init__(logging.WARNING)
        self.command = command

    def emit(self, record: logging.LogRecord) -> None:
        print(f"nas {self.command}: {record.levelname.lower()}: {record.getMessage()}", file=sys.stderr, flush=True)


class _Lines(logging.Handler):
    """A library's line on stdout, as it was logged. Writes are not guarded (Handler.handleError): a closed pipe
    reaches `main`, which stops quietly."""

    def emit(self, record: logging.LogRecord) -> None:
        print(line(record), flush=True)


def _below_warning(record: logging.LogRecord) -> bool:
    return record.levelno < logging.WARNING


@contextlib.contextmanager
def _shown(args: argparse.Namespace):
    """The libraries' lines shown while the command runs: INFO on stdout (through its VIEW where it has one),
    warnings and errors on stderr."""
    make_view = getattr(args, "view", None)
    view = make_view(sys.stdout) if make_view is not None else _Lines()
    view.addFilter(_below_warning)
    try:
        with handled_by(view), handled_by(_Problems(args.command), logging.WARNING):
            yield
    finally:
        view.close()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command listed; only `command` (if any) gets its module imported and its arguments added."""
    parser = _Parser(prog="nas", description="qkvnas: search how tiny vision transformers compute their queries, "
                                             "keys and values, under a hard parameter budget.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    for name, help_text in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(f"nas.commands.{name}")
            module.add_arguments(sub)
            sub.set_defaults(handler=module.run, view=getattr(module, "VIEW", None))
    return parser


def main(argv: list[str] | None = None) -> int:
    for name, value in THREAD_ENV.items():
        os.environ.setdefault(name, value)
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    try:
        with _shown(args):
            return int(args.handler(args) or 0)
    except UsageError as error:
        print(f"nas {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"nas {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`nas ... | head`): stop writing, quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as error:
        # The system refused a file operation (a read-only or missing folder, a full disk): say which path.
        where = f"{error.filename}: " if error.filename else ""
        print(f"nas {args.command}: error: {where}{error.strerror or error}; expected a writable folder",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
