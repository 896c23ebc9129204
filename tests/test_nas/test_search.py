"""`nas search` end to end on digits with tiny trials: Ray Tune + budgeted Optuna + ASHA, faults, resume."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from pathlib import Path

import optuna
import pandas as pd
import pytest

from qkvnas_core.files import exclusive_lock
from qkvnas_core.log import Forward, handled_by

from nas.cli import main
from nas.engine.progress import Progress
from nas.runs.results import INTERRUPTED, format_trial_id, load_trials, trial_row, trials_frame, write_trials
from nas.engine.search import SessionClock, resume_search, run_search
from nas.settings import SearchSettings
from nas.engine.searcher import render_trials
from search_spaces.arch import ArchConfig
from search_spaces.shape import DataShape

TINY_SPACE = '''
from search_spaces.arch import ArchConfig, QKVConfig


def tiny(trial, shape):
    embed_dim = trial.suggest_categorical("embed_dim", [16, 32, 128])
    structure = trial.suggest_categorical("structure", ["linear", "SNE", "F-SNE"])
    qkv = {"linear": QKVConfig(), "SNE": QKVConfig(layers=("separate", "separate")),
           "F-SNE": QKVConfig(layers=("shared", "shared"), code_size=4)}[structure]
    return ArchConfig(embed_dim=embed_dim, depth=1, num_heads=2, patch_size=shape.patch_size, qkv=qkv)


# Tried first, in this order: trial numbers 0-4 are known (2 is over the budget).
tiny.initial_points = [{"embed_dim": 16, "structure": "linear"}, {"embed_dim": 32, "structure": "linear"},
                       {"embed_dim": 128, "structure": "SNE"}, {"embed_dim": 16, "structure": "SNE"},
                       {"embed_dim": 32, "structure": "F-SNE"}]
'''
BUDGET = 60_000  # embed_dim 128 (about 0.2M params) is over it; 16 and 32 are under
DIGITS = DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=2)


@pytest.fixture()
def space_file(tmp_path):
    path = tmp_path / "tiny_space.py"
    path.write_text(TINY_SPACE)
    return f"{path}:tiny"


def settings_for(tmp_path, space_file, name="run", trials=3, **changes) -> SearchSettings:
    values = dict(name=name, budget=BUDGET, results_dir=str(tmp_path / "results"), space=space_file, trials=trials,
                  epochs=3, grace_epochs=1, reduction_factor=2, seed=0)
    values.update(changes)
    return SearchSettings(**values)


@pytest.fixture(scope="module")
def finished_search(ray_cluster, tmp_path_factory):
    """One `nas search` of the tiny space run to its end, shared by the module's tests of a finished run (each
    works on a copy): (its run folder, what it printed). The search writes its run folder and reads none of it
    back: its end (front, hypervolume, summary) is computed from what the session holds."""
    root = tmp_path_factory.mktemp("finished_search")
    space = root / "tiny_space.py"
    space.write_text(TINY_SPACE)
    read_csv = pd.read_csv

    def read_back(source, *args, **kwargs):
        if isinstance(source, (str, os.PathLike)):
            raise AssertionError(f"the search read a file back: {source}")
        return read_csv(source, *args, **kwargs)

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.setattr(pd, "read_csv", read_back)
        patch.setattr("nas.runs.results.read_json_object", read_back)
        code = main(["search", "--budget", str(BUDGET), "--space", f"{space}:tiny", "--trials", "4", "--epochs", "3",
                     "--grace-epochs", "1", "--reduction-factor", "2", "--results-dir", str(root / "results"),
                     "--name", "e2e"])
    assert code == 0
    return root / "results" / "e2e", printed.getvalue()


@pytest.fixture()
def finished_copy(finished_search, tmp_path):
    """A copy of the shared finished run, for a test that changes it."""
    return Path(shutil.copytree(finished_search[0], tmp_path / "e2e"))


@pytest.mark.slow
def test_end_to_end_search_on_digits(finished_search):
    run_dir, out = finished_search
    table = load_trials(run_dir)
    trained = table[table["state"].isin(["complete", "stopped", "failed"])]
    assert len(trained) == 4
    assert set(table["state"]) <= {"complete", "stopped", "failed", "infeasible"}
    assert (trained["params"] <= BUDGET).all()
    assert (table.loc[table["state"] == "infeasible", "params"] > BUDGET).all()
    scored = table[table["state"].isin(["complete", "stopped"])]
    assert scored["val_acc"].between(0, 1).all() and (scored["flops"] > 0).all()
    assert (table.loc[table["state"] == "complete", "epochs"] == 3).all()
    assert (table.loc[table["state"] == "stopped", "epochs"] < 3).all()
    assert table["arch_id"][table["state"] != "infeasible"].is_unique
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{run_dir / 'study.db'}")
    states = {trial.number: trial.state for trial in study.trials}
    for row in table.itertuples():
        number = int(row.trial_id[1:])
        expected = {"complete": optuna.trial.TrialState.COMPLETE, "stopped": optuna.trial.TrialState.PRUNED,
                    "infeasible": optuna.trial.TrialState.COMPLETE}[row.state]
        assert states[number] == expected, row.trial_id
    infeasible = [t for t in study.trials if t.user_attrs.get("state") == "infeasible"]
    assert all(t.constraints["params"] > 0 for t in infeasible)
    settings = (run_dir / "search.json").read_text()
    assert '"budget": 60000' in settings and '"torch"' in settings
    assert (run_dir / "search_front.csv").is_file() and (run_dir / "search_front.png").is_file()
    assert "best: t" in out and "trained:" in out
    # The default search is multi-objective: Optuna holds (val_acc, params) of each complete trial.
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    for row in table[table["state"] == "complete"].itertuples():
        assert study.trials[int(row.trial_id[1:])].values == [row.val_acc, row.params]
    curves = {t.number: t.user_attrs["val_acc_curve"] for t in study.trials if "val_acc_curve" in t.user_attrs}
    for row in scored.itertuples():
        curve = curves[int(row.trial_id[1:])]
        assert row.best_epoch == curve.index(max(curve)) + 1 and len(curve) == row.epochs
    # Each trial's end records the search's epochs so far: the ends in order add up the curves' lengths.
    ended = scored.sort_values("epochs_spent")
    assert ended["epochs_spent"].is_monotonic_increasing and ended["epochs_spent"].iloc[-1] == sum(map(len, curves.values()))
    record = json.loads(settings)
    complete = table[table["state"] == "complete"]
    assert record["objectives"] == ["val_acc", "params"]
    assert record["hypervolume_reference"] == {"val_acc": 0.0, "params": float(BUDGET)}
    # Two objectives: the area under the front's staircase, params divided by the budget (a hand computation).
    staircase = sorted(zip(complete["params"] / BUDGET, complete["val_acc"]))
    area = 0.0
    for index, (cost, _) in enumerate(staircase):
        right = staircase[index + 1][0] if index + 1 < len(staircase) else 1.0
        area += (right - cost) * max(accuracy for _, accuracy in staircase[:index + 1])
    assert record["hypervolume"] == pytest.approx(area)
    assert (run_dir / "hypervolume.png").is_file() and "hypervolume" in out


@pytest.mark.slow
def test_over_budget_draws_never_reach_ray(ray_cluster, tmp_path, space_file):
    """Also the benchmark's random-search baseline: one objective, random draws, no early stopping, and an epoch
    budget that ends the search before --trials."""
    settings = settings_for(tmp_path, space_file, name="budget", trials=10, objectives=["val_acc"], sampler="random",
                            early_stopping="none", epoch_budget=5)
    result = run_search(settings)
    assert result.exit_code == 0 and result.ended == "finished" and "--epoch-budget 5 spent" in result.note
    run_dir = settings.run_dir
    table = load_trials(run_dir)
    trained = table[table["state"].isin(["complete", "stopped", "failed"])]
    # No trial is drawn once 5 epochs are spent (Ray Tune may have drawn one ahead, queued, before): with 3-epoch
    # trials, the third ends the search at the latest, the fourth at most queued beside it.
    assert 2 <= len(trained) <= 4 and (trained["state"] == "complete").all()
    assert table["epochs_spent"].max() >= 5 and table["epochs_spent"].max() <= 12
    study = optuna.load_study(study_name="budget", storage=f"sqlite:///{run_dir / 'study.db'}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    ray_trials = sorted(path.name for path in (run_dir / "ray-1").glob("trial_*"))
    feasible = sorted(f"trial_{int(t[1:]):04d}" for t in table.loc[table["state"] != "infeasible", "trial_id"])
    assert ray_trials == feasible
    assert (table["state"] == "infeasible").sum() >= 1


@pytest.mark.slow
def test_resume_keeps_finished_trials_and_closes_interrupted_ones(finished_copy):
    run_dir = finished_copy
    first = load_trials(run_dir)
    trained = first["state"].isin(["complete", "stopped"]).sum()
    # What a kill -9 leaves behind: an Optuna trial still RUNNING, recorded as running, and its row so.
    storage = f"sqlite:///{run_dir / 'study.db'}"
    study = optuna.load_study(study_name="e2e", storage=storage)
    crashed = study.ask()
    arch = ArchConfig(embed_dim=16, depth=1, num_heads=2, patch_size=2)
    for key, value in dict(arch=arch.to_json(), params=1000, seed=crashed.number, state="running").items():
        crashed.set_user_attr(key, value)
    write_trials(run_dir / "trials.csv", render_trials(study))
    assert load_trials(run_dir)["state"].iloc[-1] == "running"

    moved = run_dir.with_name("resume-moved")  # a renamed run folder keeps its study
    run_dir.rename(moved)
    run_dir = moved
    storage = f"sqlite:///{run_dir / 'study.db'}"
    code = main(["search", "--resume", str(run_dir), "--trials", str(trained + 1)])
    assert code == 0
    assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["e2e"]
    after = load_trials(run_dir).set_index("trial_id")
    for row in first.itertuples():
        assert after.loc[row.trial_id, "state"] == row.state
        assert after.loc[row.trial_id, "val_acc"] == pytest.approx(row.val_acc, nan_ok=True)
    crashed_id = format_trial_id(crashed.number)
    assert after.loc[crashed_id, "state"] == "failed" and after.loc[crashed_id, "reason"] == INTERRUPTED
    finished = after[after["state"].isin(["complete", "stopped"])]
    assert len(finished) == trained + 1
    study = optuna.load_study(study_name="e2e", storage=storage)
    assert study.trials[crashed.number].state == optuna.trial.TrialState.FAIL
    assert (run_dir / "ray-2").is_dir()


@pytest.mark.slow
def test_finished_run_is_not_rerun(finished_copy, capsys):
    before = (finished_copy / "trials.csv").read_text()
    assert main(["search", "--resume", str(finished_copy)]) == 0
    assert "raise --trials to extend it" in capsys.readouterr().out
    assert (finished_copy / "trials.csv").read_text() == before


@pytest.mark.parametrize("argv,fragment", [
    (["--space", "nope"], "unknown space 'nope'"),
    (["--dataset", "mnist"], "mnist"),
    (["--budget", "1K"], "admits no model"),
    (["--budget", "3.1X"], "'3.1X': expected a positive count"),
    (["--trials", "0"], "argument --trials: 0"),
    (["--max-concurrent", "0"], "argument --max-concurrent: 0: expected a positive integer"),
    # The limit that binds is named: the architecture rule, or the FLOPs limit rather than the params budget.
    (["--patch-size", "3"], "built no valid architecture in 300 draws at patch size 3: img_size=8 with patch_size=3"),
    (["--max-flops", "1K", "--space", "SPACE"], "max 1K FLOPs (1,000) admits no model of space"),
    (["--address", "127.0.0.1:1"], "--address 127.0.0.1:1: no Ray head answers there"),
])
def test_bad_flags_fail_cleanly(tmp_path, capsys, argv, fragment, space_file):
    args = ["search", "--budget", "3.1M", "--results-dir", str(tmp_path), "--name", "bad"]
    argv = [space_file if value == "SPACE" else value for value in argv]
    try:
        code = main(args + argv)
    except SystemExit as exit_:  # argparse's own errors (a budget it cannot parse) exit from the parser
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert fragment in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_existing_run_folder_is_never_overwritten(tmp_path, capsys):
    run_dir = tmp_path / "taken"
    run_dir.mkdir()
    (run_dir / "trials.csv").write_text("precious\n")
    code = main(["search", "--budget", "3.1M", "--results-dir", str(tmp_path), "--name", "taken"])
    assert code == 2
    assert "already exists" in capsys.readouterr().err
    assert (run_dir / "trials.csv").read_text() == "precious\n"


def finished_run(tmp_path, **changes):
    """A run folder as a finished search leaves it (search.json, a trials.csv, the lock file), without training."""
    settings = settings_for(tmp_path, "qkv", name="done", **changes)
    settings.run_dir.mkdir(parents=True)
    (settings.run_dir / "search.json").write_text(json.dumps(settings.to_dict()))
    arch = ArchConfig(embed_dim=16, depth=1, num_heads=2, patch_size=2)
    write_trials(settings.run_dir / "trials.csv", trials_frame([trial_row(0, "complete", arch=arch, params=11_772,
                                                                          seed=5, curve=[0.5])]))
    (settings.run_dir / ".lock").write_text("12345")
    return settings.run_dir


def run_files(run_dir):
    """The run folder's files and their bytes; the lock file holds whoever last held it, and is left out."""
    return {path.name: path.read_bytes() for path in run_dir.iterdir() if path.name != ".lock"}


