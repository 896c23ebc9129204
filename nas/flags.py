"""Command-line flags: the argparse types every command's values go through, the flags more than one command
takes (model sizes, the recipe flags), comma-separated lists.

Every value is checked where it is parsed: a number of the wrong kind, out of range or not finite, a path no file
system holds, a run name that is not one folder name, an output folder that is a file, is argparse's one line
naming the flag, exit code 2. Imports nothing heavy at module level, so building the parser stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

from qkvnas_core.errors import UsageError
from qkvnas_core.files import user_path
from qkvnas_core.units import parse_count

RECIPE_DEST = "recipe_field_"
METAVARS = {"int": "N", "float": "F", "str": "TEXT"}
# Counts a flag takes (trials, epochs, sizes) stay within 32 bits: far beyond any run, and what torch indexes.
MAX_COUNT = 2**31 - 1
# numpy seeds its generator with at most 32 bits.
MAX_SEED = 2**32 - 1


def argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """argparse `type=` from a parser raising UsageError: argparse reports it as one line naming the flag, exit
    code 2 (and names the type by the parser's name)."""

    @functools.wraps(parse)
    def parse_argument(text: str) -> Any:
        try:
            return parse(text)
        except UsageError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return parse_argument


def _integer(text: str, lowest: int, highest: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{text[:40]!r}: expected {expected}") from None
    if not lowest <= value <= highest:
        bound = f" (at most {highest})" if value > highest else ""
        raise UsageError(f"{text.strip()[:40]}: expected {expected}{bound}")
    return value


def _number(text: str, accepts: Callable[[float], bool], expected: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{text[:40]!r}: expected {expected}") from None
    if not math.isfinite(value) or not accepts(value):
        raise UsageError(f"{value:g}: expected {expected}")
    return value


@argument_type
def count_argument(text: str) -> int:
    """A count written as people write them: 3.1M, 750K, 3.1e6."""
    return parse_count(text)


@argument_type
def positive_int(text: str) -> int:
    return _integer(text, 1, MAX_COUNT, "a positive integer")


@argument_type
def integer(text: str) -> int:
    return _integer(text, -MAX_COUNT, MAX_COUNT, "an integer")


@argument_type
def seed_argument(text: str) -> int:
    return _integer(text, 0, MAX_SEED, "a non-negative integer")


@argument_type
def fraction(text: str) -> float:
    """A share strictly between 0 and 1 (a validation split)."""
    return _number(text, lambda value: 0 < value < 1, "a number between 0 and 1")


@argument_type
def share(text: str) -> float:
    """A share above 0, at most 1 (a fraction of the training set)."""
    return _number(text, lambda value: 0 < value <= 1, "a number above 0, at most 1")


@argument_type
def positive_float(text: str) -> float:
    return _number(text, lambda value: value > 0, "a positive number")


@argument_type
def non_negative_float(text: str) -> float:
    return _number(text, lambda value: value >= 0, "a number of 0 or more")


@argument_type
def finite_float(text: str) -> float:
    return _number(text, lambda value: True, "a finite number")


@argument_type
def path_argument(text: str) -> str:
    """A path (of a file or folder that may not exist yet): one a file system could hold."""
    user_path(text, "path")
    return text


@argument_type
def output_folder(text: str) -> str:
    """A folder to write into: new, or an existing folder; an existing file is refused."""
    path = user_path(text, "folder")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{text!r}: an existing file; expected a folder to write into (new or existing)")
    return text


@argument_type
def output_file(text: str) -> str:
    """A file to write: new, or an existing file it replaces; an existing folder is refused."""
    if user_path(text, "file").is_dir():
        raise UsageError(f"{text!r}: an existing folder; expected a file to write (new or existing)")
    return text


@argument_type
def trial_argument(text: str) -> int:
    """A trial of a run, as trials.csv names it (t0016) or by its number (16): its number."""
    from nas.archs import parse_trial_number

    return parse_trial_number(text)


@argument_type
def run_name(text: str) -> str:
    """A run's name: one folder name under the results folder (no separator, not . or ..)."""
    if not text.strip() or text in (".", "..") or "/" in text or "\\" in text:
        raise UsageError(f"{text!r}: expected a run name, one folder name such as qkv-digits-1 (no '/', not empty)")
    user_path(text, "run name")
    return text


@argument_type
def space_argument(text: str) -> str:
    """A space: a built-in name (checked when the space loads) or path/to/file.py:function of an existing file."""
    if ":" in text:
        file, _, function = text.rpartition(":")
        if not function.isidentifier() or not user_path(file, "space file").is_file():
            raise UsageError(f"{text!r}: expected path/to/file.py:function of an existing file, or a built-in space")
    return text


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """The data shape a model is counted at; None: a preset's own (search_spaces.presets.shape_of)."""
    parser.add_argument("--num-classes", type=positive_int, default=None, metavar="N",
                        help="classifier size (default: a preset's own, else 1000)")
    parser.add_argument("--img-size", type=positive_int, default=None, metavar="S",
                        help="image side in px (default: a preset's own, else 224)")
    parser.add_argument("--in-chans", type=positive_int, default=None, metavar="C", help="image channels (default 3)")


def split_list(values: list[str] | None) -> list[str]:
    """['t1,t2', 't3'] -> ['t1', 't2', 't3']."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _optional(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its error message
    return parse


def add_recipe_arguments(parser: argparse.ArgumentParser, default_recipe: str | None, default_text: str = "") -> None:
    """--recipe NAME plus one flag per Recipe field (--epochs, --batch-size, --ema/--no-ema, ...), generated from
    the dataclass and its fields' help, so a new field gets its flag; flags not given keep the named recipe's."""
    from trainers.recipe import RECIPES, Recipe

    group = parser.add_argument_group("recipe", "start from --recipe NAME; each flag below overrides one field "
                                                 f"(values shown as {' / '.join(RECIPES)})")
    group.add_argument("--recipe", default=default_recipe, metavar="NAME",
                       help=f"{', '.join(RECIPES)} (default {default_text or default_recipe})")
    converters: dict[str, Callable[[str], Any]] = {"int": integer, "float": finite_float, "str": str}
    for field in dataclasses.fields(Recipe):
        if field.name == "name":
            continue
        kind = str(field.type).replace(" ", "")
        defaults = " / ".join(str(getattr(recipe, field.name)) for recipe in RECIPES.values())
        text = f"{field.metadata['help']} [{defaults}]".replace("%", "%%")
        flag = "--" + field.name.replace("_", "-")
        dest = RECIPE_DEST + field.name
        if kind == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, dest=dest,
                               help=text)
            continue
        base, _, optional = kind.partition("|")
        convert = converters[base]
        if optional:
            convert, text = _optional(convert), text + " (none to disable)"
        group.add_argument(flag, type=convert, default=argparse.SUPPRESS, dest=dest, metavar=METAVARS[base],
                           help=text)


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe fields given on the command line (the overrides of the named recipe)."""
    return {name[len(RECIPE_DEST):]: value for name, value in vars(args).items() if name.startswith(RECIPE_DEST)}
