"""Checkpoints: round trip, exact resume, and one-line errors for corrupt or mismatched files."""
import json

import pytest
import torch

from qkvnas_core.errors import UsageError
from search_spaces.arch import ArchConfig
from search_spaces.build import build_model
from search_spaces.shape import DataShape
from trainers.checkpoint import checkpoint_record, load_checkpoint, save_checkpoint, trained_checkpoint
from trainers.engine import StopTraining, fit
from trainers.recipe import get_recipe
from trainers.runtime import seed_everything

TINY_FSNE = ArchConfig(embed_dim=32, depth=2, num_heads=2, patch_size=2,
                       qkv={"layers": ("shared", "shared"), "code_size": 4})
DIGITS = DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=2)


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """A 2-epoch run's model and checkpoint folder, shared by the read-only tests."""
    folder = tmp_path_factory.mktemp("run")
    model = new_model()
    fit(model, digits, get_recipe("proxy", epochs=2), device="cpu", seed=0, checkpoint_dir=folder, arch=TINY_FSNE)
    return model, folder


def new_model(arch=TINY_FSNE, seed=0, drop_path_rate=0.0):
    seed_everything(seed)
    return build_model(arch, DIGITS, drop_path_rate=drop_path_rate)


def same_weights(first, second):
    first, second = first.state_dict(), second.state_dict()
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_round_trip_weights_and_record(trained, digits):
    model, folder = trained
    assert sorted(p.name for p in folder.iterdir()) == [
        "best.json", "best.safetensors", "last-state.safetensors", "last.json", "last.safetensors"]
    checkpoint = load_checkpoint(folder)
    assert checkpoint.epoch == 2 and checkpoint.record["step"] == 2 * (len(digits.train.labels) // 64)
    assert checkpoint.arch == TINY_FSNE and checkpoint.record["arch_id"] == TINY_FSNE.arch_id
    assert checkpoint.recipe == get_recipe("proxy", epochs=2) and checkpoint.record["seed"] == 0
    assert checkpoint.record["dataset"]["name"] == "digits" and checkpoint.record["dataset"]["img_size"] == 8
    assert {"torch", "timm", "safetensors", "numpy", "python"} <= set(checkpoint.record["versions"])
    assert [entry["epoch"] for entry in checkpoint.history] == [1, 2]
    rebuilt = checkpoint.build_model()
    assert same_weights(rebuilt, model)
    images = torch.randn(3, 1, 8, 8)
    model.eval(), rebuilt.eval()
    assert torch.equal(model(images), rebuilt(images))
    best = load_checkpoint(folder / "best.json", new_model())
    assert best.record["best_val_acc"] == max(entry["val_acc"] for entry in best.history[:best.epoch])


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, digits):
    model = new_model()
    record = checkpoint_record(epoch=7, step=70, seed=0, recipe=get_recipe("proxy"), dataset=digits.info, arch=None,
                               history=[], best_val_acc=0.5, scored_weights="model")
    save_checkpoint(tmp_path, "best", weights=model.state_dict(), record=record)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.json", "best.safetensors"]
    assert load_checkpoint(tmp_path / "best.safetensors", new_model(seed=1)).epoch == 7


def test_resume_after_interruption_gives_the_same_final_weights(digits, tmp_path):
    # Every random stream matters here: drop path and mixup (torch, numpy RNGs), crops (data stream), EMA.
    recipe = get_recipe("proxy", epochs=4, drop_path=0.1, mixup=0.8, cutmix=1.0, crop_padding=0.125, ema=True,
                        ema_decay=0.9, grad_clip=1.0)
    uninterrupted = new_model(drop_path_rate=recipe.drop_path)
    straight = fit(uninterrupted, digits, recipe, device="cpu", seed=0, checkpoint_dir=tmp_path / "a")

    def interrupt_after_epoch_two(metrics):
        if metrics.epoch == 2:
            raise StopTraining

    interrupted = fit(new_model(drop_path_rate=recipe.drop_path), digits, recipe, device="cpu", seed=0, checkpoint_dir=tmp_path / "b",
                      on_epoch=interrupt_after_epoch_two)
    assert interrupted.epochs_run == 2
    resumed_model = new_model(seed=123, drop_path_rate=recipe.drop_path)  # resume must not depend on how the new model was initialised
    torch.rand(5)
    resumed = fit(resumed_model, digits, recipe, device="cpu", seed=0, checkpoint_dir=tmp_path / "b", resume=True)
    assert resumed.epochs_run == 4
    assert same_weights(resumed_model, uninterrupted)
    assert [m.val_acc for m in resumed.history] == [m.val_acc for m in straight.history]
    assert [m.train_loss for m in resumed.history] == [m.train_loss for m in straight.history]
    ema_a = load_checkpoint(tmp_path / "a", with_state=True).state
    ema_b = load_checkpoint(tmp_path / "b", with_state=True).state
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a if k.startswith(("ema.", "optimizer.")))


