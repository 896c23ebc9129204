"""`--address` against a real Ray cluster on this machine: a head and a second node started by `ray start` as on two
machines, a search and a retrain through it, then a node killed mid-search.

The nodes take loopback addresses (127.0.0.2, 127.0.0.3), so the cluster is reachable only from this machine by
its addresses; Ray 2.60 still listens on every interface for a multi-node cluster (its single-machine loopback
mode refuses a second node), so the cluster runs with Ray's token authentication (RAY_AUTH_MODE=token)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from conftest import FSNE, TINY, write_run
from dataset_files import write_photo_folders
from test_drills import wait_for
from test_search import TINY_SPACE

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HEAD_IP, SECOND_IP = "127.0.0.2", "127.0.0.3"
RAY = str(Path(sys.executable).with_name("ray"))
# What `ray start` prints once its node runs; a loaded 2-core machine can take minutes to get there.
STARTED = "Ray runtime started."
START_TIMEOUT_S = 300


# A driver on the head's machine hands a trial's split to a task pinned to the second machine, which opens it.
PINNED = """
import hashlib, json
import numpy as np, ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from trainers.datasets.registry import load_dataset

def opened(split):
    cache = split.cache()
    return str(cache.folder), hashlib.sha256(np.ascontiguousarray(cache.images[split.rows]).tobytes()).hexdigest()

ray.init(address="{address}")
splits = load_dataset("imagenet", "{photos}", img_size=8, val_images=10_000, image_cache=True, with_test=False)
second = next(node["NodeID"] for node in ray.nodes() if node["Alive"] and node["NodeManagerAddress"] == "{second}")
task = ray.remote(num_cpus=1)(opened).options(scheduling_strategy=NodeAffinitySchedulingStrategy(second, soft=False))
print(json.dumps([opened(splits.train), ray.get(task.remote(splits.train))]))
"""


def cluster_env(**changes: str) -> dict[str, str]:
    """The environment as it is now (the test session's user cache folder included), with Ray's token
    authentication: this machine plays both machines, and a request without the cluster's token is refused."""
    return {**os.environ, "RAY_AUTH_MODE": "token", **changes}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HEAD_IP, 0))
        return probe.getsockname()[1]


