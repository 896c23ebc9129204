"""The live view of a search: one line per finished trial, and at most one every 15 s otherwise.

Each line is logged (INFO, "qkvnas.nas.engine.progress") as a `ProgressLine`, the record's message: a str (what a plain
handler prints) that also carries the figures it shows, so that `nas search` can draw them as a live bar where a
terminal is attached.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import pandas as pd

from qkvnas_core.log import logger
from qkvnas_core.units import format_count, format_duration
from nas.runs.results import INTERRUPTED, SCORED_STATES, TrialState, best_trial, interrupted_count, trained_count


log = logger(__name__)


class ProgressLine(str):
    """A line of the live view, with its figures: trained, target, running (trials in progress), best_val_acc and
    hypervolume (None before there is one), seconds_left (None while unknown), and `summary`, the line's part
    after the counts (what a bar shows beside its own)."""

    trained: int
    target: int
    running: int
    best_val_acc: float | None
    hypervolume: float | None
    seconds_left: float | None
    summary: str

    def __new__(cls, text: str, **figures: Any) -> ProgressLine:
        line = super().__new__(cls, text)
        line.__dict__.update(figures)
        return line


def seconds_left(trials: pd.DataFrame, target: int, epochs: int, slots: int = 1) -> float | None:
    """Time until `target` trials are trained: the epochs left (each running trial's to its full length, and each
    trial not started yet as many as the trained trials ran on average, `epochs` before one ended) at the search's
    pace (seconds per epoch over every epoch run so far), shared among `slots` trials at once (the most seen running
    together); never less than the running trial with most epochs left needs alone. One pace for every trial, so a
    trial that starts, is stopped early or spends its first epoch starting up moves the estimate by its epochs, not
    by its own speed. None before an epoch is timed."""
    ran = trials[trials["epochs"].fillna(0) > 0]
    if ran.empty:
        return None
    pace = float(ran["seconds"].sum()) / float(ran["epochs"].sum())
    running = trials[trials["state"] == TrialState.RUNNING]
    running_left = (epochs - running["epochs"].fillna(0).astype(float)).clip(lower=0)
    trained = trials[trials["state"].isin(SCORED_STATES) & (trials["reason"] != INTERRUPTED)]
    epochs_per_trial = float(trained["epochs"].mean()) if len(trained) else float(epochs)
    to_start = max(0, target - trained_count(trials) - len(running))
    epochs_left = float(running_left.sum()) + to_start * epochs_per_trial
    longest = float(running_left.max()) if len(running) else 0.0
    return max(epochs_left / max(slots, len(running), 1), longest) * pace


class Progress:
    """Logs lines a person can read, `[elapsed] trained/target: states | best | hypervolume | time left`,
    from the trials table as the search renders it; `hypervolume` measures the table's full-fidelity front and
    `epochs` is a trial's full length (for the time left)."""

    def __init__(self, target: int, already: int, interval: float = 15.0,
                 hypervolume: Callable[[pd.DataFrame], float] | None = None, *, epochs: int) -> None:
        self.target = target
        self.already = already
        self.interval = interval
        self.start = time.monotonic()
        self.last = 0.0
        self.last_status = ""
        self.hypervolume = hypervolume
        self.epochs = epochs
        self.slots = 1  # the most trials seen running at once: how many share the work left

    def show(self, trials: pd.DataFrame, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        trained = trained_count(trials)
        self.slots = max(self.slots, int((trials["state"] == TrialState.RUNNING).sum()))
        left_seconds = seconds_left(trials, self.target, self.epochs, self.slots) if trained < self.target else 0.0
        if trained >= self.target:
            left = "finishing"
        else:
            left = "estimating time left" if left_seconds is None else f"~{format_duration(left_seconds)} left"
        best = best_trial(trials)
        best_text = "no score yet" if best is None else (
            f"best val_acc {best['val_acc']:.2%} ({format_count(best['params'])} params, {best['trial_id']})")
        hypervolume = self.hypervolume(trials) if self.hypervolume else None
        interrupted = interrupted_count(trials)
        counts = {state: int((trials["state"] == state).sum()) for state in TrialState}
        status = (f"{trained}/{self.target} trained: {counts[TrialState.COMPLETE]} complete, "
                  f"{counts[TrialState.STOPPED]} stopped, {counts[TrialState.FAILED] - interrupted} failed, "
                  f"{counts[TrialState.RUNNING]} in progress, {counts[TrialState.QUEUED]} queued, "
                  f"{counts[TrialState.INFEASIBLE]} infeasible"
                  f"{f', {interrupted} interrupted (trained again)' if interrupted else ''} | {best_text}"
                  f"{f' | hypervolume {hypervolume:.4f}' if hypervolume is not None else ''}")
        if force and status == self.last_status:
            return
        self.last_status = status
        summary = " | ".join([f"{counts[TrialState.RUNNING]} running", best_text,
                              *([f"hypervolume {hypervolume:.4f}"] if hypervolume is not None else []), left])
        log.info(ProgressLine(f"[{format_duration(now - self.start):>7}] {status} | {left}", trained=trained,
                              target=self.target, running=counts[TrialState.RUNNING],
                              best_val_acc=None if best is None else float(best["val_acc"]), hypervolume=hypervolume,
                              seconds_left=left_seconds, summary=summary))
