"""One tidy table per run: `results/<run>/trials.csv`, kept current and written atomically.

Every later command (pareto, show, retrain) reads the run back through `load_trials`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from search_spaces.arch import ArchConfig
from qkvnas_core.errors import UsageError
from qkvnas_core.files import read_json_object, write_text_atomic

STATES = ("complete", "stopped", "failed", "infeasible", "running", "queued")
# The reason of a trial a crash or Ctrl-C cut short: failed, but not counted as trained, and tried again on resume.
INTERRUPTED = "interrupted: the search stopped before this trial finished"
LEAD_COLUMNS = ["trial_id", "state", "reason", "arch_id", "structure", "params", "flops", "val_acc",
                "last_val_acc", "epochs", "seconds", "seed"]
ARCH_COLUMNS = list(ArchConfig().flat())
COLUMNS = LEAD_COLUMNS + ARCH_COLUMNS + ["arch"]


class TrialTable:
    """The rows of one run, keyed by trial id (`t0007` = Optuna trial number 7)."""

    def __init__(self, path: Path, read: bool = True) -> None:
        self.path = path
        self.rows: dict[str, dict[str, Any]] = {}
        if read and path.exists():
            for row in load_trials(path.parent).to_dict("records"):
                self.rows[str(row["trial_id"])] = {k: (None if _is_missing(v) else v) for k, v in row.items()}

    @staticmethod
    def trial_id(number: int) -> str:
        return f"t{number:04d}"

    def start(self, trial_id: str, arch: ArchConfig, params: int, flops: int | None, seed: int | None,
              state: str = "queued", reason: str = "") -> None:
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
                  and r.get("val_acc") is not None]
        return max(scored, key=lambda r: (r["val_acc"], -r["params"]), default=None)

    def trained(self) -> int:
        """Trials that went through Ray and ended (interrupted ones are not counted: a resume replaces them)."""
        return sum(1 for row in self.rows.values()
                   if row["state"] in ("complete", "stopped", "failed") and row.get("seed") is not None
                   and row.get("reason") != INTERRUPTED)

    def close_running(self) -> None:
        """Rows a stopped session left queued or running become failed (interrupted): a resume trains them again."""
        for row in self.rows.values():
            if row["state"] in ("queued", "running"):
                row.update(state="failed", reason=INTERRUPTED)

    def interrupted(self) -> int:
        return sum(1 for row in self.rows.values() if row.get("reason") == INTERRUPTED)

    def frame(self) -> pd.DataFrame:
        frame = pd.DataFrame([self.rows[k] for k in sorted(self.rows)], columns=COLUMNS)
        # Counts stay integers in the file (a missing value would make pandas write 5.0 for seed 5).
        return frame.astype({name: "Int64" for name in INTEGER_COLUMNS})

    def write(self) -> None:
        write_text_atomic(self.path, self.frame().to_csv(index=False))


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def state_counts(table: pd.DataFrame) -> str:
    """'3 complete, 2 stopped, 1 infeasible', or 'no trials'."""
    counts = table["state"].fillna("unknown").value_counts()
    return ", ".join(f"{count} {state}" for state, count in counts.items()) or "no trials"


REQUIRED_COLUMNS = ("trial_id", "state", "structure", "params", "val_acc")
NUMERIC_COLUMNS = ("params", "flops", "val_acc", "last_val_acc", "epochs", "seconds", "seed")
INTEGER_COLUMNS = ("params", "flops", "epochs", "seed")
TEXT_COLUMNS = ("trial_id", "state", "reason", "arch_id", "structure", "arch")


@dataclass(frozen=True)
class Run:
    """One run folder read back: its settings (search.json, {} when absent) and its trials table."""

    path: Path
    settings: dict[str, Any]
    table: pd.DataFrame

    @property
    def name(self) -> str:
        return str(self.settings.get("name") or self.path.name)

    def setting(self, key: str, why: str) -> Any:
        if self.settings.get(key) is None:
            raise UsageError(f"{self.path / 'search.json'} has no {key!r}: expected it {why}")
        return self.settings[key]


def find_run(spec: str | Path, results_dir: Path = Path("results")) -> Path:
    """A run folder given as a path, or as a name under `results_dir`."""
    for candidate in (Path(spec), results_dir / spec):
        if candidate.is_dir():
            return candidate
    raise UsageError(f"run folder {spec}: not found; expected a folder written by `nas search`, e.g. results/<run>")


def load_settings(run_dir: str | os.PathLike, required: bool = True) -> dict[str, Any]:
    """A run's search.json; missing is an error when `required`, else {}; corrupt is always an error."""
    path = Path(run_dir) / "search.json"
    if not path.is_file():
        if required:
            raise UsageError(f"{path}: not found; expected a run folder written by nas search")
        return {}
    return read_json_object(path, "the settings object `nas search` writes")


def load_trials(run_dir: str | os.PathLike) -> pd.DataFrame:
    """A run's trials.csv with its numbers checked; missing, empty or corrupt is one clear UsageError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir}: not found; expected a folder written by `nas search`, e.g. results/<run>")
    path = run_dir / "trials.csv"
    if not path.is_file():
        raise UsageError(f"{path}: not found; expected the run folder to hold the trials.csv `nas search` writes")
    expected = "expected a header row and one row per trial, as `nas search` writes"
    try:
        table = pd.read_csv(path, dtype={name: str for name in TEXT_COLUMNS})
    except pd.errors.EmptyDataError:
        raise UsageError(f"{path} is empty: {expected}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise UsageError(f"{path} is not readable CSV ({str(error).strip().splitlines()[0]}): {expected}") from None
    missing = [name for name in REQUIRED_COLUMNS if name not in table.columns]
    if missing:
        raise UsageError(f"{path} lacks column(s) {', '.join(missing)}: {expected}")
    for name in NUMERIC_COLUMNS:
        if name not in table.columns:
            continue
        numbers = pd.to_numeric(table[name], errors="coerce")
        bad = numbers.isna() & table[name].notna()
        if bad.any():
            row = table[bad].iloc[0]
            raise UsageError(f"{path}: column {name} holds {row[name]!r} (trial {row['trial_id']}): expected a number")
        table[name] = numbers.astype("Int64") if name in INTEGER_COLUMNS and (numbers.dropna() % 1 == 0).all() else numbers
    return table


def read_run(run_dir: str | Path) -> Run:
    """Read search.json and trials.csv of a run folder; anything missing or corrupt is one UsageError, and so is
    a table that lacks trials the run's study records (a cut-short trials.csv must not feed a front)."""
    path = Path(run_dir)
    run = Run(path, load_settings(path, required=False), load_trials(path))
    check_against_study(run)
    return run


def check_against_study(run: Run) -> None:
    """Every trial study.db records as ended must have its row: the study is the record of truth."""
    study_path = run.path / "study.db"
    name = run.settings.get("study_name") or run.settings.get("name")
    if not study_path.is_file() or not name:
        return
    import optuna

    study = optuna.load_study(study_name=name, storage=f"sqlite:///{study_path.resolve()}")
    ended = {trial.number for trial in study.get_trials(deepcopy=False, states=(
        optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL))
        if "duplicate_of" not in trial.user_attrs}
    listed = {int(trial_id[1:]) for trial_id in run.table["trial_id"].astype(str) if trial_id[1:].isdigit()}
    missing = sorted(ended - listed)
    if missing:
        raise UsageError(f"{run.path / 'trials.csv'} lacks {len(missing)} of the {len(ended)} trials study.db records "
                         f"(first: t{missing[0]:04d}): the table is damaged; `nas search --resume {run.path}` rebuilds "
                         "it from the study, the record of truth")


