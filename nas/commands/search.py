"""`nas search --budget 3.1M`: the product's main job.

The settings come from the flags, over a config file's when --config is given (nas/settings/config.py); `nas search RUN
--resume` continues a run. The search prints nothing itself: it logs its lines (qkvnas_core.log), which `nas`
shows through this command's VIEW, LiveView: drawn as a live bar where a terminal is attached and printed as they
come otherwise (a log keeps every one).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
from pathlib import Path
from typing import Iterator, TextIO

from qkvnas_core.errors import UsageError
from qkvnas_core.log import line as record_line
from nas.settings.flags import add_flag, add_recipe_arguments, path_argument, recipe_overrides
from nas.settings.requests import SEARCH_GROUPS, SearchSettings, add_setting_flags, given_settings as settings_given
from trainers.recipe import PROXY

USAGE = """%(prog)s --budget PARAMS [options]
       %(prog)s --config FILE [options]
       %(prog)s RUN --resume [--trials N] [options a resume may change]"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The run to resume, --config and --resume; every other flag is a SearchSettings field's (nas/settings/requests.py)."""
    parser.usage = USAGE
    parser.add_argument("run", type=path_argument, nargs="?", metavar="RUN",
                        help="with --resume: the run to continue, a folder (results/<run>) or a run name under "
                             "--results-dir")
    parser.add_argument("--config", type=path_argument, default=None, metavar="FILE",
                        help="settings from a YAML or JSON file (a run's search.json reruns that search as a new "
                             "run); flags given override it")
    add_flag(parser, "--resume", "the run RUN, also to extend it (raise --trials)")
    add_setting_flags(parser, SearchSettings, SEARCH_GROUPS, lambda: add_recipe_arguments(
        parser, None, PROXY.name, "--epochs is a trial's length unless ASHA stops it"))


def given_settings(args: argparse.Namespace) -> dict[str, object]:
    """The settings given on the command line, by SearchSettings field (--epochs is one, the other recipe flags are
    recipe_overrides)."""
    given = settings_given(args, SearchSettings)
    overrides = recipe_overrides(args)
    if "epochs" in overrides:
        given["epochs"] = overrides.pop("epochs")
    if overrides:
        given["recipe_overrides"] = overrides
    return given


def run(args: argparse.Namespace) -> int:
    given = given_settings(args)
    if args.resume:
        from nas.runs.results import find_run
        from nas.engine.search import resume_search

        if args.run is None:
            raise UsageError("--resume: expected the run to continue, nas search RUN --resume (results/<run>)")
        if args.config is not None:
            raise UsageError(f"--config {args.config} with --resume: a resumed run keeps its own settings; expected "
                             "one of them")
        run_dir = find_run(args.run, Path(given.pop("results_dir", "results")))
        with quiet_libraries(bool(given.get("verbose"))):
            result = resume_search(run_dir, given)
        return report(result)
    if args.run is not None:
        raise UsageError(f"{args.run}: a run to continue takes --resume; expected --name NAME for a new run")
    from nas.settings.config import search_settings
    from nas.engine.search import run_search

    settings = search_settings(given, args.config)
    with quiet_libraries(settings.verbose):
        result = run_search(settings)
    return report(result)


@contextlib.contextmanager
def quiet_libraries(verbose: bool) -> Iterator[None]:
    """For the command's duration, the application's choice (a library never makes it): Optuna's INFO lines (a
    study created or reused) are not shown, nor, unless --verbose, Ray Tune's errors: a failed trial's reason is in
    trials.csv, and Ray's tracebacks would bury the view."""
    import optuna  # its import sets its own level: after it

    ray_tune = logging.getLogger("ray.tune")
    before = optuna.logging.get_verbosity(), ray_tune.level
    optuna.logging.set_verbosity(logging.WARNING)
    if not verbose:
        ray_tune.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before[0])
        ray_tune.setLevel(before[1])


class LiveView(logging.Handler):
    """How `nas search` shows the lines the library logs: a tqdm bar on `out` when it is a terminal (trained of
    target, running, best val_acc, hypervolume, time left; other lines printed above it), else every line printed
    as it comes. The bar closes with the handler."""

    def __init__(self, out: TextIO, terminal: bool | None = None) -> None:
        super().__init__()
        self.out = out
        self.terminal = out.isatty() if terminal is None else terminal
        self.bar = None

    def __enter__(self) -> LiveView:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def emit(self, record: logging.LogRecord) -> None:
        # Not through Handler.handleError: a closed pipe reaches nas/cli.py, which stops quietly.
        self.say(record_line(record))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        super().close()

    def say(self, line: str) -> None:
        from nas.engine.progress import ProgressLine

        if not self.terminal:
            print(line, file=self.out, flush=True)
        elif not isinstance(line, ProgressLine):
            from tqdm import tqdm

            tqdm.write(line, file=self.out)
        else:
            self.draw(line)

    def draw(self, line) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=line.target, initial=line.trained, file=self.out, dynamic_ncols=True, desc="search",
                            bar_format="{l_bar}{bar}| {n}/{total} trained [{elapsed}]{postfix}")
        self.bar.n = line.trained
        self.bar.set_postfix_str(line.summary, refresh=True)


VIEW = LiveView  # what nas/cli.py shows the library's lines with while this command runs


def report(result) -> int:
    """How the search ended (a nas.engine.search.SearchResult): why it stopped early, the best trial, the front; the
    exit code: 0, 130 when interrupted, 2 when the space ran out before any score."""
    if result.note:
        print(result.note)
    best = result.best
    if best is None:
        print(f"{result.run_dir}: no trial has a score yet")
    else:
        print(f"best: {best['trial_id']} val_acc {best['val_acc']:.2%} with {best['params']:,} params "
              f"({best['structure']}); results in {result.run_dir}")
        print(f"Pareto front: {result.front}")
    return result.exit_code
