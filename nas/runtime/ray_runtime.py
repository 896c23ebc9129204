"""Starting or joining Ray for a search or a retrain: loopback-only when local, resources checked before any work.

Ray has no authentication: whoever reaches its ports can run code on the machine. A Ray this process
starts itself (no `--address`, or `--address local`) therefore listens on 127.0.0.1 only, whoever starts
it (a command, or the library from Python after `import ray`): see `start_ray`. Joining a cluster
(`--address host:port`) keeps Ray's own behaviour: see docs/search.md for the ports to open, and only to the
cluster's machines.
"""
from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import socket
from collections.abc import Iterator
from typing import Any

import psutil

from qkvnas_core.errors import UsageError

# Addresses that start a Ray of this process's own rather than join one.
LOCAL_ADDRESSES = (None, "local")
CONNECT_TIMEOUT_S = 5.0
# psutil's start times follow the wall clock, which NTP may shift between two sessions; a recycled pid would need
# the pid space to wrap around within this of the recorded process's start.
START_TIME_TOLERANCE_S = 1.0


def check_reachable(address: str) -> None:
    """A `host:port` (or ray://host:port) address must accept a TCP connection, or Ray retries it forever."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address}: expected host:port of a Ray head (what `ray start --head` prints), "
                         "ray://host:port, auto or local")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise UsageError(f"--address {address}: no Ray head answers there ({error.strerror or error}); expected "
                         "the address of a running `ray start --head`") from None


@contextlib.contextmanager
def single_machine_mode() -> Iterator[None]:
    """Ray's single-machine mode (the one it uses on macOS and Windows) while a local Ray starts.

    In it Ray gives the node the address 127.0.0.1, and every Ray server (GCS, raylet, object manager, agents,
    workers) binds to the node's address; out of it the node takes the machine's external address and the
    servers listen on every interface. Ray reads the mode from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, when
    it is imported, and has no init argument for it (`ray.init(_node_ip_address="127.0.0.1")` is turned back
    into the external address), so the flag it read is set here, whenever ray was imported."""
    from nas.runtime.ray_compat import cluster_mode

    with cluster_mode(False):
        yield


def start_ray(address: str | None, log_to_driver: bool = False) -> bool:
    """Join the cluster at `address`, or start a local Ray on this machine's cores, listening on loopback only;
    True when started here (the caller shuts it down). A Ray already initialized in this process is used as
    it is. log_to_driver: show the workers' output here."""
    if address not in LOCAL_ADDRESSES:
        check_reachable(address)
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=log_to_driver)
    if address not in LOCAL_ADDRESSES:
        ray.init(address=address, **kwargs)
        return True
    with single_machine_mode():
        # "local" always starts a Ray of our own: without it Ray joins any cluster `ray start` left on this machine.
        ray.init(address="local", num_cpus=os.cpu_count(), **kwargs)
    node_address = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_address).is_loopback:
        ray.shutdown()
        raise RuntimeError(f"a local Ray took the node address {node_address}, so its servers would listen on every "
                           "interface: this Ray version no longer honours single_machine_mode")
    return True


def check_resources(cpus: float, gpus: float, what: str) -> None:
    """Some alive node must hold `cpus` CPUs and `gpus` GPUs, or Ray would wait for them forever."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    if any(node.get("CPU", 0) >= cpus and node.get("GPU", 0) >= gpus for node in nodes):
        return
    most_cpus = max((node.get("CPU", 0) for node in nodes), default=0)
    most_gpus = max((node.get("GPU", 0) for node in nodes), default=0)
    where = "this machine" if len(nodes) == 1 else f"the largest of the cluster's {len(nodes)} nodes"
    raise UsageError(f"{what} needs {cpus:g} CPUs and {gpus:g} GPUs on one node, but {where} has "
                     f"{most_cpus:g} CPUs and {most_gpus:g} GPUs: expected at most that much per trial")


def ray_processes() -> list[tuple[int, float]]:
    """(pid, start time) of this process's Ray descendants (GCS, raylet, agents, workers): what to stop if this
    process is killed before it can shut Ray down. The start time (psutil's, seconds since the epoch) tells a
    recycled pid from the process recorded."""
    found = []
    for process in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            found.append((process.pid, process.create_time()))
    return sorted(found)


def stop_leftovers(processes: list[tuple[int, float]]) -> int:
    """Kill the Ray processes a killed session left running (its agents outlive their raylet for a minute or more,
    and hang on SIGTERM trying to reach the dead GCS); a pid counts only with its recorded start time (a
    recycled pid is another process). Returns how many were stopped."""
    stopped = 0
    for pid, started in processes:
        try:
            process = psutil.Process(pid)
            if abs(process.create_time() - started) > START_TIME_TOLERANCE_S:
                continue
            process.kill()
            stopped += 1
        except psutil.Error:
            continue
    return stopped
