"""Drills on real processes: kill -9 of `nas search` and of `nas retrain`, then the documented resume, loses and
repeats nothing and leaves no Ray process behind. (Ray's sockets are tested in test_loopback.py.)"""
from __future__ import annotations

import contextlib
import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import FSNE, TINY, write_run
from nas.runtime.ray_runtime import START_TIME_TOLERANCE_S
from test_search import TINY_SPACE

pytestmark = pytest.mark.slow


def nas(*argv: object) -> subprocess.Popen:
    """`nas ARGV` in its own process (and process group), as a user runs it."""
    return subprocess.Popen([sys.executable, "-m", "nas.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def alive(processes: list[list[float]]) -> list[int]:
    """Recorded (pid, start time) pairs still running as the same process."""
    running = []
    for pid, started in processes:
        with contextlib.suppress(psutil.Error):
            if abs(psutil.Process(pid).create_time() - started) <= START_TIME_TOLERANCE_S:
                running.append(pid)
    return running


@pytest.fixture()
def space_file(tmp_path):
    path = tmp_path / "tiny_space.py"
    path.write_text(TINY_SPACE)
    return f"{path}:tiny"


def search_args(space_file: str, results: Path, name: str, trials: int, epochs: int) -> list[object]:
    # A first rung at 1 epoch, so the killed search holds stopped trials as well as complete ones.
    return ["search", "--budget", "60000", "--space", space_file, "--trials", trials, "--epochs", epochs,
            "--grace-epochs", 1, "--max-concurrent", 1, "--results-dir", results, "--name", name]


def test_kill_9_of_a_search_then_resume_loses_and_repeats_nothing(tmp_path, space_file):
    run_dir = tmp_path / "killed"
    process = nas(*search_args(space_file, tmp_path, "killed", trials=5, epochs=3))
    table = run_dir / "trials.csv"

    def a_trial_ended() -> list[dict]:
        rows = list(csv.DictReader(open(table))) if table.is_file() else []
        return [row for row in rows if row["state"] in ("complete", "stopped")]

    ended = wait_for(a_trial_ended, 120, "a finished trial")
    process.send_signal(signal.SIGKILL)  # the driver alone, as `kill -9 <pid>` does
    process.wait()
    killed_session = json.loads((run_dir / "search.json").read_text())["ray_processes"]
    assert killed_session, "the session should have recorded its Ray processes"

    done = subprocess.run([sys.executable, "-m", "nas.cli", "search", "--resume", str(run_dir)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {row["trial_id"]: row for row in csv.DictReader(open(table))}
    for before in ended:  # finished trials kept as they were
        assert {key: rows[before["trial_id"]][key] for key in ("state", "val_acc", "epochs")} == \
               {key: before[key] for key in ("state", "val_acc", "epochs")}
    trained = [row for row in rows.values() if row["state"] in ("complete", "stopped", "failed")
               and row["reason"] != "interrupted: the search stopped before this trial finished"]
    assert len(trained) == 5 and len({row["arch_id"] for row in trained}) == 5
    # The trials the kill cut short were trained again to their end: the same architecture with the same seed.
    cut = [row for row in rows.values() if row["reason"] == "interrupted: the search stopped before this trial finished"
           and row["arch_id"]]  # one cut off while being drawn had nothing to train
    assert {(row["arch_id"], row["seed"]) for row in cut} <= {(row["arch_id"], row["seed"]) for row in trained}
    assert alive(killed_session) == []
    resumed_session = json.loads((run_dir / "search.json").read_text())["ray_processes"]
    wait_for(lambda: alive(resumed_session) == [], 30, "the resumed session's Ray processes to end")


def test_kill_9_of_a_retrain_then_resume_loses_and_repeats_no_epoch(tmp_path):
    rows = (("t0000", TINY, "complete", [0.5]), ("t0001", FSNE, "complete", [0.9]))
    args = ["--trial-ids", "t0001", "--recipe", "proxy", "--epochs", "5", "--device", "cpu"]
    straight = subprocess.run([sys.executable, "-m", "nas.cli", "retrain", str(write_run(tmp_path / "a", rows=rows)),
                               *args], capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    run = write_run(tmp_path / "b", rows=rows)
    folder = run / "retrain" / FSNE.arch_id
    process = nas("retrain", run, *args)
    wait_for(lambda: (folder / "metrics.csv").is_file() and len((folder / "metrics.csv").read_text().splitlines()) >= 3,
             120, "two finished epochs")
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = subprocess.run([sys.executable, "-m", "nas.cli", "retrain", str(run), *args, "--resume"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    timing = ("seconds", "images_per_s")

    def epochs(path: Path) -> list[dict]:
        return [{k: v for k, v in row.items() if k not in timing} for row in csv.DictReader(open(path))]

    resumed, uninterrupted = epochs(folder / "metrics.csv"), epochs(tmp_path / "a" / "retrain" / FSNE.arch_id / "metrics.csv")
    assert [row["epoch"] for row in resumed] == ["1", "2", "3", "4", "5"]
    assert resumed == uninterrupted
    assert json.loads((folder / "result.json").read_text())["top1"] == \
           json.loads((tmp_path / "a" / "retrain" / FSNE.arch_id / "result.json").read_text())["top1"]
