"""What a search optimises: val_acc (maximised) first, then the costs it trades against it (minimised).

`--objectives val_acc,params` (the default) searches the accuracy/params front directly; `val_acc` alone is
the single-objective search. Each cost has a hard limit (params: the budget; flops: --max-flops), which is
also the cost's coordinate of the hypervolume's reference point, so a cost objective needs its limit.
"""
from __future__ import annotations

from collections.abc import Sequence

from qkvnas_core.errors import UsageError
from nas.settings.naming import given, named

# The score every search maximises, the metric a trial reports and the trials table's column.
SCORE = "val_acc"
# Each cost and the search setting that limits it (the plots' limit lines, the hypervolume's reference point).
COST_LIMIT_SETTINGS = {"params": "budget", "flops": "max_flops"}
DEFAULT_OBJECTIVES = (SCORE, "params")
SAMPLERS = ("tpe", "nsga2", "random")
# What a front may be drawn against (`nas pareto --cost`): a search's costs, and a model's latency measured after.
FRONT_COSTS = ("params", "flops", "latency")
EARLY_STOPPING = ("asha", "none")


def parse_objectives(text: str) -> list[str]:
    """'val_acc,params' -> ['val_acc', 'params']: val_acc first, then distinct known costs."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    check_objectives(names)
    return names


def check_objectives(names: Sequence[str]) -> None:
    expected = f"expected val_acc, then any of {', '.join(COST_LIMIT_SETTINGS)}, e.g. val_acc,params"
    if not names or names[0] != SCORE:
        raise UsageError(f"--objectives {','.join(map(str, names))}: {expected}")
    costs = list(names[1:])
    unknown = [name for name in costs if name not in COST_LIMIT_SETTINGS]
    if unknown or len(set(costs)) != len(costs):
        raise UsageError(f"--objectives {','.join(names)}: {expected}, each once")


def directions(objectives: Sequence[str]) -> list[str]:
    """Optuna's study directions: maximise val_acc, minimise each cost."""
    return ["maximize" if name == SCORE else "minimize" for name in objectives]


def _limits(budget: int, max_flops: int | None) -> dict[str, int | None]:
    """Each cost's limit by cost name (None: the run set none)."""
    settings = {"budget": budget, "max_flops": max_flops}
    return {cost: settings[setting] for cost, setting in COST_LIMIT_SETTINGS.items()}


def cost_limits(objectives: Sequence[str], budget: int, max_flops: int | None) -> dict[str, float]:
    """Each cost objective's limit: the hypervolume's reference point (val_acc's is 0)."""
    limits = _limits(budget, max_flops)
    values = {}
    for name in objectives[1:]:
        limit = limits[name]
        if limit is None:
            raise UsageError(f"{given('objectives', ','.join(objectives))} without {named('max_flops')}: a FLOPs "
                             "objective needs its limit (the hypervolume's reference point); expected "
                             f"{named('max_flops')}, e.g. 200M")
        values[name] = float(limit)
    return values


def reference_limits(budget: int, max_flops: int | None) -> dict[str, float]:
    """The costs a run's hypervolume is measured over, with their limits: params (the budget) always, and FLOPs
    when the run has a FLOPs limit; whatever the objectives, so single- and multi-objective runs compare."""
    return {cost: float(limit) for cost, limit in _limits(budget, max_flops).items() if limit is not None}


def parse_front_costs(text: str) -> list[str]:
    """'params,flops' -> ['params', 'flops'], in order, without repeats; each one of FRONT_COSTS."""
    costs = [part.strip() for part in text.split(",") if part.strip()]
    if not costs or any(cost not in FRONT_COSTS for cost in costs):
        raise UsageError(f"cost {text[:40]!r}: expected {', '.join(FRONT_COSTS[:-1])} or {FRONT_COSTS[-1]}, "
                         "comma-separated for several")
    return list(dict.fromkeys(costs))
