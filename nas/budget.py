"""The hard limits a searched model must meet, and the check that a space can meet them at all."""
from __future__ import annotations

from dataclasses import dataclass

import optuna

from qkvnas_core.errors import UsageError
from qkvnas_core.units import format_count
from search_spaces.arch import ArchConfig
from search_spaces.cost import count_flops, count_params
from search_spaces.shape import DataShape
from search_spaces.spaces import Space, draw


@dataclass(frozen=True)
class Budget:
    """The limits (params, optional FLOPs per image) and the data shape a model's cost is measured at; the
    shape's patch size is the one the space builds with."""

    params: int
    max_flops: int | None
    shape: DataShape

    def measure(self, arch: ArchConfig) -> tuple[int, int | None]:
        """Params always; FLOPs of a model within the params budget. Counting them runs the model at the
        shape on the meta device (cost.check_buildable): one that cannot run is a UsageError here, not a
        failed trial."""
        params = count_params(arch, self.shape)
        if params > self.params:
            return params, None
        return params, count_flops(arch, self.shape)

    def violation(self, params: int, flops: int | None) -> dict[str, float]:
        """Optuna's constraint values by name: each <= 0 when met."""
        values = {"params": float(params - self.params)}
        if self.max_flops is not None:
            values["flops"] = float((flops if flops is not None else self.max_flops + 1) - self.max_flops)
        return values


def _draw_error(error: Exception) -> str:
    """Why a draw gave no architecture: an invalid one (UsageError) or an error raised by the space's code."""
    if isinstance(error, UsageError):
        return str(error)
    lines = str(error).strip().splitlines()
    return f"the space raised {type(error).__name__}: {lines[0] if lines else ''}"


def smallest_model(space: Space, budget: Budget, cost: str = "params", draws: int = 200,
                   seed: int = 0) -> tuple[int, ArchConfig] | None:
    """The model of least `cost` (params or flops) the space builds, found by an Optuna study minimising it."""
    count = count_params if cost == "params" else count_flops
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    best: tuple[int, ArchConfig] | None = None
    for _ in range(draws):
        trial = study.ask()
        try:
            arch = draw(space, trial, budget.shape)
            value = count(arch, budget.shape)
        except Exception:  # a draw that builds nothing, invalid or raising, is no candidate
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(trial, value)
        if best is None or value < best[0]:
            best = (value, arch)
    return best


def smallest_description(space_name: str, space: Space, budget: Budget, cost: str = "params") -> str:
    found = smallest_model(space, budget, cost)
    if found is None:
        return f"space {space_name!r} built no valid architecture"
    value, arch = found
    fewest = "smallest model" if cost == "params" else "model with the fewest FLOPs"
    unit = "params" if cost == "params" else "FLOPs"
    return (f"the {fewest} space {space_name!r} builds is {arch.summary()} with {value:,} {unit} "
            f"({format_count(value)})")


def check_feasible(space_name: str, space: Space, budget: Budget, draws: int) -> None:
    """Before any trial: a space that builds no valid model, or a limit no model meets, is one clear error
    naming what binds (the architecture rule, the parameter budget or the FLOPs limit)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    first_error, measured, within_params = None, 0, 0
    for _ in range(draws):
        trial = study.ask()
        try:
            params, flops = budget.measure(draw(space, trial, budget.shape))
        except Exception as error:  # a user's space is user code: any error of a draw is reported, not raised
            first_error = first_error or _draw_error(error)
            continue
        measured += 1
        violation = budget.violation(params, flops)
        if max(violation.values()) <= 0:
            return
        within_params += violation["params"] <= 0
    if not measured:
        raise UsageError(f"space {space_name!r} built no valid architecture in {draws} draws at patch size "
                         f"{budget.shape.patch_size}: {first_error}")
    if within_params:
        raise UsageError(f"max {format_count(budget.max_flops)} FLOPs ({budget.max_flops:,}) admits no model of space "
                         f"{space_name!r} within the budget: "
                         f"{smallest_description(space_name, space, budget, 'flops')}; expected a FLOPs "
                         "limit of at least that")
    raise UsageError(f"budget {format_count(budget.params)} ({budget.params:,} params) admits no model of space "
                     f"{space_name!r}: {smallest_description(space_name, space, budget)}; "
                     "expected a budget of at least that")


def over_budget_reason(budget: Budget, params: int, flops: int | None) -> str:
    if params > budget.params:
        return f"{params:,} params > budget {budget.params:,}"
    return f"{flops:,} FLOPs > max {budget.max_flops:,}"


