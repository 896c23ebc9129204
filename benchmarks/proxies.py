"""Training-free scores inside the budget: how well does each proxy (search_spaces/proxies.py), #params or FLOPs rank
the architectures of a ranking set (benchmarks/ranking_set.py) by their full-length validation accuracy?

    python benchmarks/proxies.py                                       # benchmarks/data/ranking_qkv.csv
    python benchmarks/proxies.py --set benchmarks/data/ranking_lite.csv

Every architecture is built with seed 0 and scored on one minibatch of its set's training data (the proxy recipe's
batch, drawn with a fixed seed); scores and the seconds each took go to <set>-scores.csv. Against each
architecture's score at seed 0 (its best val_acc over the full-length run) it gives Kendall's tau with a
percentile-bootstrap 95% interval (architectures resampled, scipy.stats.bootstrap), over the whole set (every
architecture within the budget) and over its upper half by params, where #params decides least. Beside them the
noise ceiling: the tau between two seeds' scores of the architectures trained twice, the best any proxy or rung
can reach; and the rung correlation, tau of val_acc after each epoch with the score. Written: <set>-proxies.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from qkvnas_core.files import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))  # ranking_set.py beside this file

DEFAULT_SET = Path("benchmarks/data/ranking_qkv.csv")
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
BATCH_SEED = 0
BASELINES = ("params", "flops")


def kendall_interval(x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Kendall's tau of (x, y) and its percentile-bootstrap 95% interval over resampled pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    tau = float(stats.kendalltau(x, y).statistic)
    if len(x) < 4:
        return tau, np.nan, np.nan
    with np.errstate(invalid="ignore"):
        result = stats.bootstrap((x, y), lambda a, b: stats.kendalltau(a, b).statistic, paired=True,
                                 vectorized=False, n_resamples=BOOTSTRAP_RESAMPLES, confidence_level=CONFIDENCE,
                                 method="percentile", rng=np.random.default_rng(seed))
    return tau, float(result.confidence_interval.low), float(result.confidence_interval.high)


def architecture_scores(table: pd.DataFrame) -> pd.DataFrame:
    """One row per architecture: params, flops, and per seed its score (best val_acc over the epochs)."""
    best = table.groupby(["arch_id", "seed"])["val_acc"].max().unstack("seed")
    best.columns = [f"score_seed{int(seed)}" for seed in best.columns]
    first = table.drop_duplicates("arch_id").set_index("arch_id")[["arch", "params", "flops"]]
    return first.join(best).reset_index()


def proxy_scores(archs: pd.DataFrame, settings: dict, path: Path) -> pd.DataFrame:
    """Each proxy's score of each architecture (cached in `path`: only new architectures are scored)."""
    import torch

    from ranking_set import search_settings
    from nas.engine.search import load_search_data
    from search_spaces.arch import ArchConfig
    from search_spaces.build import build_model
    from search_spaces.proxies import PROXIES
    from trainers.batches import make_batches
    from trainers.recipe import get_recipe
    from trainers.runtime import seed_everything

    cached = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["arch_id"])
    todo = archs[~archs["arch_id"].isin(cached["arch_id"])]
    if todo.empty:
        return cached
    data = load_search_data(search_settings(settings))
    batches = make_batches(data.train, data.info, None, torch.device("cpu"),
                           batch_size=get_recipe(settings["recipe"]).batch_size, train=True, seed=BATCH_SEED)
    images, labels = next(iter(batches.epoch(0)))  # the first batch training would see, unaugmented
    rows = []
    for number, row in enumerate(todo.itertuples(), 1):
        seed_everything(0)
        model = build_model(ArchConfig.from_json(row.arch), data.info.shape)
        scored = {"arch_id": row.arch_id}
        for name, proxy in PROXIES.items():
            start = time.perf_counter()
            scored[name] = proxy(model, images, labels)
            scored[f"{name}_seconds"] = time.perf_counter() - start
        rows.append(scored)
        print(f"[{number}/{len(todo)}] {row.arch_id}: " + ", ".join(f"{name} {scored[name]:.4g}" for name in PROXIES),
              flush=True)
    scores = pd.concat([cached, pd.DataFrame(rows)], ignore_index=True)
    scores.to_csv(path, index=False)
    return scores


def default_budget_seconds(draws: int = 10) -> pd.DataFrame:
    """Seconds each proxy takes per architecture at `nas search`'s defaults (digits, qkv space, 3.1M params,
    the proxy recipe's batch of 64), over `draws` random feasible architectures."""
    import torch

    from nas.engine.budget import Budget, feasible_draws
    from nas.engine.search import load_search_data
    from nas.settings import SearchSettings
    from search_spaces.build import build_model
    from search_spaces.proxies import PROXIES
    from search_spaces.spaces import load_space
    from trainers.batches import make_batches
    from trainers.recipe import PROXY

    settings = SearchSettings(name="timing", budget=3_100_000)
    data = load_search_data(settings)
    images, labels = next(iter(make_batches(data.train, data.info, None, torch.device("cpu"),
                                            batch_size=PROXY.batch_size, train=True, seed=BATCH_SEED).epoch(0)))
    rows = []
    for found in feasible_draws(load_space(settings.space), Budget(settings.budget, None, data.info.shape), draws):
        model = build_model(found.arch, data.info.shape)
        for name, proxy in PROXIES.items():
            start = time.perf_counter()
            proxy(model, images, labels)
            rows.append({"arch_id": found.arch.arch_id, "params": found.params, "proxy": name,
                         "seconds": time.perf_counter() - start})
    return pd.DataFrame(rows)