@pytest.mark.parametrize("argv,fragment", [
    (["--budget", "1M"], "with --budget 1000000: a resumed run keeps the settings it was started with"),
    (["--epochs", "20"], "with --epochs 20: a resumed run keeps"),
    (["--trials", "-5"], "argument --trials: -5: expected a positive integer"),
    (["--max-concurrent", "0"], "argument --max-concurrent: 0: expected a positive integer"),
])
def test_resume_refuses_settings_it_cannot_change_and_validates_the_rest(tmp_path, cli, argv, fragment):
    run_dir = finished_run(tmp_path)
    before = run_files(run_dir)
    code, _, err = cli("search", "--resume", run_dir, *argv)
    assert code == 2 and fragment in err and err.count("\n") == 1
    assert run_files(run_dir) == before


def test_a_second_resume_of_a_run_is_locked_out(tmp_path, cli):
    run_dir = finished_run(tmp_path)
    with exclusive_lock(run_dir / ".lock", "held"):
        code, _, err = cli("search", "--resume", run_dir, "--trials", "3")
    assert code == 2 and err.count("\n") == 1
    assert f"run folder {run_dir} is in use by another process (pid {os.getpid()})" in err


def test_counts_stay_integers_in_trials_csv(tmp_path):
    write_trials(tmp_path / "trials.csv", trials_frame([
        trial_row(0, "complete", arch=ArchConfig(embed_dim=16, depth=1, num_heads=2, patch_size=2), params=11_772,
                  seed=5),
        trial_row(1, "infeasible", "over", ArchConfig(embed_dim=32, depth=1, num_heads=2, patch_size=2), 41_964,
                  704_384),
        trial_row(2, "infeasible", "the space raised ValueError: no")]))
    rows = list(csv.DictReader(open(tmp_path / "trials.csv")))
    assert (rows[0]["seed"], rows[0]["flops"], rows[1]["flops"], rows[1]["seed"]) == ("5", "", "704384", "")
    assert (rows[2]["params"], rows[2]["epochs"], rows[2]["reason"]) == ("", "", "the space raised ValueError: no")
    again = load_trials(tmp_path)
    assert int(again.loc[0, "seed"]) == 5 and str(again.loc[0, "seed"]) == "5"


