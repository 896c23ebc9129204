"""One tidy table per run: `results/<run>/trials.csv`, kept current and written atomically.

Every later command (pareto, show, retrain) reads the run back through `load_trials`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from search_spaces.arch import ArchConfig
from search_spaces.errors import UsageError
from search_spaces.files import write_text_atomic

STATES = ("complete", "stopped", "failed", "infeasible", "running")
LEAD_COLUMNS = ["trial_id", "state", "reason", "arch_id", "structure", "params", "flops", "val_acc",
                "last_val_acc", "epochs", "seconds", "seed"]
ARCH_COLUMNS = list(ArchConfig().flat())
COLUMNS = LEAD_COLUMNS + ARCH_COLUMNS + ["arch"]


class TrialTable:
    """The rows of one run, keyed by trial id (`t0007` = Optuna trial number 7)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}
        if path.exists():
            for row in load_trials(path.parent).to_dict("records"):
                self.rows[str(row["trial_id"])] = {k: (None if _is_missing(v) else v) for k, v in row.items()}

    @staticmethod
    def trial_id(number: int) -> str:
        return f"t{number:04d}"

    def start(self, trial_id: str, arch: ArchConfig, params: int, flops: int | None, seed: int | None,
              state: str = "running", reason: str = "") -> None:
        self.rows[trial_id] = {
            "trial_id": trial_id, "state": state, "reason": reason, "arch_id": arch.arch_id,
            "structure": arch.structure, "params": params, "flops": flops, "val_acc": None, "last_val_acc": None,
            "epochs": 0, "seconds": 0.0, "seed": seed, **arch.flat(), "arch": arch.to_json(),
        }

    def update(self, trial_id: str, **values: Any) -> None:
        self.rows[trial_id].update(values)

    def record_epoch(self, trial_id: str, epoch: int, val_acc: float, seconds: float) -> None:
        row = self.rows[trial_id]
        best = row["val_acc"]
        row.update(epochs=epoch, last_val_acc=val_acc, seconds=seconds,
                   val_acc=val_acc if best is None or val_acc > best else best)

    def count(self, *states: str) -> int:
        return sum(1 for row in self.rows.values() if row["state"] in states)

    def best(self) -> dict[str, Any] | None:
        scored = [r for r in self.rows.values() if r["state"] in ("complete", "stopped", "running")
                  and r["val_acc"] is not None]
        return max(scored, key=lambda r: (r["val_acc"], -r["params"]), default=None)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.rows[k] for k in sorted(self.rows)], columns=COLUMNS)

    def write(self) -> None:
        write_text_atomic(self.path, self.frame().to_csv(index=False))


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def load_trials(run_dir: str | os.PathLike) -> pd.DataFrame:
    """A run's trials.csv; a missing folder or file, or an unreadable table, is one clear UsageError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir}: not found; expected results/<run> as written by nas search")
    path = run_dir / "trials.csv"
    if not path.is_file():
        raise UsageError(f"{path}: not found; expected a run folder written by nas search")
    try:
        table = pd.read_csv(path, dtype={"trial_id": str, "reason": str, "arch": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: unreadable ({str(error).splitlines()[0]}); expected the CSV nas search writes") from None
    missing = [c for c in ("trial_id", "state", "params", "val_acc", "arch") if c not in table.columns]
    if missing:
        raise UsageError(f"{path}: missing columns {missing}; expected the CSV nas search writes")
    table["reason"] = table["reason"].fillna("")
    return table


def load_settings(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / "search.json"
    if not path.is_file():
        raise UsageError(f"{path}: not found; expected a run folder written by nas search")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"{path}: malformed JSON ({error.msg} at line {error.lineno})") from None
