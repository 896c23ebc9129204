"""The Python API (nas/api.py): the documented objects back, nothing printed, the command's flags as keywords
read by the command's own parsers, and bad values named as Python keywords."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import io
import json
import logging
import re
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import optuna
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nas
from nas import api
from nas.cli import build_parser
from nas.settings.flags import RECIPE_DEST
from nas.runs.fronts import pareto_front
from nas.runs.results import load_trials, trained_count
from qkvnas_core.errors import UsageError
from qkvnas_core.files import exclusive_lock
from qkvnas_core.units import parse_count
from trainers.recipe import Recipe

# A search small enough to share: every trial runs its 2 epochs (no early stopping), so the front is not empty.
TINY_SEARCH = dict(budget="300K", space="lite", dataset="digits", trials=2, epochs=2, early_stopping="none", seed=0)
FUZZ = settings(derandomize=True, max_examples=80, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])


# Optuna's default log format: [I 2026-12-06 04:47:28,842] A new study created ...
OPTUNA_LINE = re.compile(r"^\[[DIWE] \d{4}-\d\d-\d\d ")


@pytest.fixture(scope="module")
def searched(ray_cluster, tmp_path_factory):
    """One search through nas.search for the module: (the run, the progress lines, everything printed)."""
    lines: list[str] = []
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        run = nas.search(**TINY_SEARCH, name="api", results_dir=tmp_path_factory.mktemp("api") / "results",
                         progress=lines.append)
    return run, lines, printed.getvalue()


@pytest.mark.slow
def test_search_returns_the_run_and_prints_nothing(searched):
    """qkvnas prints nothing (its lines go to `progress`); Optuna's own log lines are Optuna's to show, as its
    logging is configured (the library silences no other library: docs/notebook.md)."""
    run, lines, printed = searched
    assert [line for line in printed.splitlines() if not OPTUNA_LINE.match(line)] == []
    assert any("2/2 trained" in line for line in lines)
    assert run.ended == "finished" and run.note == "" and run.run_dir.name == "api"
    pd.testing.assert_frame_equal(run.trials, load_trials(run.run_dir))
    assert trained_count(run.trials) == 2 and run.settings["budget"] == 300_000
    # The front is the one the search wrote to search_front.csv, and nas.pareto_front's over params.
    search_front = pd.read_csv(run.run_dir / "search_front.csv")
    assert list(run.front["trial_id"]) == list(search_front["trial_id"]) != []
    pd.testing.assert_frame_equal(run.front, pareto_front(run.trials, ["params"]))
    assert run.best["val_acc"] == run.trials["val_acc"].max()
    assert run.hypervolume == pytest.approx(json.loads((run.run_dir / "search.json").read_text())["hypervolume"])
    assert isinstance(run.study, optuna.Study) and run.study.study_name == "api"
    for row in run.trials[run.trials["state"] == "complete"].itertuples():
        assert run.study.trials[int(row.trial_id[1:])].values == [row.val_acc, row.params]
    assert "trials=" not in repr(run) and repr(run).startswith("SearchRun(run_dir=")


@pytest.mark.slow
def test_load_run_reads_back_what_search_returned(searched, monkeypatch, capsys):
    run = searched[0]
    monkeypatch.chdir(run.run_dir.parent.parent)
    for spec in (run.run_dir, str(run.run_dir), "api", run):
        loaded = nas.load_run(spec)
        pd.testing.assert_frame_equal(loaded.trials, run.trials)
        pd.testing.assert_frame_equal(loaded.front, run.front)
        assert loaded.hypervolume == run.hypervolume and loaded.best["trial_id"] == run.best["trial_id"]
        assert loaded.ended is None and loaded.note == "" and len(loaded.study.trials) == len(run.study.trials)
    assert capsys.readouterr() == ("", "")


@pytest.mark.slow
def test_resume_extends_a_run_and_prints_nothing(searched, tmp_path, capsys):
    run = searched[0]
    copy = tmp_path / "results" / "copy"
    shutil.copytree(run.run_dir, copy)
    resumed = nas.resume(copy, trials=3)
    assert capsys.readouterr() == ("", "")
    assert resumed.ended == "finished" and resumed.run_dir == copy and trained_count(resumed.trials) == 3
    before = run.trials.set_index("trial_id")["val_acc"]
    assert resumed.trials.set_index("trial_id")["val_acc"].loc[before.index].equals(before)
    with pytest.raises(TypeError, match="budget"):
        nas.resume(copy, budget="1M")  # a resumed run keeps its settings: not a keyword of resume
    with pytest.raises(UsageError, match=r"^name='copy': run folder .* already exists; expected a new name, or "
                                         r"nas.resume\("):
        nas.search(**TINY_SEARCH, name="copy", results_dir=tmp_path / "results")


def test_pareto_writes_the_front_and_prints_nothing(make_run, tmp_path, capsys):
    run_dir = make_run(tmp_path / "run")
    outcome = nas.pareto(run_dir, cost=["params", "flops"], out=tmp_path / "out")
    assert capsys.readouterr() == ("", "")
    pd.testing.assert_frame_equal(outcome.front, pareto_front(load_trials(run_dir), ["params", "flops"]))
    assert {path.name for path in outcome.written} >= {"pareto.csv", "pareto_params.png", "pareto_flops.svg"}
    assert all(path.parent == tmp_path / "out" and path.is_file() for path in outcome.written)


def test_retrain_trains_the_front_winner_and_prints_nothing(make_run, tmp_path, capsys, monkeypatch):
    run_dir = make_run(tmp_path / "run")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # where tqdm would draw its bar
    lines: list[str] = []
    outcome = nas.retrain(run_dir, top=1, epochs=2, warmup_epochs=1, device="cpu", out=tmp_path / "out",
                          progress=lines.append)
    assert capsys.readouterr() == ("", "")
    front = pareto_front(load_trials(run_dir), ["params"])
    winner = front.sort_values("val_acc").iloc[-1]
    assert list(outcome.table["source"]) == [winner["trial_id"]] and outcome.diverged == []
    assert list(outcome.table["epochs"]) == [2]
    assert (tmp_path / "out" / "retrain" / winner["arch_id"] / "result.json").is_file()
    # `progress` got the lines `nas retrain` prints, the trainers' among them, and only for the call.
    assert any(line.startswith("data    digits: ") for line in lines)
    assert any(line.startswith("models  1 to train on cpu") for line in lines)
    assert [line.split()[:2] for line in lines if line.startswith(("train ", "test "))] == [
        ["train", winner["arch_id"]], ["test", f"{winner['arch_id']}:"]]
    assert logging.getLogger("qkvnas").handlers == [handler for handler in logging.getLogger("qkvnas").handlers
                                                    if isinstance(handler, logging.NullHandler)]
    again = nas.retrain(run_dir, top=1, epochs=2, warmup_epochs=1, device="cpu", out=tmp_path / "out", resume=True)
    assert capsys.readouterr() == ("", "") and list(again.table["epochs"]) == [2]


@FUZZ
@given(keyword=st.sampled_from(["budget", "max_flops"]),
       value=st.text(max_size=20) | st.integers() | st.floats()
       | st.sampled_from(["3.1M", "200M", "3.1X", "1e400", "0", "-5", "nan", " 7 ", "1_000", "--budget"]))
def test_a_count_is_the_commands_or_one_error_naming_the_keyword(keyword, value):
    """Bad input as a class: any value of budget or max_flops gives the count the command line reads from its
    text, or one UsageError naming the keyword with the value as Python wrote it, never a flag."""
    flags = {"budget": "1M", keyword: value}
    try:
        expected = parse_count(str(value))
    except UsageError:
        with pytest.raises(UsageError) as error:
            nas.search_settings(name="x", **flags)
        message = str(error.value)
        prefix = f"{keyword}={value!r}: expected "
        assert message.startswith(prefix) and "\n" not in message and "--" not in message[len(prefix):]
    else:
        assert getattr(nas.search_settings(name="x", **flags), keyword) == expected


@pytest.mark.parametrize("call, message", [
    (lambda run: nas.search(budget="3.1X"), "budget='3.1X': expected a positive count such as 3.1M"),
    (lambda run: nas.search(budget=1e6, trials=0), "trials=0: expected a positive integer"),
    (lambda run: nas.search(budget=1e6, trials=2.5), "trials=2.5: expected a positive integer"),
    (lambda run: nas.search(budget=1e6, epochs=0), "recipe epochs=0: expected a positive integer"),
    (lambda run: nas.search(budget=1e6, lr="fast"), "recipe lr='fast': expected a positive learning rate"),
    (lambda run: nas.search(budget=1e6, logger="neptune"), "logger='neptune': expected none, or any of tensorboard"),
    (lambda run: nas.search(trials=3), "budget: missing; expected a parameter count such as '3.1M'"),
    (lambda run: nas.search(budget=1e6, reduction_factor=1), "reduction_factor=1: expected an integer of at least 2"),
    (lambda run: nas.search(budget=1e6, sampler="grid"), "sampler='grid': expected one of tpe, nsga2, random"),
    (lambda run: nas.search(budget=1e6, objectives="val_acc,flops"),
     "objectives='val_acc,flops' without max_flops: a FLOPs objective needs its limit"),
    (lambda run: nas.search(budget=1e6, objectives=["val_acc", "loss"]),
     "objectives=['val_acc', 'loss']: expected val_acc, then any of params, flops"),
    (lambda run: nas.search(budget=1e6, verbose="yes"), "verbose='yes': expected True or False"),
    (lambda run: nas.search(budget=1e6, name="a/b"), "name='a/b': expected a run name"),
    (lambda run: nas.search(budget=1e6, progress=True), "progress=True: expected a callable taking one line"),
    (lambda run: nas.load_run("no-such-run"), "run='no-such-run': not found; expected a folder written by"),
    (lambda run: nas.pareto(run, cost="speed"), "cost='speed': expected params, flops or latency"),
    (lambda run: nas.retrain(run), "nothing to retrain: expected top K, trial_ids ID,ID, arch PRESET|arch.json"),
    (lambda run: nas.retrain(run, top="three"), "top='three': expected a positive integer"),
    (lambda run: nas.retrain(run, trial_ids=["t0000", "t0099"]), "trial_ids='t0099': no such trial in"),
    (lambda run: nas.retrain(run, top=1, cpus_per_model=2), "gpus_per_model / cpus_per_model: expected address"),
    (lambda run: nas.retrain(run, top=1, lr="fast"), "recipe lr='fast': expected a positive learning rate"),
])
def test_bad_values_name_the_python_keyword(make_run, tmp_path, call, message):
    with pytest.raises(UsageError) as error:
        call(make_run(tmp_path / "run"))
    assert str(error.value).startswith(message) and "--" not in str(error.value)


def test_unknown_keywords_are_pythons_own_error(make_run, tmp_path):
    run_dir = make_run(tmp_path / "run")
    for call in (lambda: nas.search(budget="1M", trails=3), lambda: nas.search_settings(budget="1M", trails=3),
                 lambda: nas.retrain(run_dir, top=1, epoch=3), lambda: nas.pareto(run_dir, costs="params")):
        with pytest.raises(TypeError, match="unexpected keyword argument"):
            call()


def command_flags(command: str) -> dict[str, argparse.Action]:
    """The command's flags by the keyword that stands for each: its shown long name, `-` written `_`."""
    parser = build_parser(command)
    sub = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return {action.option_strings[0][2:].replace("-", "_"): action for action in sub.choices[command]._actions
            if action.option_strings and action.dest != "help" and action.help != argparse.SUPPRESS}


