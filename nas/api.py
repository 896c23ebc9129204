"""The Python API, for notebooks: `nas.search`, `nas.resume`, `nas.load_run`, `nas.pareto` and `nas.retrain`.

Each takes its `nas` command's flags as keyword arguments, `-` written `_` (`max_flops`, `results_dir`), with the
values the command line takes, as strings or numbers (`budget="3.1M"` or `budget=3_100_000`; lists where a flag
takes a comma-separated list or repeats). Every value goes through the parser its flag goes through
(nas/settings/flags.py), before any work starts; bad input is one `UsageError` (a `ValueError`) naming the keyword as
Python writes it: `budget='3.1X': expected a positive count such as 3.1M, ...`. The libraries' own checks name
keywords too (nas/settings/naming.py). Nothing is printed: the libraries log the lines the command would print, under
the "qkvnas" logger (qkvnas_core.log), and `progress`, a callable taking one line (`print`, `lines.append`), gets
them for the call (`logging.basicConfig(level=logging.INFO)` shows them too). Imports nothing heavy until
called, so `import nas` stays quick.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qkvnas_core.errors import UsageError
from nas.settings.flags import output_folder, path_argument
from nas.settings.naming import given, python_names
from nas.settings.objectives import SCORE
from nas.settings.requests import (ParetoRequest, RetrainRequest, SearchSettings, Value, keyword_parsers,
                                  keyword_signature, resumable, settings_of)

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from nas.runs.pareto import ParetoOutcome
    from nas.runs.results import Run
    from nas.winners.retrain import RetrainOutcome
    from nas.engine.search import SearchResult

ProgressCallback = Callable[[str], None]


# Each keyword's parser: the one its flag's argparse type is (tests/test_nas/test_api.py checks), `str` for a flag taking
# any text, `bool` for a switch; a keyword whose setting is `listed` takes a list (joined with commas) or the flag's
# comma-separated text, one that `repeat`s (and is not listed) a list for a flag given several times. Recipe
# fields other than epochs come as **recipe_fields. A search's keywords are SearchSettings' fields
# (nas/settings/requests.py), and config; a resume's those it may change.
SEARCH_FLAGS: dict[str, Callable[[str], Any]] = {"config": path_argument, **keyword_parsers(SearchSettings)}
RESUME_FLAGS = {name: SEARCH_FLAGS[name] for name in resumable(SearchSettings)}
PARETO_FLAGS: dict[str, Callable[[str], Any]] = keyword_parsers(ParetoRequest)
RETRAIN_FLAGS: dict[str, Callable[[str], Any]] = keyword_parsers(RetrainRequest)
SPECS = {name: spec for cls in (SearchSettings, RetrainRequest, ParetoRequest)
         for name, (item, spec) in settings_of(cls).items()}
LISTS = frozenset(name for name, spec in SPECS.items() if spec.listed)
REPEATED = frozenset(name for name, spec in SPECS.items() if spec.repeat and not spec.listed)


@dataclass(frozen=True, eq=False)
class SearchRun:
    """A search's run folder as Python objects: what `search`, `resume` and `load_run` return.

    trials: trials.csv as a DataFrame; front: its Pareto front over val_acc and the run's cost objectives (params
    by default and for a single-objective run), trials scored at full fidelity only, sorted by the first cost;
    best: the row of the best val_acc (fewest params on a tie), None before any score; hypervolume: as search.json
    records it, of the full-fidelity trials over val_acc (from 0), params and, with max_flops, FLOPs (each to its
    limit); study: the run's Optuna study; settings: search.json. ended and note: how this session ended and why
    (see nas.engine.search.SearchResult); None and "" from `load_run`.
    """

    run_dir: Path
    hypervolume: float
    ended: str | None
    note: str
    trials: pd.DataFrame = field(repr=False)
    front: pd.DataFrame = field(repr=False)
    best: dict[str, Any] | None = field(repr=False)
    study: optuna.Study = field(repr=False)
    settings: dict[str, Any] = field(repr=False)


def search(*, config: str | os.PathLike | None = None, progress: ProgressCallback | None = None,
           **settings: Any) -> SearchRun:
    """Run a new search, as `nas search` does. Each keyword is a setting of nas.settings.SearchSettings, named as
    its flag (`budget="3.1M"`, `max_flops`, `cpus_per_model`); None, the default, is the flag's default. `config`
    is a file of settings the keywords override. The other keywords set the trials' recipe fields
    (`batch_size=32`, `lr=1e-2`: trainers.recipe.Recipe's names and types, which it checks). Returns the run."""
    with python_names(), _progress(progress) as forward:
        checked = search_settings(config=config, **settings)
        if checked.run_dir.exists():
            raise UsageError(f"{given('name', checked.name)}: run folder {checked.run_dir} already exists; expected "
                             f"a new name, or nas.resume({str(checked.run_dir)!r}) to continue it")
        from nas.engine.search import run_search

        with _users_own_errors():
            result = run_search(checked, stop=forward.failed if forward else None)
        _raise_callback_error(forward)
        return _session_run(result)


def search_settings(**keywords: Any) -> SearchSettings:
    """The `SearchSettings` that `search` runs for the same keywords, checked the same way; nothing runs."""
    with python_names():
        recipe_fields = _recipe_fields("search_settings", {key: keywords.pop(key) for key in list(keywords)
                                                           if key not in SEARCH_FLAGS})
        values = _parsed(keywords, SEARCH_FLAGS)
        config = values.pop("config", None)
        if "budget" not in values and config is None:
            raise UsageError("budget: missing; expected a parameter count such as '3.1M', or a config file giving it")
        if recipe_fields:
            values["recipe_overrides"] = recipe_fields
        from nas.settings.config import search_settings as settings_over_config

        return settings_over_config(values, config)


def resume(run: str | os.PathLike | SearchRun, *, results_dir: str | os.PathLike | None = None,
           progress: ProgressCallback | None = None, **changes: Any) -> SearchRun:
    """Continue a run (`nas search RUN --resume`): finished trials are kept, `trials` may be raised; the keywords
    are the settings a resume may change (nas.settings.resumable), the others stay the run's own. `run`: its
    folder, its name under `results_dir` (results), or a SearchRun."""
    for name in changes:
        if name not in RESUME_FLAGS:
            raise TypeError(f"resume() got an unexpected keyword argument {name!r}")
    with python_names(), _progress(progress) as forward:
        run_dir = _run_folder(run, results_dir)
        from nas.engine.search import resume_search

        with _users_own_errors():
            result = resume_search(run_dir, _parsed(changes, RESUME_FLAGS), stop=forward.failed if forward else None)
        _raise_callback_error(forward)
        return _session_run(result)


def load_run(run: str | os.PathLike | SearchRun, *, results_dir: str | os.PathLike | None = None) -> SearchRun:
    """A run folder read back (a finished run, or one still running elsewhere, as it stands); `run` as `resume`
    takes it."""
    with python_names():
        return _folder_run(_run_folder(run, results_dir))


def pareto(run: str | os.PathLike | SearchRun, *, progress: ProgressCallback | None = None,
           **options: Any) -> ParetoOutcome:
    """Write the run's front (`nas pareto`): pareto.csv and a plot per cost; returns the front and the files. Each
    keyword is a field of nas.settings.ParetoRequest, named as its flag (`cost="params,flops"`, `out`)."""
    for name in options:
        if name not in PARETO_FLAGS:
            raise TypeError(f"pareto() got an unexpected keyword argument {name!r}")
    with python_names(), _progress(progress) as forward:
        request = ParetoRequest(run=str(_run_folder(run)), **_parsed(options, PARETO_FLAGS))
        from nas.runs.pareto import write_pareto

        outcome = write_pareto(request)
        _raise_callback_error(forward)
        return outcome


def retrain(run: str | os.PathLike | SearchRun, *, progress: ProgressCallback | None = None,
            **options: Any) -> RetrainOutcome:
    """Retrain winners with a full recipe and test each once (`nas retrain`). Each keyword is a field of
    nas.settings.RetrainRequest, named as its flag (`top=1`, `baseline=["xcit-n12"]`); the other keywords are recipe
    fields (`epochs=5`), as `search` takes them. `seeds`: how many (seed, seed + 1, ...), or a list of seeds.
    Each model trains in <run or out>/retrain/<arch_id>/ (<arch_id>-seed<S>/ for seed S > 0); the outcome's table
    has a row per model and seed, its `summary` a row per model (mean and 95% interval), its `comparison` the paired
    differences to each baseline."""
    keywords = {key: options.pop(key) for key in list(options) if key in RETRAIN_FLAGS}
    with python_names(), _progress(progress) as forward:
        overrides = _recipe_fields("retrain", options)
        run_dir = _run_folder(run)
        values = _parsed(keywords, RETRAIN_FLAGS)
        from nas.winners.retrain import retrain_run

        outcome = retrain_run(RetrainRequest(run=str(run_dir), overrides=overrides, progress_bar=False, **values))
        _raise_callback_error(forward)
        return outcome


search.__signature__ = keyword_signature(search, list(SEARCH_FLAGS))
resume.__signature__ = keyword_signature(resume, list(RESUME_FLAGS))
retrain.__signature__ = keyword_signature(retrain, list(RETRAIN_FLAGS))
pareto.__signature__ = keyword_signature(pareto, list(PARETO_FLAGS))


def _recipe_fields(function: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Recipe fields given as keywords, by Recipe's names; an unknown keyword is Python's own TypeError."""
    from trainers.recipe import Recipe

    unknown = sorted(set(fields) - {field.name for field in dataclasses.fields(Recipe)} - {"name"})
    if unknown:
        raise TypeError(f"{function}() got an unexpected keyword argument {unknown[0]!r}")
    return dict(fields)


def _progress(progress: ProgressCallback | None) -> contextlib.AbstractContextManager:
    """For the call: the lines the libraries log (INFO and up) forwarded to `progress` (the context gives the
    Forward handler, which keeps what the callback raised); nothing without one (None)."""
    from qkvnas_core.log import Forward, handled_by

    if progress is None:
        return contextlib.nullcontext()
    if not callable(progress):
        raise UsageError(f"{given('progress', progress)}: expected a callable taking one line, such as print")
    return handled_by(Forward(progress))


@contextlib.contextmanager
def _users_own_errors() -> Iterator[None]:
    """What the caller's own code raised (a space file that fails at import) reaches the caller as it was raised,
    not as the one line the command prints."""
    from qkvnas_core.errors import UserCodeError

    try:
        yield
    except UserCodeError as error:
        raise error.__cause__.with_traceback(error.__cause__.__traceback__) from None


def _raise_callback_error(forward: Any) -> None:
    """The exception the caller's progress callback raised, once the search it stopped has ended cleanly (its
    trials closed, Ray shut down, the run resumable)."""
    if forward is not None and forward.error is not None:
        raise forward.error


def _parsed(keywords: dict[str, Value], parsers: dict[str, Callable[[str], Any]]) -> dict[str, Any]:
    """The keywords given (not None), each read by its flag's parser as the command line reads the same text."""
    values = {}
    for name, value in keywords.items():
        if value is None:
            continue
        parse = parsers[name]
        if parse is bool:
            if not isinstance(value, bool):
                raise UsageError(f"{given(name, value)}: expected True or False")
            values[name] = value
        elif name in REPEATED:
            items = [value] if isinstance(value, (str, os.PathLike)) else list(value)
            values[name] = tuple(_parse_text(name, value, _text(item), parse) for item in items)
        else:
            joined = name in LISTS and isinstance(value, (list, tuple))
            # A list of one seed stays a list ("7,"): "7" alone asks for seven seeds.
            text = ",".join(map(str, value)) + ("," if name == "seeds" else "") if joined else _text(value)
            parsed = _parse_text(name, value, text, parse)
            values[name] = tuple(parsed) if name in SPECS and SPECS[name].repeat else parsed
    return values


def _parse_text(name: str, value: Value, text: str, parse: Callable[[str], Any]) -> Any:
    """`text` through `parse` (an argparse type unwrapped to its UsageError); a refusal names the keyword."""
    try:
        return inspect.unwrap(parse)(text)
    except UsageError as error:
        raise UsageError(f"{given(name, value)}: {_expected(error)}") from None


def _text(value: Value) -> str:
    """A value as the command line would have it: a path's own text, a number's str()."""
    return os.fspath(value) if isinstance(value, os.PathLike) else str(value)


def _expected(error: UsageError) -> str:
    """What a parser's message says was expected: its messages read '<the value>: <what was expected>'."""
    return str(error).rpartition(": ")[2]


def _run_folder(run: str | os.PathLike | SearchRun, results_dir: str | os.PathLike | None = None) -> Path:
    """A run's folder: a SearchRun's, a folder path, or a run name under `results_dir` (as the commands read it)."""
    from nas.runs.results import find_run

    if isinstance(run, SearchRun):
        return run.run_dir
    folder = _parse_text("run", run, _text(run), path_argument)
    parent = "results" if results_dir is None else _parse_text("results_dir", results_dir, _text(results_dir),
                                                                output_folder)
    try:
        return find_run(folder, Path(parent))
    except UsageError as error:
        raise UsageError(f"{given('run', run)}: {_expected(error)}") from None


def _search_run(run: Run, study: optuna.Study, hypervolume: float, ended: str | None = None,
                note: str = "") -> SearchRun:
    """The SearchRun of a run as given: what a session holds (search, resume), or a folder read back (load_run)."""
    from nas.runs.fronts import pareto_front
    from nas.runs.results import best_trial

    objectives = run.settings.get("objectives") or [SCORE]
    return SearchRun(run_dir=run.path, hypervolume=hypervolume, ended=ended, note=note, trials=run.table,
                     front=pareto_front(run.table, objectives[1:] or ["params"]), best=best_trial(run.table),
                     study=study, settings=run.settings)


def _session_run(result: SearchResult) -> SearchRun:
    """What a search's session computed, as a SearchRun: nothing it wrote is read back."""
    from nas.runs.results import Run

    return _search_run(Run(result.run_dir, result.settings, result.trials), result.study, result.hypervolume,
                       result.ended, result.note)


def _folder_run(run_dir: Path) -> SearchRun:
    """A run folder read back (checked against its study), its hypervolume measured as the search measures it."""
    from nas.settings.objectives import reference_limits
    from nas.runs.results import read_run
    from nas.engine.search import run_hypervolume

    run = read_run(run_dir)
    why = "to measure the run's hypervolume"
    limits = reference_limits(int(run.setting("budget", why)), run.settings.get("max_flops"))
    study = run.folder.load_study(run.settings.get("study_name") or run.settings.get("name") or run.name)
    return _search_run(run, study, run_hypervolume(run.table, limits))
