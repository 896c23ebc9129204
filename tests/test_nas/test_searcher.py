"""nas/engine/searcher.py: the budgeted searcher's draws (within the budget, buildable, a user space that raises),
its record of every trial in the study, the failures it records while the search goes on, and the screen."""
from __future__ import annotations

import dataclasses

import optuna
import pytest

from nas.engine.budget import Budget
from nas.engine.search import run_search
from nas.engine.searcher import UNBUILDABLE, BudgetedSearcher, close_interrupted, open_study, render_trials
from nas.runs.results import INTERRUPTED, load_trials
from search_spaces.arch import ArchConfig
from search_spaces.spaces import load_space
from trainers.trial import run_trial
from test_search import BUDGET, DIGITS, settings_for, space_file  # noqa: F401 (space_file: a fixture)


def failing_trainable(config, data, settings):
    """The real trial, except that trial 1 raises and trial 3 diverges (a huge learning rate)."""
    if config["trial_number"] == 1:
        raise RuntimeError("injected failure in trial 1")
    if config["trial_number"] == 3:
        settings = dataclasses.replace(settings, recipe=settings.recipe.replace(lr=1e9))
    run_trial(config, data, settings)


UNBUILDABLE_SPACE = '''
from search_spaces.arch import ArchConfig, AttentionConfig


def patchy(trial, shape):
    embed_dim = trial.suggest_categorical("embed_dim", [15, 16, 32])  # 15 does not split into 2 heads
    proj_len = trial.suggest_categorical("proj_len", [8, 32])  # 32 is more than the 17 tokens of 8 px at patch 2
    if embed_dim == 32 and proj_len == 32:
        raise ValueError("no room for 32 x 32")
    return ArchConfig(backbone="vit", embed_dim=embed_dim, depth=1, num_heads=2, patch_size=shape.patch_size,
                      attention=AttentionConfig(kind="linformer", proj_len=proj_len))


# Drawn first, in this order: three draws that cannot be built, each for another reason, around the two that can.
patchy.initial_points = [{"embed_dim": 16, "proj_len": 32}, {"embed_dim": 15, "proj_len": 8},
                         {"embed_dim": 16, "proj_len": 8}, {"embed_dim": 32, "proj_len": 32},
                         {"embed_dim": 32, "proj_len": 8}]
'''


# Why each unbuildable draw of UNBUILDABLE_SPACE's initial points cannot be built, by trial id.
UNBUILDABLE_REASONS = {"t0000": "invalid architecture: attention.proj_len=32 but 8 px images at patch 2 give 17 tokens",
                       "t0001": "invalid architecture: embed_dim=15 is not divisible by num_heads=2",
                       "t0003": "the space raised ValueError: no room for 32 x 32"}


@pytest.fixture()
def unbuildable_space(tmp_path):
    path = tmp_path / "patchy.py"
    path.write_text(UNBUILDABLE_SPACE)
    return f"{path}:patchy"


def test_a_draw_that_cannot_be_built_is_infeasible_and_costs_no_trial(tmp_path, unbuildable_space):
    space = load_space(unbuildable_space)
    study = open_study(f"sqlite:///{tmp_path}/study.db", "unit", seed=0)
    searcher = BudgetedSearcher(space, Budget(BUDGET, None, DIGITS), study, seed=0, epochs=1,
                                initial_points=space.initial_points)
    suggested = [searcher.suggest("ray0"), searcher.suggest("ray1")]
    assert [config["trial_number"] for config in suggested] == [2, 4]
    trials = render_trials(study).set_index("trial_id")
    assert list(trials["state"]) == ["infeasible", "infeasible", "queued", "infeasible", "queued"]
    for trial_id, reason in UNBUILDABLE_REASONS.items():
        assert trials.loc[trial_id, "reason"].startswith(reason), trials.loc[trial_id, "reason"]
        trial = study.trials[int(trial_id[1:])]
        # Told as an over-budget draw is, ranked below every one: complete, worst score, constraint violated.
        assert trial.state == optuna.trial.TrialState.COMPLETE and trial.value == 0.0
        assert trial.constraints["params"] == UNBUILDABLE
    # One built but could not run at this shape: its architecture is kept with its reason, its cost is not.
    assert trials.loc["t0000", "arch_id"] == ArchConfig.from_json(trials.loc["t0000", "arch"]).arch_id
    assert trials.loc[["t0000", "t0001", "t0003"], "params"].isna().all()


@pytest.mark.slow
def test_draws_that_cannot_be_built_never_reach_the_trainable(ray_cluster, tmp_path, unbuildable_space):
    reached = tmp_path / "reached"
    reached.mkdir()

    def recording_trainable(config, data, settings):
        (reached / f"t{config['trial_number']:04d}").touch()
        run_trial(config, data, settings)

    settings = settings_for(tmp_path, unbuildable_space, name="unbuildable", trials=2, epochs=1)
    result = run_search(settings, trainable=recording_trainable)
    assert result.exit_code == 0 and result.trained == 2
    table = load_trials(settings.run_dir).set_index("trial_id")
    assert sorted(path.name for path in reached.iterdir()) == ["t0002", "t0004"]
    assert table.loc[["t0002", "t0004"], "state"].isin(["complete", "stopped"]).all()
    assert (table.drop(index=["t0002", "t0004"])["state"] == "infeasible").all()
    for trial_id, reason in UNBUILDABLE_REASONS.items():
        assert table.loc[trial_id, "reason"].startswith(reason)
    study = optuna.load_study(study_name="unbuildable", storage=f"sqlite:///{settings.run_dir / 'study.db'}")
    assert all(study.trials[int(trial_id[1:])].constraints["params"] > 0 for trial_id in UNBUILDABLE_REASONS)