def keywords(function) -> set[str]:
    return {name for name, parameter in inspect.signature(function).parameters.items()
            if parameter.kind is parameter.KEYWORD_ONLY and name != "progress"}


@pytest.mark.parametrize("command, function, parsers, cli_only", [
    ("search", nas.search, api.SEARCH_FLAGS, {"resume"}),  # nas.resume is its own function
    ("pareto", nas.pareto, api.PARETO_FLAGS, set()),
    ("retrain", nas.retrain, api.RETRAIN_FLAGS, set()),
])
def test_keywords_are_the_commands_flags_read_by_the_same_parsers(command, function, parsers, cli_only):
    """Every flag of the command is a keyword of the function, read by the flag's own parser; the recipe fields come
    as **recipe_fields, which take every Recipe field, but where a setting of the command has the name (a search's
    epochs, the length of its trials)."""
    flags = command_flags(command)
    recipe_fields = {name for name, action in flags.items() if action.dest.startswith(RECIPE_DEST)} - set(parsers)
    assert recipe_fields in ({field.name for field in dataclasses.fields(Recipe)} - {"name"} - set(parsers), set())
    assert keywords(function) == set(parsers) == set(flags) - cli_only - recipe_fields
    for name, parse in parsers.items():
        action = flags[name]
        if parse is bool:
            assert isinstance(action, argparse._StoreTrueAction), name
        elif action.type is None:
            assert parse is str or name in api.LISTS, name
        else:
            assert inspect.unwrap(action.type) is inspect.unwrap(parse) or name in api.LISTS, name
        assert isinstance(action, argparse._AppendAction) == (name in api.SPECS and api.SPECS[name].repeat)
        if command == "search":
            assert action.dest in (name, RECIPE_DEST + name), name


