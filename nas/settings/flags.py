"""Command-line flags: the argparse types every command's values go through, the one vocabulary of the flags more
than one command takes (VOCABULARY, add_flag; the recipe flags), comma-separated lists.

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
from dataclasses import dataclass
from typing import Any, Protocol

from qkvnas_core.errors import UsageError
from qkvnas_core.files import user_path
from qkvnas_core.units import parse_count
from nas.settings.trial_ids import parse_trial_number
from trainers.recipe import RECIPES, Recipe
from search_spaces.model_tools.device import DEVICE_HELP
from trainers.holdout import TRAIN_FRACTION, VAL_FRACTION

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


@functools.cache  # one parser per bound, so that every flag with the same bound shares it
def integer_at_least(lowest: int) -> Callable[[str], int]:
    @argument_type
    def at_least(text: str) -> int:
        return _integer(text, lowest, MAX_COUNT, f"an integer of at least {lowest}")

    at_least.__name__ = f"integer_at_least_{lowest}"
    return at_least


@functools.cache
def choice_argument(choices: tuple[str, ...]) -> Callable[[str], str]:
    """One of `choices`, as argparse's choices= reads it, refused with the parsers' message."""
    @argument_type
    def choice(text: str) -> str:
        if text not in choices:
            raise UsageError(f"{text[:40]!r}: expected one of {', '.join(choices)}")
        return text

    return choice


@argument_type
def seed_argument(text: str) -> int:
    return _integer(text, 0, MAX_SEED, "a non-negative integer")


@argument_type
def seeds_argument(text: str) -> int | tuple[int, ...]:
    """How many seeds (5: --seed, --seed + 1, ... --seed + 4) or which (0,3,7; one seed alone as 7,)."""
    if "," not in text:
        return _integer(text, 1, MAX_COUNT, "a number of seeds such as 5, or seeds such as 0,3,7")
    seeds = tuple(_integer(part, 0, MAX_SEED, "seeds such as 0,3,7 (non-negative integers)")
                  for part in split_list([text]))
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"{text.strip()[:40]!r}: expected distinct seeds such as 0,3,7")
    return seeds


def parse_proxy(text: str, also: str = "") -> str:
    """`proxy:NAME` with NAME one of search_spaces.proxies (imported here, when a proxy is given: it loads torch)."""
    from search_spaces.proxies import PROXIES

    kind, _, name = text.partition(":")
    if kind != "proxy" or name not in PROXIES:
        raise UsageError(f"{text[:40]!r}: expected {also}proxy:NAME with NAME one of {', '.join(PROXIES)}")
    return text


def parse_startup(text: str) -> str | None:
    """`random` (None: the sampler's own first draws) or `proxy:NAME`."""
    if text == "random":
        return None
    return parse_proxy(text, "random or ")


startup_argument = argument_type(parse_startup)
proxy_argument = argument_type(parse_proxy)


def onnx_opset(text: str) -> int:
    """An ONNX opset torch's exporter supports (search_spaces.model_tools.export imported here, when the flag is
    given: it loads torch)."""
    from search_spaces.model_tools.export import check_opset

    opset = _integer(text, 1, MAX_COUNT, "a positive integer")
    check_opset(opset)
    return opset


@argument_type
def comma_list(text: str) -> list[str]:
    """'t1,t2' -> ['t1', 't2']."""
    return split_list([text])


@argument_type
def fraction(text: str) -> float:
    """A validation share: trainers.holdout's VAL_FRACTION range."""
    return _number(text, VAL_FRACTION.holds, VAL_FRACTION.expected)


@argument_type
def share(text: str) -> float:
    """A share of the training set: trainers.holdout's TRAIN_FRACTION range."""
    return _number(text, TRAIN_FRACTION.holds, TRAIN_FRACTION.expected)


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


# A trial of a run, as trials.csv names it (t0016) or by its number (16): its number.
trial_argument = argument_type(parse_trial_number)


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


@dataclass(frozen=True)
class Word:
    """A flag several commands take: what it means in every one of them (each help starts with `meaning`; a
    command adds what differs after '; ', such as its default) and the value it takes."""

    meaning: str
    type: Callable[[str], Any] | None = None  # argparse's type; None: the text as given
    metavar: str | None = None  # None: a switch


DATASETS_HELP = ("digits or mnist5k (built in), cifar10, cifar100, stl10, stanford_cars, imagenet, imagenet16, imagenet32, "
                 "imagenet64, folder, synthetic")

# The one vocabulary of the commands: a flag that more than one command takes is added from here (tests/
# test_vocabulary.py reads every parser and refuses a word with two meanings).
VOCABULARY: dict[str, Word] = {
    "--dataset": Word(f"dataset: {DATASETS_HELP}", None, "NAME"),
    "--data-dir": Word("folder holding the dataset's files in its own on-disk format", path_argument, "DIR"),
    "--download": Word("download the dataset into --data-dir if it is missing"),
    "--img-size": Word("image side in px", positive_int, "PX"),
    "--image-cache": Word("read image files once into the image cache (decoded at the run's size into a memory-mapped "
                          "array every process on the machine shares) instead of decoding them every step; "
                          "docs/datasets.md"),
    "--cache-dir": Word("folder of the image cache", output_folder, "DIR"),
    "--num-classes": Word("classifier size", positive_int, "N"),
    "--in-chans": Word("image channels", positive_int, "C"),
    "--patch-size": Word("patch size", positive_int, "P"),
    "--val-fraction": Word("share of the training set held out for validation", fraction, "F"),
    "--split-seed": Word("seed of the validation split", seed_argument, "S"),
    "--seed": Word("seed of initialisation, data order and augmentation", seed_argument, "S"),
    "--out": Word("output folder", output_folder, "DIR"),
    "--resume": Word("continue where an interrupted run stopped: finished work is kept, never redone"),
    "--device": Word(f"torch device: {DEVICE_HELP}", None, "DEVICE"),
    "--compile": Word("torch.compile the models (on CPU, mlit-xxs on mnist5k: first epoch 287 s instead of 14.6 s, "
                      "later ones no faster; on CUDA not measured yet)"),
    "--address": Word("Ray cluster to run on: auto, ray://host:10001 or local", None, "ADDR"),
    "--cpus-per-model": Word("CPUs per model trained at once (its Ray task's CPUs and torch threads)",
                             positive_float, "C"),
    "--gpus-per-model": Word("GPUs per model trained at once (0.25 packs 4 on a GPU)", non_negative_float, "G"),
    "--include-stopped": Word("let trials ASHA stopped early (scored after fewer epochs) onto the front"),
    "--baseline": Word("a reference model, marked baseline in the table (repeatable)", path_argument, "MODEL"),
    "--results-dir": Word("folder holding the runs", output_folder, "DIR"),
    "--recipe": Word("training recipe", None, "NAME"),
}


class ArgumentContainer(Protocol):
    """What flags are added to: a parser or one of its argument groups (argparse names no public type for both)."""

    def add_argument(self, *names: str, **options: Any) -> argparse.Action: ...


def add_flag(parser: ArgumentContainer, flag: str, detail: str = "", **options: Any) -> argparse.Action:
    """`flag` as VOCABULARY defines it; `detail` (what this command adds: its default, its use) follows the
    meaning; `options` are argparse's (default, action="append", ...)."""
    word = VOCABULARY[flag]
    text = f"{word.meaning}; {detail}" if detail else word.meaning
    if word.metavar is None:
        return parser.add_argument(flag, action="store_true", help=text, **options)
    return parser.add_argument(flag, **{"type": word.type, "metavar": word.metavar, "help": text, **options})


def add_hidden_alias(parser: ArgumentContainer, alias: str, action: argparse.Action) -> None:
    """An old spelling of `action`'s flag, still read but not shown in --help."""
    parser.add_argument(alias, type=action.type, dest=action.dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """The data shape a model is counted at; None: a preset's own (search_spaces.presets.shape_of)."""
    add_flag(parser, "--num-classes", "default: a preset's own, else 1000")
    add_flag(parser, "--img-size", "the model is counted at it (default: a preset's own, else 224)")
    add_flag(parser, "--in-chans", "default 3")


def split_list(values: list[str] | None) -> list[str]:
    """['t1,t2', 't3'] -> ['t1', 't2', 't3']."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


@functools.cache  # one type per converter: every command's --grad-clip takes the same
def _optional(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its error message
    return parse


def add_recipe_arguments(parser: argparse.ArgumentParser, default_recipe: str | None, default_text: str = "",
                         note: str = "") -> None:
    """--recipe NAME plus one flag per Recipe field (--epochs, --batch-size, --ema/--no-ema, ...), generated from
    the dataclass and its fields' help, so a new field gets its flag; flags not given keep the named recipe's.
    The one set of recipe flags of `train`, `search`, `retrain` and `transfer`; `note` adds what differs in one."""
    group = parser.add_argument_group("recipe", "start from --recipe NAME; each flag below overrides one field "
                                                 f"(values shown as {' / '.join(RECIPES)}){'; ' + note if note else ''}")
    add_flag(group, "--recipe", f"{', '.join(RECIPES)} (default {default_text or default_recipe})",
             default=default_recipe)
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
            convert, text = _optional(convert), f"{text} ({field.metadata.get('none', 'none to disable')})"
        group.add_argument(flag, type=convert, default=argparse.SUPPRESS, dest=dest, metavar=METAVARS[base],
                           help=text)


def recipe_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe fields given on the command line (the overrides of the named recipe)."""
    return {name[len(RECIPE_DEST):]: value for name, value in vars(args).items() if name.startswith(RECIPE_DEST)}
