"""Optuna's private API this project reaches, in one place: each wrapper names what it reaches and why no public
API does. tests/test_nas/test_compat.py checks them against the installed Optuna and names the version they were written
for."""
from __future__ import annotations

from typing import Any

import optuna


def set_system_attr(trial: optuna.Trial, key: str, value: Any) -> None:
    """A system attr of a live trial, through its storage's public setter: Optuna 5 removed
    Trial.set_system_attr, and the storage knows a trial only by its private `_trial_id`."""
    trial.storage.set_trial_system_attr(trial._trial_id, key, value)


def running_trial(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.Trial:
    """The live Trial of `frozen`, a trial of `study` still RUNNING, so its attrs can be set: Optuna builds one
    only from the private `_trial_id` of its storage (study.ask gives new trials alone)."""
    return optuna.Trial(study, frozen._trial_id)