def test_resume_takes_the_settings_a_resume_may_change():
    from nas.settings import SearchSettings, resumable

    assert keywords(nas.resume) - {"results_dir"} == set(resumable(SearchSettings)) == set(api.RESUME_FLAGS)


def test_the_api_names_stay_functions_and_import_nothing_heavy():
    """nas.search, nas.pareto and nas.retrain are the API's functions with the library modules imported (no
    module of the package's top level shares their names); reaching them imports neither torch, Ray, pandas nor
    Optuna."""
    import nas.engine.search  # noqa: F401
    import nas.runs.pareto  # noqa: F401
    import nas.winners.retrain  # noqa: F401

    assert (nas.search, nas.pareto, nas.retrain, nas.load_run) == (api.search, api.pareto, api.retrain, api.load_run)
    assert not {path.stem for path in Path(nas.__file__).parent.glob("*.py")} & set(nas.API)
    script = ("import sys, nas; nas.search, nas.resume, nas.load_run, nas.pareto, nas.retrain, nas.SearchRun; "
              "print(sorted({'torch', 'ray', 'pandas', 'optuna'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_raising_progress_callback_stops_the_search_and_reaches_the_caller(ray_cluster, tmp_path):
    """The caller's exception, once the search has ended cleanly: no trial left running, the folder unlocked, the
    run resumable (its record says interrupted)."""

    class CallersOwn(Exception):
        pass

    seen = []

    def progress(line):
        seen.append(line)
        if getattr(line, "trained", None) is not None:  # the first line of the live view
            raise CallersOwn("raised by the caller's callback")

    with pytest.raises(CallersOwn, match="raised by the caller's callback"):
        nas.search(**{**TINY_SEARCH, "trials": 6}, name="raising", results_dir=tmp_path / "results", progress=progress)
    run_dir = tmp_path / "results" / "raising"
    record = json.loads((run_dir / "search.json").read_text())
    assert record["ended"] == "interrupted" and record["finished"]
    trials = load_trials(run_dir)
    assert not set(trials["state"]) & {"running", "queued"} and trained_count(trials) < 6
    with exclusive_lock(run_dir / ".lock", "the run"):  # released
        pass
    assert sum(getattr(line, "trained", None) is not None for line in seen) == 1  # none given after it raised


def test_a_space_file_that_raises_at_import_reaches_the_caller_as_its_own_exception(tmp_path, cli):
    space = tmp_path / "broken_space.py"
    space.write_text("raise KeyError('the user space cannot start')\n\ndef tiny(trial, shape):\n    pass\n")
    with pytest.raises(KeyError, match="the user space cannot start") as raised:
        nas.search(budget="300K", space=f"{space}:tiny", name="broken", results_dir=tmp_path / "results")
    assert any(frame.filename == str(space) for frame in traceback.extract_tb(raised.value.__traceback__))
    code, _, err = cli("search", "--budget", "300K", "--space", f"{space}:tiny", "--results-dir", tmp_path / "cli")
    assert code == 2 and err.count("\n") == 1 and "failed to load (KeyError: 'the user space cannot start')" in err
