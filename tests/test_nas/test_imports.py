"""The floors (setup.cfg's import contract, docs/DESIGN.md): `lint-imports` keeps every contract on the tree, and
breaks on a copy of it given an upward import or a circle, so the contract is one that can fail."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("qkvnas_core", "search_spaces", "trainers", "nas")
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(folder: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the packages in `folder` (setup.cfg's contracts), those packages first on the path."""
    return subprocess.run([LINT, "--config", str(folder / "setup.cfg"), "--no-cache"], cwd=folder, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(folder)})


def test_the_tree_keeps_every_import_contract():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


@pytest.fixture
def copy(tmp_path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    return tmp_path


@pytest.mark.parametrize("module, line, broken", [
    # the ground floor reaching up into a room
    ("nas/settings/objectives.py", "from nas.engine.search import run_search", "The floors"),
    # a function-local import reaching up is as much an upward import
    ("trainers/engine.py", "def _later():\n    from nas.runs.results import RunFolder", "The floors"),
    # a circle inside one floor: results imports archs, which imports results
    ("nas/runs/results.py", "from nas.runs.archs import trial_arch", "No import circle"),
    # Optuna below nas/
    ("search_spaces/spaces.py", "import optuna", "Ray and Optuna"),
])
def test_an_upward_import_or_a_circle_breaks_the_contract(copy, module, line, broken):
    path = copy / module
    path.write_text(path.read_text() + f"\n\n{line}\n")
    done = lint(copy)
    assert done.returncode == 1
    assert f"{broken}" in done.stdout and "BROKEN" in done.stdout
