"""The engine on CPU: it learns digits, is deterministic, stops on NaN, batches and augments correctly."""
import json

import pytest
import torch
from torch import nn

from qkvnas_core.errors import UsageError
from search_spaces.arch import ArchConfig
from search_spaces.build import build_model
from search_spaces.shape import DataShape
from trainers.batches import TensorBatches, make_batches
from trainers.datasets.splits import DatasetInfo, TensorSplit
from trainers.engine import StopTraining, TrainingDiverged, evaluate, fit
from trainers.metrics import EpochMetrics
from trainers.optim import build_optimizer, build_scheduler, build_training
from trainers.recipe import get_recipe
from trainers.runtime import CrossRankBatchNorm2d, Distributed, seed_everything, select_device

TINY = ArchConfig(embed_dim=32, depth=2, num_heads=2, patch_size=2)
TINY_FSNE = TINY.replace(qkv={"layers": ("shared", "shared"), "code_size": 4})
DIGITS = DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=2)


def tiny_model(arch=TINY, seed=0, drop_path_rate=0.0):
    seed_everything(seed)
    return build_model(arch, DIGITS, drop_path_rate=drop_path_rate)


def test_short_training_learns_digits(digits):
    model = tiny_model()
    seen = []
    result = fit(model, digits, get_recipe("proxy", epochs=6), device="cpu", seed=0, on_epoch=seen.append)
    assert [m.epoch for m in seen] == [1, 2, 3, 4, 5, 6] and result.epochs_run == 6
    assert all(isinstance(m, EpochMetrics) for m in seen) and result.history == seen
    assert result.best_val_acc > 0.8, result.best_val_acc  # chance is 0.1
    assert seen[-1].train_loss < seen[0].train_loss
    assert seen[-1].lr == pytest.approx(get_recipe("proxy").min_lr)
    test = evaluate(model, digits.test, digits.info, device="cpu")
    assert test["count"] == len(digits.test.labels) and test["acc"] > 0.75


def test_same_seed_same_weights_other_seed_other_weights(digits):
    recipe = get_recipe("proxy", epochs=2, drop_path=0.1, crop_padding=0.125)
    weights = []
    for seed in (0, 0, 1):
        model = tiny_model(TINY_FSNE, seed=seed, drop_path_rate=recipe.drop_path)
        fit(model, digits, recipe, device="cpu", seed=seed)
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_checkpoint(digits, tmp_path):
    recipe = get_recipe("proxy", epochs=3)
    steps_per_epoch = len(digits.train.labels) // recipe.batch_size
    model = tiny_model()
    training_calls = 0

    def poison_third_step_of_epoch_two(module, inputs, output):
        nonlocal training_calls
        if module.training:
            training_calls += 1
            if training_calls == steps_per_epoch + 3:
                return output * float("nan")
        return None

    model.head.register_forward_hook(poison_third_step_of_epoch_two)
    saved = {}

    def remember_files(metrics):
        saved.update({path.name: path.read_bytes() for path in tmp_path.iterdir()})

    with pytest.raises(TrainingDiverged) as error:
        fit(model, digits, recipe, device="cpu", checkpoint_dir=tmp_path, on_epoch=remember_files)
    assert (error.value.epoch, error.value.step) == (2, 3)
    assert f"epoch 2, step 3 of {steps_per_epoch}" in str(error.value) and "nan" in str(error.value)
    assert "epoch 1" in str(error.value)
    assert saved and {path.name: path.read_bytes() for path in tmp_path.iterdir()} == saved
    assert json.loads((tmp_path / "last.json").read_text())["epoch"] == 1


def test_huge_learning_rate_diverges(digits):
    with pytest.raises(TrainingDiverged, match=r"training diverged at epoch \d+, step \d+"):
        fit(tiny_model(), digits, get_recipe("proxy", epochs=2, lr=1e6), device="cpu")


def test_stop_training_from_callback_ends_cleanly(digits):
    def stop_after_first(metrics):
        raise StopTraining

    result = fit(tiny_model(), digits, get_recipe("proxy", epochs=5), device="cpu", on_epoch=stop_after_first)
    assert result.stopped and result.epochs_run == 1


