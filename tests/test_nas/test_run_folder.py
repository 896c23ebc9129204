"""RunFolder (nas/runs/results.py): study.db, the record of truth, read as a class of bad input: random bytes, cut in
half, another program's SQLite, an Optuna file without the run's study, bytes flipped. A resume or a reader refuses
each in one line naming the file, and nothing in the run folder changes."""
from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nas.engine.searcher import BudgetedSearcher, open_study, render_trials
from nas.runs.results import RunFolder
from qkvnas_core.errors import UsageError
from trainers.holdout import SPLIT_VERSION
from test_search import BUDGET, DIGITS, finished_run, run_files


def with_study(run_dir, space_file_path: str | None = None, draws: int = 0):
    """The run's study.db as a search leaves it: created, and `draws` trials drawn (queued) in it."""
    from nas.engine.budget import Budget
    from search_spaces.spaces import load_space

    study = open_study(RunFolder(run_dir).storage, "done", seed=0)
    if draws:
        searcher = BudgetedSearcher(load_space(space_file_path), Budget(BUDGET, None, DIGITS), study, seed=0,
                                    epochs=2)
        for index in range(draws):
            searcher.suggest(f"t{index}")
    return RunFolder(run_dir).study_file


def damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "random bytes":
        path.write_bytes(bytes(range(256)) * 40)
    elif how == "cut in half":
        path.write_bytes(data[:len(data) // 2])
    elif how == "another program's":
        path.unlink()
        with sqlite3.connect(path) as connection:
            connection.execute("CREATE TABLE notes (text TEXT)")
    elif how == "another study":
        path.unlink()
        open_study(f"sqlite:///{path}", "someone-else", seed=0)
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("how, fragment", [
    ("random bytes", "not a readable SQLite database (file is not a database)"),
    ("cut in half", "not a readable SQLite database (database disk image is malformed)"),
    ("another program's", "a SQLite database without Optuna's table"),
    ("another study", "holds no study named 'done' (it holds someone-else)"),
    ("empty", "without Optuna's table"),
])
def test_a_resume_refuses_a_study_db_that_is_not_the_runs_in_one_line(tmp_path, cli, how, fragment):
    run_dir = finished_run(tmp_path)
    record = json.loads((run_dir / "search.json").read_text())
    (run_dir / "search.json").write_text(json.dumps({**record, "split_version": SPLIT_VERSION}))
    study_file = with_study(run_dir)
    damage(study_file, how)
    before = run_files(run_dir)
    code, out, err = cli("search", "--resume", run_dir, "--trials", "3")
    assert code == 2 and err.count("\n") == 1, err
    assert f"{study_file}: " in err and fragment in err and "restore it from a copy, or start a new run" in err
    assert run_files(run_dir) == before


def test_a_study_db_is_checked_without_writing_to_it(tmp_path):
    """A foreign SQLite file is only read: Optuna's own open would add its tables to it."""
    study_file = tmp_path / "study.db"
    with sqlite3.connect(study_file) as connection:
        connection.execute("CREATE TABLE notes (text TEXT)")
    before = study_file.read_bytes()
    with pytest.raises(UsageError):
        RunFolder(tmp_path).load_study("done")
    assert study_file.read_bytes() == before


@pytest.fixture(scope="module")
def study_copy(tmp_path_factory) -> Path:
    """A study.db holding a few drawn trials (infeasible ones and queued ones), kept as it was written."""
    folder = tmp_path_factory.mktemp("run")
    space = folder / "tiny_space.py"
    from test_search import TINY_SPACE

    space.write_text(TINY_SPACE)
    return with_study(folder, f"{space}:tiny", draws=3)


@settings(derandomize=True, max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_study_db_with_bytes_flipped_or_cut_reads_or_is_one_line(tmp_path, study_copy, data):
    spoiled = bytearray(study_copy.read_bytes())
    for _ in range(data.draw(st.integers(1, 6))):
        spoiled[data.draw(st.integers(0, len(spoiled) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(spoiled) // 4, len(spoiled)))
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir(exist_ok=True)
    folder.study_file.write_bytes(bytes(spoiled[:cut]))
    try:
        study = folder.load_study("done")
        with folder.reading_study():
            render_trials(study)
    except UsageError as error:
        assert "\n" not in str(error) and str(folder.study_file) in str(error)


def test_a_study_db_left_mid_transaction_by_a_kill_9_is_rolled_back_and_read(tmp_path):
    """kill -9 of a search can leave study.db with a hot journal; a read-only open cannot roll it back, so the check
    would call the run's own study unreadable (CI found this in the kill -9 drill)."""
    study_file = with_study(tmp_path)
    writer = ("import os, sqlite3\n"
              f"connection = sqlite3.connect({str(study_file)!r}, isolation_level=None)\n"
              "connection.execute('PRAGMA cache_size=1')\n"  # spills the open transaction's pages into the file
              "connection.execute('BEGIN')\n"
              "connection.execute('CREATE TABLE filler (value BLOB)')\n"
              "for _ in range(200): connection.execute('INSERT INTO filler VALUES (randomblob(4000))')\n"
              "os.kill(os.getpid(), 9)\n")
    subprocess.run([sys.executable, "-c", writer])
    assert study_file.with_name("study.db-journal").is_file()
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        sqlite3.connect(f"{study_file.as_uri()}?mode=ro", uri=True).execute("SELECT name FROM sqlite_master").close()
    assert RunFolder(tmp_path).load_study("done").study_name == "done"
    with sqlite3.connect(study_file) as connection:
        tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "filler" not in tables and "trials" in tables


@settings(derandomize=True, max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(journal=st.binary(max_size=2048))
def test_any_journal_beside_an_intact_study_leaves_it_readable_and_whole(tmp_path, study_copy, journal):
    """A study.db-journal opens the study read-write (a killed writer's rollback): bytes that are no journal of it
    must change nothing in the study and read as before."""
    folder = RunFolder(tmp_path / "run")
    folder.path.mkdir(exist_ok=True)
    folder.study_file.write_bytes(study_copy.read_bytes())
    folder.study_file.with_name("study.db-journal").write_bytes(journal)
    expected = render_trials(RunFolder(study_copy.parent).load_study("done"))
    with folder.reading_study():
        pd.testing.assert_frame_equal(render_trials(folder.load_study("done")), expected)
    assert folder.study_file.read_bytes() == study_copy.read_bytes()
