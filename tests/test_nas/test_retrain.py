"""`nas retrain` on a tiny run folder (digits): winners, baselines, one test at the end, DDP, resume, Ray, errors."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import trainers.model_folder as model_folder
from qkvnas_core.files import write_json_atomic
from nas.cli import main
from nas.runs.results import trial_row, trials_frame, write_trials
from nas.winners.retrain import Candidate, fitted_arch
from search_spaces.arch import ArchConfig
from search_spaces.cost import count_flops, count_params
from search_spaces.shape import DataShape
from trainers.checkpoint import load_checkpoint
from trainers.datasets.registry import DataRequest, load_dataset
from trainers.engine import evaluate
from trainers.from_scratch import RetrainTask
from trainers.holdout import SPLIT_VERSION
from trainers.recipe import get_recipe
from trainers.transfer import TransferTask

TINY_LINEAR = ArchConfig(embed_dim=16, depth=1, num_heads=2, patch_size=2)
TINY_FSNE = ArchConfig(embed_dim=32, depth=2, num_heads=2, patch_size=2,
                       qkv={"layers": ("shared", "shared"), "code_size": 4})
WIDER_LINEAR = ArchConfig(embed_dim=32, depth=1, num_heads=2, patch_size=2)
# Patch 16 leaves no token on 8 px digits: the retrain must switch it to the dataset's patch 2.
BASELINE_P16 = ArchConfig(embed_dim=16, depth=1, num_heads=2, patch_size=16)
# The xcit recipe made quick: every flag below is generated from a Recipe field.
FAST_XCIT = ["--recipe", "xcit", "--epochs", "2", "--batch-size", "64", "--lr", "8e-3", "--randaugment", "none", "--mixup", "0",
             "--cutmix", "0", "--no-ema", "--warmup-epochs", "0", "--drop-path", "0.05", "--device", "cpu"]
FAST_PROXY = ["--recipe", "proxy", "--device", "cpu"]
DIGITS_TEST_IMAGES = 359
DIGITS = DataShape(img_size=8, in_chans=1, num_classes=10, patch_size=2)


def write_run(folder: Path, trials=((TINY_LINEAR, 0.80, "complete"), (TINY_FSNE, 0.95, "complete"),
                                    (WIDER_LINEAR, None, "failed")), split_version: int | None = SPLIT_VERSION) -> Path:
    """A run folder as `nas search` leaves it: search.json and trials.csv (trial t0001 leads the front);
    split_version None: as an older qkvnas left it."""
    folder.mkdir(parents=True)
    settings = {"name": folder.name, "dataset": "digits", "data_dir": None, "budget": 60_000, "img_size": 8,
                "num_classes": 10, "in_chans": 1, "patch_size": 2, "val_fraction": 0.2, "seed": 0}
    write_json_atomic(folder / "search.json",
                      settings if split_version is None else {**settings, "split_version": split_version})
    rows = [trial_row(number, state, "injected" if state == "failed" else "", arch, count_params(arch, DIGITS),
                      count_flops(arch, DIGITS), seed=number, curve=[val_acc] if val_acc is not None else [])
            for number, (arch, val_acc, state) in enumerate(trials)]
    write_trials(folder / "trials.csv", trials_frame(rows))
    return folder


def read_metrics(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics.csv") as stream:
        return list(csv.DictReader(stream))


def test_winner_and_baseline_are_trained_then_tested_once(tmp_path, cli, monkeypatch):
    run = write_run(tmp_path / "run")
    baseline = tmp_path / "baseline.json"
    baseline.write_text(BASELINE_P16.to_json())
    tested, fitted = [], []
    real_evaluate, real_fit = model_folder.evaluate, model_folder.fit

    def spy_evaluate(model, split, info, **kwargs):
        tested.append(len(split))
        return real_evaluate(model, split, info, **kwargs)

    def spy_fit(model, data, recipe, **kwargs):
        fitted.append(data.test)
        return real_fit(model, data, recipe, **kwargs)

    monkeypatch.setattr(model_folder, "evaluate", spy_evaluate)
    monkeypatch.setattr(model_folder, "fit", spy_fit)
    code, out, err = cli("retrain", run, "--top", "1", "--baseline", baseline, *FAST_XCIT)
    assert code == 0, err
    assert tested == [DIGITS_TEST_IMAGES, DIGITS_TEST_IMAGES] and fitted == [None, None]
    assert f"patch size 16 -> 2 for {baseline} on digits at 8 px (override with --patch-size)" in out
    baseline_fitted = BASELINE_P16.replace(patch_size=2)
    digits = load_dataset("digits", val_fraction=0.2)

    table = pd.read_csv(run / "retrain.csv")
    assert list(table["role"]) == ["baseline", "winner"]
    assert list(table["source"]) == [str(baseline), "t0001"]
    assert list(table["arch_id"]) == [baseline_fitted.arch_id, TINY_FSNE.arch_id]
    for row, arch in zip(table.itertuples(), (baseline_fitted, TINY_FSNE)):
        folder = run / "retrain" / row.arch_id
        assert {"arch.json", "metrics.csv", "result.json", "best.json", "best.safetensors", "last.json",
                "last.safetensors", "last-state.safetensors"} <= {path.name for path in folder.iterdir()}
        assert ArchConfig.from_json((folder / "arch.json").read_text()) == arch
        assert row.params == count_params(arch, DIGITS) and row.flops == count_flops(arch, DIGITS)
        metrics = read_metrics(folder)
        assert [int(m["epoch"]) for m in metrics] == [1, 2]
        assert list(metrics[0]) == model_folder.METRICS_COLUMNS and not any("test" in name for name in metrics[0])
        result = json.loads((folder / "result.json").read_text())
        assert result["top1"] == pytest.approx(row.top1) and result["top1"] <= result["top5"] <= 1
        assert result["test_images"] == DIGITS_TEST_IMAGES and result["epochs"] == 2 == row.epochs
        assert result["recipe"] == "xcit" and result["overrides"]["drop_path"] == 0.05
        assert result["recipe_fields"]["ema"] is False and result["recipe_fields"]["randaugment"] is None
        assert result["recipe_fields"]["weight_decay"] == 0.05  # not given: the xcit recipe's own value
        assert (result["dataset"], result["val_fraction"], result["split_seed"]) == ("digits", 0.2, 0)
        assert result["split_version"] == SPLIT_VERSION and result["pretrained"] is None
        assert json.loads((folder / "settings.json").read_text()).items() <= result.items()  # the resume key
        # The score is the best-by-validation checkpoint's on the test split.
        best = load_checkpoint(folder / "best.json")
        assert best.epoch == result["best_epoch"]
        assert max(float(m["val_acc"]) for m in metrics) == pytest.approx(result["best_val_acc"])
        assert evaluate(best.build_model(), digits.test, digits.info, device="cpu")["acc"] == pytest.approx(row.top1)
    assert out.count("\ntest    ") == 2 and TINY_FSNE.arch_id in out.split("retrained on digits")[1]


def interrupt_at(monkeypatch, target: ArchConfig, epoch: int) -> None:
    """Ctrl-C after `epoch` of `target` (its checkpoint and metrics already written), as a user would."""
    real_fit = model_folder.fit

    def fit_then_interrupt(model, data, recipe, *, on_epoch, arch: ArchConfig, **kwargs):
        def maybe_interrupt(metrics):
            on_epoch(metrics)
            if arch == target and metrics.epoch == epoch:
                raise KeyboardInterrupt

        return real_fit(model, data, recipe, on_epoch=maybe_interrupt, arch=arch, **kwargs)

    monkeypatch.setattr(model_folder, "fit", fit_then_interrupt)


def test_interrupted_retrain_resumes_exactly_and_skips_finished_models(tmp_path, cli, monkeypatch):
    run = write_run(tmp_path / "run")
    args = ["--trial-ids", "t0000,1", "--epochs", "3", *FAST_PROXY]
    code, _, _ = cli("retrain", run, *args, "--out", tmp_path / "straight")
    assert code == 0

    interrupt_at(monkeypatch, TINY_FSNE, epoch=1)
    code, _, err = cli("retrain", run, *args)
    assert code == 130 and "interrupted" in err
    monkeypatch.undo()
    first, second = run / "retrain" / TINY_LINEAR.arch_id, run / "retrain" / TINY_FSNE.arch_id
    assert (first / "result.json").is_file() and not (second / "result.json").exists()
    assert load_checkpoint(second).epoch == 1 and len(read_metrics(second)) == 1
    assert list(pd.read_csv(run / "retrain.csv")["arch_id"]) == [TINY_LINEAR.arch_id]
    kept = {path: path.read_bytes() for path in (first / "result.json", second / "last.safetensors")}

    code, _, err = cli("retrain", run, *args)
    assert code == 2 and err.count("\n") == 1 and "already holds checkpoints of a finished run of t0000" in err and "--resume" in err
    assert all(path.read_bytes() == data for path, data in kept.items())

    code, out, err = cli("retrain", run, *args, "--resume")
    assert code == 0, err
    assert "1 to train" in out and "1 already finished (skipped)" in out and "epoch 1/3" not in out
    assert (first / "result.json").read_bytes() == kept[first / "result.json"]
    straight = tmp_path / "straight" / "retrain" / TINY_FSNE.arch_id
    timing = ("seconds", "images_per_s")
    assert ([{k: v for k, v in m.items() if k not in timing} for m in read_metrics(second)] ==
            [{k: v for k, v in m.items() if k not in timing} for m in read_metrics(straight)])
    resumed, uninterrupted = load_file(second / "last.safetensors"), load_file(straight / "last.safetensors")
    assert all(torch.equal(resumed[name], uninterrupted[name]) for name in uninterrupted)
    resumed_result = json.loads((second / "result.json").read_text())
    assert resumed_result["top1"] == json.loads((straight / "result.json").read_text())["top1"]
    assert sorted(pd.read_csv(run / "retrain.csv")["arch_id"]) == sorted([TINY_LINEAR.arch_id, TINY_FSNE.arch_id])


@pytest.mark.slow
def test_two_processes_give_the_metrics_of_one(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    args = ["retrain", str(run), "--top", "1", "--epochs", "3", *FAST_PROXY]
    assert main(args + ["--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "nas.cli", *args, "--out", str(tmp_path / "two")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("epoch 3/3") == 1 and done.stdout.count("\ntest    ") == 1  # rank 0 alone prints
    one, two = (tmp_path / name / "retrain" / TINY_FSNE.arch_id for name in ("one", "two"))
    val_images, test_images = len(load_dataset("digits", val_fraction=0.2).val), DIGITS_TEST_IMAGES
    for single, double in zip(read_metrics(one), read_metrics(two), strict=True):
        assert abs(float(single["val_acc"]) - float(double["val_acc"])) <= 1 / val_images + 1e-9
        assert float(single["train_loss"]) == pytest.approx(float(double["train_loss"]), abs=1e-3)
    one_result, two_result = (json.loads((folder / "result.json").read_text()) for folder in (one, two))
    assert (one_result["world_size"], two_result["world_size"]) == (1, 2)
    assert abs(one_result["top1"] - two_result["top1"]) <= 1 / test_images + 1e-9
    assert len(pd.read_csv(tmp_path / "two" / "retrain.csv")) == 1


@pytest.mark.slow
def test_ray_trains_each_model_and_seed_as_a_separate_task(tmp_path, cli):
    run = write_run(tmp_path / "run")
    code, out, err = cli("retrain", run, "--trial-ids", "t0000,t0001", "--epochs", "1", *FAST_PROXY,
                             "--address", "local", "--cpus-per-model", "1", "--seeds", "2")
    assert code == 0, err
    table = pd.read_csv(run / "retrain.csv")
    assert sorted(zip(table["source"], table["seed"])) == [("t0000", 0), ("t0000", 1), ("t0001", 0), ("t0001", 1)]
    assert table["top1"].between(0, 1).all() and "4 (of 2 models x 2 seeds) to train on Ray at local" in out
    for arch in (TINY_LINEAR, TINY_FSNE):
        for folder in (run / "retrain" / arch.arch_id, run / "retrain" / f"{arch.arch_id}-seed1"):
            result = json.loads((folder / "result.json").read_text())
            assert result["epochs"] == 1 and result["test_images"] == DIGITS_TEST_IMAGES


def test_a_broken_or_foreign_checkpoint_in_an_interrupted_folder_fails_cleanly(tmp_path, cli):
    run = write_run(tmp_path / "run")
    args = ["--trial-ids", "t0000,t0001", "--epochs", "1", *FAST_PROXY]
    assert cli("retrain", run, *args)[0] == 0
    first, second = run / "retrain" / TINY_LINEAR.arch_id, run / "retrain" / TINY_FSNE.arch_id
    (first / "result.json").unlink()  # as if killed after its last epoch: resumable
    for name in ("last.safetensors", "last-state.safetensors", "last.json"):
        shutil.copyfile(second / name, first / name)  # another architecture's checkpoint
    code, _, err = cli("retrain", run, *args, "--resume")
    assert code == 2 and err.count("\n") == 1 and f"checkpoint {first / 'last.safetensors'} does not match" in err

    (first / "last.safetensors").write_bytes(b"\x00garbage")
    code, _, err = cli("retrain", run, *args, "--resume")
    assert code == 2 and err.count("\n") == 1 and "not a readable safetensors file" in err
    assert (first / "last.safetensors").read_bytes() == b"\x00garbage"


@pytest.mark.parametrize("argv, expected", [
    (["--top", "0"], "argument --top: 0: expected a positive integer"),
    (["--trial-ids", "t0099"], "--trial-ids t0099: no such trial in"),
    ([], "nothing to retrain: expected --top K"),
    (["--arch", "missing.json"], "architecture file missing.json: not found"),
    (["--baseline", "no-such-preset"], "unknown preset 'no-such-preset'"),
    (["--top", "1", "--epochs", "0"], "recipe epochs=0"),
    (["--top", "1", "--schedule", "step"], "recipe schedule='step'"),
    (["--top", "1", "--dataset", "mnist"], "dataset 'mnist'"),
    (["--top", "1", "--address", "local", "--gpus-per-model", "2"], "--gpus-per-model 2.0: expected 0 to 1"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, cli, argv, expected):
    run = write_run(tmp_path / "run")
    before = sorted(path.name for path in run.iterdir())
    code, _, err = cli("retrain", run, *argv)
    assert code == 2 and expected in err and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(path.name for path in run.iterdir()) == before


def test_a_run_without_a_front_or_folder_is_named(tmp_path, cli):
    run = write_run(tmp_path / "failed", trials=((TINY_LINEAR, None, "failed"), (WIDER_LINEAR, None, "failed")))
    code, _, err = cli("retrain", run, "--top", "2")
    assert code == 2 and f"{run / 'trials.csv'} has no Pareto front (2 failed)" in err and err.count("\n") == 1
    code, _, err = cli("retrain", tmp_path / "nowhere", "--top", "1")
    assert code == 2 and "nowhere: not found" in err and err.count("\n") == 1


def test_malformed_recipe_flag_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["retrain", str(tmp_path), "--top", "1", "--lr", "fast"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --lr: 'fast': expected a finite number" in err and err.count("\n") == 1


def test_searched_patch_size_meets_the_retrain_images(tmp_path, cli):
    winner = Candidate(TINY_FSNE, "winner", "t0001", searched_at=8)
    assert fitted_arch(winner, 224, 16, None).patch_size == 16  # digits' patch 2 would leave 112x112 tokens
    assert fitted_arch(winner, 8, 2, None).patch_size == 2
    assert fitted_arch(winner, 224, 16, 8).patch_size == 8
    assert fitted_arch(Candidate(TINY_FSNE, "winner", "arch.json"), 224, 16, None).patch_size == 2

    run = write_run(tmp_path / "run")
    code, out, err = cli("retrain", run, "--top", "1", "--img-size", "16", "--epochs", "1", *FAST_PROXY)
    assert code == 0, err
    assert "patch size 2 -> 4 for t0001 on digits at 16 px (searched at 8 px; override with --patch-size)" in out
    result = json.loads((run / "retrain" / TINY_FSNE.replace(patch_size=4).arch_id / "result.json").read_text())
    assert (result["img_size"], result["patch_size"]) == (16, 4)
    assert result["flops"] == count_flops(TINY_FSNE.replace(patch_size=4), DataShape(16, 1, 10, 4))


# Task fields that say where or how a model runs, or what it is called, but not what it learns: the only ones a
# resume may change. A new field must go into the resume key (trainers.model_folder.resume_key) or here.
RUN_ONLY = {"role", "source", "folder", "overrides", "resume", "device", "compile", "progress_bar", "threads",
            "data.data_dir", "data.download", "data.cache_dir"}
OTHER_VALUES = {"arch": WIDER_LINEAR, "recipe": get_recipe("proxy", epochs=2), "seed": 1, "checkpoint": Path("b.json"),
                "data.name": "synthetic", "data.val_fraction": 0.3, "data.split_seed": 1, "data.img_size": 16,
                "data.image_cache": True}


@pytest.mark.parametrize("task", [
    RetrainTask(arch=TINY_LINEAR, role="winner", source="t0000", folder=Path("out"), recipe=get_recipe("proxy"),
                overrides={}, data=DataRequest("digits", img_size=8)),
    TransferTask(checkpoint=Path("a.json"), arch=TINY_LINEAR, role="winner", source="t0000", folder=Path("out"),
                 recipe=get_recipe("transfer"), overrides={}, data=DataRequest("cifar10", img_size=8)),
], ids=["retrain", "transfer"])
def test_every_setting_that_changes_the_model_changes_the_resume_key(task):
    """Both kinds of task get their key from the one builder; each field is in it or declared run-only."""
    key = model_folder.resume_key(task)
    fields = [field.name for field in dataclasses.fields(task) if field.name != "data"]
    fields += [f"data.{field.name}" for field in dataclasses.fields(task.data)]
    for name in fields:
        if name in RUN_ONLY:
            continue
        assert name in OTHER_VALUES, f"{type(task).__name__}.{name}: put it in the resume key or in RUN_ONLY"
        if name.startswith("data."):
            changed = dataclasses.replace(task, data=dataclasses.replace(task.data, **{name[5:]: OTHER_VALUES[name]}))
        else:
            changed = dataclasses.replace(task, **{name: OTHER_VALUES[name]})
        assert model_folder.resume_key(changed) != key, name
    assert model_folder.resume_key(dataclasses.replace(task, device="cuda", folder=Path("x"))) == key


def test_a_model_resumes_only_with_the_settings_it_started_with(tmp_path, cli):
    run = write_run(tmp_path / "run", split_version=None)
    args = ["--trial-ids", "t0000", "--epochs", "1", *FAST_PROXY]
    code, out, err = cli("retrain", run, *args)
    assert code == 0, err
    assert f"note: {run} was searched on validation split version 1; this version draws version {SPLIT_VERSION}" in out
    folder = run / "retrain" / TINY_LINEAR.arch_id
    code, _, err = cli("retrain", run, *args, "--resume", "--val-fraction", "0.3")
    assert code == 2 and err.count("\n") == 1 and f"{folder} finished with another val_fraction" in err

    (folder / "result.json").unlink()  # as if killed after its last epoch: resumable
    code, _, err = cli("retrain", run, *args, "--resume", "--split-seed", "4")
    assert code == 2 and err.count("\n") == 1
    assert f"cannot resume {folder}: it was started with another split_seed" in err
    (folder / "settings.json").unlink()  # as an older qkvnas left an interrupted run
    code, _, err = cli("retrain", run, *args, "--resume")
    assert code == 2 and err.count("\n") == 1 and "without settings.json (started by an older qkvnas" in err
    assert not (folder / "result.json").exists()
