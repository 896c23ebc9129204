"""What several seeds of a model show: per model the mean, standard deviation and 95% interval of its test top-1 and
best validation accuracy; against each baseline the paired difference over the seeds both trained, with its 95%
interval, and the probability of improvement.

Intervals are Student-t intervals (scipy.stats.ttest_1samp / ttest_rel): with the 2-10 seeds a retrain affords, a
bootstrap interval cannot reach beyond the values seen and covers the mean far less often than 95% (with two
seeds it is the two values themselves), while the t interval widens with few seeds as it should. The probability
of improvement is rliable's (Agarwal et al., "Deep reinforcement learning at the edge of the statistical
precipice", NeurIPS 2021): P(X > Y) + P(X = Y) / 2 for a run X of the model and a run Y of the baseline, over every
pair of their shared seeds, the Mann-Whitney U statistic divided by the number of pairs (scipy.stats.mannwhitneyu).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from qkvnas_core.errors import UsageError
from nas.runs.results import RunFolder, read_csv_table
from qkvnas_core.tables import interval_text, percent, signed_points, table_text

CONFIDENCE = 0.95
# The scores compared: the one test of each trained model, and the validation accuracy that chose its weights.
METRICS = {"top1": "test top-1", "best_val_acc": "best val_acc"}
MODEL_COLUMNS = ["arch_id", "role", "source", "structure", "params", "flops"]


def mean_interval(values: Sequence[float]) -> tuple[float, float]:
    """The 95% Student-t interval of the mean; NaN with fewer than two values, the value itself when all agree."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return math.nan, math.nan
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    interval = stats.ttest_1samp(values, 0.0).confidence_interval(CONFIDENCE)
    return float(interval.low), float(interval.high)


def probability_of_improvement(model: Sequence[float], baseline: Sequence[float]) -> float:
    """P(X > Y) + P(X = Y) / 2 over every pair of a model run X and a baseline run Y (rliable's definition)."""
    model, baseline = np.asarray(model, dtype=float), np.asarray(baseline, dtype=float)
    if len(model) == 0 or len(baseline) == 0:
        return math.nan
    return float(stats.mannwhitneyu(model, baseline).statistic) / (len(model) * len(baseline))


def seed_summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per model of a retrain table (a row per model and seed): its seeds, and per metric its mean,
    standard deviation (ddof 1) and 95% interval, cut to [0, 1] (columns top1_mean, top1_std, top1_low, ...)."""
    rows = []
    for arch_id, runs in table.groupby("arch_id", sort=False):
        row = {name: runs[name].iloc[0] for name in MODEL_COLUMNS if name in runs}
        row["seeds"] = len(runs)
        row["seed_list"] = ",".join(str(int(seed)) for seed in sorted(runs["seed"]))
        for metric in METRICS:
            values = pd.to_numeric(runs[metric], errors="coerce").dropna().to_numpy(dtype=float)
            low, high = mean_interval(values)
            # An accuracy's mean lies in [0, 1]: few seeds stretch the t interval past it.
            low, high = max(low, 0.0), min(high, 1.0)
            row.update({f"{metric}_mean": float(values.mean()) if len(values) else math.nan,
                        f"{metric}_std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                        f"{metric}_low": low, f"{metric}_high": high})
        rows.append(row)
    summary = pd.DataFrame(rows)
    if summary.empty:
        return summary
    return summary.sort_values(["role", "top1_mean"], ascending=[True, False], na_position="last",
                               kind="stable").reset_index(drop=True)


def paired_difference(model: pd.DataFrame, baseline: pd.DataFrame, metric: str = "top1") -> dict[str, float]:
    """model - baseline over the seeds both have: the mean difference, its 95% t interval (ttest_rel) and the
    probability of improvement; `shared` is the number of those seeds."""
    joined = model[["seed", metric]].merge(baseline[["seed", metric]], on="seed", suffixes=("_model", "_baseline"))
    joined = joined.dropna()
    ours, theirs = joined[f"{metric}_model"].to_numpy(float), joined[f"{metric}_baseline"].to_numpy(float)
    differences = ours - theirs
    low, high = math.nan, math.nan
    if len(joined) >= 2:
        if np.all(differences == differences[0]):
            low = high = float(differences[0])
        else:
            interval = stats.ttest_rel(ours, theirs).confidence_interval(CONFIDENCE)
            low, high = float(interval.low), float(interval.high)
    return {"shared": len(joined), "difference": float(differences.mean()) if len(joined) else math.nan,
            "low": low, "high": high, "p_improvement": probability_of_improvement(ours, theirs)}


def baseline_comparison(table: pd.DataFrame, metric: str = "top1") -> pd.DataFrame:
    """Every model that is not a baseline against every baseline (role 'baseline') of a retrain table: one row per
    pair with `paired_difference`'s fields."""
    if table.empty or "role" not in table:
        return pd.DataFrame()
    is_baseline = table["role"] == "baseline"
    rows = []
    for model_id, model in table[~is_baseline].groupby("arch_id", sort=False):
        for baseline_id, baseline in table[is_baseline].groupby("arch_id", sort=False):
            rows.append({"arch_id": model_id, "source": model["source"].iloc[0], "baseline": baseline_id,
                         "baseline_source": baseline["source"].iloc[0], "metric": metric,
                         **paired_difference(model, baseline, metric)})
    return pd.DataFrame(rows)


