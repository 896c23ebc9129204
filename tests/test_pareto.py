"""Pareto fronts on hand-made tables, the files `nas pareto` writes, references, latency, and bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from nas.cli import main
from conftest import TINY, write_run
from nas.pareto import STRUCTURE_COLOURS, pareto_front, write_pareto
from search_spaces.build import build_model
from search_spaces.latency import measure_latency


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


def test_only_scored_complete_and_stopped_trials_take_part():
    trials = table(("t0", "failed", 0.99, 1, 1), ("t1", "infeasible", None, 5, 1), ("t2", "running", 0.99, 1, 1),
                   ("t3", "stopped", 0.60, 50, 1), ("t4", "complete", 0.80, 100, 1), ("t5", "complete", None, 1, 1))
    assert ids(pareto_front(trials, ["params"])) == ["t3", "t4"]


def test_all_infeasible_gives_an_empty_front():
    trials = table(("t0", "infeasible", None, 5_000_000, None), ("t1", "infeasible", None, 6_000_000, None))
    assert pareto_front(trials, ["params"]).empty


def test_write_pareto_files(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    csv_path = write_pareto(run)
    front = pd.read_csv(csv_path)
    assert list(front["trial_id"]) == ["t0000", "t0001"]
    assert {"arch", "structure", "params", "val_acc", "qkv_layers"} <= set(front.columns)
    for name in ("pareto.png", "pareto.svg"):
        assert (run / name).stat().st_size > 2_000
    assert (run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "pareto.png").stat().st_size < 150_000
    assert "2 of 3 scored trials" in capsys.readouterr().out
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


def test_latency_columns(tmp_path):
    run = write_run(tmp_path / "run")
    assert main(["pareto", str(run), "--measure-latency"]) == 0
    front = pd.read_csv(run / "pareto.csv")
    assert (front["latency_ms"] > 0).all() and (front["throughput"] > 0).all()
    assert main(["pareto", str(run), "--cost", "latency", "--out", str(tmp_path / "by-latency")]) == 0
    assert (tmp_path / "by-latency" / "pareto.png").is_file()


def test_measure_latency_on_a_tiny_model():
    model = build_model(TINY, num_classes=10, img_size=8, in_chans=1)
    figures = measure_latency(model, img_size=8, in_chans=1, device="cpu", batch_sizes=(1, 16), warmup=1, repeats=3)
    assert figures["latency_ms"] > 0 and figures["throughput"] > 0


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


def test_unknown_cost(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    assert main(["pareto", str(run), "--cost", "energy"]) == 2
    assert "cost 'energy'" in capsys.readouterr().err
