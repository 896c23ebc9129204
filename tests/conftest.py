"""Fixtures shared by the tests: the digits dataset, the `nas` command runner, hand-made run folders, Ray."""
from __future__ import annotations

import os

# Before torch loads: two xdist workers share two cores, so one torch thread each, or their OpenMP threads spin
# against each other (the checkpoint resume test: 9 s at one thread, 345 s at two beside another job).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
from pathlib import Path

import pytest

from nas.cli import main
from nas.runs.results import trial_row, trials_frame, write_trials
from search_spaces.arch import ArchConfig, QKVConfig
from trainers.datasets.registry import load_dataset
from trainers.datasets.splits import DatasetSplits

TINY = ArchConfig(embed_dim=16, depth=1, num_heads=2, patch_size=2)
FSNE = ArchConfig(embed_dim=16, depth=1, num_heads=2, patch_size=2,
                  qkv=QKVConfig(layers=("shared", "shared"), code_size=4))
DEFAULT_ROWS = (("t0000", TINY, "complete", [0.50, 0.70, 0.80]), ("t0001", FSNE, "complete", [0.6, 0.85, 0.90]),
                ("t0002", TINY.replace(embed_dim=32), "stopped", [0.40]),
                ("t0003", TINY.replace(embed_dim=256), "infeasible", []))


@pytest.fixture(scope="session", autouse=True)
def cache_home(tmp_path_factory) -> Path:
    """The user's cache folder (the image cache's default place) in a temporary folder, never ~/.cache."""
    home = tmp_path_factory.mktemp("cache-home")
    os.environ["XDG_CACHE_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def digits() -> DatasetSplits:
    return load_dataset("digits")


@pytest.fixture
def cli(capsys):
    """Run `nas ARGV...` in this process: (exit code, stdout, stderr); argparse's own exits count as codes."""

    def run(*argv: object) -> tuple[int, str, str]:
        try:
            code = main([str(arg) for arg in argv])
        except SystemExit as exit_:
            code = exit_.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def write_run(folder: Path, dataset: str = "digits", rows=DEFAULT_ROWS, num_classes: int = 10, img_size: int = 8,
              in_chans: int = 1) -> Path:
    """A run folder as `nas search` writes it, with hand-chosen scores: rows of (trial_id, arch, state, curve)."""
    folder.mkdir(parents=True)
    (folder / "search.json").write_text(json.dumps({
        "name": folder.name, "dataset": dataset, "budget": 100_000, "max_flops": None, "num_classes": num_classes,
        "img_size": img_size, "in_chans": in_chans, "epochs": 3, "trials": 4, "seconds": 12.0}))
    write_trials(folder / "trials.csv", trials_frame(
        trial_row(int(trial_id[1:]), state, arch=arch, params=1000 + 100 * index if state != "infeasible" else 10**6,
                  flops=2000 + index, seed=0, curve=curve, seconds=float(len(curve)))
        for index, (trial_id, arch, state, curve) in enumerate(rows)))
    return folder


@pytest.fixture
def make_run():
    """`write_run` as a fixture: make_run(folder, rows=...) -> the run folder."""
    return write_run


@pytest.fixture(scope="module")
def ray_cluster(request):
    """A local Ray for a test module (2 CPUs, no dashboard); the module's own functions travel by value."""
    import sys

    import ray
    from ray import cloudpickle

    from nas.runtime.ray_runtime import single_machine_mode

    # "local": a cluster that `ray start` left on this machine is not joined; loopback only, as the project's own.
    with single_machine_mode():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    cloudpickle.register_pickle_by_value(sys.modules[request.module.__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[request.module.__name__])
    ray.shutdown()
