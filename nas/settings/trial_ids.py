"""How a trial is named: `t0007` in trials.csv and every command, the Optuna trial number behind it. A leaf: the
settings, the run folder's tables and the commands all read trial ids through it."""
from __future__ import annotations

import re

from qkvnas_core.errors import UsageError

# What trials.csv holds: t and the number (four digits at least, more as the study grows).
TRIAL_ID_PATTERN = re.compile(r"t[0-9]+")
# What a user may type for one: the id, or the bare number.
TRIAL_REFERENCE = re.compile(r"t?([0-9]{1,9})")


def format_trial_id(number: int) -> str:
    """The id of Optuna trial `number` in trials.csv: `t0007`."""
    return f"t{number:04d}"


def parse_trial_number(text: str) -> int:
    """The Optuna number of a trial named as trials.csv writes it (t0016), or by its number (16, t16)."""
    match = TRIAL_REFERENCE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"trial {text[:40]!r}: expected a trial id such as t0016, or its number 16")
    return int(match.group(1))


def is_trial_reference(text: str) -> bool:
    """Whether `text` names a trial as a user may (t0016, t16, 16)."""
    return TRIAL_REFERENCE.fullmatch(text) is not None
