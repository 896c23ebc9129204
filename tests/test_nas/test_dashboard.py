"""The run's study.db as optuna-dashboard shows it: infeasible and unbuildable draws carry their constraint values
and reason."""
from __future__ import annotations

import json
from wsgiref.util import setup_testing_defaults

import pytest

from nas.engine.budget import Budget
from nas.engine.searcher import UNBUILDABLE, BudgetedSearcher, open_study
from search_spaces.shape import DataShape
from search_spaces.spaces import load_space

optuna_dashboard = pytest.importorskip("optuna_dashboard")

TINY_SPACE = '''
from search_spaces.arch import ArchConfig, QKVConfig


def tiny(trial, shape):
    embed_dim = trial.suggest_categorical("embed_dim", [15, 16, 32, 128])
    structure = trial.suggest_categorical("structure", ["linear", "SNE"])
    qkv = {"linear": QKVConfig(), "SNE": QKVConfig(layers=("separate", "separate"))}[structure]
    return ArchConfig(embed_dim=embed_dim, depth=1, num_heads=2, patch_size=shape.patch_size, qkv=qkv)
'''
BUDGET = 60_000  # embed_dim 128 (about 0.6M params) is over it; 16 and 32 are under; 15 has no valid head split
MAX_FLOPS = 10**9  # every model under the params budget meets it
# Drawn in this order; what Ray reports for each trained one (None: Ray's trial failed).
POINTS = [({"embed_dim": 16, "structure": "linear"}, {"best_val_acc": 0.5, "training_iteration": 3}),
          ({"embed_dim": 128, "structure": "linear"}, "over budget"),
          ({"embed_dim": 32, "structure": "linear"}, {"best_val_acc": 0.4, "training_iteration": 1}),
          ({"embed_dim": 15, "structure": "linear"}, "invalid"),
          ({"embed_dim": 16, "structure": "SNE"}, None),
          ({"embed_dim": 32, "structure": "SNE"}, {"best_val_acc": 0.6, "training_iteration": 3})]
# The states the searcher tells Optuna, by trial number, as the dashboard names them: an over-budget draw (1) and
# an unbuildable one (3) are complete trials whose constraints are violated.
TOLD = {0: "Complete", 1: "Complete", 2: "Pruned", 3: "Complete", 4: "Fail", 5: "Complete"}


@pytest.fixture(params=[("val_acc",), ("val_acc", "params")], ids=["one objective", "val_acc and params"])
def objectives(request):
    return request.param


@pytest.fixture()
def storage_url(tmp_path, objectives):
    """A study.db holding complete, infeasible, pruned and failed trials, told by the real searcher."""
    space_path = tmp_path / "tiny_space.py"
    space_path.write_text(TINY_SPACE)
    url = f"sqlite:///{tmp_path}/study.db"
    budget = Budget(BUDGET, MAX_FLOPS, DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=2))
    searcher = BudgetedSearcher(load_space(f"{space_path}:tiny"), budget,
                                open_study(url, "run", seed=0, objectives=objectives), seed=0, epochs=3,
                                initial_points=[point for point, _ in POINTS], objectives=objectives)
    trained = [result for _, result in POINTS if not isinstance(result, str)]
    for index, result in enumerate(trained):
        assert isinstance(searcher.suggest(f"ray{index}"), dict)
        searcher.on_trial_complete(f"ray{index}", result, error=result is None)
        if result is None:  # as Ray's callbacks report a trial that raised, with its reason
            searcher.record_failure(f"ray{index}", "RuntimeError: injected")
    return url


def get_json(app, path: str) -> dict:
    """GET `path` from a WSGI app, as a browser would from `optuna-dashboard`; the body must be 200 JSON."""
    environ = {"PATH_INFO": path}
    setup_testing_defaults(environ)
    statuses = []
    body = b"".join(app(environ, lambda status, headers, exc_info=None: statuses.append(status)))
    assert statuses == ["200 OK"], (path, statuses, body[:200])
    return json.loads(body)


@pytest.fixture()
def dashboard_study(storage_url):
    """The run's study as optuna-dashboard serves it."""
    app = optuna_dashboard.wsgi(storage_url)
    (study,) = get_json(app, "/api/studies")["study_summaries"]
    return get_json(app, f"/api/studies/{study['study_id']}")


@pytest.fixture()
def dashboard_trials(dashboard_study):
    """The trials of the run's study as optuna-dashboard serves them, by number."""
    return {trial["number"]: trial for trial in dashboard_study["trials"]}


def user_attrs(trial: dict) -> dict:
    return {attr["key"]: attr["value"] for attr in trial["user_attrs"]}


def test_dashboard_shows_the_states_the_searcher_told(dashboard_trials):
    assert {number: trial["state"] for number, trial in dashboard_trials.items()} == TOLD


def test_infeasible_trials_carry_their_constraint_values_and_reason(dashboard_trials):
    infeasible = [trial for trial in dashboard_trials.values() if user_attrs(trial).get("state") == "infeasible"]
    assert [trial["number"] for trial in infeasible] == [1, 3]
    over, unbuildable = infeasible
    params = int(user_attrs(over)["params"])
    # params over the budget by that much; FLOPs not measured once params are over, so counted over by one.
    assert over["constraints"] == [params - BUDGET, 1.0] and params > BUDGET
    assert f"{params:,} params > budget {BUDGET:,}" in user_attrs(over)["reason"]
    # A draw that cannot be built has no cost: every constraint violated beyond any over-budget draw's.
    assert unbuildable["constraints"] == [UNBUILDABLE, UNBUILDABLE]
    assert "embed_dim=15 is not divisible by num_heads=2" in user_attrs(unbuildable)["reason"]


def test_feasible_trials_have_non_positive_constraints(dashboard_trials):
    for number in (0, 2, 4, 5):
        constraints = dashboard_trials[number]["constraints"]
        assert len(constraints) == 2 and all(value <= 0 for value in constraints), number


def test_the_dashboard_shows_each_objective_and_the_front(dashboard_study, dashboard_trials, objectives):
    assert dashboard_study["directions"] == ["maximize", "minimize"][:len(objectives)]
    for number, accuracy in ((0, 0.5), (5, 0.6)):
        params = int(user_attrs(dashboard_trials[number])["params"])
        assert dashboard_trials[number]["values"] == [accuracy, params][:len(objectives)]
    # The dashboard's best trials: the feasible front (the smaller, less accurate trial 0 is on it with params).
    best = sorted(trial["number"] for trial in dashboard_study["best_trials"])
    assert best == ([5] if len(objectives) == 1 else [0, 5])
