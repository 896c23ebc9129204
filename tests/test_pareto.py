"""Pareto fronts on hand-made tables, the files `nas pareto` writes, references, latency, and bad input."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from nas.cli import main
from nas.pareto import pareto_front
from nas.pareto_cmd import write_pareto
from nas.results import TrialTable
from search_spaces.arch import ArchConfig, QKVConfig
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


TINY = ArchConfig(embed_dim=16, depth=1, num_heads=2, patch_size=2)
FSNE = ArchConfig(embed_dim=16, depth=1, num_heads=2, patch_size=2,
                  qkv=QKVConfig(layers=("shared", "shared"), code_size=4))


def write_run(folder, dataset="digits", rows=None, num_classes=10, img_size=8, in_chans=1):
    """A run folder as `nas search` writes it, with hand-chosen scores."""
    folder.mkdir(parents=True)
    (folder / "search.json").write_text(json.dumps({
        "name": folder.name, "dataset": dataset, "budget": 100_000, "max_flops": None, "num_classes": num_classes,
        "img_size": img_size, "in_chans": in_chans, "epochs": 3, "trials": 4, "seconds": 12.0}))
    trials = TrialTable(folder / "trials.csv")
    rows = rows if rows is not None else [
        ("t0000", TINY, "complete", [0.50, 0.70, 0.80]), ("t0001", FSNE, "complete", [0.6, 0.85, 0.90]),
        ("t0002", TINY.replace(embed_dim=32), "stopped", [0.40]),
        ("t0003", TINY.replace(embed_dim=256), "infeasible", [])]
    for trial_id, arch, state, curve in rows:
        trials.start(trial_id, arch, 1000 + 100 * len(trials.rows) if state != "infeasible" else 10**6,
                     2000 + len(trials.rows), seed=0, state="running" if curve else state)
        for epoch, acc in enumerate(curve, 1):
            trials.record_epoch(trial_id, epoch, acc, float(epoch))
        trials.update(trial_id, state=state)
    trials.write()
    return folder


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