def test_progress_tells_queued_running_and_interrupted_apart():
    arch = ArchConfig(embed_dim=16, depth=1, num_heads=2, patch_size=2)
    trials = trials_frame([trial_row(number, state, INTERRUPTED if number == 2 else "", arch.replace(depth=number + 1),
                                     1000, None, number, [0.5] if state == "complete" else [])
                           for number, state in enumerate(["queued", "running", "failed", "complete"])])
    lines = []
    with handled_by(Forward(lines.append)):
        Progress(target=4, already=0, epochs=1).show(trials, force=True)
    (line,) = lines
    assert "1/4 trained: 1 complete, 0 stopped, 0 failed, 1 in progress, 1 queued" in line
    assert "1 interrupted (trained again)" in line and "best val_acc 50.00%" in line and "t0003" in line


def test_a_sessions_time_is_kept_as_it_runs(tmp_path, space_file):
    """search.json is the settings and the SessionRecord, flat; its seconds add this session's to the earlier ones',
    and it reads back as the record it was written from."""
    from nas.runs.results import SessionRecord, load_settings

    path = tmp_path / "search.json"
    settings = settings_for(tmp_path, space_file)
    clock = SessionClock(path, settings, SessionRecord(sessions=2, seconds=100.0, started="2026-12-01T00:00:00"))
    clock.start -= 30  # as if the session had run for 30 s
    clock.write(ended="finished")
    document = json.loads(path.read_text())
    assert document["seconds"] == pytest.approx(130, abs=1) and document["budget"] == BUDGET
    assert SessionRecord.from_document(load_settings(tmp_path)) == clock.record
    assert SearchSettings.from_dict(document) == settings