def test_searcher_suggests_only_configs_within_budget(tmp_path, space_file):
    study = open_study(f"sqlite:///{tmp_path}/study.db", "unit", seed=0)
    searcher = BudgetedSearcher(load_space(space_file), Budget(BUDGET, None, DIGITS), study, seed=0, epochs=3,
                                max_infeasible_streak=50)
    suggested = []
    for index in range(6):
        config = searcher.suggest(f"trial{index}")
        if not isinstance(config, dict):
            break
        suggested.append(config)
        searcher.on_trial_complete(f"trial{index}", {"best_val_acc": 0.5, "training_iteration": 3})
    assert suggested, "no feasible config was suggested"
    assert all(config["params"] <= BUDGET for config in suggested)
    assert all(ArchConfig.from_dict(config["arch"]).embed_dim in (16, 32) for config in suggested)
    assert len({ArchConfig.from_dict(c["arch"]).arch_id for c in suggested}) == len(suggested)
    # Six architectures fit the budget (2 widths x 3 structures): all are found (random draws once TPE only
    # repeats itself), then the space is exhausted.
    assert len(suggested) == 6
    assert searcher.suggest("one-more") == "FINISHED" and searcher.exhausted


@pytest.mark.slow
def test_failing_trials_are_recorded_and_the_search_goes_on(ray_cluster, tmp_path, space_file):
    settings = settings_for(tmp_path, space_file, name="faults", trials=4)
    assert run_search(settings, trainable=failing_trainable).exit_code == 0
    table = load_trials(settings.run_dir).set_index("trial_id")
    assert table.loc["t0001", "state"] == "failed"
    assert "RuntimeError: injected failure in trial 1" in table.loc["t0001", "reason"]
    assert table.loc["t0002", "state"] == "infeasible"
    assert table.loc["t0003", "state"] == "failed"
    assert "TrainingDiverged" in table.loc["t0003", "reason"] and "epoch 1" in table.loc["t0003", "reason"]
    assert table.loc[["t0000", "t0004"], "state"].isin(["complete", "stopped"]).all()
    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{settings.run_dir / 'study.db'}")
    assert study.trials[1].state == study.trials[3].state == optuna.trial.TrialState.FAIL


RAISING_SPACE = '''
from search_spaces.arch import ArchConfig


def sometimes(trial, shape):
    embed_dim = trial.suggest_categorical("embed_dim", [16, 32])
    if embed_dim == 32:
        raise ValueError("no room for 32")
    return ArchConfig(embed_dim=embed_dim, depth=1, num_heads=2, patch_size=shape.patch_size)


def always(trial, shape):
    trial.suggest_categorical("embed_dim", [16, 32])
    raise ValueError("boom")
'''


def test_a_user_space_that_raises_is_an_unbuildable_draw_or_one_line(tmp_path, cli):
    path = tmp_path / "raising.py"
    path.write_text(RAISING_SPACE)
    study = optuna.create_study(direction="maximize")
    searcher = BudgetedSearcher(load_space(f"{path}:sometimes"), Budget(BUDGET, None, DIGITS), study, seed=0,
                                epochs=1, max_infeasible_streak=20,
                                sampler=lambda seed: optuna.samplers.RandomSampler(seed=seed))
    assert isinstance(searcher.suggest("a"), dict)
    trials = render_trials(study)
    raised = trials[trials["state"] == "infeasible"]
    assert len(raised) and (raised["reason"] == "the space raised ValueError: no room for 32").all()
    assert len(trials) == len(raised) + 1
    code, _, err = cli("search", "--budget", "1M", "--space", f"{path}:always", "--results-dir", tmp_path / "runs")
    assert code == 2 and err.count("\n") == 1 and "the space raised ValueError: boom" in err
    assert not (tmp_path / "runs").exists()


