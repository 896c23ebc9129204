"""`nas transfer`: retrained checkpoints fine-tuned on CIFAR-10 and STL-10 files in their real formats."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import trainers.model_folder as model_folder
from qkvnas_core.errors import UsageError
from dataset_files import write_cifar10, write_stl10
from search_spaces.arch import ArchConfig
from trainers.checkpoint import load_checkpoint
from trainers.datasets.registry import DataRequest, load_dataset
from trainers.from_scratch import RetrainTask, retrain_model
from trainers.recipe import get_recipe
from trainers.transfer import load_pretrained, transfer_model

WINNER = ArchConfig(embed_dim=32, depth=2, num_heads=2, patch_size=4, qkv={"layers": ("shared", "shared"),
                                                                           "code_size": 4})
BASELINE = ArchConfig(embed_dim=32, depth=2, num_heads=2, patch_size=4)
PRETRAIN_CLASSES, PRETRAIN_SIZE = 4, 16
FAST = ["--epochs", "2", "--batch-size", "16", "--device", "cpu"]


def pretrain(run: Path, arch: ArchConfig, source: str, data, dataset: str = "synthetic") -> Path:
    task = RetrainTask(arch=arch, role="winner", source=source, folder=run / "retrain" / arch.arch_id,
                       recipe=get_recipe("proxy", epochs=1), overrides={"epochs": 1}, data=DataRequest(dataset),
                       device="cpu")
    retrain_model(task, data)
    return task.folder


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """Two models retrained on 16 px RGB images of 4 classes, and CIFAR-10 and STL-10 files in separate roots."""
    root = tmp_path_factory.mktemp("transfer")
    synthetic = load_dataset("synthetic", synthetic_train=200, synthetic_classes=PRETRAIN_CLASSES,
                             synthetic_img_size=PRETRAIN_SIZE)
    winner = pretrain(root / "run", WINNER, "t0003", synthetic)
    baseline = pretrain(root / "run", BASELINE, "xcit-n12", synthetic)
    write_cifar10(root / "data", per_class=4, test_per_class=3)
    write_stl10(root / "stl", per_class=4, test_per_class=2)
    return root, winner, baseline


def copy_run(pretrained, tmp_path) -> tuple[Path, Path, Path]:
    root, winner, baseline = pretrained
    shutil.copytree(root / "run", tmp_path / "run")
    return tmp_path / "run", tmp_path / "run" / "retrain" / winner.name, tmp_path / "run" / "retrain" / baseline.name


def test_fine_tunes_fill_the_paper_table(pretrained, tmp_path, cli, monkeypatch):
    root = pretrained[0]
    run, winner, baseline = copy_run(pretrained, tmp_path)
    tested = []
    real_evaluate = model_folder.evaluate

    def spy_evaluate(model, split, info, **kwargs):
        tested.append((info.name, len(split)))
        return real_evaluate(model, split, info, **kwargs)

    monkeypatch.setattr(model_folder, "evaluate", spy_evaluate)
    code, out, err = cli("transfer", winner, "--baseline", baseline, "--datasets", "cifar10,stl10",
                              "--data-dir", root / "data", "--data-dir", f"stl10={root / 'stl'}", *FAST)
    assert code == 0, err
    assert sorted(tested) == [("cifar10", 30), ("cifar10", 30), ("stl10", 20), ("stl10", 20)]

    table = pd.read_csv(run / "transfer.csv")
    assert list(table.columns) == ["arch_id", "role", "source", "structure", "params", "cifar10_top1", "stl10_top1",
                                   "average_top1"]
    assert list(table["role"]) == ["baseline", "winner"] and list(table["source"]) == ["xcit-n12", "t0003"]
    for row in table.itertuples():
        assert row.average_top1 == pytest.approx((row.cifar10_top1 + row.stl10_top1) / 2)
        for dataset, images in (("cifar10", 30), ("stl10", 20)):
            folder = run / "transfer" / row.arch_id / dataset
            result = json.loads((folder / "result.json").read_text())
            assert result["top1"] == pytest.approx(getattr(row, f"{dataset}_top1"))
            assert result["img_size"] == PRETRAIN_SIZE and result["num_classes"] == 10
            assert result["test_images"] == images and result["pretrained_on"] == "synthetic"
            assert result["recipe"] == "transfer" and result["recipe_fields"]["grad_clip"] == 1.0
            assert result["backbone_params"] == row.params == result["params"] - (32 + 1) * 10
            assert "test" not in (folder / "metrics.csv").read_text().splitlines()[0]
            fine_tuned = load_checkpoint(folder)
            assert fine_tuned.record["dataset"]["img_size"] == PRETRAIN_SIZE
    assert "CIFAR-10" in out and "STL-10" in out and "average" in out
    lines = out.split("transfer test top-1")[1].splitlines()
    assert any("xcit-n12" in line and "[baseline]" in line for line in lines)
    assert any("t0003" in line and WINNER.arch_id in line and "[baseline]" not in line for line in lines)

    code, _, err = cli("transfer", winner, "--baseline", baseline, "--datasets", "cifar10,stl10",
                            "--data-dir", root / "data", "--data-dir", f"stl10={root / 'stl'}", *FAST)
    assert code == 2 and "already holds checkpoints of a finished run" in err and err.count("\n") == 1
    tested.clear()
    code, out, err = cli("transfer", winner, "--baseline", baseline, "--datasets", "cifar10,stl10",
                              "--data-dir", root / "data", "--data-dir", f"stl10={root / 'stl'}", *FAST, "--resume")
    assert code == 0 and tested == [] and "0 fine-tunes to run, 4 already finished (skipped)" in out
    assert pd.read_csv(run / "transfer.csv").equals(table)
    code, _, err = cli("transfer", winner, "--baseline", baseline, "--datasets", "cifar10,stl10",
                       "--data-dir", root / "data", "--data-dir", f"stl10={root / 'stl'}", *FAST, "--resume",
                       "--split-seed", "1")
    assert code == 2 and "finished with another split_seed" in err and err.count("\n") == 1


def test_new_head_and_every_other_weight_loaded(pretrained):
    checkpoint = load_pretrained(pretrained[1])
    assert checkpoint.weights_path.name == "best.safetensors"
    model = transfer_model(checkpoint, num_classes=7, in_chans=3, seed=0)
    weights = model.state_dict()
    assert weights["head.weight"].shape == (7, 32) and torch.all(weights["head.bias"] == 0)
    assert float(weights["head.weight"].std()) < 0.05
    body = {name: tensor for name, tensor in checkpoint.weights.items() if not name.startswith("head.")}
    assert len(body) == len(weights) - 2 and all(torch.equal(weights[name], body[name]) for name in body)
    with pytest.raises(UsageError, match="3-channel"):
        transfer_model(checkpoint, num_classes=7, in_chans=1, seed=0)


def test_foreign_or_corrupt_checkpoints_fail_with_one_line(pretrained, tmp_path, cli):
    root = pretrained[0]
    run, winner, baseline = copy_run(pretrained, tmp_path)
    args = ["--datasets", "cifar10", "--data-dir", root / "data", *FAST]
    shutil.copyfile(baseline / "best.safetensors", winner / "best.safetensors")  # weights of another architecture
    code, _, err = cli("transfer", winner, *args)
    assert code == 2 and err.count("\n") == 1
    assert f"checkpoint {winner / 'best.safetensors'} does not match the model" in err

    (baseline / "best.safetensors").write_bytes(b"not safetensors")
    code, _, err = cli("transfer", baseline, *args)
    assert code == 2 and err.count("\n") == 1 and "not a readable safetensors file" in err

    code, _, err = cli("transfer", tmp_path / "missing", *args)
    assert code == 2 and err.count("\n") == 1 and "missing: not found" in err
    assert not (run / "transfer").exists() and not (run / "transfer.csv").exists()


def test_grayscale_checkpoint_on_rgb_data_is_refused(pretrained, tmp_path, cli, digits):
    folder = pretrain(tmp_path / "digits-run", WINNER.replace(patch_size=2), "digits", digits, dataset="digits")
    code, _, err = cli("transfer", folder, "--datasets", "cifar10", "--data-dir", pretrained[0] / "data", *FAST)
    assert code == 2 and err.count("\n") == 1 and "trained on 1-channel images (digits)" in err


@pytest.mark.parametrize("argv, expected", [
    (["--datasets", "cifar10,mnist"], "--datasets cifar10,mnist: 'mnist'"),
    (["--datasets", "cifar10", "--data-dir", "stl10=/x"], "'stl10' is not among --datasets"),
    (["--datasets", "cifar10", "--data-dir", "/a", "--data-dir", "/b"], "a second root"),
    (["--datasets", "cifar10", "--epochs", "-1"], "recipe epochs=-1"),
])
def test_bad_flags_fail_with_one_line(pretrained, cli, argv, expected):
    code, _, err = cli("transfer", pretrained[1], *argv)
    assert code == 2 and expected in err and err.count("\n") == 1


def test_nothing_to_fine_tune(cli):
    code, _, err = cli("transfer")
    assert code == 2 and "nothing to fine-tune" in err
