"""docs/notebook.md runs: its ```python blocks, in order, in one namespace, in a fresh folder, as a notebook runs
its cells."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "notebook.md"
PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```$", re.DOTALL | re.MULTILINE)


def python_blocks() -> list[str]:
    return PYTHON_BLOCK.findall(PAGE.read_text(encoding="utf-8"))


def test_the_page_walks_through_a_whole_session():
    code = "\n".join(python_blocks())
    for step in ("nas.search(", "run.front", "nas.retrain(", "export_checkpoint(", 'timm.create_model("local-dir:'):
        assert step in code, step


@pytest.mark.slow
def test_the_notebook_page_runs(tmp_path, monkeypatch):
    import matplotlib
    import torch

    matplotlib.use("Agg")
    from matplotlib import pyplot

    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    # One thread, as each search trial has: beside other CPU jobs, OpenMP's spinning threads made the retrain 7x
    # slower here (the test process loaded torch without nas.cli's GOMP_SPINCOUNT).
    torch.set_num_threads(1)
    namespace: dict = {}
    try:
        for number, block in enumerate(python_blocks(), 1):
            exec(compile(block, f"{PAGE.name}, python block {number}", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
        pyplot.close("all")
    config = json.loads((tmp_path / "winner" / "config.json").read_text())
    assert config["architecture"] == namespace["loaded"].pretrained_cfg["architecture"] == namespace["name"]
    assert (tmp_path / "winner" / "model.safetensors").is_file()
    assert len(namespace["run"].front) >= 1 and (tmp_path / "results" / "notebook" / "pareto.csv").is_file()