RETRAIN_TEXT = ("arch_id", "role", "source", "structure")
RETRAIN_FRACTIONS = ("top1", "best_val_acc")
RETRAIN_COUNTS = ("params", "seed")


def read_retrain(run_dir: Path) -> pd.DataFrame | None:
    """A run's retrain.csv (nas retrain's rows, one per model and seed) with its values checked; None when the run
    has none. Unreadable, a column missing or a value out of range is one UsageError naming the file and column."""
    path = RunFolder(Path(run_dir)).retrain_file
    if not path.is_file():
        return None
    expected = "expected the retrain.csv `nas retrain` writes (a header and a row per model and seed)"
    table = read_csv_table(path, expected, RETRAIN_TEXT, (*RETRAIN_TEXT, *RETRAIN_FRACTIONS, *RETRAIN_COUNTS))
    for name in (*RETRAIN_FRACTIONS, *RETRAIN_COUNTS):
        numbers = pd.to_numeric(table[name], errors="coerce").astype(float)
        highest = 1.0 if name in RETRAIN_FRACTIONS else float(2**63)
        bad = (numbers.isna() & (table[name].notna() | (name in RETRAIN_COUNTS))) | ~numbers.between(0, highest) \
            & numbers.notna()
        if name in RETRAIN_COUNTS:
            bad |= (numbers % 1 != 0) & numbers.notna()
        if bad.any():
            raise UsageError(f"{path}: column {name} holds {str(table.loc[bad, name].iloc[0])[:40]!r}: expected "
                             f"{'a fraction from 0 to 1' if name in RETRAIN_FRACTIONS else 'a whole number from 0'}")
        table[name] = numbers
    if table[list(RETRAIN_TEXT[:3])].isna().any().any():
        raise UsageError(f"{path}: an empty arch_id, role or source: {expected}")
    if table.duplicated(["arch_id", "seed"]).any():
        raise UsageError(f"{path}: a model and seed appear twice: {expected}")
    return table


def summary_text(summary: pd.DataFrame, comparison: pd.DataFrame) -> str:
    """Per model its seeds' mean, standard deviation and 95% t interval; the paired differences to the baselines."""
    shown = summary.assign(top1_interval=[interval_text(low, high) for low, high in
                                          zip(summary["top1_low"], summary["top1_high"])],
                           val_interval=[interval_text(low, high) for low, high in
                                         zip(summary["best_val_acc_low"], summary["best_val_acc_high"])])
    lines = ["over seeds (in %: mean, standard deviation, 95% t interval of the mean):",
             table_text(shown, {"source": str, "role": str, "params": lambda value: f"{int(value):,}", "seeds": str,
                                "top1_mean": percent, "top1_std": percent, "top1_interval": str,
                                "best_val_acc_mean": percent, "val_interval": str})]
    if not comparison.empty:
        shown = comparison.assign(interval=[interval_text(low, high, signed=True)
                                            for low, high in zip(comparison["low"], comparison["high"])])
        lines += ["", "against each baseline (test top-1 in points, paired over the seeds both trained):",
                  table_text(shown, {"source": str, "baseline_source": str, "shared": str,
                                     "difference": signed_points, "interval": str,
                                     "p_improvement": lambda value: f"{value:.2f}"})]
    return "\n".join(lines)
