"""The live view of a search: one line per finished trial, and at most one every 15 s otherwise."""
from __future__ import annotations

import time

from qkvnas_core.units import format_count, format_duration
from nas.results import TrialTable


class Progress:
    """Prints `[elapsed] trained/target: states | best | time left` lines a person can read."""

    def __init__(self, table: TrialTable, target: int, already: int, interval: float = 15.0) -> None:
        self.table = table
        self.target = target
        self.already = already
        self.interval = interval
        self.start = time.monotonic()
        self.last = 0.0
        self.last_status = ""

    def show(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        table = self.table
        trained = table.trained()
        elapsed = now - self.start
        done_here = trained - self.already
        if done_here > 0 and trained < self.target:
            left = f"~{format_duration(elapsed / done_here * (self.target - trained))} left"
        else:
            left = "estimating time left" if trained < self.target else "finishing"
        best = table.best()
        best_text = "no score yet" if best is None else (
            f"best val_acc {best['val_acc']:.4f} ({format_count(best['params'])} params, {best['trial_id']})")
        interrupted = table.interrupted()
        status = (f"{trained}/{self.target} trained: {table.count('complete')} complete, "
                  f"{table.count('stopped')} stopped, {table.count('failed') - interrupted} failed, "
                  f"{table.count('running')} in progress, {table.count('queued')} queued, "
                  f"{table.count('infeasible')} infeasible"
                  f"{f', {interrupted} interrupted (trained again)' if interrupted else ''} | {best_text}")
        if force and status == self.last_status:
            return
        self.last_status = status
        print(f"[{format_duration(elapsed):>7}] {status} | {left}", flush=True)
