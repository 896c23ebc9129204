"""Ray's network, on real processes and sockets: a local Ray listens on loopback only whoever starts it (`nas search`,
`nas retrain --address local`, a search from Python that imported ray first), and `nas retrain --address` is
checked for reachability and resources as `nas search` is; a killed session's recorded processes are stopped only
while their start time matches."""
from __future__ import annotations

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

from conftest import TINY, write_run
from nas.runtime.ray_runtime import ray_processes, stop_leftovers
from test_search import TINY_SPACE

# A RAY_ADDRESS (or a cluster `ray start` left behind) must not capture a local Ray: it starts its own.
ELSEWHERE = {**os.environ, "RAY_ADDRESS": "127.0.0.9:1"}
# A program that already uses Ray imports it before nas: Ray has read its settings by the time nas starts it.
LIBRARY_SEARCH = """
import sys

import ray
from nas.engine.search import SearchSettings, run_search

space, results = sys.argv[1:]
run_search(SearchSettings(name="library", budget=60000, space=space, trials=2, epochs=1, max_concurrent=1,
                          results_dir=results))
"""


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


def listening_while_running(argv: list[object], log: Path, sample_s: float = 90) -> dict[str, set[str]]:
    """Run `argv` in its own process group and collect what its processes (GCS, raylet, agents, the driver, the
    workers) listen on while it runs; it must end with status 0."""
    with log.open("w") as sink:
        process = subprocess.Popen(list(map(str, argv)), stdout=sink, stderr=subprocess.STDOUT, env=ELSEWHERE,
                                   start_new_session=True)
    try:
        seen: dict[str, set[str]] = {}
        deadline = time.monotonic() + sample_s
        while process.poll() is None and time.monotonic() < deadline:
            for name, addresses in listening_addresses(descendants(process.pid)).items():
                seen.setdefault(name, set()).update(addresses)
            time.sleep(0.5)
        process.wait(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, log.read_text()[-2000:]
    return seen


def assert_loopback_only(seen: dict[str, set[str]]) -> None:
    workers = {name for name in seen if name.startswith("ray::") and name != "ray::RuntimeEnv"}
    assert {"gcs_server", "raylet"} <= set(seen) and workers, seen
    exposed = {name: sorted(a for a in addresses if not is_loopback(a)) for name, addresses in seen.items()}
    assert all(not addresses for addresses in exposed.values()), exposed


@pytest.fixture()
def space_file(tmp_path):
    path = tmp_path / "tiny_space.py"
    path.write_text(TINY_SPACE)
    return f"{path}:tiny"


@pytest.mark.slow
def test_nas_search_listens_on_loopback_only(tmp_path, space_file):
    seen = listening_while_running(
        [sys.executable, "-m", "nas.cli", "search", "--budget", "60000", "--space", space_file, "--trials", 3,
         "--epochs", 4, "--grace-epochs", 1, "--max-concurrent", 1, "--results-dir", tmp_path, "--name", "loopback"],
        tmp_path / "log")
    assert_loopback_only(seen)


@pytest.mark.slow
def test_nas_retrain_with_address_local_listens_on_loopback_only(tmp_path):
    run = write_run(tmp_path / "run")
    seen = listening_while_running(
        [sys.executable, "-m", "nas.cli", "retrain", run, "--trial-ids", "t0000", "--recipe", "proxy", "--epochs", 1,
         "--address", "local"], tmp_path / "log")
    assert_loopback_only(seen)
    assert (run / "retrain" / TINY.arch_id / "result.json").is_file()


@pytest.mark.slow
def test_a_search_from_python_that_imported_ray_first_listens_on_loopback_only(tmp_path, space_file):
    seen = listening_while_running([sys.executable, "-c", LIBRARY_SEARCH, space_file, tmp_path], tmp_path / "log")
    assert_loopback_only(seen)
    assert (tmp_path / "library" / "trials.csv").is_file()


def test_retrain_refuses_an_address_no_ray_head_answers(tmp_path, cli):
    run = write_run(tmp_path / "run")
    code, _, err = cli("retrain", run, "--trial-ids", "t0000", "--recipe", "proxy", "--epochs", 1,
                       "--address", "127.0.0.1:1")
    assert code == 2 and "--address 127.0.0.1:1: no Ray head answers there" in err, err
    assert not (run / "retrain").exists()


@pytest.mark.slow
def test_retrain_refuses_more_cpus_per_model_than_a_node_has(tmp_path, cli):
    run = write_run(tmp_path / "run")
    cpus = os.cpu_count() + 1
    code, _, err = cli("retrain", run, "--trial-ids", "t0000", "--recipe", "proxy", "--epochs", 1,
                       "--address", "local", "--cpus-per-model", cpus)
    assert code == 2 and f"--cpus-per-model {cpus} --gpus-per-model 0 needs {cpus} CPUs" in err, err
    assert not (run / "retrain").exists()


def test_leftovers_are_found_and_stopped_only_with_their_recorded_start_time():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        recorded = json.loads(json.dumps([process for process in ray_processes() if process[0] == child.pid]))
        assert len(recorded) == 1
        assert stop_leftovers([(child.pid, recorded[0][1] + 60)]) == 0 and child.poll() is None  # a recycled pid
        assert stop_leftovers(recorded) == 1 and child.wait(timeout=10) == -signal.SIGKILL
    finally:
        child.kill()
