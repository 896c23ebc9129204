"""`nas search --config FILE`: YAML or JSON settings, flags over them, a run's search.json rerun as a new run, and
bad files (fuzzed as tests/properties/test_fuzz.py fuzzes every reader) as one line naming the file and the field."""
from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from nas.settings.config import search_settings
from nas.runs.results import load_trials
from nas.engine.search import SearchSettings, run_search
from qkvnas_core.units import parse_count
from test_fuzz import FUZZ, JSON_VALUES, changed, field_named, read
from test_search import settings_for, space_file  # noqa: F401 (a fixture)
from trainers.recipe import get_recipe

CONFIG = {"budget": 100_000, "dataset": "digits", "space": "qkv", "trials": 4, "epochs": 3, "grace_epochs": 1,
          "seed": 1, "split_seed": 2, "val_fraction": 0.25, "recipe": "proxy",
          "recipe_overrides": {"lr": 0.01, "ema": True}, "objectives": ["val_acc", "params"], "max_concurrent": 2,
          "data_dir": None}


def write(path, values) -> str:
    path.write_text(json.dumps(values) if path.suffix == ".json" else yaml.safe_dump(values))
    return str(path)


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_a_config_file_gives_the_settings(tmp_path, suffix):
    settings = search_settings({}, write(tmp_path / f"search{suffix}", CONFIG))
    assert {name: getattr(settings, name) for name in CONFIG} == CONFIG
    assert settings.name.startswith("qkv-digits-100000-")