def test_resume_refuses_another_recipe(trained, digits):
    _, folder = trained
    with pytest.raises(UsageError, match=r"another recipe: epochs \(2 saved, 3 now\)"):
        fit(new_model(), digits, get_recipe("proxy", epochs=3), device="cpu", checkpoint_dir=folder, resume=True)


def one_line_usage_error(call):
    with pytest.raises(UsageError) as error:
        call()
    message = str(error.value)
    assert "\n" not in message
    return message


def test_wrong_architecture_is_a_one_line_usage_error(trained):
    _, folder = trained
    other = build_model(TINY_FSNE.replace(embed_dim=48), DIGITS)
    message = one_line_usage_error(lambda: load_checkpoint(folder, other))
    assert str(folder / "last.safetensors") in message and "does not match the model" in message
    assert "(48,)" in message or "48" in message
    plain = build_model(TINY_FSNE.replace(qkv={}), DIGITS)
    message = one_line_usage_error(lambda: load_checkpoint(folder, plain))
    assert "missing" in message and "unexpected" in message


def test_corrupt_weights_are_a_one_line_usage_error(trained, tmp_path):
    _, folder = trained
    for name in ("last.json", "last.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    weights = tmp_path / "last.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    message = one_line_usage_error(lambda: load_checkpoint(tmp_path))
    assert str(weights) in message and "safetensors" in message
    weights.write_bytes(b"not a checkpoint at all")
    one_line_usage_error(lambda: load_checkpoint(tmp_path))


def test_corrupt_or_missing_record_is_a_one_line_usage_error(trained, tmp_path):
    _, folder = trained
    (tmp_path / "last.safetensors").write_bytes((folder / "last.safetensors").read_bytes())
    message = one_line_usage_error(lambda: load_checkpoint(tmp_path))
    assert "last.json" in message and "not found" in message
    (tmp_path / "last.json").write_text('{"format": "qkvnas-checkpoint/1", "epoch": ')
    assert "malformed JSON" in one_line_usage_error(lambda: load_checkpoint(tmp_path))


def test_files_from_an_interrupted_write_are_refused(trained, tmp_path):
    _, folder = trained
    (tmp_path / "last.safetensors").write_bytes((folder / "last.safetensors").read_bytes())
    record = json.loads((folder / "last.json").read_text())
    (tmp_path / "last.json").write_text(json.dumps({**record, "epoch": 3}))
    assert "interrupted write" in one_line_usage_error(lambda: load_checkpoint(tmp_path))


@pytest.mark.parametrize("change, field", [
    (lambda record: record.pop("dataset"), "dataset is missing"),
    (lambda record: record["dataset"].pop("img_size"), "dataset.img_size is missing"),
    (lambda record: record.update(seed="0"), 'seed="0"'),
    (lambda record: record["arch"]["qkv"].update(blocks=["a"]), 'qkv.blocks=["a"]'),
])
def test_a_record_missing_or_mistyping_a_field_is_one_line_naming_it(trained, tmp_path, change, field):
    _, folder = trained
    for name in ("last.json", "last.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    record = json.loads((tmp_path / "last.json").read_text())
    change(record)
    (tmp_path / "last.json").write_text(json.dumps(record))
    message = one_line_usage_error(lambda: load_checkpoint(tmp_path))
    assert str(tmp_path / "last.json") in message and field in message


def test_a_trained_model_path_means_its_best_checkpoint(trained, tmp_path):
    folder = trained[1]
    assert trained_checkpoint(folder) == folder / "best.json"
    assert trained_checkpoint(folder / "last.safetensors") == folder / "last.safetensors"
    only_last = tmp_path / "only-last"
    only_last.mkdir()
    (only_last / "last.json").write_text((folder / "last.json").read_text())
    assert trained_checkpoint(only_last) == only_last / "last.json"
    for path, expected in ((tmp_path, "holds no best.json or last.json"), (tmp_path / "gone", "gone: not found")):
        with pytest.raises(UsageError, match=expected) as error:
            trained_checkpoint(path)
        assert "\n" not in str(error.value)
