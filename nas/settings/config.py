"""A search's settings from a config file and the flags given over it: `nas search --config FILE`.

A config file holds SearchSettings fields by the names search.json writes them (budget, dataset, recipe,
recipe_overrides, ...); any setting may be written as its flag takes it ("3.1M", "val_acc,params"). A run's own
search.json is a config too, which reruns that search as a new run: its settings are read (what the run recorded
beside them, such as versions, seconds or hypervolume, is not), its name is not (the rerun gets --name or a fresh
default name), and settings it predates take the values it ran with.

YAML (.yaml, .yml) is read with PyYAML's safe_load, without anchors or aliases (a few bytes of them can expand
beyond memory); JSON (.json) with the project's strict reader. Either way a bad file is one UsageError naming
the file and the field.
"""
from __future__ import annotations

import dataclasses
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any

from qkvnas_core.errors import UsageError
from qkvnas_core.files import dataclass_from_json, parse_json, read_json_object
from nas.settings.requests import EARLIER_DEFAULTS, SearchSettings, default_run_name, parser_of, renamed, settings_of
from trainers.recipe import get_recipe

EXPECTED = "a mapping of search settings (the fields search.json holds)"
SUFFIXES = {".json": "JSON", ".yaml": "YAML", ".yml": "YAML"}
# What marks a run's own search.json (written by every session), and its settings a rerun does not take.
RUN_RECORD_MARK = "versions"
RUN_OWN = ("name", "study_name")
YAML_TYPES = {type(None): "nothing", list: "a list", str: "a string"}


def read_config(path: str | Path) -> dict[str, Any]:
    """The settings a config file holds, as parsed (SearchSettings checks them); one UsageError naming the file
    when it cannot be read as a mapping."""
    path = Path(path)
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UsageError(f"{path}: expected a config file ending in {', '.join(SUFFIXES)}")
    if kind == "JSON":
        values = read_json_object(path, EXPECTED)
    else:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise UsageError(f"{path}: cannot be read ({error.strerror or error}); expected {EXPECTED}") from None
        values = _parse_yaml(data, path)
    values = renamed(values)
    if RUN_RECORD_MARK in values:
        fields = {field.name for field in dataclasses.fields(SearchSettings)}
        values = {**EARLIER_DEFAULTS, **{name: value for name, value in values.items()
                                         if name in fields and name not in RUN_OWN}}
    return values


def _parse_yaml(data: bytes, path: Path) -> dict[str, Any]:
    import yaml

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(f"{path}: byte {error.start} is not UTF-8; expected {EXPECTED} in UTF-8 YAML") from None
    try:
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise UsageError(f"{path}: holds a YAML alias (*name); expected plain values (anchors and aliases are "
                             "not read)")
        value = yaml.safe_load(text)
        # YAML's own types (dates, binary, .nan, .inf) become JSON's, refused or kept as a JSON file's are.
        value = parse_json(json.dumps(value, default=str), str(path), EXPECTED)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(error, "problem", None) or getattr(error, "reason", None) or error).split())
        raise UsageError(f"{path}: not valid YAML{where} ({problem}); expected {EXPECTED}") from None
    except (TypeError, ValueError) as error:  # a key JSON cannot hold (a date), an integer of over 4,300 digits
        raise UsageError(f"{path}: {' '.join(str(error).split())[:120]}; expected {EXPECTED}") from None
    except RecursionError:
        raise UsageError(f"{path}: nested too deeply to read; expected {EXPECTED}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{path}: holds {YAML_TYPES.get(type(value), 'a single value')}; expected {EXPECTED}")
    return value


def search_settings(given: dict[str, Any], config: str | Path | None = None) -> SearchSettings:
    """The settings of a new search: `given` (the flags, by SearchSettings field) over the `config` file's. The
    file is first checked as it stands (the flags only filling what it lacks), so that its errors name it."""
    if config is None:
        return _settings(given)
    stored = read_config(config)
    try:
        _settings({**given, **stored}, name="config-check")
    except UsageError as error:
        raise UsageError(f"{config}: {error}") from None
    overrides = {**stored.get("recipe_overrides", {}), **given.get("recipe_overrides", {})}
    return _settings({**stored, **given, "recipe_overrides": overrides})


def _takes_text(hint: Any) -> bool:
    return hint is str or (typing.get_origin(hint) in (typing.Union, types.UnionType) and str in typing.get_args(hint))


def _parsers_of_text_settings() -> dict[str, Any]:
    """The settings a config file may also write as their flag's text (a count, a list), each with its flag's
    parser."""
    hints = typing.get_type_hints(SearchSettings)
    return {name: inspect.unwrap(parser_of(name, spec)) for name, (item, spec) in settings_of(SearchSettings).items()
            if not _takes_text(hints[name])}


FROM_TEXT = _parsers_of_text_settings()


def _from_text(name: str, value: Any) -> Any:
    """A setting written as its flag's text read as the flag reads it; any other value as it is."""
    if not isinstance(value, str) or name not in FROM_TEXT:
        return value
    try:
        return FROM_TEXT[name](value)
    except UsageError as error:
        raise UsageError(f"{name}={value!r}: {str(error).rpartition(': ')[2]}") from None


def _settings(values: dict[str, Any], name: str | None = None) -> SearchSettings:
    """SearchSettings from settings by name (any as its flag's text: "3.1M", "val_acc,params");
    without a name, `name` or the default one. The recipe's epochs when epochs are not given."""
    values = {name: _from_text(name, value) for name, value in values.items()}
    if values.get("budget") is None:
        raise UsageError("--budget is required: expected a parameter count such as 3.1M (or budget in --config)")
    if values.get("epochs") is None and isinstance(values.get("recipe"), str):
        values["epochs"] = get_recipe(values["recipe"]).epochs
    if values.get("name") is None:
        values["name"] = name or default_run_name(values.get("space"), values.get("dataset"), values["budget"])
    return dataclass_from_json(SearchSettings, values)
