"""One tidy table per run: `results/<run>/trials.csv`, rendered from the run's study and written atomically.

The search writes it from its Optuna study (`nas.engine.searcher.render_trials`) after every event; every later
command (pareto, show, retrain) reads the run back through `load_trials`.
"""
from __future__ import annotations

import enum
import io
import os
import dataclasses
import sqlite3
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from search_spaces.arch import ArchConfig
from search_spaces.shape import DataShape
from qkvnas_core.errors import UsageError
from qkvnas_core.files import check_json_fields, read_json_object, write_text_atomic
from nas.settings.requests import SearchSettings, check_value, parser_of, renamed, settings_of
from nas.settings.trial_ids import TRIAL_ID_PATTERN, format_trial_id


class TrialState(str, enum.Enum):
    """A trial's state in trials.csv and in its study's `state` user attr: a str, so the table's values and the
    words compare equal."""

    COMPLETE = "complete"  # every epoch ran: scored at full fidelity
    STOPPED = "stopped"  # ASHA ended it early: scored after fewer epochs
    FAILED = "failed"
    INFEASIBLE = "infeasible"  # over a limit or unbuildable: never trained
    RUNNING = "running"
    QUEUED = "queued"

    # Written, formatted and hashed as the word itself (StrEnum's behaviour, which Python 3.10 lacks), so a CSV
    # holds "complete" and pandas' isin finds a member among the words.
    __str__ = str.__str__
    __format__ = str.__format__
    __hash__ = str.__hash__


STATES = tuple(TrialState)
# Trials with a validation accuracy to rank; only complete ones were scored at full fidelity.
SCORED_STATES = (TrialState.COMPLETE, TrialState.STOPPED)
# Trials that went through Ray and ended.
ENDED_STATES = (*SCORED_STATES, TrialState.FAILED)
# The reason of a trial a crash or Ctrl-C cut short: failed, but not counted as trained, and tried again on resume.
INTERRUPTED = "interrupted: the search stopped before this trial finished"
# val_acc is the trial's best validation accuracy, reached after best_epoch of its `epochs`; epochs_spent is the
# search's total of trained epochs when the trial ended (the x axis of hypervolume.png).
LEAD_COLUMNS = ["trial_id", "state", "reason", "arch_id", "structure", "params", "flops", "val_acc",
                "best_epoch", "last_val_acc", "epochs", "epochs_spent", "seconds", "seed"]
ARCH_COLUMNS = list(ArchConfig().flat())
COLUMNS = LEAD_COLUMNS + ARCH_COLUMNS + ["arch"]


def trial_row(number: int, state: str, reason: str = "", arch: ArchConfig | None = None, params: int | None = None,
              flops: int | None = None, seed: int | None = None, curve: Sequence[float] = (),
              seconds: float = 0.0, epochs_spent: int | None = None) -> dict[str, Any]:
    """One row of trials.csv; `curve` is val_acc after each epoch. A draw that built no architecture has only
    its id, state and reason."""
    row: dict[str, Any] = {"trial_id": format_trial_id(number), "state": state, "reason": reason}
    if arch is not None:
        best_epoch = max(range(len(curve)), key=lambda index: curve[index]) + 1 if curve else None
        row.update(params=params, flops=flops, val_acc=max(curve, default=None), best_epoch=best_epoch,
                   last_val_acc=curve[-1] if curve else None, epochs=len(curve), epochs_spent=epochs_spent,
                   seconds=seconds, seed=seed, **_arch_columns(arch))
    return row


@lru_cache(maxsize=4096)
def _arch_columns(arch: ArchConfig) -> dict[str, Any]:
    # A search renders its table after every event: each architecture's columns are built once per process.
    return {"arch_id": arch.arch_id, "structure": arch.structure, **arch.flat(), "arch": arch.to_json()}


