"""The hard limits a searched model must meet, and the check that a space can meet them at all."""
from __future__ import annotations

from dataclasses import dataclass

import optuna

from core.errors import UsageError
from core.units import format_count
from search_spaces.arch import ArchConfig
from search_spaces.cost import count_flops, count_params
from search_spaces.spaces import Space, draw


@dataclass(frozen=True)
class Budget:
    """The limits (params, optional FLOPs per image) and the data shape a model's cost is measured at."""

    params: int
    max_flops: int | None
    num_classes: int
    img_size: int
    in_chans: int

    def measure(self, arch: ArchConfig) -> tuple[int, int | None]:
        """Params always; FLOPs only when they are limited (the trial measures them otherwise)."""
        params = count_params(arch, self.num_classes, self.img_size, self.in_chans)
        flops = None
        if self.max_flops is not None and params <= self.params:
            flops = count_flops(arch, self.num_classes, self.img_size, self.in_chans)
        return params, flops

    def violation(self, params: int, flops: int | None) -> dict[str, float]:
        """Optuna's constraint values by name: each <= 0 when met."""
        values = {"params": float(params - self.params)}
        if self.max_flops is not None:
            values["flops"] = float((flops if flops is not None else self.max_flops + 1) - self.max_flops)
        return values

    def describe(self) -> str:
        limit = f"budget {format_count(self.params)} ({self.params:,} params)"
        if self.max_flops is not None:
            limit += f" with max {format_count(self.max_flops)} FLOPs"
        return limit


def smallest_model(space: Space, patch_size: int, budget: Budget, draws: int = 200,
                   seed: int = 0) -> tuple[int, ArchConfig] | None:
    """The smallest model the space builds, found by an Optuna study minimising parameters."""
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    best: tuple[int, ArchConfig] | None = None
    for _ in range(draws):
        trial = study.ask()
        try:
            arch = draw(space, trial, patch_size)
            params = count_params(arch, budget.num_classes, budget.img_size, budget.in_chans)
        except UsageError:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(trial, params)
        if best is None or params < best[0]:
            best = (params, arch)
    return best


def smallest_description(space_name: str, space: Space, patch_size: int, budget: Budget) -> str:
    found = smallest_model(space, patch_size, budget)
    if found is None:
        return f"space {space_name!r} built no valid architecture"
    params, arch = found
    return (f"the smallest model space {space_name!r} builds is {arch.summary()} with {params:,} params "
            f"({format_count(params)})")


def check_feasible(space_name: str, space: Space, patch_size: int, budget: Budget, draws: int) -> None:
    """Before any trial: a budget the space cannot meet is one clear error naming the smallest model."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(draws):
        trial = study.ask()
        try:
            params, flops = budget.measure(draw(space, trial, patch_size))
        except UsageError:
            continue
        if max(budget.violation(params, flops).values()) <= 0:
            return
    raise UsageError(f"{budget.describe()} admits no model of space {space_name!r}: "
                     f"{smallest_description(space_name, space, patch_size, budget)}; "
                     "expected a budget of at least that")


def over_budget_reason(budget: Budget, params: int, flops: int | None) -> str:
    if params > budget.params:
        return f"{params:,} params > budget {budget.params:,}"
    return f"{flops:,} FLOPs > max {budget.max_flops:,}"


