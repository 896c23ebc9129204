"""The analysis of benchmarks/search_quality.py's runs (search_quality_report.py) against hand computations: IQM,
its bootstrap interval, values at equal epochs spent, the hypervolume and best val_acc of full-fidelity trials, the
rung correlation."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from nas.runs.results import trial_row, trials_frame
from search_spaces.arch import ArchConfig

ROOT = Path(__file__).resolve().parents[2]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("search_quality_report", ROOT / "benchmarks" / "search_quality_report.py")
    module = importlib.util.module_from_spec(spec)
    # Dataclasses look their module up in sys.modules while the file runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


sq = _load_benchmark()


def test_iqm_is_the_mean_of_the_middle_half():
    assert sq.iqm(np.array([100.0, 1.0, 3.0, 2.0, 4.0])) == pytest.approx((2 + 3 + 4) / 3)
    assert sq.iqm(np.arange(1.0, 9.0)) == pytest.approx((3 + 4 + 5 + 6) / 4)


def test_iqm_interval_matches_a_hand_bootstrap():
    values = np.array([0.1, 0.2, 0.4, 0.5, 0.9])
    resamples = np.sort(np.random.default_rng(1).choice(values, size=(200_000, 5)), axis=1)
    by_hand = np.percentile(resamples[:, 1:4].mean(axis=1), [2.5, 97.5])
    low, high = sq.iqm_interval(values, seed=0)
    assert (low, high) == pytest.approx(tuple(by_hand), abs=0.01)
    assert sq.iqm_interval(values, seed=0) == (low, high)
    assert sq.iqm_interval(np.full(5, 0.3)) == pytest.approx((0.3, 0.3))
    assert all(np.isnan(sq.iqm_interval(np.array([0.3]))))


def test_value_at_is_the_last_value_so_far():
    grid = np.array([1.0, 2.0, 4.0, 5.0, 9.0])
    assert sq.value_at(np.array([2, 5]), np.array([0.3, 0.6]), grid).tolist() == [0.0, 0.3, 0.3, 0.6, 0.6]
    assert sq.value_at(np.array([]), np.array([]), grid).tolist() == [0.0] * 5
    assert sq.first_reach(grid, np.array([0.0, 0.3, 0.3, 0.6, 0.6]), 0.5) == 5.0
    assert sq.first_reach(grid, np.zeros(5), 0.5) == np.inf


def test_grid_ends_at_the_epoch_budget():
    assert sq.grid_for(10, 4).tolist() == [4.0, 8.0, 10.0]
    assert sq.grid_for(40, None).tolist() == list(map(float, range(1, 41)))


def _trials(rows: list[tuple[str, float, int, int]]) -> pd.DataFrame:
    """(state, val_acc, params, epochs spent when the trial ended) per trial."""
    return trials_frame(trial_row(number, state, arch=ArchConfig(embed_dim=16 * (number + 1), depth=1, num_heads=2),
                                  params=params, flops=1, seed=number, curve=[val_acc], epochs_spent=spent)
                        for number, (state, val_acc, params, spent) in enumerate(rows))


def test_hypervolume_and_best_val_acc_count_full_fidelity_trials_ended_by_then():
    budget = 1000
    # Complete A (0.5 at half the budget) ends at 3, complete B (0.8 at 3/4 of it) at 6; the stopped trial's 0.9
    # is not scored at full length. A dominates [0, 0.5] x [0.5, 1]: 0.25; B adds [0.5, 0.8] x [0.75, 1]: 0.075.
    trials = _trials([("complete", 0.5, 500, 3), ("stopped", 0.9, 100, 4), ("complete", 0.8, 750, 6)])
    grid = np.array([2.0, 3.0, 5.0, 6.0, 10.0])
    assert sq.hypervolume_at(trials, budget, grid) == pytest.approx([0.0, 0.25, 0.25, 0.325, 0.325])
    assert sq.best_val_acc_at(trials, budget, grid) == pytest.approx([0.0, 0.5, 0.5, 0.8, 0.8])


def _run_with_curves(folder: Path, curves: list[tuple[str, list[float]]], early_stopping: str = "none",
                     epochs: int = 3) -> object:
    study = optuna.create_study(storage=f"sqlite:///{folder / 'study.db'}", study_name="bench", direction="maximize")
    for state, curve in curves:
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE if state == "complete" else optuna.trial.TrialState.PRUNED,
            value=max(curve) if state == "complete" else None, user_attrs={"state": state, "val_acc_curve": curve}))
    return sq.FinishedRun(folder, "digits", "lite", "random", 0, 1000, epochs, 12, early_stopping, "bench",
                          pd.DataFrame())


def test_rung_correlation_ranks_each_rung_against_the_full_length_score(tmp_path):
    # After epoch 1 the order is the reverse of the final one, after epoch 2 the same: tau -1, then 1.
    curves = [("complete", [0.3, 0.1, 0.2]), ("complete", [0.2, 0.4, 0.5]), ("complete", [0.1, 0.6, 0.7]),
              ("stopped", [0.9])]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    runs = [_run_with_curves(tmp_path / "a", curves),
            _run_with_curves(tmp_path / "b", [("complete", [0.9, 0.9, 0.9])] * 3, early_stopping="asha")]
    table = sq.rung_correlation(runs)
    assert table["rung_epoch"].tolist() == [1, 2]
    assert table["trials"].tolist() == [3, 3]
    assert table["kendall_tau"].tolist() == pytest.approx([-1.0, 1.0])
    assert table["spearman_rho"].tolist() == pytest.approx([-1.0, 1.0])


def test_an_exported_run_keeps_the_curves_its_study_held(tmp_path):
    # 0.1 + 0.2 is not 0.3 in binary: the file must keep each score to the last bit.
    curves = [("complete", [0.1 + 0.2, 0.1, 1 / 3]), ("complete", [0.2, 0.4, 0.5]), ("complete", [0.1, 0.6, 0.7]),
              ("stopped", [0.9])]
    (tmp_path / "run").mkdir()
    (tmp_path / "exported").mkdir()
    run = _run_with_curves(tmp_path / "run", curves)
    held = sq.complete_curves(run.path, run.study_name)
    assert list(held.values()) == [curve for state, curve in curves if state == "complete"]
    sq.write_curves(tmp_path / "exported", held)
    exported = sq.FinishedRun(**{**run.__dict__, "path": tmp_path / "exported"})
    assert sq.complete_curves(exported.path, exported.study_name) == held
    pd.testing.assert_frame_equal(sq.rung_correlation([exported]), sq.rung_correlation([run]))


def test_the_committed_runs_give_the_committed_report(tmp_path):
    """benchmarks/data/search_quality holds each run of issue 29's comparison as small files (search.json,
    trials.csv, benchmark.json, curves.csv); read back, they give the report RESULTS.md quotes, to the last digit."""
    committed = ROOT / "benchmarks" / "data" / "search_quality"
    shutil.copytree(committed, tmp_path / "runs", ignore=shutil.ignore_patterns("search_quality.*", "*.csv.tmp"))
    runs = sq.read_finished_runs(tmp_path / "runs", 1, 4)
    assert {run.method for run in runs} >= {"random", "mo-tpe+mo-asha", "zico+mo-tpe+mo-asha"}
    assert sq.report(tmp_path / "runs", None, 0, 1, 4) + "\n" == (committed / "search_quality.md").read_text()