def trials_frame(rows: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Rows as trials.csv holds them: every column, in order, counts as integers."""
    frame = pd.DataFrame(list(rows), columns=COLUMNS)
    # Counts stay integers in the file (a missing value would make pandas write 5.0 for seed 5).
    return frame.astype({name: "Int64" for name in INTEGER_COLUMNS})


def write_trials(path: Path, trials: pd.DataFrame) -> None:
    write_text_atomic(path, trials.to_csv(index=False))


def trained_count(trials: pd.DataFrame) -> int:
    """Trials that went through Ray and ended (interrupted ones are not counted: a resume replaces them)."""
    ended = trials["state"].isin(ENDED_STATES) & trials["seed"].notna()
    return int((ended & (trials["reason"] != INTERRUPTED)).sum())


def interrupted_count(trials: pd.DataFrame) -> int:
    return int((trials["reason"] == INTERRUPTED).sum())


def best_trial(trials: pd.DataFrame) -> dict[str, Any] | None:
    """The row with the best val_acc so far (fewest params on a tie; a running trial's epochs so far count), or
    None before any score."""
    scored = trials[trials["state"].isin((*SCORED_STATES, TrialState.RUNNING)) & trials["val_acc"].notna()]
    if scored.empty:
        return None
    return scored.sort_values(["val_acc", "params"], ascending=[False, True], kind="stable").iloc[0].to_dict()


def state_counts(table: pd.DataFrame) -> str:
    """'3 complete, 2 stopped, 1 infeasible', or 'no trials'."""
    counts = table["state"].fillna("unknown").value_counts()
    return ", ".join(f"{count} {state}" for state, count in counts.items()) or "no trials"


REQUIRED_COLUMNS = ("trial_id", "state", "structure", "params", "val_acc")
NUMERIC_COLUMNS = ("params", "flops", "val_acc", "best_epoch", "last_val_acc", "epochs", "epochs_spent", "seconds",
                   "seed")
INTEGER_COLUMNS = ("params", "flops", "best_epoch", "epochs", "epochs_spent", "seed")
TEXT_COLUMNS = ("trial_id", "state", "reason", "arch_id", "structure", "arch")


# What study.db must be, and what to do when it is not (a reader refuses it; `nas search --resume` cannot go on).
STUDY_EXPECTED = ("expected the study.db `nas search` wrote (Optuna's SQLite storage, the run's record of truth); "
                  "restore it from a copy, or start a new run (--name)")
STUDY_TABLES = frozenset({"studies", "trials", "version_info", "trial_values", "trial_user_attributes"})


@dataclass(frozen=True)
class RunFolder:
    """A run's folder and the files `nas search`, `nas pareto` and `nas retrain` keep in it: the one place a run
    file is named. search.json holds the settings and the sessions' record, study.db the Optuna study (the record
    of truth), trials.csv the table rendered from it; retrain.csv a row per retrained (model, seed)."""

    path: Path

    @property
    def name(self) -> str:
        """The folder's name: a run moved or renamed is the run there now, as a resume takes it."""
        return self.path.name

    @property
    def settings_file(self) -> Path:
        return self.path / "search.json"

    @property
    def trials_file(self) -> Path:
        return self.path / "trials.csv"

    @property
    def study_file(self) -> Path:
        return self.path / "study.db"

    @property
    def storage(self) -> str:
        """The study's Optuna storage URL (absolute, so a Ray worker in another folder finds it)."""
        return f"sqlite:///{self.study_file.resolve()}"

    @property
    def lock_file(self) -> Path:
        """Held by the session that runs the search (qkvnas_core.files.exclusive_lock)."""
        return self.path / ".lock"

    @property
    def retrain_file(self) -> Path:
        return self.path / "retrain.csv"

    @property
    def retrain_dir(self) -> Path:
        """Where each retrained (model, seed) has its folder (nas.winners.retrain.model_folder)."""
        return self.path / "retrain"

    @property
    def transfer_file(self) -> Path:
        """A row per fine-tuned model, its test top-1 on each transfer set (nas transfer)."""
        return self.path / "transfer.csv"

    def transfer_folder(self, arch_id: str, dataset: str) -> Path:
        """Where one model's fine-tune on one transfer set trains."""
        return self.path / "transfer" / arch_id / dataset

    def transfer_results(self) -> list[Path]:
        """The folders of every fine-tune that finished (holds its result file)."""
        return sorted(path.parent for path in (self.path / "transfer").glob("*/*/result.json"))

    @property
    def search_front(self) -> Path:
        """The search's own front (search_front.csv/.png/.svg), which `nas pareto`'s files never overwrite."""
        return self.path / "search_front"

    @property
    def pareto(self) -> Path:
        """`nas pareto`'s front (pareto.csv/.png/.svg)."""
        return self.path / "pareto"

    @property
    def hypervolume_plot(self) -> Path:
        """The front's hypervolume against the epochs spent (hypervolume.png)."""
        return self.path / "hypervolume"

    def experiment_name(self, session: int) -> str:
        """Ray Tune's experiment folder of the run's `session`-th session (ray-1, then ray-2 after a resume)."""
        return f"ray-{session}"

    @staticmethod
    def trial_folder(number: int) -> str:
        """A trial's folder inside its session's experiment folder (trial_0007)."""
        return f"trial_{number:04d}"

    @classmethod
    def of_model(cls, model_folder: Path) -> RunFolder | None:
        """The run a retrained model's folder (results/<run>/retrain/<arch-id>) belongs to; None for another."""
        model_folder = Path(model_folder)
        run = cls(model_folder.parent.parent)
        return run if model_folder.parent == run.retrain_dir else None

    def check_study(self, study_name: str) -> None:
        """study.db as a reader needs it, read only unless a killed writer's journal must be rolled back: a
        SQLite database, whole, of Optuna's tables, holding `study_name`; anything else is one UsageError naming the
        file and what to do."""
        path = self.study_file
        if not path.is_file():
            raise UsageError(f"{path}: not found; {STUDY_EXPECTED}")
        # A journal left by a writer killed mid-transaction (kill -9 of a search) is rolled back on open: SQLite
        # needs write access for that, and the file is then the run's own study, not a foreign one.
        killed_writer = any(path.with_name(path.name + suffix).exists() for suffix in ("-journal", "-wal"))
        try:
            connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode={'rw' if killed_writer else 'ro'}", uri=True)
            try:
                tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                missing = sorted(STUDY_TABLES - tables)
                if missing:
                    raise UsageError(f"{path}: a SQLite database without Optuna's table {missing[0]}; {STUDY_EXPECTED}")
                verdict = connection.execute("PRAGMA quick_check").fetchone()[0]
                if verdict != "ok":
                    raise UsageError(f"{path}: damaged (SQLite's check: {' '.join(str(verdict).split())[:80]}); "
                                     f"{STUDY_EXPECTED}")
                names = {row[0] for row in connection.execute("SELECT study_name FROM studies")}
            finally:
                connection.close()
        except sqlite3.Error as error:
            raise UsageError(f"{path}: not a readable SQLite database ({' '.join(str(error).split())[:80]}); "
                             f"{STUDY_EXPECTED}") from None
        if study_name not in names:
            raise UsageError(f"{path}: holds no study named {study_name!r} (it holds {', '.join(sorted(names)) or 'none'})"
                             f"; {STUDY_EXPECTED}")

    @contextmanager
    def reading_study(self) -> Iterator[None]:
        """What goes wrong reading a study that passed `check_study` (values that do not parse, pages damaged
        inside) as one UsageError naming study.db."""
        import optuna
        import sqlalchemy.exc

        try:
            yield
        except (optuna.exceptions.OptunaError, sqlalchemy.exc.SQLAlchemyError, sqlite3.Error, ValueError, KeyError,
                TypeError) as error:
            detail = " ".join(str(error).split())[:80]
            raise UsageError(f"{self.study_file}: damaged ({type(error).__name__}: {detail}); {STUDY_EXPECTED}") \
                from None

    def load_study(self, study_name: str) -> Any:
        """The run's Optuna study, checked (`check_study`)."""
        import optuna

        self.check_study(study_name)
        with self.reading_study():
            return optuna.load_study(study_name=study_name, storage=self.storage)


@dataclass(frozen=True)
class Run:
    """One run folder read back: its settings (search.json, {} when absent) and its trials table."""

    path: Path
    settings: dict[str, Any]
    table: pd.DataFrame

    @property
    def name(self) -> str:
        """The folder's name: a run moved or renamed is the run there now, as a resume takes it."""
        return self.path.name

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.path)

    def setting(self, key: str, why: str) -> Any:
        if self.settings.get(key) is None:
            raise UsageError(f"{self.folder.settings_file} has no {key!r}: expected it {why}")
        return self.settings[key]