def ray_node(ip: str, temp_dir: str, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """`ray start --block ...` in its own process group (killing the group is the machine going away); what it
    prints goes to <temp_dir>/start-<ip>.txt."""
    with started_output(temp_dir, ip).open("w") as sink:
        return subprocess.Popen([RAY, "start", "--block", "--num-cpus", "1", "--disable-usage-stats",
                                 "--node-ip-address", ip, "--temp-dir", temp_dir, *argv], env=env or cluster_env(),
                                stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)


def started_output(temp_dir: str, ip: str) -> Path:
    return Path(temp_dir, f"start-{ip}.txt")


def wait_started(node: subprocess.Popen, ip: str, temp_dir: str) -> None:
    """Until `ray start` prints that its node runs (it has registered with the GCS by then). Its exit, or
    START_TIMEOUT_S, fails the test with what it printed and the last lines of Ray's own logs."""
    output = started_output(temp_dir, ip)
    deadline = time.monotonic() + START_TIMEOUT_S
    while STARTED not in output.read_text():
        if node.poll() is not None or time.monotonic() > deadline:
            ended = (f"exited with status {node.returncode}" if node.returncode is not None else
                     f"had not started the node after {START_TIMEOUT_S} s")
            pytest.fail(f"`ray start` for {ip} {ended}:\n{output.read_text()[-3000:]}\n{ray_log_tails(temp_dir)}")
        time.sleep(0.5)


def ray_log_tails(temp_dir: str, lines: int = 20) -> str:
    """The last lines of each of the session's logs: what Ray itself says went wrong."""
    logs = Path(temp_dir, "session_latest", "logs")
    tails = [f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
             for path in sorted(logs.glob("*")) if path.is_file() and path.stat().st_size]
    return "\n".join(tails) or f"(no logs under {logs})"


def node_processes(ip: str) -> list[int]:
    """Processes of the node at `ip` (every Ray process of a node names its address on its command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and ip.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def stop(node: subprocess.Popen, ip: str) -> None:
    """The machine at `ip` goes away: its process group, and anything of that node that left the group."""
    try:
        os.killpg(node.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    node.wait()

    def gone() -> bool:
        for pid in node_processes(ip):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        return not node_processes(ip)

    wait_for(gone, 30, f"the processes of node {ip} to end")


@pytest.fixture()
def cluster(tmp_path):
    """A head and a second node, one CPU each; both stopped at the end, whatever happened. Each node has a user cache
    folder of its own, as two machines have (the driver runs on the head's machine: `nas(..., cache_home=)`).

    Their own temp folder (short: it holds unix sockets) keeps the cluster's address out of /tmp/ray, where a later
    plain `ray.init()` on this machine would find and join it."""
    address = f"{HEAD_IP}:{free_port()}"
    temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    head_cache, second_cache = tmp_path / "head-node-cache", tmp_path / "second-node-cache"
    nodes = {HEAD_IP: ray_node(HEAD_IP, temp_dir, "--head", "--port", address.split(":")[1],
                               "--include-dashboard", "false", env=cluster_env(XDG_CACHE_HOME=str(head_cache)))}
    try:
        wait_started(nodes[HEAD_IP], HEAD_IP, temp_dir)
        nodes[SECOND_IP] = ray_node(SECOND_IP, temp_dir, "--address", address,
                                    env=cluster_env(XDG_CACHE_HOME=str(second_cache)))
        wait_started(nodes[SECOND_IP], SECOND_IP, temp_dir)
        yield address, nodes, (head_cache, second_cache)
    finally:
        for ip, node in nodes.items():
            stop(node, ip)
        shutil.rmtree(temp_dir, ignore_errors=True)


def nas(*argv: object, timeout: float = 400, cache_home: Path | None = None) -> subprocess.CompletedProcess:
    env = cluster_env() if cache_home is None else cluster_env(XDG_CACHE_HOME=str(cache_home))
    return subprocess.run([sys.executable, "-m", "nas.cli", *map(str, argv)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_search_and_retrain_through_a_cluster_and_a_node_that_dies(cluster, tmp_path):
    address, nodes, caches = cluster
    space = tmp_path / "tiny_space.py"
    space.write_text(TINY_SPACE)
    common = ["--budget", "60000", "--space", f"{space}:tiny", "--epochs", "3", "--grace-epochs", "1",
              "--cpus-per-trial", "1",
              "--address", address, "--results-dir", tmp_path]

    done = nas("search", *common, "--trials", "3", "--name", "whole")
    assert done.returncode == 0, done.stderr[-2000:]
    whole = list(csv.DictReader(open(tmp_path / "whole" / "trials.csv")))
    assert sum(row["state"] in ("complete", "stopped") for row in whole) == 3

    # Image files: the driver builds the image cache in its machine's cache folder; a trial on the other machine
    # builds that machine's own (its own user cache folder), with the same images.
    photos = write_photo_folders(tmp_path / "photos", classes=2, per_class=12, size=(64, 48))
    done = nas("search", *common, "--trials", "2", "--max-concurrent", "2", "--name", "images", "--dataset", "imagenet",
               "--data-dir", photos, "--img-size", "8", "--batch-size", "8", cache_home=caches[0])
    assert done.returncode == 0, done.stderr[-2000:]
    images = list(csv.DictReader(open(tmp_path / "images" / "trials.csv")))
    assert sum(row["state"] in ("complete", "stopped") for row in images) == 2
    used = Path(json.loads((tmp_path / "images" / "search.json").read_text())["images_from"].split(" ", 2)[2])
    assert used.parent == caches[0] / "qkvnas" / "images" and (used / "manifest.json").is_file()
    # Whether a trial of that search ran on the second machine is Ray's choice: a task pinned there opens the
    # search's split as a trial does.
    done = subprocess.run([sys.executable, "-c", PINNED.format(address=address, photos=photos, second=SECOND_IP)],
                          env=cluster_env(XDG_CACHE_HOME=str(caches[0]), PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (here, here_digest), (there, there_digest) = json.loads(done.stdout.splitlines()[-1])
    assert Path(here) == used and Path(there) == caches[1] / "qkvnas" / "images" / used.name
    assert here_digest == there_digest

    run = write_run(tmp_path / "run", rows=(("t0000", TINY, "complete", [0.5]), ("t0001", FSNE, "complete", [0.9])))
    done = nas("retrain", run, "--trial-ids", "t0000,t0001", "--recipe", "proxy", "--epochs", "1", "--address",
               address, "--cpus-per-model", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(csv.DictReader(open(run / "retrain.csv")))) == 2

    # A search that loses the second node while its trials run: two trials at once, one on each node.
    search = subprocess.Popen([sys.executable, "-m", "nas.cli", "search", *map(str, common), "--trials", "5",
                               "--epochs", "30", "--max-concurrent", "2", "--name", "dying"], env=cluster_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    table = tmp_path / "dying" / "trials.csv"
    wait_for(lambda: table.is_file() and sum(row["state"] == "running" for row in csv.DictReader(open(table))) == 2,
             120, "two trials running, one per node")
    stop(nodes[SECOND_IP], SECOND_IP)
    out, err = search.communicate(timeout=600)
    assert search.returncode == 0, err[-2000:]
    rows = list(csv.DictReader(open(table)))
    lost = [row for row in rows if row["state"] == "failed"]
    assert lost and all(row["reason"] for row in lost), rows
    assert sum(row["state"] in ("complete", "stopped", "failed") for row in rows) == 5
    study = optuna.load_study(study_name="dying", storage=f"sqlite:///{tmp_path / 'dying' / 'study.db'}")
    told = {f"t{trial.number:04d}": trial.state.name for trial in study.trials if "duplicate_of" not in trial.user_attrs}
    expected = {"complete": "COMPLETE", "stopped": "PRUNED", "failed": "FAIL", "infeasible": "COMPLETE"}
    assert {row["trial_id"]: expected[row["state"]] for row in rows} == told
    assert nodes[HEAD_IP].poll() is None, "the search must leave the cluster it joined running"
