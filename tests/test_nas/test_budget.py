"""The feasibility check before any trial, against a space small enough to enumerate by hand; the measurement
of a draw without FLOPs (built only) against the full one (built and run)."""
import itertools

import optuna
import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from nas.engine.budget import Budget, check_feasible, smallest_description
from nas.engine.searcher import BudgetedSearcher, render_trials
from qkvnas_core.errors import UsageError
from search_spaces.arch import ACTIVATIONS, ATTENTIONS, FFNS, PATCH_SIZES, POSITIONS, STEMS, ArchConfig
from search_spaces.cost import count_flops, count_params
from search_spaces.shape import DataShape
from search_spaces.spaces import SPACES, draw

SHAPE = DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=2)
# The spaces draw at each shape and each draw is measured at all three: at another shape it may not run (a patch
# that does not tile 30 px, a Linformer length above the 5 tokens of 8 px at patch 4).
SHAPES = [SHAPE, DataShape(img_size=28, in_chans=1, num_classes=10, patch_size=4),
          DataShape(img_size=30, in_chans=3, num_classes=100, patch_size=2)]
DIMS, DEPTHS = [64, 16, 128, 32], [3, 1, 4, 2]


def grid(trial, shape):
    return ArchConfig(embed_dim=trial.suggest_categorical("embed_dim", DIMS),
                      depth=trial.suggest_categorical("depth", DEPTHS), num_heads=2, patch_size=shape.patch_size)


ALL = [ArchConfig(embed_dim=dim, depth=depth, num_heads=2, patch_size=2)
       for dim, depth in itertools.product(DIMS, DEPTHS)]


@pytest.fixture(scope="module")
def smallest():
    return min(count_params(arch, SHAPE) for arch in ALL)


@pytest.fixture(scope="module")
def fewest_flops():
    return min(count_flops(arch, SHAPE) for arch in ALL)


def test_a_budget_of_exactly_the_smallest_model_is_feasible(smallest):
    check_feasible("grid", grid, Budget(smallest, None, SHAPE), draws=300)


def test_a_budget_under_the_smallest_model_names_it(smallest):
    with pytest.raises(UsageError) as raised:
        check_feasible("grid", grid, Budget(smallest - 1, None, SHAPE), draws=300)
    message = str(raised.value)
    assert f"({smallest - 1:,} params) admits no model of space 'grid'" in message
    assert "xcit d16 L1 H2" in message and f"with {smallest:,} params" in message


def test_the_exhausted_search_names_the_same_smallest_model(smallest):
    assert f"with {smallest:,} params" in smallest_description("grid", grid, Budget(1, None, SHAPE))


def test_a_flops_limit_under_every_model_names_the_fewest_flops(fewest_flops):
    with pytest.raises(UsageError) as raised:
        check_feasible("grid", grid, Budget(10**9, fewest_flops - 1, SHAPE), draws=300)
    assert f"with {fewest_flops:,} FLOPs" in str(raised.value)
    check_feasible("grid", grid, Budget(10**9, fewest_flops, SHAPE), draws=300)


def test_a_space_that_always_raises_is_named_with_its_error():
    def broken(trial, shape):
        raise ValueError("no such width")

    with pytest.raises(UsageError, match="built no valid architecture in 20 draws at patch size 2: the space "
                                         "raised ValueError: no such width"):
        check_feasible("broken", broken, Budget(10**9, None, SHAPE), draws=20)


class FullCheck(Budget):
    """Every draw within the budget run on the meta device and its FLOPs counted, whatever the limits."""

    def measure(self, arch: ArchConfig, flops: bool = False) -> tuple[int, int | None]:
        return super().measure(arch, flops=True)


def measured(arch: ArchConfig, shape: DataShape, flops: bool) -> int | str:
    """The params a budget no model exceeds measures, or the error measuring raised."""
    try:
        return Budget(2**62, None, shape).measure(arch, flops=flops)[0]
    except Exception as error:  # any error: the searcher records every one as an unbuildable draw
        return f"{type(error).__name__}: {error}"


@pytest.mark.parametrize("space_name,draws", [("qkv", 4), ("lite", 4), ("paper", 1)])
def test_building_refuses_every_draw_that_running_refuses(space_name, draws):
    """Random draws of each space, measured at the shape drawn for and at the others: building alone (no FLOPs
    asked) refuses exactly the draws that building and running refuse, with the same message."""
    refused = []
    for drawn_at in SHAPES:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
        for _ in range(draws):
            trial = study.ask()
            arch = draw(SPACES[space_name], trial, drawn_at)
            study.tell(trial, 0.0)
            for shape in SHAPES:
                built = measured(arch, shape, flops=False)
                assert built == measured(arch, shape, flops=True), f"{arch.to_json()} at {shape}"
                refused.append(isinstance(built, str))
    assert any(refused) and not all(refused)