def find_run(spec: str | Path, results_dir: Path = Path("results")) -> Path:
    """A run folder given as a path, or as a name under `results_dir`."""
    for candidate in (Path(spec), results_dir / spec):
        if candidate.is_dir():
            return candidate
    raise UsageError(f"run folder {spec}: not found; expected a folder written by `nas search`, e.g. results/<run>")


@dataclass
class SessionRecord:
    """What search.json records beside the settings (SearchSettings gives those): the sessions' record, declared
    once. The search writes it (with the settings, flat, `search_document`); every reader checks a run's
    search.json against these fields' types (`load_settings`); a resume continues it (`from_document`)."""

    sessions: int = 0
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    split_version: int | None = None
    patch_size: int | None = None
    num_classes: int | None = None
    img_size: int | None = None
    in_chans: int | None = None
    train_count: int | None = None
    val_count: int | None = None
    images_from: str | None = None
    started: str | None = None
    finished: str | None = None
    ended: str | None = None
    seconds: float = 0.0
    ray_processes: list[tuple[int, float]] = dataclasses.field(default_factory=list)
    hypervolume: float | None = None
    hypervolume_reference: dict[str, float] | None = None

    @classmethod
    def from_document(cls, document: dict[str, Any]) -> SessionRecord:
        """The record part of a search.json already read by `load_settings` (its types checked there)."""
        return cls(**{item.name: document[item.name] for item in dataclasses.fields(cls)
                      if document.get(item.name) is not None})


