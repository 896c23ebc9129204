"""Seeds in `nas retrain`: a folder and a row per (model, seed), the statistics over seeds against hand-written
formulas, the --seeds flag, and `nas show` / `nas pareto` reading seeded retrains."""
from __future__ import annotations

import argparse
import math
import statistics

import numpy as np
import pandas as pd
import pytest

import nas
from nas.settings.flags import seeds_argument
from nas.winners.retrain import model_folder
from nas.runs.seed_stats import baseline_comparison, mean_interval, probability_of_improvement, seed_summary
from test_retrain import FAST_PROXY, TINY_FSNE, TINY_LINEAR, write_run

# t quantile 0.975 with 3 degrees of freedom (printed tables: 3.182)
T_975_3DF = 3.182446305284263
FIXED = pd.DataFrame({
    "arch_id": ["m"] * 4 + ["b"] * 4, "role": ["winner"] * 4 + ["baseline"] * 4, "source": ["M"] * 4 + ["B"] * 4,
    "structure": ["F-SNE"] * 4 + ["linear"] * 4, "params": [10] * 4 + [12] * 4, "flops": [5] * 8,
    "seed": [0, 1, 2, 3] * 2, "top1": [0.71, 0.69, 0.74, 0.70, 0.70, 0.66, 0.71, 0.70],
    "best_val_acc": [0.72, 0.70, 0.73, 0.71, 0.69, 0.68, 0.70, 0.69]})


def test_interval_difference_and_probability_of_improvement_equal_the_formulas():
    model, baseline = FIXED["top1"][:4].tolist(), FIXED["top1"][4:].tolist()
    mean, sd = statistics.mean(model), statistics.stdev(model)
    low, high = mean_interval(model)
    assert (low, high) == pytest.approx((mean - T_975_3DF * sd / 2, mean + T_975_3DF * sd / 2))

    differences = [a - b for a, b in zip(model, baseline)]
    d_mean, d_sd = statistics.mean(differences), statistics.stdev(differences)
    wins = sum((a > b) + 0.5 * (a == b) for a in model for b in baseline) / 16
    row = baseline_comparison(FIXED).iloc[0]
    assert (row["arch_id"], row["baseline"], row["shared"]) == ("m", "b", 4)
    assert row["difference"] == pytest.approx(d_mean)
    assert (row["low"], row["high"]) == pytest.approx((d_mean - T_975_3DF * d_sd / 2, d_mean + T_975_3DF * d_sd / 2))
    assert row["p_improvement"] == pytest.approx(wins) and probability_of_improvement(model, baseline) == wins

    summary = seed_summary(FIXED).set_index("arch_id")
    assert summary.loc["m", "seeds"] == 4 and summary.loc["m", "top1_std"] == pytest.approx(sd)
    assert summary.loc["b", "best_val_acc_mean"] == pytest.approx(0.69)
    assert list(summary["role"]) == ["baseline", "winner"]


def test_the_difference_is_paired_over_the_seeds_both_trained():
    uneven = FIXED[~((FIXED["arch_id"] == "b") & (FIXED["seed"] == 3))]
    row = baseline_comparison(uneven).iloc[0]
    differences = [0.71 - 0.70, 0.69 - 0.66, 0.74 - 0.71]
    assert row["shared"] == 3 and row["difference"] == pytest.approx(np.mean(differences))


def test_one_seed_has_no_interval_and_equal_seeds_a_point():
    assert all(math.isnan(bound) for bound in mean_interval([0.7]))
    assert mean_interval([0.7, 0.7, 0.7]) == (0.7, 0.7)


@pytest.mark.parametrize("text, expected", [("5", 5), ("0,3,7", (0, 3, 7)), ("7,", (7,)), (" 2 , 4 ", (2, 4))])
def test_seeds_flag_reads_a_count_or_a_list(text, expected):
    assert seeds_argument(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "3,3", "1,-2", ",", "two", "1.5"])
def test_seeds_flag_refuses_with_one_line(text):
    with pytest.raises(argparse.ArgumentTypeError) as error:
        seeds_argument(text)
    assert "\n" not in str(error.value)


def test_retrain_with_two_seeds_writes_two_rows_per_model_and_an_interval(tmp_path, cli):
    run = write_run(tmp_path / "run")
    baseline = tmp_path / "baseline.json"
    baseline.write_text(TINY_LINEAR.to_json())
    code, out, err = cli("retrain", run, "--top", "1", "--baseline", baseline, "--seeds", "2", *FAST_PROXY,
                         "--epochs", "1")
    assert code == 0, err
    table = pd.read_csv(run / "retrain.csv")
    assert sorted(zip(table["arch_id"], table["seed"])) == sorted(
        (arch.arch_id, seed) for arch in (TINY_LINEAR, TINY_FSNE) for seed in (0, 1))
    for arch_id, seed in zip(table["arch_id"], table["seed"]):
        assert (model_folder(run, arch_id, seed) / "result.json").is_file()
    assert (run / "retrain" / f"{TINY_FSNE.arch_id}-seed1").is_dir()
    summary = seed_summary(table).set_index("arch_id")
    assert (summary["seeds"] == 2).all() and (summary["top1_low"] <= summary["top1_mean"]).all()
    assert "95% t interval" in out and "against each baseline" in out
    assert f"[{summary.loc[TINY_FSNE.arch_id, 'top1_low'] * 100:.2f}, " in out

    code, out, err = cli("retrain", run, "--top", "1", "--baseline", baseline, "--seeds", "3", *FAST_PROXY,
                         "--epochs", "1", "--resume")
    assert code == 0, err
    assert "2 (of 2 models x 3 seeds) to train" in out and "4 already finished (skipped)" in out
    assert len(pd.read_csv(run / "retrain.csv")) == 6


def test_python_api_takes_a_list_of_seeds(tmp_path):
    run = write_run(tmp_path / "run")
    outcome = nas.retrain(run, trial_ids="t0000", seeds=[3], recipe="proxy", epochs=1, device="cpu")
    assert list(outcome.table["seed"]) == [3] and (model_folder(run, TINY_LINEAR.arch_id, 3) / "result.json").is_file()
    assert outcome.summary["seeds"].tolist() == [1] and outcome.comparison.empty
    with pytest.raises(ValueError, match="seeds"):
        nas.retrain(run, trial_ids="t0000", seeds=[1, 1], recipe="proxy", epochs=1, device="cpu")


def test_show_and_pareto_read_a_seeded_retrain(tmp_path, cli):
    run = write_run(tmp_path / "run")
    FIXED.assign(top5=0.9, epochs=1).to_csv(run / "retrain.csv", index=False)
    code, out, err = cli("show", run)
    assert code == 0, err
    low, high = mean_interval(FIXED["top1"][:4])
    assert "retrained" in out and f"[{low * 100:.2f}, {high * 100:.2f}]" in out and "against each baseline" in out
    code, out, err = cli("pareto", run, "--out", tmp_path / "plots")
    assert code == 0, err
    assert (tmp_path / "plots" / "pareto_retrained.png").is_file() and "pareto_retrained.png" in out

    alone = tmp_path / "ablation"
    alone.mkdir()
    FIXED.to_csv(alone / "retrain.csv", index=False)
    code, out, err = cli("show", alone)
    assert code == 0 and "2 models, 8 runs" in out, err