@pytest.mark.slow
def test_a_search_resumed_at_a_trial_boundary_stops_the_same_trials(ray_cluster, tmp_path, space_file):
    """Same seed, one trial at a time: straight through, or cut after 3 trials and resumed to 6 (new Ray
    experiment, rungs seeded from the study, sampler seeded by the trial count): the same trials, states, scores."""
    run = dict(epochs=3, grace_epochs=1, reduction_factor=2, max_concurrent=1)
    straight = settings_for(tmp_path, space_file, name="straight", trials=6, **run)
    assert run_search(straight).exit_code == 0
    cut = settings_for(tmp_path, space_file, name="cut", trials=3, **run)
    assert run_search(cut).exit_code == 0
    assert resume_search(cut.run_dir, {"trials": 6}).exit_code == 0
    columns = ["trial_id", "state", "arch_id", "epochs", "val_acc", "seed"]
    expected, resumed = load_trials(straight.run_dir)[columns], load_trials(cut.run_dir)[columns]
    assert resumed.equals(expected), f"{expected}\n{resumed}"
    assert (expected["state"] == "stopped").any() and (expected["state"] == "complete").any()


@pytest.mark.slow
@pytest.mark.parametrize("argv,fragment", [
    (["--gpus-per-trial", "0.5"], "needs 1 CPUs and 0.5 GPUs on one node, but this machine has 2 CPUs and 0 GPUs"),
    (["--cpus-per-trial", "4"], "needs 4 CPUs and 0 GPUs on one node, but this machine has 2 CPUs"),
])
def test_resources_a_trial_cannot_have_are_one_line_and_leave_nothing(ray_cluster, tmp_path, cli, space_file,
                                                                       argv, fragment):
    code, _, err = cli("search", "--budget", BUDGET, "--space", space_file, "--results-dir", tmp_path, "--name", "r",
                       *argv)
    assert code == 2 and fragment in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_damaged_table_is_refused_then_rendered_again_from_the_study(finished_copy, cli):
    run_dir = finished_copy
    assert cli("pareto", run_dir, "--cost", "flops")[0] == 0  # the user's own front
    mine = {path.name: path.read_bytes() for path in run_dir.glob("pareto.*")}
    original = (run_dir / "trials.csv").read_bytes()
    lines = original.decode().splitlines(keepends=True)
    (run_dir / "trials.csv").write_text("".join(lines[:3]))  # cut short, as by a full disk or a bad copy

    code, _, err = cli("pareto", run_dir)
    assert code == 2 and "lacks" in err and "rebuilds it from the study" in err and err.count("\n") == 1
    assert {path.name: path.read_bytes() for path in run_dir.glob("pareto.*")} == mine

    code, out, _ = cli("search", "--resume", run_dir)
    assert code == 0 and "raise --trials to extend it" in out
    # The table is rendered from the study, the record of truth: as the search wrote it, byte for byte.
    assert (run_dir / "trials.csv").read_bytes() == original
    assert {path.name: path.read_bytes() for path in run_dir.glob("pareto.*")} == mine
    assert (run_dir / "search_front.csv").is_file()