def search_document(settings: SearchSettings, record: SessionRecord) -> dict[str, Any]:
    """search.json: the settings and the record, flat, as every version has written it."""
    return {**settings.to_dict(), **dataclasses.asdict(record)}


# The record's counts of which 0 means nothing; the others are from 1.
RECORD_COUNTS_FROM_ZERO = ("sessions", "split_version", "seconds", "hypervolume")


def load_settings(run_dir: str | os.PathLike, required: bool = True) -> dict[str, Any]:
    """A run's search.json, settings by their current names (nas.settings.RENAMED), each field of its JSON type
    and each setting's number in its flag's range (the data shape as DataShape reads it); missing is an error when
    `required`, else {}; anything else wrong is one UsageError naming the file and the field. Every field may be
    absent: a resume checks the settings whole, as SearchSettings."""
    path = RunFolder(Path(run_dir)).settings_file
    if not path.is_file():
        if required:
            raise UsageError(f"{path}: not found; expected a run folder written by nas search")
        return {}
    settings = renamed(read_json_object(path, "the settings object `nas search` writes"))
    hints = {**typing.get_type_hints(SearchSettings), **typing.get_type_hints(SessionRecord)}
    try:
        check_json_fields(settings, {name: hint | None for name, hint in hints.items()})
        flagged = settings_of(SearchSettings)
        for name, value in settings.items():
            if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if name in flagged:
                check_value(name, value, parser_of(name, flagged[name][1]))
            elif value < (0 if name in RECORD_COUNTS_FROM_ZERO else 1):
                raise UsageError(f"{name}={value}: expected a number of at least "
                                 f"{0 if name in RECORD_COUNTS_FROM_ZERO else 1}")
        if settings.get("img_size") is not None and settings.get("num_classes") is not None:
            DataShape(img_size=settings["img_size"], in_chans=settings.get("in_chans") or 3,
                      num_classes=settings["num_classes"])
    except UsageError as error:
        raise UsageError(f"{path}: {error}") from None
    return settings


# trial_id is t<Optuna trial number> (nas.settings.trial_ids); accuracies are fractions; other numbers finite,
# from 0, and counts whole numbers a float holds exactly.
FRACTION_COLUMNS = ("val_acc", "last_val_acc")
LARGEST_COUNT = 2**53


def read_csv_table(path: Path, expected: str, text_columns: Sequence[str], required: Sequence[str],
                   text: str | None = None) -> pd.DataFrame:
    """A CSV a command wrote, read back (or its `text`, as the file at `path` would hold it): `text_columns` as
    text; empty, unreadable or lacking a `required` column is one UsageError naming the file and `expected`."""
    try:
        table = pd.read_csv(path if text is None else io.StringIO(text), dtype={name: str for name in text_columns})
    except pd.errors.EmptyDataError:
        raise UsageError(f"{path} is empty: {expected}") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise UsageError(f"{path} is not readable CSV ({str(error).strip().splitlines()[0]}): {expected}") from None
    missing = [name for name in required if name not in table.columns]
    if missing:
        raise UsageError(f"{path} lacks column(s) {', '.join(missing)}: {expected}")
    return table


