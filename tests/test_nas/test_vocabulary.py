"""One vocabulary across the commands: a table of every command's flags, read from the parsers themselves, in which
a flag that several commands take means one thing and takes one kind of value everywhere."""
from __future__ import annotations

import argparse
import dataclasses

import pytest

from nas.cli import COMMANDS, build_parser
from nas.settings.flags import VOCABULARY
from trainers.recipe import Recipe

# Where a flag's value is the command's own kind of thing, its meaning staying the one of the vocabulary.
OTHER_VALUE = {
    ("--baseline", "retrain"): "an architecture, trained under the same recipe",
    ("--baseline", "transfer"): "a checkpoint, fine-tuned as the others",
    ("--data-dir", "transfer"): "one folder per dataset (NAME=DIR), repeatable",
}
# `nas arch` writes one file: its --out is that file, not an output folder.
OWN_MEANING = {("--out", "arch")}
RECIPE_COMMANDS = ("train", "search", "retrain", "transfer")


def visible_flags(command: str) -> dict[str, argparse.Action]:
    """The flags `nas COMMAND --help` shows, by their first option string (--ema for --ema/--no-ema; hidden old
    spellings left out)."""
    parser = build_parser(command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {action.option_strings[0]: action for action in sub._actions
            if action.option_strings and action.help != argparse.SUPPRESS and action.dest != "help"}


@pytest.fixture(scope="module")
def table() -> dict[str, dict[str, argparse.Action]]:
    """flag -> {command: its action}, over every command."""
    rows: dict[str, dict[str, argparse.Action]] = {}
    for command in COMMANDS:
        for flag, action in visible_flags(command).items():
            rows.setdefault(flag, {})[command] = action
    return rows


def recipe_field_flags() -> set[str]:
    return {"--" + field.name.replace("_", "-") for field in dataclasses.fields(Recipe) if field.name != "name"}


def value_kind(action: argparse.Action) -> tuple:
    """What a flag takes: nothing (a switch), or its type, metavar and how often."""
    if action.nargs == 0:
        return ("switch",)
    return (action.type, action.metavar, action.nargs, type(action).__name__)


def test_a_flag_of_several_commands_has_one_meaning_and_one_kind_of_value(table):
    shared = {flag: actions for flag, actions in table.items() if len(actions) > 1}
    assert len(shared) >= 20, sorted(shared)
    for flag, actions in shared.items():
        if flag in recipe_field_flags():  # generated from the Recipe dataclass: one text and type everywhere
            assert len({(action.help, value_kind(action)) for action in actions.values()}) == 1, flag
            continue
        assert flag in VOCABULARY, f"{flag} is taken by {sorted(actions)} but is not a word of nas.settings.flags.VOCABULARY"
        word = VOCABULARY[flag]
        for command, action in actions.items():
            if (flag, command) in OWN_MEANING:
                continue
            meaning, rest = action.help[:len(word.meaning)], action.help[len(word.meaning):]
            assert meaning == word.meaning and rest[:2] in ("", "; ", " ("), f"nas {command} {flag}: {action.help!r}"
            if (flag, command) not in OTHER_VALUE:
                expected = ("switch",) if word.metavar is None else (word.type, word.metavar, None, "_StoreAction")
                assert value_kind(action) == expected, f"nas {command} {flag}: {value_kind(action)}"


def test_a_default_a_flag_has_is_the_one_its_help_states(table):
    for flag, actions in table.items():
        for command, action in actions.items():
            if action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
                continue
            shown = f"{action.default:g}" if isinstance(action.default, float) else str(action.default)
            assert shown in action.help, f"nas {command} {flag}: default {action.default} not in {action.help!r}"


def test_no_two_words_share_a_meaning():
    meanings = [word.meaning for word in VOCABULARY.values()]
    assert len(set(meanings)) == len(meanings)


def test_train_search_retrain_and_transfer_take_the_same_recipe_flags(table):
    expected = {"--recipe", *recipe_field_flags()}
    for command in RECIPE_COMMANDS:
        assert expected <= set(visible_flags(command)), (command, expected - set(visible_flags(command)))
    assert "--img-size" in table and "train" in table["--img-size"]


@pytest.mark.parametrize("old, new", [("--cpus-per-trial", "--cpus-per-model"),
                                      ("--gpus-per-trial", "--gpus-per-model")])
def test_an_old_spelling_still_reads_but_is_not_shown(old, new):
    parser = build_parser("search")
    assert vars(parser.parse_args(["search", old, "0.5"])) == vars(parser.parse_args(["search", new, "0.5"]))
    assert old not in parser.format_help() and old not in visible_flags("search")


def test_search_usage_shows_what_it_requires(capsys):
    with pytest.raises(SystemExit):
        build_parser("search").parse_args(["search", "--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert "--budget PARAMS" in usage and "[--budget" not in usage
    assert "--config FILE" in usage and "RUN --resume" in usage