@pytest.mark.slow
def test_a_search_on_image_files_trains_every_trial_from_the_cache(ray_cluster, tmp_path, space_file):
    """The cache is built when the search loads its data; then every JPEG is made unreadable (bytes that are no image,
    size and modification time kept, so the cache is still the source's) and the search runs to its end."""
    from dataset_files import write_photo_folders
    from nas.engine.search import load_search_data

    root = write_photo_folders(tmp_path / "data", classes=3, per_class=12, size=(80, 60))
    settings = settings_for(tmp_path, space_file, trials=2, dataset="imagenet", data_dir=str(root), img_size=8,
                            epochs=2, grace_epochs=1, cache_dir=str(tmp_path / "cache"), val_images=6,
                            recipe_overrides={"batch_size": 8})
    splits = load_search_data(settings)
    assert len(splits.val) == 6 and splits.test is None
    for path in root.rglob("*.JPEG"):
        stat = path.stat()
        path.write_bytes(b"\0" * stat.st_size)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    result = run_search(settings)
    assert result.ended == "finished" and result.trained == 2
    assert set(result.trials["state"]) <= {"complete", "stopped", "infeasible"}
    record = json.loads((tmp_path / "results" / "run" / "search.json").read_text())
    assert record["images_from"].startswith(f"image cache {tmp_path / 'cache'}")
    assert record["val_count"] == 6 and record["train_count"] == len(splits.train) and record["val_images"] == 6