def test_ema_is_evaluated_and_reported(digits):
    result = fit(tiny_model(), digits, get_recipe("proxy", epochs=2, ema=True, ema_decay=0.9), device="cpu")
    for metrics in result.history:
        assert metrics.ema_val_acc is not None and metrics.weights in ("model", "ema")
        assert metrics.val_acc >= metrics.ema_val_acc
    # An EMA of the trained weights scores like them; one never updated would stay at chance (0.1).
    assert result.history[-1].ema_val_acc > 0.3


def test_ema_follows_the_weights_step_by_step(digits):
    decay = 0.9
    recipe = get_recipe("proxy", epochs=1, ema=True, ema_decay=decay)
    model = tiny_model()
    batches = make_batches(digits.train, digits.info, recipe, torch.device("cpu"), batch_size=recipe.batch_size,
                           train=True)
    training = build_training(model, recipe, 10, torch.device("cpu"), steps_per_epoch=len(batches))
    initial = {name: value.clone() for name, value in model.state_dict().items()}
    expected = dict(initial)
    for step, (images, labels) in zip(range(1, 4), batches.epoch(1)):
        training.step(images, labels)
        # timm's ModelEmaV3 copies the weights at the first update, then averages with the fixed decay.
        kept = 0.0 if step == 1 else decay
        expected = {name: kept * expected[name] + (1 - kept) * value if value.is_floating_point() else value.clone()
                    for name, value in model.state_dict().items()}
    ema = training.ema.module.state_dict()
    for name, value in ema.items():
        torch.testing.assert_close(value, expected[name], msg=name)
    assert not all(torch.equal(ema[name], initial[name]) for name in ema)


def test_existing_checkpoints_are_never_overwritten(digits, tmp_path):
    fit(tiny_model(), digits, get_recipe("proxy", epochs=1), device="cpu", checkpoint_dir=tmp_path)
    with pytest.raises(UsageError, match="already holds checkpoints"):
        fit(tiny_model(), digits, get_recipe("proxy", epochs=1), device="cpu", checkpoint_dir=tmp_path)


def test_weight_decay_spares_codes_biases_norms_and_position_embedding():
    model = tiny_model(TINY_FSNE)
    recipe = get_recipe("proxy", warmup_epochs=0)
    optimizer = build_optimizer(model, recipe, torch.device("cpu"))
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    names = dict(model.named_parameters())
    codes = [name for name in names if name.endswith(".codes")]
    assert codes and all(decay_of[id(names[name])] == 0 for name in codes)
    for name, param in names.items():
        exempt = param.ndim <= 1 or name.endswith(".bias") or name.startswith("pos_embed.") or name == "cls_token"
        exempt = exempt or name.endswith(".codes") or name.endswith(".temperature")
        assert decay_of[id(param)] == (0 if exempt else recipe.weight_decay), name
    assert all(group["lr"] == pytest.approx(recipe.effective_lr) for group in optimizer.param_groups)


def test_schedule_warms_up_peaks_and_ends_at_min_lr():
    recipe = get_recipe("proxy", epochs=4, warmup_epochs=1)
    optimizer = build_optimizer(tiny_model(), recipe, torch.device("cpu"))
    scheduler = build_scheduler(optimizer, recipe, steps_per_epoch=10)
    lrs = []
    for update in range(41):
        scheduler.step_update(update)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(recipe.warmup_lr)
    assert max(lrs) == pytest.approx(recipe.effective_lr, rel=1e-3)
    assert lrs[40] == pytest.approx(recipe.min_lr)
    assert lrs[10:41] == sorted(lrs[10:41], reverse=True)


def small_info(name="synthetic"):
    return DatasetInfo(name, DataShape(img_size=6, in_chans=2, num_classes=10, patch_size=2), (0.5, 0.5), (0.25, 0.25))


