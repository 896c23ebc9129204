"""nas/engine/proxy_choice.py: --startup proxy:NAME (a pool of feasible draws scored by the proxy, the best enqueued
first in the study) and --screen proxy:NAME (every trial the best of a pool of the sampler's draws)."""
from __future__ import annotations

import pytest
import torch

from nas.engine.budget import Budget, feasible_draws
from nas.engine.searcher import BudgetedSearcher, open_study
from nas.engine.proxy_choice import POOL_PER_DRAW, proxy_draws, startup_points
from nas.settings.flags import parse_startup
from qkvnas_core.errors import UsageError
from search_spaces.arch import ArchConfig
from search_spaces.build import build_model
from search_spaces.proxies import zico
from search_spaces.spaces import load_space
from trainers.batches import make_batches
from trainers.datasets.registry import load_dataset
from trainers.recipe import PROXY
from trainers.runtime import seed_everything

from test_search import BUDGET, DIGITS, space_file  # noqa: F401 (a fixture)


def test_startup_reads_random_or_a_known_proxy():
    assert parse_startup("random") is None and parse_startup("proxy:zico") == "proxy:zico"
    for text in ("proxy:", "proxy:nope", "zico", "Proxy:zico", ""):
        with pytest.raises(UsageError, match="expected random or proxy:NAME"):
            parse_startup(text)


def test_the_proxy_picks_the_best_of_the_pool_and_the_search_trains_them_first(tmp_path, space_file):
    space, budget = load_space(space_file), Budget(BUDGET, None, DIGITS)
    splits = load_dataset("digits", val_fraction=0.2)
    picked = proxy_draws("proxy:zico", space, budget, splits, PROXY, seed=3, count=2)

    # The oracle: every draw of the same pool scored by hand on the first training batch, seeded alike.
    images, labels = next(iter(make_batches(splits.train, splits.info, None, torch.device("cpu"),
                                            batch_size=PROXY.batch_size, train=True, seed=3).epoch(0)))
    by_hand = {}
    for found in feasible_draws(space, budget, 2 * POOL_PER_DRAW, seed=3):
        seed_everything(3)
        by_hand[found.arch.arch_id] = zico(build_model(found.arch, DIGITS), images, labels)
    best = sorted(by_hand, key=by_hand.get, reverse=True)[:2]
    assert [item.draw.arch.arch_id for item in picked] == best
    assert [item.score for item in picked] == pytest.approx([by_hand[arch_id] for arch_id in best])

    points = startup_points("proxy:zico", space, budget, splits, PROXY, seed=3)
    initial = list(space.initial_points)
    assert points[:len(initial)] == initial and len(points) > len(initial)
    study = open_study(f"sqlite:///{tmp_path}/study.db", "startup", seed=3)
    searcher = BudgetedSearcher(space, budget, study, seed=3, epochs=2, initial_points=points[len(initial):])
    drawn = [ArchConfig.from_dict(searcher.suggest(f"t{index}")["arch"]).arch_id for index in range(2)]
    assert drawn == best


def _screen_by_width(archs):
    """A stand-in proxy with a known order: wider scores higher, then more QKV layers."""
    return [arch.embed_dim + len(arch.qkv.layers) / 10 for arch in archs]


@pytest.mark.parametrize("pool, train", [(4, 1), (4, 2)])
def test_each_trial_is_the_best_of_a_screened_pool(tmp_path, space_file, pool, train):
    from nas.engine.searcher import SCREEN_ATTR, render_trials

    space, budget = load_space(space_file), Budget(BUDGET, None, DIGITS)
    study = open_study(f"sqlite:///{tmp_path}/study.db", "screen", seed=1)
    searcher = BudgetedSearcher(space, budget, study, seed=1, epochs=2, screen=_screen_by_width, screen_pool=pool,
                                screen_train=train)
    first = [searcher.suggest(f"t{index}") for index in range(train)]
    scored = [trial for trial in study.get_trials(deepcopy=False) if SCREEN_ATTR in trial.user_attrs]
    assert len(scored) == pool
    best = sorted(scored, key=lambda trial: -trial.user_attrs[SCREEN_ATTR])
    assert [config["trial_number"] for config in first] == [trial.number for trial in best[:train]]
    screened = [trial for trial in scored if trial.user_attrs.get("screened_out")]
    assert [trial.number for trial in screened] == sorted(trial.number for trial in best[train:])
    assert all(trial.state.name == "FAIL" and "arch" in trial.user_attrs for trial in screened)
    # screened-out draws never train and have no row; the picks are queued trials (beside the infeasible draws)
    table = render_trials(study)
    drawn = table[table["state"] != "infeasible"]
    assert set(drawn["trial_id"]) == {f"t{config['trial_number']:04d}" for config in first}
    assert set(drawn["state"]) == {"queued"}
    # the next trial comes from a new pool
    searcher.suggest("next")
    assert sum(SCREEN_ATTR in trial.user_attrs for trial in study.get_trials(deepcopy=False)) > pool


def test_screen_settings_are_checked(tmp_path, cli, space_file):
    code, _, err = cli("search", "--budget", "60K", "--space", space_file, "--screen", "proxy:zico",
                       "--screen-pool", "4", "--screen-train", "5", "--results-dir", tmp_path / "results")
    assert code == 2 and err.count("\n") == 1 and "--screen-train 5: expected at most --screen-pool 4" in err
    code, _, err = cli("search", "--budget", "60K", "--screen", "zico", "--results-dir", tmp_path / "results")
    assert code == 2 and "expected proxy:NAME with NAME one of" in err and err.count("\n") == 1
    assert not (tmp_path / "results").exists()
