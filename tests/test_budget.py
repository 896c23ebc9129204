"""The feasibility check before any trial, against a space small enough to enumerate by hand."""
import itertools

import pytest

from nas.budget import Budget, check_feasible, smallest_description
from qkvnas_core.errors import UsageError
from search_spaces.arch import ArchConfig
from search_spaces.cost import count_flops, count_params
from search_spaces.shape import DataShape

SHAPE = DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=2)
DIMS, DEPTHS = [64, 16, 128, 32], [3, 1, 4, 2]


def grid(trial, shape):
    return ArchConfig(embed_dim=trial.suggest_categorical("embed_dim", DIMS),
                      depth=trial.suggest_categorical("depth", DEPTHS), num_heads=2, patch_size=shape.patch_size)


ALL = [ArchConfig(embed_dim=dim, depth=depth, num_heads=2, patch_size=2)
       for dim, depth in itertools.product(DIMS, DEPTHS)]


@pytest.fixture(scope="module")
def smallest():
    return min(count_params(arch, SHAPE) for arch in ALL)


@pytest.fixture(scope="module")
def fewest_flops():
    return min(count_flops(arch, SHAPE) for arch in ALL)


def test_a_budget_of_exactly_the_smallest_model_is_feasible(smallest):
    check_feasible("grid", grid, Budget(smallest, None, SHAPE), draws=300)


def test_a_budget_under_the_smallest_model_names_it(smallest):
    with pytest.raises(UsageError) as raised:
        check_feasible("grid", grid, Budget(smallest - 1, None, SHAPE), draws=300)
    message = str(raised.value)
    assert f"({smallest - 1:,} params) admits no model of space 'grid'" in message
    assert "xcit d16 L1 H2" in message and f"with {smallest:,} params" in message


def test_the_exhausted_search_names_the_same_smallest_model(smallest):
    assert f"with {smallest:,} params" in smallest_description("grid", grid, Budget(1, None, SHAPE))


def test_a_flops_limit_under_every_model_names_the_fewest_flops(fewest_flops):
    with pytest.raises(UsageError) as raised:
        check_feasible("grid", grid, Budget(10**9, fewest_flops - 1, SHAPE), draws=300)
    assert f"with {fewest_flops:,} FLOPs" in str(raised.value)
    check_feasible("grid", grid, Budget(10**9, fewest_flops, SHAPE), draws=300)


def test_a_space_that_always_raises_is_named_with_its_error():
    def broken(trial, shape):
        raise ValueError("no such width")

    with pytest.raises(UsageError, match="built no valid architecture in 20 draws at patch size 2: the space "
                                         "raised ValueError: no such width"):
        check_feasible("broken", broken, Budget(10**9, None, SHAPE), draws=20)
