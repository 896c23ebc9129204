"""How a search starts: its first draws from the sampler's random phase (`random`, the default), or a training-free
proxy's pick (`proxy:NAME`): a pool of feasible random draws scored on one minibatch of the search's training data
(search_spaces.proxies), the best trained first.

Wired in because one proxy earned it: on the ranking set of benchmarks/ranking_set.py (48 qkv architectures within
1M params on mnist5k), ZiCo ranks full-length val_acc with Kendall 0.47 [0.29, 0.62] against #params' 0.09 [-0.10,
0.28] (benchmarks/RESULTS.md); the other proxies do not beat #params there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qkvnas_core.errors import UsageError
from nas.engine.budget import Budget, FeasibleDraw, feasible_draws
from search_spaces.build import build_model
from search_spaces.proxies import PROXIES
from search_spaces.spaces import Space
from trainers.batches import make_batches
from trainers.datasets.splits import DatasetSplits
from trainers.recipe import Recipe
from trainers.runtime import seed_everything

# TPE's random phase (nas.engine.searcher.make_sampler: n_startup_trials): the draws a proxy replaces.
STARTUP_DRAWS = 8
# The pool a proxy picks them from: eight candidates for each draw it replaces.
POOL_PER_DRAW = 8


def parse_startup(text: str) -> str | None:
    """`random` (None: the sampler's own first draws) or `proxy:NAME` with NAME one of search_spaces.proxies."""
    if text == "random":
        return None
    kind, _, name = text.partition(":")
    if kind != "proxy" or name not in PROXIES:
        raise UsageError(f"{text[:40]!r}: expected random or proxy:NAME with NAME one of {', '.join(PROXIES)}")
    return text


@dataclass(frozen=True)
class ScoredDraw:
    draw: FeasibleDraw
    score: float


def proxy_draws(startup: str, space: Space, budget: Budget, splits: DatasetSplits, recipe: Recipe, seed: int,
                count: int = STARTUP_DRAWS) -> list[ScoredDraw]:
    """The `count` best of `count * POOL_PER_DRAW` feasible random draws by the proxy `startup` names, best first;
    each model built with `seed` and scored on the first training batch (the recipe's size, unaugmented)."""
    proxy = PROXIES[startup.partition(":")[2]]
    batches = make_batches(splits.train, splits.info, None, torch.device("cpu"), batch_size=recipe.batch_size,
                           train=True, seed=seed)
    images, labels = next(iter(batches.epoch(0)))
    scored = []
    for found in feasible_draws(space, budget, count * POOL_PER_DRAW, seed=seed):
        seed_everything(seed)
        scored.append(ScoredDraw(found, proxy(build_model(found.arch, splits.info.shape), images, labels)))
    return sorted(scored, key=lambda item: -item.score)[:count]


def startup_points(startup: str | None, space: Space, budget: Budget, splits: DatasetSplits, recipe: Recipe,
                   seed: int) -> list[dict[str, Any]]:
    """The points a new search enqueues first: the space's own initial points, then the proxy's picks."""
    points = list(getattr(space, "initial_points", []))
    if startup is not None:
        points += [item.draw.suggested for item in proxy_draws(startup, space, budget, splits, recipe, seed)]
    return points
