"""Settings declared once (nas/settings/requests.py): the flags, the API's keywords, the checks and the resumable set all
come from SearchSettings' fields, no other module lists the settings again, and runs written under the older
names still read."""
import argparse
import ast
import json
from pathlib import Path

import pytest

from qkvnas_core.errors import UsageError
from nas.cli import build_parser
from nas.settings.flags import RECIPE_DEST, VOCABULARY
from nas.runs.results import load_settings
from nas.settings.requests import (RENAMED, ExportRequest, ParetoRequest, RetrainRequest, SearchSettings, TrainRequest,
                                   TransferRequest, keyword_parsers, resumable, settings_of)

ROOT = Path(__file__).resolve().parents[2]
# Constants that pick settings to show, in an order of their own.
VIEWS = ("SETTINGS_SHOWN",)
# A literal naming this many settings is a second list of them.
LISTED = 3


def command_actions(command: str) -> dict[str, argparse.Action]:
    parser = build_parser(command)
    sub = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return {action.dest: action for action in sub.choices[command]._actions
            if action.option_strings and action.help != argparse.SUPPRESS and action.dest != "help"}


@pytest.mark.parametrize("command, cls, own", [
    ("search", SearchSettings, {"config", "resume"}),  # what the command does, not what the search is
    ("retrain", RetrainRequest, set()),
    ("transfer", TransferRequest, set()),
    ("train", TrainRequest, set()),
    ("pareto", ParetoRequest, set()),
    ("export", ExportRequest, set()),
])
def test_every_flag_is_a_field_of_its_name(command, cls, own):
    """Besides the recipe fields (Recipe's own flags), each flag sets the field its name spells, and each field
    with a flag has one (a search's epochs is the recipe group's --epochs)."""
    actions = command_actions(command)
    dests = {dest for dest in actions if not dest.startswith(RECIPE_DEST)} - own
    assert dests == set(settings_of(cls)) - {"epochs"}
    for dest in dests:
        assert actions[dest].option_strings[0] == "--" + dest.replace("_", "-")


@pytest.mark.parametrize("cls", [SearchSettings, RetrainRequest, TrainRequest, ParetoRequest, ExportRequest])
def test_no_module_lists_the_settings_again(cls):
    """A literal tuple, list, set or dict in nas/ naming three or more of a command's own settings (those not in
    the shared VOCABULARY, whose words also name table columns) declares them a second time: a resumable list, a
    schema, a flag table. `nas show`'s choice of settings to print is a view, not a declaration."""
    own = {name for name, (item, spec) in settings_of(cls).items() if spec.flag(name) not in VOCABULARY}
    found = []
    for path in (ROOT / "nas").rglob("*.py"):
        if path.relative_to(ROOT) == Path("nas/settings/requests.py"):  # where they are declared
            continue
        tree = ast.parse(path.read_text())
        views = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and any(getattr(target, "id", "") in VIEWS for target in node.targets) for inner in ast.walk(node)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)) or id(node) in views:
                continue
            items = node.keys if isinstance(node, ast.Dict) else node.elts
            listed = {item.value for item in items if isinstance(item, ast.Constant) and item.value in own}
            if len(listed) >= LISTED:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {sorted(listed)}")
    assert not found, found


@pytest.mark.parametrize("name", sorted(settings_of(SearchSettings)))
def test_a_value_the_flag_refuses_the_settings_refuse(name):
    """The check of a typed value is its flag's parser: text the flag refuses, typed as the field is, is refused
    by SearchSettings with the flag named."""
    parse = keyword_parsers(SearchSettings)[name]
    refused = [text for text in ("0", "-1", "1.5", "x", "", "nan", "2", "none") if _refuses(parse, text)]
    for text in refused:
        value = [text] if name in ("objectives", "logger") else _typed(text)
        with pytest.raises(UsageError) as error:
            SearchSettings(**{"name": "r", "budget": 10**6, name: value})
        assert f"--{name.replace('_', '-')}" in str(error.value), str(error.value)


def _refuses(parse, text: str) -> bool:
    import inspect

    if parse in (str, bool):
        return False
    try:
        inspect.unwrap(parse)(text)
    except UsageError:
        return True
    return False


def _typed(text: str) -> object:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def test_resumable_is_what_a_resume_may_change():
    assert set(resumable(SearchSettings)) == {"trials", "epoch_budget", "max_concurrent", "cpus_per_model",
                                              "gpus_per_model", "address", "logger", "verbose", "cache_dir"}


def test_search_json_under_the_older_names_reads_with_the_new(tmp_path):
    """A run written before the settings took their flags' names (cpus_per_trial, loggers) reads, and rebuilds
    its settings, under the new names."""
    old = {"name": "run", "budget": 10**6, "cpus_per_trial": 2.0, "gpus_per_trial": 0.5, "loggers": []}
    (tmp_path / "search.json").write_text(json.dumps(old))
    settings = load_settings(tmp_path)
    assert {RENAMED.get(name, name) for name in old} == set(settings)
    assert (settings["cpus_per_model"], settings["gpus_per_model"], settings["logger"]) == (2.0, 0.5, [])
    rebuilt = SearchSettings.from_dict(old)
    assert (rebuilt.cpus_per_model, rebuilt.gpus_per_model, rebuilt.logger) == (2.0, 0.5, [])


def test_a_setting_out_of_its_flags_range_in_search_json_is_named(tmp_path):
    (tmp_path / "search.json").write_text(json.dumps({"name": "run", "budget": 10**6, "reduction_factor": 1}))
    with pytest.raises(UsageError, match="reduction-factor 1: expected an integer of at least 2"):
        load_settings(tmp_path)
