"""The hard limits a searched model must meet, and the check that a space can meet them at all."""
from __future__ import annotations

from collections.abc import Callable
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

    def measure(self, arch: ArchConfig, flops: bool = False) -> tuple[int, int | None]:
        """Params always; FLOPs of a model within the params budget only where a FLOPs limit or `flops` (a FLOPs
        objective) asks for them: counting them runs the model on the meta device, several times the build's time.
        Either way the model is built at the shape, and building refuses whatever running it would
        (tests/test_nas/test_budget.py compares both on random draws): one that cannot run is a UsageError here, not a
        failed trial. Both counts are cached per architecture, so a repeated draw costs nothing."""
        params = count_params(arch, self.shape)
        if params > self.params or not (flops or self.max_flops is not None):
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


def least_cost_draw(space: Space, shape: DataShape, cost: Callable[[ArchConfig], float], draws: int,
                    stop_at: float | None = None, seed: int = 0) -> tuple[tuple[float, ArchConfig] | None, str | None]:
    """The draw of least `cost` an Optuna TPE study minimising it finds in `draws` draws, stopping early at the
    first cost <= `stop_at`; with the first reason a draw gave no architecture (None if every draw gave one)."""
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    least: tuple[float, ArchConfig] | None = None
    first_error = None
    for _ in range(draws):
        trial = study.ask()
        try:
            arch = draw(space, trial, shape)
            value = cost(arch)
        except Exception as error:  # a user's space is user code: any error of a draw is reported, not raised
            first_error = first_error or _draw_error(error)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(trial, value)
        if least is None or value < least[0]:
            least = (value, arch)
        if stop_at is not None and value <= stop_at:
            break
    return least, first_error


def smallest_description(space_name: str, space: Space, budget: Budget, draws: int = 200) -> str:
    """The smallest model (fewest params) the space builds, as found by `least_cost_draw`, in words."""
    least, _ = least_cost_draw(space, budget.shape, lambda arch: count_params(arch, budget.shape), draws)
    if least is None:
        return f"space {space_name!r} built no valid architecture"
    return _params_description(space_name, int(least[0]), least[1])


def _params_description(space_name: str, params: int, arch: ArchConfig) -> str:
    return (f"the smallest model space {space_name!r} builds is {arch.summary()} with {params:,} params "
            f"({format_count(params)})")


def check_feasible(space_name: str, space: Space, budget: Budget, draws: int) -> None:
    """Before any trial: a space that builds no valid model, or a limit no model meets, is one clear error
    naming what binds (the architecture rule, the parameter budget or the FLOPs limit).

    The draws minimise the tightest limit's use (cost / limit, feasible at <= 1) with TPE, so a tight budget
    finds its models early and a budget no model meets is told with the least model the same draws found."""
    within_params: list[tuple[int, ArchConfig]] = []

    def limit_use(arch: ArchConfig) -> float:
        params, flops = budget.measure(arch)
        if flops is None or budget.max_flops is None:  # measure leaves FLOPs uncounted over the params budget
            return params / budget.params
        within_params.append((flops, arch))
        return max(params / budget.params, flops / budget.max_flops)

    least, first_error = least_cost_draw(space, budget.shape, limit_use, draws, stop_at=1.0)
    if least is None:
        raise UsageError(f"space {space_name!r} built no valid architecture in {draws} draws at patch size "
                         f"{budget.shape.patch_size}: {first_error}")
    if least[0] <= 1.0:
        return
    if within_params:
        flops, arch = min(within_params, key=lambda found: found[0])
        raise UsageError(f"max {format_count(budget.max_flops)} FLOPs ({budget.max_flops:,}) admits no model of space "
                         f"{space_name!r} within the budget: the model with the fewest FLOPs found within it is "
                         f"{arch.summary()} with {flops:,} FLOPs ({format_count(flops)}); expected a FLOPs limit "
                         "of at least that")
    arch = least[1]
    raise UsageError(f"budget {format_count(budget.params)} ({budget.params:,} params) admits no model of space "
                     f"{space_name!r}: {_params_description(space_name, count_params(arch, budget.shape), arch)}; "
                     "expected a budget of at least that")


def over_budget_reason(budget: Budget, params: int, flops: int | None) -> str:
    if params > budget.params:
        return f"{params:,} params > budget {budget.params:,}"
    return f"{flops:,} FLOPs > max {budget.max_flops:,}"




@dataclass(frozen=True)
class FeasibleDraw:
    """An architecture a space drew that meets every limit, with its measured cost and the Optuna parameters that
    draw it again (`study.enqueue_trial(params)`)."""

    arch: ArchConfig
    params: int
    flops: int | None
    suggested: dict


def feasible_draws(space: Space, budget: Budget, count: int, seed: int = 0,
                   max_draws: int | None = None) -> list[FeasibleDraw]:
    """`count` distinct architectures drawn by Optuna's random sampler (seeded) that meet every limit, with their
    params and FLOPs, in draw order: the population a budgeted search samples from. Draws that fail, repeat or
    exceed a limit are skipped, at most `max_draws` in all (default 300 per architecture asked for)."""
    sampler = optuna.samplers.RandomSampler(seed=seed)
    study = optuna.create_study(sampler=sampler)
    found: dict[str, FeasibleDraw] = {}
    for _ in range(max_draws or 300 * count):
        if len(found) == count:
            break
        trial = study.ask()
        try:
            arch = draw(space, trial, budget.shape)
            params, flops = budget.measure(arch, flops=True)
        except Exception:  # a draw the builders reject is not part of the population
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            continue
        study.tell(trial, 0.0)
        if max(budget.violation(params, flops).values()) <= 0 and arch.arch_id not in found:
            found[arch.arch_id] = FeasibleDraw(arch, params, flops, dict(trial.params))
    return list(found.values())
