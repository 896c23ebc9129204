"""`nas train` end to end on digits: output, checkpoints, test once, exit codes 0 / 1 / 2."""
import subprocess
import sys

import pytest

from search_spaces.arch import ArchConfig

# patch 16 on 8 px digits leaves no token, so the CLI must switch to the dataset's patch size 2.
TINY_P16 = ArchConfig(embed_dim=32, depth=2, num_heads=2, patch_size=16)


@pytest.fixture
def arch_file(tmp_path):
    path = tmp_path / "arch.json"
    path.write_text(TINY_P16.to_json())
    return str(path)


def test_train_prints_epochs_writes_checkpoints_and_tests_once(cli, tmp_path, arch_file):
    out = tmp_path / "run"
    code, stdout, stderr = cli("train", arch_file, "--dataset", "digits", "--epochs", "3", "--out", str(out),
                                   "--device", "cpu")
    assert code == 0, stderr
    assert "patch size 16 -> 2 for digits at 8 px (override with --patch-size)" in stdout
    assert "epoch 1/3" in stdout and "epoch 3/3" in stdout and "val_acc" in stdout
    assert stdout.count("\ntest    ") == 1 and "top1" in stdout
    assert {"last.safetensors", "last-state.safetensors", "last.json", "best.safetensors",
            "best.json"} <= {p.name for p in out.iterdir()}

    code, _, stderr = cli("train", arch_file, "--epochs", "3", "--out", str(out))
    assert code == 2
    assert stderr.count("\n") == 1 and "already holds checkpoints" in stderr and "--resume" in stderr

    code, stdout, stderr = cli("train", arch_file, "--epochs", "3", "--out", str(out), "--resume")
    assert code == 0, stderr
    assert "epoch 1/3" not in stdout and "finished earlier: nothing to train" in stdout and "\ntest" not in stdout


def test_explicit_patch_size_is_used(cli, tmp_path, arch_file):
    code, stdout, _ = cli("train", arch_file, "--epochs", "1", "--out", str(tmp_path / "p4"), "--patch-size", "4",
                              "--device", "cpu")
    assert code == 0 and "patch size 16 -> 4" in stdout and " p4 " in stdout


def test_divergence_exits_1_with_one_line(cli, tmp_path, arch_file):
    code, _, stderr = cli("train", arch_file, "--epochs", "2", "--lr", "1e6", "--out", str(tmp_path / "nan"))
    assert code == 1
    assert stderr.count("\n") == 1 and "training diverged at epoch" in stderr and "step" in stderr


@pytest.mark.parametrize("argv, expected", [
    (["no-such-preset"], "unknown preset"),
    (["xcit-n12", "--recipe", "long"], "unknown recipe"),
    (["xcit-n12", "--epochs", "0"], "epochs=0"),
    (["xcit-n12", "--dataset", "mnist"], "dataset 'mnist'"),
])
def test_bad_input_exits_2_with_one_line(cli, tmp_path, argv, expected):
    code, _, stderr = cli("train", *argv, "--out", str(tmp_path / "bad"))
    assert code == 2 and expected in stderr and stderr.count("\n") == 1


def test_console_exit_code_and_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "nas.cli", "train", "xcit-n12", "--lr", "-1", "--out",
                           str(tmp_path / "x")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith("nas train: error: recipe lr=-1.0") and "Traceback" not in done.stderr


def test_train_takes_the_image_size_and_every_recipe_flag(cli, tmp_path, arch_file):
    import json

    out = tmp_path / "flags"
    code, stdout, stderr = cli("train", arch_file, "--epochs", "1", "--img-size", "16", "--batch-size", "32",
                               "--weight-decay", "0", "--no-ema", "--mixup", "0.2", "--out", out, "--device", "cpu")
    assert code == 0, stderr
    record = json.loads((out / "last.json").read_text())
    assert {key: record["recipe"][key] for key in ("batch_size", "weight_decay", "ema", "mixup")} == {
        "batch_size": 32, "weight_decay": 0.0, "ema": False, "mixup": 0.2}
    assert json.loads((out / "arch.json").read_text())["data_shape"]["img_size"] == 16
