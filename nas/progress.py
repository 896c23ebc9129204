"""The live view of a search: one line per finished trial, and at most one every 15 s otherwise."""
from __future__ import annotations

import time
from typing import Callable

import pandas as pd

from qkvnas_core.units import format_count, format_duration
from nas.results import best_trial, interrupted_count, trained_count


class Progress:
    """Tells `say` lines a person can read, `[elapsed] trained/target: states | best | hypervolume | time left`,
    from the trials table as the search renders it; `hypervolume` measures the table's full-fidelity front."""

    def __init__(self, target: int, already: int, say: Callable[[str], None], interval: float = 15.0,
                 hypervolume: Callable[[pd.DataFrame], float] | None = None) -> None:
        self.target = target
        self.already = already
        self.say = say
        self.interval = interval
        self.start = time.monotonic()
        self.last = 0.0
        self.last_status = ""
        self.hypervolume = hypervolume

    def show(self, trials: pd.DataFrame, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        trained = trained_count(trials)
        elapsed = now - self.start
        done_here = trained - self.already
        if done_here > 0 and trained < self.target:
            left = f"~{format_duration(elapsed / done_here * (self.target - trained))} left"
        else:
            left = "estimating time left" if trained < self.target else "finishing"
        best = best_trial(trials)
        best_text = "no score yet" if best is None else (
            f"best val_acc {best['val_acc']:.4f} ({format_count(best['params'])} params, {best['trial_id']})")
        interrupted = interrupted_count(trials)
        counts = trials["state"].value_counts()
        status = (f"{trained}/{self.target} trained: {counts.get('complete', 0)} complete, "
                  f"{counts.get('stopped', 0)} stopped, {counts.get('failed', 0) - interrupted} failed, "
                  f"{counts.get('running', 0)} in progress, {counts.get('queued', 0)} queued, "
                  f"{counts.get('infeasible', 0)} infeasible"
                  f"{f', {interrupted} interrupted (trained again)' if interrupted else ''} | {best_text}"
                  f"{f' | hypervolume {self.hypervolume(trials):.4f}' if self.hypervolume else ''}")
        if force and status == self.last_status:
            return
        self.last_status = status
        self.say(f"[{format_duration(elapsed):>7}] {status} | {left}")
