"""The library's messages go through Python's logging under one "qkvnas" tree (qkvnas_core/log.py): no library
prints, no library configures another library's logging, and `nas` and the Python API show the lines only for
the duration of a call."""
from __future__ import annotations

import ast
import logging
import subprocess
import sys
import types
from pathlib import Path

import pytest

from nas import cli
from qkvnas_core.log import ROOT, Forward, handled_by, logger

PROJECT = Path(__file__).resolve().parents[2]
LIBRARIES = ("nas", "search_spaces", "trainers", "qkvnas_core")
# The application: where printing is the point.
APPLICATION = (PROJECT / "nas" / "commands", PROJECT / "nas" / "cli.py")


def print_calls(path: Path) -> list[int]:
    """The lines of `path` that call the builtin print (by name or as builtins.print)."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        if (isinstance(function, ast.Name) and function.id == "print") or (
                isinstance(function, ast.Attribute) and function.attr == "print"
                and isinstance(function.value, ast.Name) and function.value.id == "builtins"):
            calls.append(node.lineno)
    return calls


def test_no_library_module_prints():
    found = []
    for library in LIBRARIES:
        for path in sorted((PROJECT / library).rglob("*.py")):
            if any(path == place or place in path.parents for place in APPLICATION):
                continue
            found += [f"{path.relative_to(PROJECT)}:{line}" for line in print_calls(path)]
    assert found == [], "a library logs its lines (qkvnas_core.log), it does not print them"
    # The check itself finds a print.
    assert print_calls(PROJECT / "nas" / "cli.py")


def test_importing_the_library_leaves_other_libraries_logging_as_it_was():
    """Importing every library module (the search's among them) changes no other library's logger."""
    script = """
import importlib, logging, pkgutil, sys
import optuna, ray, ray.tune
names = ("optuna", "ray", "ray.tune", "")
before = {name: logging.getLogger(name).level for name in names}
verbosity = optuna.logging.get_verbosity()
failed = []
for package in ("qkvnas_core", "search_spaces", "trainers", "nas"):
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        try:
            importlib.import_module(info.name)
        except ImportError as error:  # an optional dependency that is not installed
            failed.append(f"{info.name}: {error}")
assert "nas.engine.search" in sys.modules, failed
after = {name: logging.getLogger(name).level for name in names}
assert after == before, (before, after)
assert optuna.logging.get_verbosity() == verbosity
assert logging.getLogger("qkvnas").level == logging.NOTSET and logging.getLogger("qkvnas").propagate
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=PROJECT, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def tree_state() -> tuple:
    tree = logging.getLogger(ROOT)
    return tree.level, tree.propagate, list(tree.handlers)


def test_handled_by_forwards_the_lines_and_puts_everything_back():
    log = logger("tests.handled")
    before = tree_state()
    lines: list[str] = []
    log.info("before: nobody sees it")
    with handled_by(Forward(lines.append)):
        log.info("a line %d", 1)
        log.info("100% done")  # no arguments: not %-formatted
        log.warning("a warning")
        log.debug("a detail")  # below INFO
        line = type("Line", (str,), {})("a str with figures")
        log.info(line)
    log.info("after: nobody sees it")
    assert lines == ["a line 1", "100% done", "a warning", "a str with figures"]
    assert type(lines[-1]) is type(line)  # the message object itself (nas.engine.progress.ProgressLine keeps its figures)
    assert tree_state() == before


def test_handlers_above_the_tree_get_only_what_they_got_before():
    """A program that configured the root logger at WARNING does not get the INFO lines while the API forwards
    them; it still gets the warnings."""
    root = logging.getLogger()
    seen: list[str] = []
    above = Forward(seen.append)
    level = root.level
    root.addHandler(above)
    root.setLevel(logging.WARNING)
    try:
        lines: list[str] = []
        with handled_by(Forward(lines.append)):
            logger("tests.above").info("progress")
            logger("tests.above").error("a model diverged")
        assert lines == ["progress", "a model diverged"] and seen == ["a model diverged"]
        seen.clear()
        root.setLevel(logging.INFO)  # a program that asked for INFO gets it, as without a forward
        with handled_by(Forward(lines.append)):
            logger("tests.above").info("shown twice")
        assert seen == ["shown twice"]
    finally:
        root.removeHandler(above)
        root.setLevel(level)


@pytest.fixture
def logging_command(monkeypatch):
    """A `nas fake` command whose library logs a line, a warning and an error."""
    module = types.ModuleType("nas.commands.fake")
    module.add_arguments = lambda parser: None

    def run(args) -> int:
        log = logger("tests.fake")
        log.info("a line")
        log.error("a model diverged")
        log.debug("a detail")
        return 0

    module.run = run
    monkeypatch.setitem(sys.modules, "nas.commands.fake", module)
    monkeypatch.setitem(cli.COMMANDS, "fake", "a command for the test")
    return module


def test_nas_shows_lines_on_stdout_and_problems_on_stderr_while_a_command_runs(logging_command, capsys):
    before = tree_state()
    assert cli.main(["fake"]) == 0
    assert capsys.readouterr() == ("a line\n", "nas fake: error: a model diverged\n")
    assert tree_state() == before
    logger("tests.fake").info("after the command: not shown")
    assert capsys.readouterr() == ("", "")


def test_a_commands_view_shows_its_lines(logging_command, capsys):
    shown: list[str] = []

    class View(Forward):
        def __init__(self, out):
            super().__init__(shown.append)

    logging_command.VIEW = View
    assert cli.main(["fake"]) == 0
    assert shown == ["a line"] and capsys.readouterr() == ("", "nas fake: error: a model diverged\n")


def test_the_search_commands_live_view_takes_the_progress_lines():
    import io

    from nas.commands.search import VIEW, LiveView
    from nas.engine.progress import ProgressLine

    assert VIEW is LiveView
    out = io.StringIO()
    with LiveView(out, terminal=True) as view, handled_by(view):
        logger("tests.view").info("a note above the bar")
        logger("tests.view").info(ProgressLine("1/2 trained", trained=1, target=2, running=1, best_val_acc=None,
                                               hypervolume=None, seconds_left=None, summary="1 running"))
    text = out.getvalue()
    assert "a note above the bar" in text and "1/2 trained" in text and "1 running" in text and view.bar is None