def load_trials(run_dir: str | os.PathLike) -> pd.DataFrame:
    """A run's trials.csv with its values checked (ids, states, numbers, architectures); missing, empty or corrupt
    is one UsageError naming the file, and the column and trial where a value is wrong."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"run folder {run_dir}: not found; expected a folder written by `nas search`, e.g. results/<run>")
    path = RunFolder(run_dir).trials_file
    if not path.is_file():
        raise UsageError(f"{path}: not found; expected the run folder to hold the trials.csv `nas search` writes")
    return _checked_trials(path)


def as_written(trials: pd.DataFrame, path: Path) -> pd.DataFrame:
    """A rendered table typed as `load_trials` reads it back from trials.csv at `path` (through the same CSV text,
    in memory): what a search returns is what a later command reads."""
    return _checked_trials(path, trials.to_csv(index=False))


def _checked_trials(path: Path, text: str | None = None) -> pd.DataFrame:
    expected = "expected a header row and one row per trial, as `nas search` writes"
    table = read_csv_table(path, expected, TEXT_COLUMNS, REQUIRED_COLUMNS, text)

    def refuse(name: str, rows: pd.Series, what: str) -> None:
        row = table[rows].iloc[0]
        raise UsageError(f"{path}: column {name} holds {str(row[name])[:60]!r} (trial {str(row['trial_id'])[:20]}): "
                         f"expected {what}")

    ids = table["trial_id"].fillna("")
    bad_ids = ~ids.map(lambda text: bool(TRIAL_ID_PATTERN.fullmatch(text)))
    if bad_ids.any():
        refuse("trial_id", bad_ids, "t followed by the trial number, e.g. t0007")
    bad_states = ~table["state"].isin(STATES)
    if bad_states.any():
        refuse("state", bad_states, f"one of {', '.join(STATES)}")
    for name in NUMERIC_COLUMNS:
        if name not in table.columns:
            continue
        numbers = pd.to_numeric(table[name], errors="coerce").astype(float)
        highest = 1 if name in FRACTION_COLUMNS else LARGEST_COUNT
        bad = (numbers.isna() & table[name].notna()) | ~numbers.between(0, highest) & numbers.notna()
        if name in INTEGER_COLUMNS:
            bad |= (numbers % 1 != 0) & numbers.notna()
        if bad.any():
            refuse(name, bad, f"{'a whole number' if name in INTEGER_COLUMNS else 'a number'} from 0 to {highest:,}")
        table[name] = numbers.astype("Int64") if name in INTEGER_COLUMNS else numbers
    if "arch" in table.columns:
        for index, text in table["arch"].items():
            if isinstance(text, str):
                ArchConfig.from_json(text, f"{path}: column arch of trial {table['trial_id'][index]}")
    return table


def read_run(run_dir: str | Path) -> Run:
    """Read search.json and trials.csv of a run folder; anything missing or corrupt is one UsageError, and so is
    a table that lacks trials the run's study records (a cut-short trials.csv must not feed a front)."""
    path = Path(run_dir)
    run = Run(path, load_settings(path, required=False), load_trials(path))
    check_against_study(run)
    return run


# The marks of trials the study records and trials.csv leaves out: a repeat of a trained architecture (skipped) and
# a draw a --screen left untrained.
NO_ROW_ATTRS = ("duplicate_of", "screened_out")


def has_row(trial: Any) -> bool:
    """Whether a trial of the study (an Optuna FrozenTrial) has its row in trials.csv."""
    return not any(name in trial.user_attrs for name in NO_ROW_ATTRS)


def check_against_study(run: Run) -> None:
    """Every trial study.db records as ended must have its row: the study is the record of truth."""
    name = run.settings.get("study_name") or run.settings.get("name")
    if not run.folder.study_file.is_file() or not name:
        return
    import optuna

    study = run.folder.load_study(name)
    ended = {trial.number for trial in study.get_trials(deepcopy=False, states=(
        optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL))
        if has_row(trial)}
    listed = {int(trial_id[1:]) for trial_id in run.table["trial_id"].astype(str) if trial_id[1:].isdigit()}
    missing = sorted(ended - listed)
    if missing:
        raise UsageError(f"{run.folder.trials_file} lacks {len(missing)} of the {len(ended)} trials study.db records "
                         f"(first: t{missing[0]:04d}): the table is damaged; `nas search {run.path} --resume` rebuilds "
                         "it from the study, the record of truth")