@st.composite
def any_arch(draw_from) -> ArchConfig:
    """Any small architecture a user's space could return: every backbone, patch, QKV structure and ViT part,
    widths down to one channel per head."""
    def pick(values: list):
        return draw_from(st.sampled_from(values))

    backbone, num_heads, depth = pick(["vit", "xcit"]), pick([1, 2, 3, 4]), pick([1, 2, 3])
    pos = pick(POSITIONS) if backbone == "vit" else "learned"
    head_dim = pick([8, 16] if backbone == "xcit" else [4, 8] if pos == "rope" else [1, 2, 4, 8])
    layers = tuple(draw_from(st.lists(st.sampled_from(["separate", "shared"]), min_size=1, max_size=3)))
    codes = [1, 4] if layers[-1] == "shared" else [0, 1, 4] if "shared" in layers else [0]
    qkv = dict(layers=layers, hidden_ratio=pick([0.1, 1.0, 2.0]), activation=pick(ACTIVATIONS),
               code_size=pick(codes), members=pick(["qkv", "q", "kv"]), blocks=pick([None, (0,), (depth - 1,)]))
    options = dict(backbone=backbone, embed_dim=num_heads * head_dim, depth=depth, num_heads=num_heads,
                   mlp_ratio=pick([0.1, 1.0, 4.0]), patch_size=pick(PATCH_SIZES[backbone]), qkv=qkv)
    if backbone == "vit":
        kind = pick(ATTENTIONS)
        options.update(stem=pick(STEMS), pos=pos, attention=dict(
            kind=kind, kv_heads=pick([None, 1]), **{"performer": {"num_features": pick([None, 1, 16])},
                                                     "nystrom": {"num_landmarks": pick([1, 3, 64])},
                                                     "linformer": {"proj_len": pick([1, 5, 64])}}.get(kind, {})),
            ffn=dict(kind=pick(FFNS), last_ratio=pick([None, 0.1]), experts=(1,) * pick([1, depth]), top_k=1))
    try:
        return ArchConfig(**options)
    except UsageError:
        reject()


@settings(derandomize=True, max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(arch=any_arch(), grid=st.integers(1, 5), misfit=st.sampled_from([0, 0, 0, 1]), in_chans=st.sampled_from([1, 3]))
def test_building_refuses_every_architecture_that_running_refuses(arch, grid, misfit, in_chans):
    """What a user's space may return, on images of 1 to 5 patches a side (a pixel more in a quarter of them):
    built alone or built and run, the same params or the same error."""
    shape = DataShape(img_size=arch.patch_size * grid + misfit, in_chans=in_chans, num_classes=10,
                      patch_size=arch.patch_size)
    assert measured(arch, shape, flops=False) == measured(arch, shape, flops=True)


def test_the_same_seed_draws_the_same_architectures_whether_or_not_flops_are_counted():
    """The default search (val_acc and params, no FLOPs limit) builds its draws without running them: Optuna is
    told the same, so the same seed draws the same architectures, over budget and within it, as the full check."""
    objectives = ("val_acc", "params")

    def table(budget: Budget):
        study = optuna.create_study(directions=["maximize", "minimize"])
        searcher = BudgetedSearcher(SPACES["qkv"], budget, study, seed=3, epochs=1, objectives=objectives)
        for index in range(5):
            searcher.suggest(f"t{index}")
            searcher.on_trial_complete(f"t{index}", {"best_val_acc": index / 5, "training_iteration": 1})
        return render_trials(study)

    built, full = table(Budget(300_000, None, SHAPE)), table(FullCheck(300_000, None, SHAPE))
    columns = ["trial_id", "state", "reason", "arch_id", "params"]
    assert built[columns].equals(full[columns]) and "infeasible" in set(built["state"])
    trained = built["state"] == "complete"
    assert built.loc[trained, "flops"].isna().all() and (full.loc[trained, "flops"] > 0).all()


def test_flops_are_counted_when_drawn_only_where_a_limit_or_objective_needs_them():
    """Without: the trial counts them and its first epoch's report records them. With a FLOPs limit, or a FLOPs
    objective, the draw counts them."""
    study = optuna.create_study(direction="maximize")
    searcher = BudgetedSearcher(grid, Budget(10**9, None, SHAPE), study, seed=0, epochs=2)
    config = searcher.suggest("a")
    flops = count_flops(ArchConfig.from_dict(config["arch"]), SHAPE)
    assert config["flops"] is None and "flops" not in study.trials[0].user_attrs
    searcher.on_trial_result("a", {"val_acc": 0.5, "training_iteration": 1, "trial_seconds": 1.0, "flops": flops})
    assert render_trials(study)["flops"].tolist() == [flops]

    limited = BudgetedSearcher(grid, Budget(10**9, 10**12, SHAPE), optuna.create_study(direction="maximize"),
                               seed=0, epochs=2)
    objective = BudgetedSearcher(grid, Budget(10**9, None, SHAPE),
                                 optuna.create_study(directions=["maximize", "minimize"]), seed=0, epochs=2,
                                 objectives=("val_acc", "flops"))
    for other in (limited, objective):
        config = other.suggest("b")
        assert config["flops"] == count_flops(ArchConfig.from_dict(config["arch"]), SHAPE)
