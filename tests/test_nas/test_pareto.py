"""Pareto fronts on hand-made tables, the files `nas pareto` writes, references, latency, and bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.colors import to_rgb
from PIL import Image

from nas.cli import main
from conftest import TINY, write_run
from nas.settings.requests import ParetoRequest
from nas.runs.fronts import pareto_front
from nas.runs.pareto import write_pareto
from nas.runs.plots import STRUCTURE_COLOURS
from qkvnas_core.errors import UsageError
from search_spaces.build import build_model
from search_spaces.model_tools.device import parse_device
from search_spaces.model_tools.latency import measure_latency
from search_spaces.shape import DataShape
from trainers.runtime import select_device


def table(*rows) -> pd.DataFrame:
    """Rows of (trial_id, state, val_acc, params, flops)."""
    return pd.DataFrame(rows, columns=["trial_id", "state", "val_acc", "params", "flops"])


def ids(front: pd.DataFrame) -> list[str]:
    return list(front["trial_id"])


def test_dominated_points_are_excluded():
    trials = table(("t0", "complete", 0.90, 100, 5), ("t1", "complete", 0.80, 200, 4),  # t1: worse and bigger
                   ("t2", "complete", 0.95, 300, 9), ("t3", "complete", 0.70, 50, 1))
    assert ids(pareto_front(trials, ["params"])) == ["t3", "t0", "t2"]


def test_ties_and_duplicates():
    trials = table(("t0", "complete", 0.90, 100, 5), ("t1", "complete", 0.90, 100, 5),  # exact duplicate of t0
                   ("t2", "stopped", 0.90, 150, 5),  # same accuracy, more params: dominated
                   ("t3", "complete", 0.85, 100, 5))  # same params, lower accuracy: dominated
    assert ids(pareto_front(trials, ["params"])) == ["t0"]


def test_single_point_and_sorting():
    assert ids(pareto_front(table(("t9", "complete", 0.5, 10, 1)), ["params"])) == ["t9"]


def test_several_costs_give_one_front_over_all():
    trials = table(("t0", "complete", 0.90, 100, 9), ("t1", "complete", 0.90, 200, 4),
                   ("t2", "complete", 0.80, 300, 10))
    assert ids(pareto_front(trials, ["params"])) == ["t0"]
    assert ids(pareto_front(trials, ["params", "flops"])) == ["t0", "t1"]


def test_fronts_hold_full_fidelity_trials_unless_stopped_ones_are_asked_for():
    trials = table(("t0", "failed", 0.99, 1, 1), ("t1", "infeasible", None, 5, 1), ("t2", "running", 0.99, 1, 1),
                   ("t3", "stopped", 0.60, 50, 1), ("t4", "complete", 0.80, 100, 1), ("t5", "complete", None, 1, 1))
    assert ids(pareto_front(trials, ["params"])) == ["t4"]
    assert ids(pareto_front(trials, ["params"], include_stopped=True)) == ["t3", "t4"]


def test_a_run_without_full_fidelity_trials_draws_a_front_only_when_asked(tmp_path, cli):
    rows = (("t0000", TINY, "stopped", [0.5]), ("t0001", TINY.replace(embed_dim=32), "stopped", [0.4, 0.6]))
    run = write_run(tmp_path / "stopped", rows=rows)
    with pytest.raises(UsageError, match="no trial scored at full fidelity.*--include-stopped"):
        write_pareto(ParetoRequest(str(run)))
    code, out, _ = cli("pareto", str(run), "--include-stopped")
    assert code == 0 and "stopped ones at fewer epochs" in out
    assert ids(pd.read_csv(run / "pareto.csv")) == ["t0000", "t0001"]
    code, out, _ = cli("pareto", str(write_run(tmp_path / "mixed")))
    assert code == 0 and "front over params: 2 of 2 trials scored at 3 epochs" in out


def test_all_infeasible_gives_an_empty_front():
    trials = table(("t0", "infeasible", None, 5_000_000, None), ("t1", "infeasible", None, 6_000_000, None))
    assert pareto_front(trials, ["params"]).empty


def test_write_pareto_files(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    outcome = write_pareto(ParetoRequest(str(run)))
    assert capsys.readouterr().out == ""  # the library returns what it did; `nas pareto` prints it
    assert outcome.written == [run / "pareto.csv", run / "pareto.png", run / "pareto.svg"]
    assert (outcome.scored, outcome.costs, outcome.references) == (3, ["params"], None)
    front = pd.read_csv(outcome.csv_path)
    assert list(front["trial_id"]) == ["t0000", "t0001"] == list(outcome.front["trial_id"])
    assert {"arch", "structure", "params", "val_acc", "qkv_layers"} <= set(front.columns)
    for name in ("pareto.png", "pareto.svg"):
        assert (run / name).stat().st_size > 2_000
    assert (run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "pareto.png").stat().st_size < 150_000
    assert main(["pareto", str(run)]) == 0
    assert f"front over params: 2 of 2 trials scored at 3 epochs; wrote pareto.csv, pareto.png, pareto.svg to {run}" in (
        capsys.readouterr().out)
    # The trials are drawn: F-SNE's colour fills its marker inside the axes (the legend is to the right).
    image = np.asarray(Image.open(run / "pareto.png").convert("RGB")).astype(int)
    axes_area = image[:, : image.shape[1] * 6 // 10]
    colour = np.array(to_rgb(STRUCTURE_COLOURS["F-SNE"])) * 255
    assert (np.abs(axes_area - colour).max(axis=2) < 2).sum() >= 20


def test_several_costs_write_one_plot_each(tmp_path):
    run = write_run(tmp_path / "run")
    assert main(["pareto", str(run), "--cost", "params,flops"]) == 0
    for name in ("pareto_params.png", "pareto_flops.svg", "pareto.png", "pareto.csv"):
        assert (run / name).is_file()


def test_references_only_for_imagenet(tmp_path, capsys):
    run = write_run(tmp_path / "digits-run")
    assert main(["pareto", str(run), "--reference"]) == 0
    assert "ImageNet top-1, not comparable with digits" in capsys.readouterr().out
    imagenet = write_run(tmp_path / "imagenet-run", dataset="imagenet", num_classes=1000, img_size=224, in_chans=3,
                         rows=[("t0000", TINY.replace(patch_size=16), "complete", [0.5])])
    assert main(["pareto", str(imagenet), "--reference"]) == 0
    out = capsys.readouterr().out
    assert "XCiT-N12 69.9% top-1, 3.05M params" in out and "DeiT-Tiny 72.2% top-1, 5.72M params" in out
    assert "F-SNE (paper) 71.4% top-1, 3.10M params" in out
    # The SVG keeps text as text, so the labels drawn next to the stars can be read back.
    assert "XCiT-N12 69.9%" in (imagenet / "pareto.svg").read_text()
    assert "XCiT-N12" not in (run / "pareto.svg").read_text()


def test_latency_columns(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    assert main(["pareto", str(run), "--measure-latency"]) == 0
    # The library logs the line (qkvnas_core.log); `nas` prints it.
    assert capsys.readouterr().out.startswith("measuring latency of ")
    front = pd.read_csv(run / "pareto.csv")
    assert (front["latency_ms"] > 0).all() and (front["throughput"] > 0).all()
    assert main(["pareto", str(run), "--cost", "latency", "--out", str(tmp_path / "by-latency")]) == 0
    assert (tmp_path / "by-latency" / "pareto.png").is_file()


def test_measure_latency_on_a_tiny_model():
    shape = DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=2)
    figures = measure_latency(build_model(TINY, shape), shape, device="cpu", batch_sizes=(1, 16), warmup=1, repeats=3)
    assert figures["latency_ms"] > 0 and figures["throughput"] > 0


def test_one_device_vocabulary_for_latency_and_training(tmp_path, capsys):
    cuda = torch.cuda.is_available()
    assert parse_device("cpu") == select_device("cpu") == torch.device("cpu")
    assert parse_device("auto").type == select_device("auto").type == select_device(None).type == (
        "cuda" if cuda else "cpu")
    for name in ("tpu", "cuda:x", "", "mps", "CPU"):
        for parse in (parse_device, select_device):
            with pytest.raises(UsageError, match=f"device {name!r}: expected auto, cpu, cuda or cuda:N$"):
                parse(name)
    missing = "cuda:99" if cuda else "cuda"
    with pytest.raises(UsageError) as by_latency:
        parse_device(missing)
    with pytest.raises(UsageError) as by_training:
        select_device(missing)
    assert str(by_latency.value) == str(by_training.value) and "\n" not in str(by_latency.value)
    if cuda:
        assert select_device("cuda") == torch.device("cuda", 0)  # a bare cuda: this rank's GPU

    run = write_run(tmp_path / "run")
    assert main(["pareto", str(run), "--measure-latency", "--device", "tpu"]) == 2
    assert main(["train", "deit-tiny", "--device", "tpu"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"nas {command}: error: device 'tpu': expected auto, cpu, cuda or cuda:N"
                     for command in ("pareto", "train")]


def run_with_table(folder, content: bytes):
    """A run folder whose trials.csv holds exactly `content`."""
    folder.mkdir()
    (folder / "trials.csv").write_bytes(content)
    return folder


@pytest.mark.parametrize("setup,fragment", [
    (lambda tmp: tmp / "missing", "not found"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "trials.csv: not found"),
    (lambda tmp: write_run(tmp / "infeasible", rows=[("t0000", TINY, "infeasible", [])]), "no scored trial"),
    (lambda tmp: run_with_table(tmp / "blank", b""), "trials.csv is empty"),
    (lambda tmp: run_with_table(tmp / "binary", b"\xc3\x28\xff" * 50), "is not readable CSV"),
])
def test_bad_runs_give_one_line_and_exit_2(tmp_path, capsys, setup, fragment):
    run = setup(tmp_path)
    assert main(["pareto", str(run)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err


def test_corrupt_table_is_one_line_and_nothing_is_lost(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    assert main(["pareto", str(run)]) == 0
    before = (run / "pareto.csv").read_bytes()
    (run / "trials.csv").write_text("trial_id,state,structure,params,val_acc,arch\nt0000,complete,linear,lots,0.5,{}\n")
    assert main(["pareto", str(run)]) == 2
    err = capsys.readouterr().err
    assert "'lots'" in err and err.count("\n") == 1
    assert (run / "pareto.csv").read_bytes() == before


def test_unknown_cost(tmp_path, cli):
    run = write_run(tmp_path / "run")
    code, _, err = cli("pareto", str(run), "--cost", "energy")
    assert code == 2 and err.count("\n") == 1 and "argument --cost: cost 'energy'" in err


def test_a_renamed_run_is_named_by_its_folder(tmp_path):
    """search.json keeps the name the run started with; plots and tables name the folder the run is in now."""
    from nas.runs.results import read_run

    started = write_run(tmp_path / "first")
    moved = started.rename(tmp_path / "second")
    assert read_run(moved).name == "second" and read_run(moved).settings["name"] == "first"