def test_the_study_records_each_trial_from_draw_to_end(tmp_path, space_file):
    """What Ray tells the searcher (start, epochs, end, failure) is recorded in the study, and trials.csv is
    rendered from it alone: each event shows in the table, and a trial a stopped session left is interrupted."""
    study = open_study(f"sqlite:///{tmp_path}/study.db", "unit", seed=0)
    recorded = []
    searcher = BudgetedSearcher(load_space(space_file), Budget(BUDGET, None, DIGITS), study, seed=7, epochs=3,
                                initial_points=load_space(space_file).initial_points, on_record=recorded.append)

    def row(trial_id):
        return render_trials(study).set_index("trial_id").loc[trial_id]

    assert searcher.suggest("a")["trial_number"] == 0
    assert (row("t0000")["state"], row("t0000")["seed"], row("t0000")["epochs"]) == ("queued", 7, 0)
    searcher.record_start("a")
    assert row("t0000")["state"] == "running"
    searcher.on_trial_result("a", {"val_acc": 0.4, "training_iteration": 1, "trial_seconds": 2.5})
    assert (row("t0000")["val_acc"], row("t0000")["epochs"], row("t0000")["seconds"]) == (0.4, 1, 2.5)
    # The result that made ASHA stop the trial reaches only on_trial_complete: its epoch is recorded too.
    searcher.on_trial_complete("a", {"val_acc": 0.3, "best_val_acc": 0.4, "training_iteration": 2,
                                     "trial_seconds": 5.0})
    stopped = row("t0000")
    assert (stopped["state"], stopped["reason"], stopped["epochs"]) == ("stopped", "stopped by ASHA after 2 epochs", 2)
    assert (stopped["val_acc"], stopped["last_val_acc"], stopped["seconds"]) == (0.4, 0.3, 5.0)
    assert study.trials[0].state == optuna.trial.TrialState.PRUNED
    assert study.trials[0].intermediate_values == {1: 0.4, 2: 0.3}

    assert searcher.suggest("b")["trial_number"] == 1
    searcher.on_trial_complete("b", None, error=True)
    searcher.record_failure("b", "RuntimeError: injected")
    assert (row("t0001")["state"], row("t0001")["reason"]) == ("failed", "RuntimeError: injected")
    assert searcher.suggest("c")["trial_number"] == 3  # t0002 is over the budget
    assert row("t0002")["state"] == "infeasible" and row("t0002")["params"] > BUDGET
    assert recorded.count(True) == 2 and False in recorded  # two trials ended; each draw and event recorded

    assert close_interrupted(study, 7) == [3]
    trials = render_trials(study).set_index("trial_id")
    assert (trials.loc["t0003", "state"], trials.loc["t0003", "reason"]) == ("failed", INTERRUPTED)
    assert list(trials.index) == ["t0000", "t0001", "t0002", "t0003"]
    # Drawn again, a trained architecture is skipped; an interrupted one is trained again first, with its seed.
    again = BudgetedSearcher(load_space(space_file), Budget(BUDGET, None, DIGITS), study, seed=7, epochs=3)
    assert again.trained_ids == {trials.loc["t0000", "arch_id"], trials.loc["t0001", "arch_id"]}
    # Optuna's queue is first in, first out: the last initial point (trial 4) goes first, then the retry.
    assert again.suggest("d")["trial_number"] == 4
    retried = again.suggest("e")
    assert ArchConfig.from_dict(retried["arch"]).arch_id == trials.loc["t0003", "arch_id"]
    assert retried["seed"] == trials.loc["t0003", "seed"] == 7 + 3 and retried["trial_number"] == 5
    assert study.trials[5].user_attrs["retry_of"] == 3


def test_a_trial_killed_between_its_architecture_and_its_seed_is_retried_with_the_seed_it_would_have_had():
    """Each user attr is its own commit: kill -9 can leave a drawn trial with an architecture and no seed (CI's
    kill -9 drill resumed into a KeyError)."""
    arch = ArchConfig(embed_dim=16, depth=1, num_heads=2, patch_size=2)
    study = optuna.create_study(direction="maximize")
    cut_off = study.ask()
    width = cut_off.suggest_categorical("embed_dim", [16, 32, 64])
    cut_off.set_user_attr("arch", arch.to_json())
    assert close_interrupted(study, 7) == [0]
    assert study.trials[0].user_attrs["seed"] == 7 + 0
    retry = study.ask()
    assert retry.user_attrs == {"retry_of": 0, "seed": 7 + 0}
    assert retry.suggest_categorical("embed_dim", [16, 32, 64]) == width


@pytest.mark.slow
def test_a_screened_search_trains_the_best_of_each_pool(ray_cluster, tmp_path, space_file):
    """--screen proxy:zico: every trained trial was the best by ZiCo of its pool; the others never reached Ray."""
    from nas.engine.searcher import POOL_ATTR, SCREEN_ATTR

    settings = settings_for(tmp_path, space_file, trials=2, screen="proxy:zico", screen_pool=3, epochs=1,
                            grace_epochs=1)
    result = run_search(settings)
    assert result.ended == "finished" and result.trained == 2
    scored = [trial for trial in result.study.get_trials(deepcopy=False) if SCREEN_ATTR in trial.user_attrs]
    pools = {trial.user_attrs[POOL_ATTR] for trial in scored}
    assert len(pools) == 2 and len(scored) > 2
    for pool in pools:
        members = [trial for trial in scored if trial.user_attrs[POOL_ATTR] == pool]
        best = max(members, key=lambda trial: trial.user_attrs[SCREEN_ATTR])
        assert [trial for trial in members if not trial.user_attrs.get("screened_out")] == [best]
    rows = set(result.trials["trial_id"])
    assert all(f"t{trial.number:04d}" not in rows for trial in scored if trial.user_attrs.get("screened_out"))
