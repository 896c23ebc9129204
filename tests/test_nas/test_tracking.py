"""Experiment tracking: TensorBoard events by default, MLflow on request, read back with their own readers; a
resume may change the loggers; a logger whose package is missing is one line."""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import optuna
import pytest

from test_search import BUDGET, TINY_SPACE, settings_for

from nas.runs.results import load_settings, load_trials
from nas.engine.search import SearchSettings, resume_search, run_search
from nas.runtime.tracking import tracking_environment
from qkvnas_core.errors import UsageError

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
EPOCHS = 2


@pytest.fixture(scope="module")
def tracked_run(ray_cluster, tmp_path_factory):
    """One search of 2 trials of 2 epochs logged to TensorBoard (and MLflow when installed), then resumed to 3
    trials with no logger; its run folder."""
    folder = tmp_path_factory.mktemp("tracking")
    space = folder / "tiny_space.py"
    space.write_text(TINY_SPACE)
    settings = settings_for(folder, f"{space}:tiny", name="tracked", trials=2, epochs=EPOCHS, early_stopping="none",
                            logger=["tensorboard", "mlflow"] if HAS_MLFLOW else ["tensorboard"])
    assert run_search(settings).exit_code == 0
    assert resume_search(settings.run_dir, {"trials": 3, "logger": []}).exit_code == 0
    return settings.run_dir


def study_curves(run_dir) -> dict[int, list[float]]:
    """Each trained trial's val_acc after each epoch, as the study (the record of truth) holds it."""
    study = optuna.load_study(study_name="tracked", storage=f"sqlite:///{run_dir / 'study.db'}")
    return {trial.number: trial.user_attrs["val_acc_curve"] for trial in study.trials
            if "val_acc_curve" in trial.user_attrs}


@pytest.mark.slow
def test_tensorboard_events_hold_each_trials_curve(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves = study_curves(tracked_run)
    table = load_trials(tracked_run).set_index("trial_id")
    logged = sorted(tracked_run.glob("ray-1/trial_*"))
    assert [path.name for path in logged] == ["trial_0000", "trial_0001"]
    for trial_dir in logged:
        number = int(trial_dir.name.removeprefix("trial_"))
        events = EventAccumulator(str(trial_dir))
        events.Reload()
        val_acc = events.Scalars("ray/tune/val_acc")
        curve = curves[number]
        assert len(curve) == EPOCHS
        assert [event.step for event in val_acc] == list(range(1, EPOCHS + 1))
        assert [event.value for event in events.Scalars("ray/tune/epoch")] == [event.step for event in val_acc]
        # TensorBoard keeps 32-bit floats.
        assert [event.value for event in val_acc] == list(np.float32(curve))
        row = table.loc[f"t{number:04d}"]
        assert (row["val_acc"], row["last_val_acc"], row["epochs"]) == (max(curve), curve[-1], len(curve))


@pytest.mark.slow
def test_a_resume_changes_the_loggers(tracked_run):
    """The resumed session logged to none: its trial has Ray Tune's own records and no events."""
    resumed = sorted(tracked_run.glob("ray-2/trial_*"))
    assert len(resumed) == 1 and (resumed[0] / "progress.csv").is_file()
    assert not list(resumed[0].glob("events.out.tfevents.*"))
    assert load_settings(tracked_run)["logger"] == []
    assert len(study_curves(tracked_run)) == 3


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (pip install mlflow-skinny): --logger mlflow "
                                           "is tested where it is")
def test_mlflow_runs_are_written_to_the_run_folders_own_store(tracked_run):
    from mlflow import MlflowClient

    assert (tracked_run / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{tracked_run / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    curves = study_curves(tracked_run)
    # One MLflow run per trial of the first session; the resumed one (--logger none) added none.
    assert sorted(int(run.data.params["trial_number"]) for run in runs) == [0, 1]
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert run.info.status == "FINISHED"
        assert [metric.step for metric in history] == list(range(1, EPOCHS + 1))
        assert [metric.value for metric in history] == curves[int(run.data.params["trial_number"])]


@pytest.mark.parametrize("module", ["mlflow", "wandb"])
def test_a_logger_whose_package_is_missing_is_one_line(tmp_path, cli, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # what import finds for a package not installed
    code, _, err = cli("search", "--budget", BUDGET, "--results-dir", tmp_path, "--name", "r", "--logger",
                       f"tensorboard,{module}")
    assert code == 2 and err == f"nas search: error: --logger {module}: {module} is not installed; pip install {module}\n"
    assert not (tmp_path / "r").exists()
    with pytest.raises(UsageError, match=f"{module} is not installed"):
        settings_for(tmp_path, "qkv", logger=[module])


@pytest.mark.parametrize("value", ["tensorflow", "tensorboard,tensorboard", "none,mlflow", ""])
def test_unknown_or_repeated_loggers_are_refused(tmp_path, cli, value):
    code, _, err = cli("search", "--budget", BUDGET, "--results-dir", tmp_path, "--logger", value)
    assert code == 2 and "expected none, or any of tensorboard, mlflow, wandb" in err


def test_tensorboard_is_the_default_logger(tmp_path):
    assert SearchSettings(name="r", budget=BUDGET, results_dir=str(tmp_path)).logger == ["tensorboard"]


def test_the_tracking_environment_sends_nothing_and_is_restored(monkeypatch):
    monkeypatch.delenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", raising=False)
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "online")  # the user's own choice stands
    with tracking_environment(["tensorboard", "mlflow", "wandb"]):
        assert os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] == "1"
        assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true" and os.environ["WANDB_MODE"] == "online"
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ and "MLFLOW_DISABLE_TELEMETRY" not in os.environ
    monkeypatch.delenv("WANDB_MODE")
    with tracking_environment(["wandb"]):
        assert os.environ["WANDB_MODE"] == "offline" and "MLFLOW_DISABLE_TELEMETRY" not in os.environ
    assert "WANDB_MODE" not in os.environ
