"""Command-line flags more than one command takes: counts, model sizes, the recipe flags, comma-separated lists.

Imports nothing heavy at module level, so building the parser stays fast.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

from qkvnas_core.errors import UsageError
from qkvnas_core.units import parse_count

RECIPE_DEST = "recipe_field_"
METAVARS = {"int": "N", "float": "F", "str": "TEXT"}


def count_argument(text: str) -> int:
    """argparse `type=` for counts (3.1M): a bad one is reported by argparse as one line with exit code 2."""
    try:
        return parse_count(text)
    except UsageError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """The data shape a model is counted at; None: a preset's own (search_spaces.presets.shape_of)."""
    parser.add_argument("--num-classes", type=int, default=None, metavar="N",
                        help="classifier size (default: a preset's own, else 1000)")
    parser.add_argument("--img-size", type=int, default=None, metavar="S",
                        help="image side in px (default: a preset's own, else 224)")
    parser.add_argument("--in-chans", type=int, default=None, metavar="C", help="image channels (default 3)")


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
    converters: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}
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
