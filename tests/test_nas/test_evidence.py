"""The evidence benchmarks: the committed ranking set read back and checked against its own settings, the proxy
report's statistics, and the paper-ablation page's reading of a fixed table."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from qkvnas_core.errors import UsageError
from search_spaces.arch import ArchConfig
from search_spaces.cost import count_params
from search_spaces.shape import DataShape

ROOT = Path(__file__).resolve().parents[2]
RANKING_SET = ROOT / "benchmarks" / "data" / "ranking_qkv.csv"


def _load(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ranking_set, proxies, ablation = _load("ranking_set"), _load("proxies"), _load("paper_ablation")


def test_the_committed_ranking_set_holds_what_its_settings_promise():
    settings = json.loads(RANKING_SET.with_suffix(".json").read_text())
    table = ranking_set.read_set(RANKING_SET)
    assert list(table.columns) == ranking_set.COLUMNS
    archs = table.drop_duplicates("arch_id")
    assert len(archs) == settings["archs"] >= 40
    units = ranking_set.complete_units(table, settings["epochs"])
    assert len(units) == len(table) / settings["epochs"]  # every (arch, seed) has every epoch, once
    twice = {arch_id for arch_id, seed in units if seed == 1}
    assert len(twice) >= len(archs) / 4 and {seed for _, seed in units} == {0, 1}
    shape = DataShape(img_size=28, in_chans=1, num_classes=10, patch_size=4)  # mnist5k, as the set was drawn
    for row in archs.sample(8, random_state=0).itertuples():
        arch = ArchConfig.from_json(row.arch)
        assert arch.arch_id == row.arch_id
        assert count_params(arch, shape) == row.params <= settings["budget"]


def test_a_ranking_set_with_a_repeated_or_impossible_row_is_one_error(tmp_path):
    row = {"arch_id": "a", "arch": "{}", "params": 1, "flops": 1, "seed": 0, "epoch": 1, "val_acc": 0.5}
    for rows, what in (([row, row], "appears twice"), ([{**row, "val_acc": 1.5}], r"outside \[0, 1\]"),
                       ([{k: v for k, v in row.items() if k != "epoch"}], "no column epoch")):
        path = tmp_path / "set.csv"
        pd.DataFrame(rows).to_csv(path, index=False)
        with pytest.raises(UsageError, match=what):
            ranking_set.read_set(path)
    path.write_bytes(b"\x00\xff\xfe")
    with pytest.raises(UsageError, match="ranking-set CSV"):
        ranking_set.read_set(path)


def test_kendall_interval_is_scipys_tau_with_an_interval_around_it():
    rng = np.random.default_rng(0)
    x = rng.normal(size=30)
    y = x + rng.normal(size=30)
    tau, low, high = proxies.kendall_interval(x, y)
    assert tau == pytest.approx(stats.kendalltau(x, y).statistic)
    assert low < tau < high and high - low < 1


def test_architecture_scores_take_each_seeds_best_epoch():
    table = pd.DataFrame({"arch_id": ["a"] * 4 + ["b"] * 2, "arch": ["{}"] * 6, "params": [1] * 4 + [2] * 2,
                          "flops": [3] * 6, "seed": [0, 0, 1, 1, 0, 0], "epoch": [1, 2, 1, 2, 1, 2],
                          "val_acc": [0.5, 0.4, 0.6, 0.7, 0.2, 0.3]})
    scores = proxies.architecture_scores(table).set_index("arch_id")
    assert scores.loc["a", "score_seed0"] == 0.5 and scores.loc["a", "score_seed1"] == 0.7
    assert scores.loc["b", "score_seed0"] == 0.3 and np.isnan(scores.loc["b", "score_seed1"])


def _ablation_tables():
    sources = [ablation.BASELINE, *ablation.MODELS]
    top1 = {ablation.BASELINE: [0.70, 0.72, 0.69], "xcit-n12-sne": [0.75, 0.77, 0.74],
            "xcit-n12-psne": [0.71, 0.70, 0.73], "xcit-n12-fsne": [0.60, 0.62, 0.61]}
    table = pd.DataFrame([{"arch_id": f"id-{source}", "role": "baseline" if source == ablation.BASELINE else "winner",
                           "source": source, "structure": source, "params": 1000 + index, "flops": 1, "seed": seed,
                           "top1": top1[source][seed], "best_val_acc": top1[source][seed], "seconds": 600.0}
                          for index, source in enumerate(sources) for seed in range(3)])
    # Epoch 1 ranks fsne first; from epoch 2 on the order is the final one.
    curves = pd.DataFrame([{"arch_id": f"id-{source}", "source": source, "seed": seed, "epoch": epoch,
                            "val_acc": (0.3 if source == "xcit-n12-fsne" else 0.1) if epoch == 1 else
                            top1[source][seed] - 0.01 * (3 - epoch)}
                           for source in sources for seed in range(3) for epoch in (1, 2, 3)])
    return table, curves


def test_rank_settling_finds_the_epoch_the_order_becomes_final():
    _, curves = _ablation_tables()
    settling = ablation.rank_settling(curves).set_index("epoch")
    assert not settling.loc[1, "same_order"] and settling.loc[2:, "same_order"].all()
    assert settling.loc[3, "kendall_tau"] == pytest.approx(1.0)


def test_the_ablation_page_reads_each_difference_by_its_interval():
    table, curves = _ablation_tables()
    text = ablation.page(table, curves, epochs=3, seeds=3)
    assert "xcit-n12-sne beats linear QKV" in text and "xcit-n12-fsne loses to linear QKV" in text
    assert "xcit-n12-psne is not told apart from linear QKV" in text
    assert "12 of 12 (model, seed) units finished" in text and "The order is final from epoch 2 of 3 on." in text
    assert "--epochs 3 --seeds 3" in text and "10 min a unit over 12 units, so 12 units take about 1.0 h" in text
