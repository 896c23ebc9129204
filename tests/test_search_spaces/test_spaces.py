"""Search spaces sampled many times without training: every choice appears, the budget always holds, and every
draw builds and runs at the data shape it was drawn for."""
from __future__ import annotations

import dataclasses

import optuna
import pytest

from nas.engine.budget import Budget
from nas.engine.search import run_search
from nas.engine.searcher import BudgetedSearcher
from nas.runs.results import load_trials
from nas.settings import SearchSettings
from qkvnas_core.errors import UsageError
from search_spaces.arch import ATTENTIONS, FFNS, POSITIONS, STEMS, ArchConfig, AttentionConfig
from search_spaces.cost import check_buildable, count_params
from search_spaces.shape import DataShape
from search_spaces.spaces import SPACES, draw

DIGITS = DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=2)
# The shapes of the built-in datasets' small images, at the patch size each declares (trainers.datasets).
SHAPES = [DIGITS, DataShape(img_size=28, in_chans=1, num_classes=10, patch_size=4),
          DataShape(img_size=32, in_chans=3, num_classes=100, patch_size=4)]


def random_study(seed: int = 0) -> optuna.Study:
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))


def drawn(space_name: str, shape: DataShape, draws: int, seed: int = 0) -> list[ArchConfig]:
    """`draws` random points of a space, all asked of one study (Optuna refuses a choice list that changes)."""
    study = random_study(seed)
    archs = []
    for _ in range(draws):
        trial = study.ask()
        archs.append(draw(SPACES[space_name], trial, shape))
        study.tell(trial, 0.0)
    return archs


@pytest.mark.parametrize("space_name,budget", [("lite", 700_000), ("qkv", 3_100_000)])
def test_every_choice_appears_and_the_budget_holds(space_name, budget):
    """What the searcher keeps of random draws (those within the budget) still holds every choice."""
    archs = [arch for arch in drawn(space_name, DIGITS, 150) if count_params(arch, DIGITS) <= budget]
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
        assert len(vits) == len(archs) and max(count_params(a, DIGITS) for a in archs) > budget / 2


def test_the_searcher_suggests_only_models_within_the_budget():
    budget = 700_000
    searcher = BudgetedSearcher(SPACES["lite"], Budget(budget, None, DIGITS), optuna.create_study(direction="maximize"),
                                seed=0, epochs=1, sampler=lambda seed: optuna.samplers.RandomSampler(seed=seed))
    for index in range(6):
        config = searcher.suggest(f"t{index}")
        assert isinstance(config, dict), config
        searcher.on_trial_complete(f"t{index}", {"best_val_acc": 0.5, "training_iteration": 1})
        arch = ArchConfig.from_dict(config["arch"])
        assert config["params"] == count_params(arch, DIGITS) <= budget
        assert config["flops"] is None  # no FLOPs limit or objective: the trial counts them


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: f"{shape.img_size}px-patch{shape.patch_size}")
@pytest.mark.parametrize("space_name,draws", [("qkv", 8), ("lite", 8), ("paper", 2)])
def test_every_draw_builds_and_runs_at_its_shape(space_name, draws, shape):
    """Random draws build and run one image on the meta device; the token-bound choices stay within the tokens."""
    tokens = shape.patch_tokens() + 1
    for arch in drawn(space_name, shape, draws):
        check_buildable(arch, shape)
        assert arch.patch_size == shape.patch_size
        if arch.attention.kind == "nystrom":
            assert arch.attention.num_landmarks <= tokens
        if arch.attention.kind == "linformer":
            assert arch.attention.proj_len <= tokens


def test_token_bound_choices_are_clamped_to_the_token_count():
    """8 px at patch 2 gives 17 tokens: the qkv space's Linformer lengths 32 and 64 and landmarks 32 and 64
    become 17; at 32 px (65 tokens) 64 stays."""
    def offered(shape: DataShape) -> tuple[set[int], set[int]]:
        vits = [arch for arch in drawn("qkv", shape, 400, seed=1) if arch.backbone == "vit"]
        return ({arch.attention.proj_len for arch in vits if arch.attention.kind == "linformer"},
                {arch.attention.num_landmarks for arch in vits if arch.attention.kind == "nystrom"})

    assert offered(DIGITS) == ({8, 16, 17}, {16, 17})
    assert offered(SHAPES[2]) == ({8, 16, 32, 64}, {16, 32, 64})


def test_the_backbone_follows_the_patch_size():
    """XCiT's stem builds patches of 16, 8, 4 and 2: at patch 1 the qkv space offers ViT only."""
    per_pixel = DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=1)
    assert {arch.backbone for arch in drawn("qkv", per_pixel, 30)} == {"vit"}
    with pytest.raises(UsageError, match="patch_size=5: expected one of"):
        drawn("qkv", dataclasses.replace(per_pixel, patch_size=5), 1)


@pytest.mark.parametrize("arch,message", [
    (ArchConfig(embed_dim=32, depth=1, num_heads=2, patch_size=16), "img_size=8 with patch_size=16"),
    (ArchConfig(backbone="vit", embed_dim=32, depth=1, num_heads=2, patch_size=2,
                attention=AttentionConfig(kind="linformer", proj_len=32)),
     "attention.proj_len=32 but 8 px images at patch 2 give 17 tokens"),
])
def test_what_cannot_be_built_at_a_shape_is_one_usage_error(arch, message):
    with pytest.raises(UsageError, match=message):
        check_buildable(arch, DIGITS)


def test_nystrom_with_more_landmarks_than_tokens_builds():
    """More landmarks than tokens make every token a landmark (NystromAttention clamps): buildable, as a preset
    such as vix-nystrom (64 landmarks) on 8 px digits is."""
    check_buildable(ArchConfig(backbone="vit", embed_dim=32, depth=1, num_heads=2, patch_size=2,
                               attention=AttentionConfig(kind="nystrom", num_landmarks=64)), DIGITS)


@pytest.mark.slow
def test_lite_space_trials_train_every_vit_part(ray_cluster, tmp_path):
    """The lite space through Ray on digits: sub-1M ViTs (MoE, linear attentions, rope, conv stems) train."""
    settings = SearchSettings(name="lite", budget=300_000, results_dir=str(tmp_path), space="lite", trials=3,
                              epochs=2, grace_epochs=1, reduction_factor=2, seed=1)
    assert run_search(settings).exit_code == 0
    table = load_trials(settings.run_dir)
    trained = table[table["state"].isin(["complete", "stopped"])]
    assert len(trained) == 3 and (trained["params"] <= 300_000).all() and (trained["backbone"] == "vit").all()
    assert trained["val_acc"].between(0, 1).all() and (trained["flops"] > 0).all()
