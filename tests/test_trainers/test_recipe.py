"""Recipes: the named ones hold their documented values, overrides, validation, lr batch scaling, JSON."""
import json

import pytest

from qkvnas_core.errors import UsageError
from trainers.recipe import RECIPES, Recipe, get_recipe


def test_named_recipes_exist():
    assert set(RECIPES) == {"proxy", "xcit", "transfer", "small"}
    for name, recipe in RECIPES.items():
        assert get_recipe(name) == recipe and recipe.name == name


def test_xcit_recipe_is_the_papers():
    xcit = get_recipe("xcit")
    assert (xcit.epochs, xcit.lr, xcit.weight_decay, xcit.min_lr, xcit.warmup_epochs) == (400, 5e-4, 0.05, 1e-5, 5)
    assert xcit.schedule == "cosine" and xcit.label_smoothing == 0.1
    assert xcit.randaugment == "rand-m9-mstd0.5-inc1"
    assert (xcit.mixup, xcit.cutmix, xcit.random_erasing, xcit.drop_path) == (0.8, 1.0, 0.25, 0.1)
    assert xcit.repeated_aug and xcit.ema


def test_proxy_recipe_is_cheap_and_deterministic():
    proxy = get_recipe("proxy")
    assert proxy.mixup == proxy.cutmix == 0 and proxy.randaugment is None
    assert proxy.drop_path == 0 and proxy.random_erasing == 0 and not proxy.ema and not proxy.mixes
    assert proxy.epochs <= 20


def test_transfer_recipe_fine_tunes_gently():
    transfer, xcit = get_recipe("transfer"), get_recipe("xcit")
    assert transfer.lr < xcit.lr and transfer.warmup_epochs < xcit.warmup_epochs
    assert not transfer.mixes and transfer.randaugment is None


def test_overrides_change_only_what_is_named():
    recipe = get_recipe("proxy", epochs=3, lr=1e-3)
    assert (recipe.epochs, recipe.lr) == (3, 1e-3)
    assert recipe.replace(epochs=RECIPES["proxy"].epochs, lr=RECIPES["proxy"].lr) == RECIPES["proxy"]
    assert RECIPES["proxy"].epochs != 3


def test_lr_scales_linearly_with_batch():
    assert get_recipe("xcit").effective_lr == pytest.approx(5e-4 * 1024 / 512)
    assert get_recipe("xcit", batch_size=256).effective_lr == pytest.approx(2.5e-4)
    assert get_recipe("xcit", batch_size=512).effective_lr == pytest.approx(5e-4)


def test_unknown_recipe_is_one_line_usage_error():
    with pytest.raises(UsageError) as error:
        get_recipe("imagenet-long")
    message = str(error.value)
    assert "'imagenet-long'" in message and "proxy" in message and "\n" not in message


def test_unknown_field_is_usage_error():
    with pytest.raises(UsageError, match="no field warmup") as error:
        get_recipe("proxy", warmup=3)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("batch_size", -8), ("lr", 0.0), ("lr", "fast"), ("schedule", "step"), ("hflip", 1.5),
    ("label_smoothing", -0.1), ("grad_clip", 0.0), ("randaugment", "m9"), ("crop_padding", 1.0), ("ema", "yes"),
])
def test_bad_values_are_usage_errors(field, value):
    with pytest.raises(UsageError, match=field):
        get_recipe("proxy", **{field: value})


def test_mixup_needs_an_even_batch():
    with pytest.raises(UsageError, match="even"):
        get_recipe("xcit", batch_size=63)


def test_dict_and_json_round_trip():
    for recipe in RECIPES.values():
        assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    with pytest.raises(UsageError, match="no field colour"):
        Recipe.from_dict({**RECIPES["proxy"].to_dict(), "colour": 1})


def test_full_recipe_fits_the_dataset():
    from trainers.recipe import full_recipe_name

    assert full_recipe_name("digits") == "small" and get_recipe("small").epochs == 30
    assert full_recipe_name("imagenet") == full_recipe_name("cifar10") == "xcit"