def test_counts_and_objectives_are_read_as_the_flags_read_them(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text("budget: 3.1M\nmax_flops: 200M\nobjectives: val_acc,flops\n")
    settings = search_settings({}, str(path))
    assert (settings.budget, settings.max_flops) == (parse_count("3.1M"), parse_count("200M"))
    assert settings.objectives == ["val_acc", "flops"]


def test_flags_override_the_file_field_by_field(tmp_path):
    given = {"trials": 9, "name": "mine", "recipe_overrides": {"lr": 0.02, "batch_size": 32}}
    settings = search_settings(given, write(tmp_path / "search.yaml", CONFIG))
    assert (settings.trials, settings.name, settings.epochs) == (9, "mine", CONFIG["epochs"])
    assert settings.recipe_overrides == {"lr": 0.02, "ema": True, "batch_size": 32}


def test_a_recipe_without_epochs_searches_at_the_recipes_length(tmp_path):
    path = tmp_path / "search.yaml"
    path.write_text("budget: 100000\nrecipe: small\n")
    assert search_settings({}, str(path)).epochs == get_recipe("small").epochs
    assert search_settings({"epochs": 2}, str(path)).epochs == 2
    assert search_settings({"budget": 100_000}).epochs == SearchSettings.epochs


def run_record(settings: SearchSettings) -> dict:
    """search.json as a session writes it: the settings, and what the run recorded beside them."""
    return {**settings.to_dict(), "sessions": 2, "versions": {"torch": "2.5"}, "split_version": 2, "num_classes": 10,
            "in_chans": 1, "started": "2025-01-01T00:00:00", "finished": None, "ray_processes": [[12, 34]],
            "seconds": 12.5, "hypervolume": 0.5, "hypervolume_reference": {"val_acc": 0.0, "params": 1e5}}


def test_a_runs_search_json_reruns_that_search_as_a_new_run(tmp_path):
    original = SearchSettings(name="first", budget=100_000, trials=4, epochs=3, seed=7, objectives=["val_acc"],
                              recipe_overrides={"lr": 0.01}, results_dir=str(tmp_path))
    path = write(tmp_path / "search.json", run_record(original))
    rerun = search_settings({}, path)
    kept = {name: value for name, value in original.to_dict().items() if name not in ("name", "study_name")}
    assert {name: getattr(rerun, name) for name in kept} == kept
    assert rerun.name != original.name and rerun.study_name == rerun.name
    assert search_settings({"name": "second"}, path).run_dir == tmp_path / "second"


@pytest.mark.slow
def test_a_rerun_from_search_json_trains_the_same_trials(ray_cluster, tmp_path, space_file, cli):
    """One trial at a time, the same seed: the rerun of a run's search.json draws, trains and scores as it did."""
    first = settings_for(tmp_path, space_file, name="first", trials=3, epochs=2, max_concurrent=1, split_seed=3,
                         recipe_overrides={"batch_size": 32})
    assert run_search(first).exit_code == 0
    code, _, err = cli("search", "--config", first.run_dir / "search.json", "--name", "again")
    assert code == 0, err
    columns = ["trial_id", "state", "arch_id", "epochs", "val_acc", "seed"]
    expected, rerun = load_trials(first.run_dir)[columns], load_trials(first.run_dir.with_name("again"))[columns]
    assert rerun.equals(expected), f"{expected}\n{rerun}"


def test_a_run_recorded_before_a_setting_existed_reruns_with_the_value_it_had(tmp_path):
    record = run_record(SearchSettings(name="old", budget=100_000))
    for name in ("objectives", "sampler", "early_stopping", "split_seed"):
        del record[name]
    rerun = search_settings({}, write(tmp_path / "search.json", record))
    assert (rerun.objectives, rerun.sampler, rerun.early_stopping, rerun.split_seed) == (["val_acc"], "tpe", "asha",
                                                                                        None)


@pytest.mark.parametrize("name, text, fragments", [
    ("a.yaml", "budget: 1M\nbudgte: 2\n", ["unknown fields", "budgte"]),
    ("a.yaml", "budget: 1M\ntrials: many\n", ["trials=", "expected a positive integer"]),
    ("a.yaml", "budget: 1M\nepochs: 0\n", ["epochs=0"]),
    ("a.yaml", "budget: 1M\nrecipe_overrides: {lr: -1}\n", ["recipe lr=-1"]),
    ("a.yaml", "budget: 1M\nrecipe_overrides: {epochs: 3}\n", ["expected epochs as a setting of its own"]),
    ("a.yaml", "budget: 3.1X\n", ["budget", "'3.1X'"]),
    ("a.yaml", "budget: 1M\nval_fraction: .nan\n", ["val_fraction", "NaN"]),
    ("a.yaml", "budget: 1M\ndataset: [digits\n", ["not valid YAML at line"]),
    ("a.yaml", "base: &b {trials: 2}\nother: *b\n", ["alias"]),
    ("a.yaml", "- budget\n", ["holds a list"]),
    ("a.yaml", "", ["holds nothing"]),
    ("a.yaml", "dataset: digits\n", ["--budget is required"]),
    ("a.json", '{"budget": 1e999}', ["budget", "1e999"]),
    ("a.txt", "budget: 1M\n", ["expected a config file ending in .json, .yaml, .yml"]),
])
def test_a_bad_config_is_one_line_naming_the_file_and_the_field(tmp_path, cli, name, text, fragments):
    path = tmp_path / name
    path.write_text(text)
    code, _, err = cli("search", "--config", path, "--results-dir", tmp_path / "runs")
    assert code == 2 and err.count("\n") == 1 and str(path) in err, err
    for fragment in fragments:
        assert fragment in err, err
    assert not (tmp_path / "runs").exists()


def test_a_config_run_goes_to_the_search_and_its_folder_is_never_overwritten(tmp_path, cli):
    (tmp_path / "taken").mkdir()
    path = write(tmp_path / "search.yaml", {**CONFIG, "name": "taken", "results_dir": str(tmp_path)})
    code, _, err = cli("search", "--config", path)
    assert code == 2 and f"run folder {tmp_path / 'taken'} already exists" in err


def test_config_and_resume_are_one_or_the_other(tmp_path, cli):
    path = write(tmp_path / "search.yaml", CONFIG)
    code, _, err = cli("search", tmp_path, "--resume", "--config", path)
    assert code == 2 and "a resumed run keeps its own settings" in err and err.count("\n") == 1


# Any bytes, any value in any field: a valid settings object, or one UsageError naming the file (and the field).

@FUZZ
@given(suffix=st.sampled_from([".yaml", ".json"]), data=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_config_file_of_any_bytes(tmp_path, suffix, data):
    path = tmp_path / f"config{suffix}"
    path.write_bytes(data)
    settings = read(lambda: search_settings({}, str(path)), path)
    assert settings is None or isinstance(settings, SearchSettings)


@FUZZ
@given(suffix=st.sampled_from([".yaml", ".json"]), data=st.data())
def test_config_with_any_field_changed(tmp_path, suffix, data):
    path_changed, document = data.draw(changed(CONFIG))
    path = tmp_path / f"config{suffix}"
    write(path, document)
    settings = read(lambda: search_settings({}, str(path)), path, field_named(path_changed))
    assert settings is None or isinstance(settings, SearchSettings)


@FUZZ
@given(value=JSON_VALUES | st.text(max_size=20))
def test_config_budget_of_any_value(tmp_path, value):
    path = write(tmp_path / "config.yaml", {"budget": value})
    settings = read(lambda: search_settings({}, str(path)), path, "budget")
    assert settings is None or settings.budget >= 1