def correlations(frame: pd.DataFrame, columns: list[str], band: str) -> list[dict]:
    rows = []
    for column in columns:
        tau, low, high = kendall_interval(frame[column], frame["score_seed0"])
        rows.append({"band": band, "score": column, "archs": len(frame), "tau": tau, "low": low, "high": high})
    return rows


def report(table: pd.DataFrame, scores: pd.DataFrame, settings: dict) -> tuple[str, pd.DataFrame]:
    from search_spaces.proxies import PROXIES

    archs = architecture_scores(table).merge(scores, on="arch_id")
    columns = [*PROXIES, *BASELINES]
    upper = archs[archs["params"] >= settings["budget"] / 2]
    rows = correlations(archs, columns, "all") + correlations(upper, columns, "upper half")
    twice = archs.dropna(subset=["score_seed1"]) if "score_seed1" in archs else archs.iloc[:0]
    ceiling = kendall_interval(twice["score_seed0"], twice["score_seed1"]) if len(twice) > 3 else (np.nan,) * 3
    rows.append({"band": "all", "score": "noise ceiling (seed 0 vs 1)", "archs": len(twice), "tau": ceiling[0],
                 "low": ceiling[1], "high": ceiling[2]})
    result = pd.DataFrame(rows)
    epochs = int(table["epoch"].max())
    rungs = []
    for epoch in range(1, epochs):
        at_epoch = table[(table["seed"] == 0) & (table["epoch"] == epoch)].set_index("arch_id")["val_acc"]
        joined = archs.set_index("arch_id").join(at_epoch.rename("at_epoch")).dropna(subset=["at_epoch"])
        tau, low, high = kendall_interval(joined["at_epoch"], joined["score_seed0"])
        rungs.append({"epoch": epoch, "tau": tau, "low": low, "high": high})
    interval = lambda row: f"{row['tau']:.2f} [{row['low']:.2f}, {row['high']:.2f}]"  # noqa: E731
    lines = [f"Ranking set: {settings['space']} space at {settings['budget']:,} params on {settings['dataset']}, "
             f"{len(archs)} architectures ({len(twice)} at two seeds), {settings['epochs']}-epoch trials, train "
             f"fraction {settings['train_fraction']}; Kendall tau with the full-length score (best val_acc, seed 0), "
             "bootstrap 95% interval.", "",
             "| score | all: tau [95%] | upper half by params: tau [95%] |",
             "|---|---:|---:|"]
    for column in columns:
        every = result[(result["band"] == "all") & (result["score"] == column)].iloc[0]
        top = result[(result["band"] == "upper half") & (result["score"] == column)].iloc[0]
        lines.append(f"| {column} | {interval(every)} | {interval(top)} (n={top['archs']}) |")
    ceiling_row = result[result["score"].str.startswith("noise")].iloc[0]
    lines += [f"| noise ceiling (seed 0 vs seed 1, n={ceiling_row['archs']}) | {interval(ceiling_row)} | |", "",
              "Rung correlation within the set (val_acc after the epoch against the full-length score, seed 0):", "",
              "| epoch | " + " | ".join(str(row["epoch"]) for row in rungs) + " |",
              "|---|" + "---:|" * len(rungs),
              "| tau | " + " | ".join(f"{row['tau']:.2f}" for row in rungs) + " |"]
    beat = [column for column in PROXIES
            if result[(result["band"] == "all") & (result["score"] == column)]["low"].iloc[0]
            > result[(result["band"] == "all") & (result["score"] == "params")]["high"].iloc[0]]
    lines += ["", ("Beats #params with intervals apart: " + ", ".join(beat)) if beat else
              "No proxy beats #params with intervals apart."]
    return "\n".join(lines) + "\n", result


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", type=Path, default=DEFAULT_SET, help="a ranking-set CSV (its .json beside it)")
    args = parser.parse_args()
    from ranking_set import read_set

    table = read_set(args.set)
    settings = json.loads(args.set.with_suffix(".json").read_text())
    archs = architecture_scores(table)
    stem = args.set.with_suffix("")
    scores = proxy_scores(archs, settings, Path(f"{stem}-scores.csv"))
    text, result = report(table, scores, settings)
    timing = default_budget_seconds().groupby("proxy")["seconds"].agg(["median", "max"])
    text += ("\nAt nas search's defaults (digits, qkv space, 3.1M params, batch 64, 10 random feasible "
             f"architectures, {torch_threads()} torch threads), seconds per architecture, median / max: "
             + ", ".join(f"{name} {row['median']:.3f} / {row['max']:.3f}" for name, row in timing.iterrows()) + ".\n")
    write_text_atomic(Path(f"{stem}-proxies.md"), text)
    result.to_csv(Path(f"{stem}-proxies.csv"), index=False)
    print(text)


if __name__ == "__main__":
    main()
