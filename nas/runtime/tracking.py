"""Experiment tracking of a search's trials through Ray Tune's own logger callbacks, chosen by `--logger`.

Every epoch a trial reports (val_acc, best_val_acc, val_loss, train_loss, flops, images_per_s, trial_seconds)
goes to each chosen logger at step = its epoch. Nothing leaves the machine unless the user asks for it:
- tensorboard (the default): event files in each trial's folder, `ray-N/trial_NNNN/events.out.tfevents.*`
  (Ray Tune's TBXLoggerCallback; tensorboardX comes with ray[tune]), tags `ray/tune/<metric>`.
- mlflow: one MLflow run per trial in the experiment named after the run (MLFLOW_EXPERIMENT_NAME overrides), in
  the SQLite store `results/<run>/mlflow.db` unless MLFLOW_TRACKING_URI names another; MLflow's usage
  telemetry stays off unless MLFLOW_DISABLE_TELEMETRY is set.
- wandb: one W&B run per trial, grouped by the run, offline under `results/<run>/wandb/` unless WANDB_MODE says
  otherwise (`wandb sync` uploads it when the user chooses).
Ray Tune's own per-trial records (progress.csv, result.json, params.json) are written with any choice.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    from ray.tune import Callback

MLFLOW_STORE = "mlflow.db"
WANDB_PROJECT = "qkvnas"
WANDB_MODE = "offline"


def tracking_callbacks(loggers: Sequence[str], run_dir: Path) -> list[Callback]:
    """Ray Tune callbacks writing the trials' reports of the run in `run_dir` to `loggers` (checked by
    `check_loggers`), after Ray Tune's own CSV and JSON records. Fit with them inside `tracking_environment`,
    or Ray Tune adds its TensorBoard logger whether chosen or not."""
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback, TBXLoggerCallback

    callbacks: list[Callback] = [CSVLoggerCallback(), JsonLoggerCallback()]
    if "tensorboard" in loggers:
        callbacks.append(TBXLoggerCallback())
    if "mlflow" in loggers:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        store = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / MLFLOW_STORE).resolve().as_posix()}"
        callbacks.append(MLflowLoggerCallback(
            tracking_uri=store, experiment_name=os.environ.get("MLFLOW_EXPERIMENT_NAME") or run_dir.name))
    if "wandb" in loggers:
        from ray.air.integrations.wandb import WandbLoggerCallback

        callbacks.append(WandbLoggerCallback(
            project=os.environ.get("WANDB_PROJECT") or WANDB_PROJECT, group=run_dir.name,
            dir=str(run_dir.resolve()), mode=os.environ.get("WANDB_MODE") or WANDB_MODE))
    return callbacks


@contextlib.contextmanager
def tracking_environment(loggers: Sequence[str]) -> Iterator[None]:
    """What Ray Tune, MLflow and W&B read from the environment while a search's `Tuner.fit()` runs, restored
    after: Ray Tune's automatic loggers off (the callbacks are the ones chosen), and the user's own MLflow
    telemetry and W&B mode settings kept, else telemetry off and W&B offline (Ray asks for no API key then)."""
    values = {"TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1"}
    if "mlflow" in loggers:
        values["MLFLOW_DISABLE_TELEMETRY"] = os.environ.get("MLFLOW_DISABLE_TELEMETRY") or "true"
    if "wandb" in loggers:
        values["WANDB_MODE"] = os.environ.get("WANDB_MODE") or WANDB_MODE
    earlier = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in earlier.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