def test_gpu_style_crop_and_flip_match_a_per_image_reference():
    images = torch.randint(0, 256, (12, 2, 6, 6), dtype=torch.uint8)
    batches = TensorBatches(TensorSplit(images, torch.arange(12)), small_info(), torch.device("cpu"), batch_size=4,
                            train=True, crop_padding=0.34, hflip=0.5)
    pad = batches.padding
    offsets, flips = torch.randint(0, 2 * pad + 1, (12, 2)), torch.rand(12) < 0.5
    out = batches._crop_flip(images, offsets, flips)
    padded = nn.functional.pad(images, (pad,) * 4)
    for i in range(12):
        expected = padded[i, :, offsets[i, 0]:offsets[i, 0] + 6, offsets[i, 1]:offsets[i, 1] + 6]
        assert torch.equal(out[i], expected.flip(-1) if flips[i] else expected)


def test_digits_are_never_flipped():
    images = torch.randint(0, 256, (8, 2, 6, 6), dtype=torch.uint8)
    digits_batches = TensorBatches(TensorSplit(images, torch.arange(8)), small_info("digits"), torch.device("cpu"),
                                   batch_size=8, train=True, hflip=1.0)
    other_batches = TensorBatches(TensorSplit(images, torch.arange(8)), small_info(), torch.device("cpu"),
                                  batch_size=8, train=True, hflip=1.0)
    (digit_images, digit_labels), = digits_batches.epoch(1)
    (other_images, other_labels), = other_batches.epoch(1)
    assert torch.equal(digit_images, digits_batches._to_float(images[digit_labels]))
    assert torch.equal(other_images, other_batches._to_float(images[other_labels].flip(-1)))


def test_rank_shards_together_are_the_single_process_batches():
    split = TensorSplit(torch.randint(0, 256, (22, 2, 6, 6), dtype=torch.uint8), torch.arange(22))

    def batches(rank, world_size, train=True):
        return list(TensorBatches(split, small_info(), torch.device("cpu"), batch_size=4, train=train, seed=3,
                                  crop_padding=0.34, hflip=0.5, world=Distributed(rank, world_size)).epoch(2))

    single, rank0, rank1 = batches(0, 1), batches(0, 2), batches(1, 2)
    assert len(single) == len(rank0) == len(rank1) == 5
    for (images, labels), (images0, labels0), (images1, labels1) in zip(single, rank0, rank1):
        assert torch.equal(images, torch.cat([images0, images1])) and torch.equal(labels, torch.cat([labels0, labels1]))
    shards = [batches(rank, 3, train=False) for rank in range(3)]
    seen = sorted(label for shard in shards for _, labels in shard for label in labels.tolist())
    assert seen == list(range(22))


def test_cross_rank_batchnorm_matches_batchnorm_in_a_world_of_one(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        reference, synced = nn.BatchNorm2d(3), CrossRankBatchNorm2d(3)
        with torch.no_grad():
            reference.weight.uniform_(0.5, 1.5)
            reference.bias.uniform_(-1, 1)
        synced.load_state_dict(reference.state_dict())
        x = torch.randn(4, 3, 5, 5, requires_grad=True)
        x_ref = x.detach().clone().requires_grad_()
        upstream = torch.randn(4, 3, 5, 5)
        (synced(x) * upstream).sum().backward()
        (reference(x_ref) * upstream).sum().backward()
        assert torch.allclose(x.grad, x_ref.grad, atol=1e-5)
        assert torch.allclose(synced.weight.grad, reference.weight.grad, atol=1e-5)
        assert torch.allclose(synced.running_var, reference.running_var, atol=1e-6)
        assert torch.allclose(synced.running_mean, reference.running_mean, atol=1e-6)
    finally:
        dist.destroy_process_group()


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(None).type in ("cpu", "cuda")
    with pytest.raises(UsageError, match="'tpu'"):
        select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA device is visible here"):
            select_device("cuda")


def test_eval_split_must_exist(digits):
    # A caller's mistake, not a user's: a plain exception.
    with pytest.raises(ValueError, match="eval_split") as error:
        fit(tiny_model(), digits, get_recipe("proxy", epochs=1), device="cpu", eval_split="train")
    assert not isinstance(error.value, UsageError)


def test_divergence_error_survives_pickling():
    import pickle

    error = pickle.loads(pickle.dumps(TrainingDiverged(3, 7, 20, float("nan"), "no checkpoints were being written")))
    assert (error.epoch, error.step) == (3, 7) and str(error).startswith("training diverged at epoch 3, step 7 of 20")
