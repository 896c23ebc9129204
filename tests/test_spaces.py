"""Search spaces sampled many times without training: every choice appears, and the budget always holds."""
from __future__ import annotations

import optuna
import pytest

from nas.budget import Budget
from nas.results import TrialTable
from nas.searcher import BudgetedSearcher
from search_spaces.arch import ATTENTIONS, FFNS, POSITIONS, STEMS, ArchConfig
from search_spaces.cost import count_params
from search_spaces.spaces import SPACES

DIGITS = dict(num_classes=10, img_size=8, in_chans=1)


def sample(space_name: str, budget: int, draws: int, tmp_path) -> list[ArchConfig]:
    """Architectures the real searcher suggests (random sampler, so coverage does not hang on TPE's taste)."""
    study = optuna.create_study(direction="maximize")
    searcher = BudgetedSearcher(SPACES[space_name], 2, Budget(budget, None, **DIGITS),
                                TrialTable(tmp_path / "trials.csv"), study, seed=0, epochs=1,
                                sampler=lambda seed: optuna.samplers.RandomSampler(seed=seed))
    archs = []
    for index in range(draws):
        config = searcher.suggest(f"t{index}")
        assert isinstance(config, dict), config
        searcher.on_trial_complete(f"t{index}", {"best_val_acc": 0.5, "training_iteration": 1})
        archs.append(ArchConfig.from_dict(config["arch"]))
    return archs


@pytest.mark.parametrize("space_name,budget", [("lite", 700_000), ("qkv", 3_100_000)])
def test_every_choice_appears_and_the_budget_holds(space_name, budget, tmp_path):
    archs = sample(space_name, budget, 150, tmp_path)
    assert all(count_params(arch, **DIGITS) <= budget for arch in archs)
    vits = [arch for arch in archs if arch.backbone == "vit"]
    seen = {
        "attention": {arch.attention.kind for arch in vits}, "ffn": {arch.ffn.kind for arch in vits},
        "stem": {arch.stem for arch in vits}, "pos": {arch.pos for arch in vits},
        "grouped-query": {arch.attention.kv_heads is not None for arch in vits},
        "tapered": {arch.ffn.last_ratio is not None for arch in vits},
        "structure": {arch.structure for arch in archs},
    }
    assert seen["attention"] == set(ATTENTIONS) and seen["ffn"] == set(FFNS)
    assert seen["stem"] == set(STEMS) and seen["pos"] == set(POSITIONS)
    assert seen["grouped-query"] == seen["tapered"] == {True, False}
    assert {"linear", "SNE", "P-SNE", "F-SNE"} <= seen["structure"]
    if space_name == "qkv":
        assert {arch.backbone for arch in archs} == {"xcit", "vit"}
    else:
        assert len(vits) == len(archs) and max(count_params(a, **DIGITS) for a in archs) > budget / 2
