"""What a search trains, chosen by a training-free proxy (search_spaces.proxies) scoring untrained models on one
minibatch of the search's training data:

- `--startup proxy:NAME`: the search's first draws are the best of a pool of feasible random draws, trained first
  (the sampler's own random first draws otherwise: `random`, the default);
- `--screen proxy:NAME`: every draw is the best `--screen-train` of a pool of `--screen-pool` feasible draws of the
  sampler (a rung 0 before any training); the others are recorded as screened out, never trained.

Wired in because one proxy earned it: on the ranking set of benchmarks/ranking_set.py (48 qkv architectures within
1M params on mnist5k), ZiCo ranks full-length val_acc with Kendall 0.47 [0.29, 0.62] against #params' 0.09 [-0.10,
0.28] (benchmarks/RESULTS.md); the other proxies do not beat #params there.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from nas.engine.budget import Budget, FeasibleDraw, feasible_draws
from search_spaces.arch import ArchConfig
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

Scorer = Callable[[Sequence[ArchConfig]], list[float]]


def proxy_scorer(proxy_text: str, splits: DatasetSplits, recipe: Recipe, seed: int) -> Scorer:
    """The proxy `proxy_text` names (proxy:NAME) as a function of architectures: each model built with `seed` and
    scored on the first training batch (the recipe's size, unaugmented), higher better."""
    proxy = PROXIES[proxy_text.partition(":")[2]]
    batches = make_batches(splits.train, splits.info, None, torch.device("cpu"), batch_size=recipe.batch_size,
                           train=True, seed=seed)
    images, labels = next(iter(batches.epoch(0)))

    def score(archs: Sequence[ArchConfig]) -> list[float]:
        scores = []
        for arch in archs:
            seed_everything(seed)
            scores.append(proxy(build_model(arch, splits.info.shape), images, labels))
        return scores

    return score


@dataclass(frozen=True)
class ScoredDraw:
    draw: FeasibleDraw
    score: float


def proxy_draws(startup: str, space: Space, budget: Budget, splits: DatasetSplits, recipe: Recipe, seed: int,
                count: int = STARTUP_DRAWS) -> list[ScoredDraw]:
    """The `count` best of `count * POOL_PER_DRAW` feasible random draws by the proxy `startup` names, best first."""
    pool = feasible_draws(space, budget, count * POOL_PER_DRAW, seed=seed)
    scores = proxy_scorer(startup, splits, recipe, seed)([found.arch for found in pool])
    scored = [ScoredDraw(found, score) for found, score in zip(pool, scores)]
    return sorted(scored, key=lambda item: -item.score)[:count]


def startup_points(startup: str | None, space: Space, budget: Budget, splits: DatasetSplits, recipe: Recipe,
                   seed: int) -> list[dict[str, Any]]:
    """The points a new search enqueues first: the space's own initial points, then the proxy's picks."""
    points = list(getattr(space, "initial_points", []))
    if startup is not None:
        points += [item.draw.suggested for item in proxy_draws(startup, space, budget, splits, recipe, seed)]
    return points
