"""Drills on real processes: a local search listens on loopback only; kill -9 of `nas search` and of `nas retrain`,
then the documented resume, loses and repeats nothing and leaves no Ray process behind."""
from __future__ import annotations

import csv
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import FSNE, TINY, write_run
from test_search import TINY_SPACE

pytestmark = pytest.mark.slow


def nas(*argv: object, **kwargs) -> subprocess.Popen:
    """`nas ARGV` in its own process (and process group), as a user runs it."""
    return subprocess.Popen([sys.executable, "-m", "nas.cli", *map(str, argv)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs)


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def listening_addresses(pids: list[int]) -> dict[str, set[str]]:
    """{process name: addresses it listens on (TCP)} for `pids`, read from /proc."""
    listening = {}
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # LISTEN
                continue
            raw = bytes.fromhex(fields[1].split(":")[0])
            words = [raw[i:i + 4][::-1] for i in range(0, len(raw), 4)]
            listening[fields[9]] = socket.inet_ntop(family, b"".join(words))
    found: dict[str, set[str]] = {}
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        for link in links:
            inode = link[8:-1] if link.startswith("socket:[") else None
            if inode in listening:
                found.setdefault(name, set()).add(listening[inode])
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def alive(processes: list[list[int]]) -> list[int]:
    """Recorded (pid, start time) pairs still running as the same process."""
    running = []
    for pid, started in processes:
        try:
            if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]) == started:
                running.append(pid)
        except (OSError, IndexError, ValueError):
            continue
    return running


@pytest.fixture()
def space_file(tmp_path):
    path = tmp_path / "tiny_space.py"
    path.write_text(TINY_SPACE)
    return f"{path}:tiny"


def search_args(space_file: str, results: Path, name: str, trials: int, epochs: int) -> list[object]:
    return ["search", "--budget", "60000", "--space", space_file, "--trials", trials, "--epochs", epochs,
            "--max-concurrent", 1, "--results-dir", results, "--name", name]


def test_a_local_search_listens_on_loopback_only(tmp_path, space_file):
    # A RAY_ADDRESS (or a cluster `ray start` left behind) must not capture a local search: it starts its own Ray.
    process = nas(*search_args(space_file, tmp_path, "loopback", trials=3, epochs=4),
                  env={**os.environ, "RAY_ADDRESS": "127.0.0.9:1"})
    try:
        # Sample while trials train: GCS, raylet, agents, the driver and the trial workers all listen then.
        seen: dict[str, set[str]] = {}
        deadline = time.monotonic() + 90
        while process.poll() is None and time.monotonic() < deadline:
            for name, addresses in listening_addresses(descendants(process.pid)).items():
                seen.setdefault(name, set()).update(addresses)
            time.sleep(0.5)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, err[-2000:]
    assert {"gcs_server", "raylet"} <= set(seen), seen
    exposed = {name: sorted(a for a in addresses if not is_loopback(a)) for name, addresses in seen.items()}
    assert all(not addresses for addresses in exposed.values()), exposed


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
