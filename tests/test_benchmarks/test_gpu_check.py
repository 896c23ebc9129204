"""benchmarks/gpu_check.sh without a GPU: its dry run (every step and its time limit, within 9 minutes), its
arguments, its stop after the preflight; and the summary it prints, read from an example run in the recorded
format (tests/data/gpu-check-example: figures invented, chosen so that goals are met and missed)."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
EXAMPLE = Path(__file__).resolve().parents[1] / "data" / "gpu-check-example"
STEPS = ["wheels", "preflight", "tier", "throughput", "trials_per_hour", "compile_payback", "retrain_epoch",
         "data_path", "summary"]
# 15 minutes of device time a task, a machine's start-up of a few minutes included: the check must fit once.
NINE_MINUTES = 540
KILL_AFTER = 3  # the seconds `timeout --kill-after` waits on top of each limit


def load_benchmark(name: str):
    """A script of benchmarks/ as a module, under its own name (gpu_figures imports gpu_summary by it)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


summary = load_benchmark("gpu_summary")
figures = load_benchmark("gpu_figures")


def check(*argv: str, out: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env})


def test_dry_run_lists_every_step_with_its_time_limit_within_nine_minutes(tmp_path):
    done = check("--dry-run", out=tmp_path / "out")
    assert done.returncode == 0, done.stderr
    steps = re.findall(r"^step (\S+) +limit +(\d+) s: (.+)$", done.stdout, re.MULTILINE)
    assert [name for name, _, _ in steps] == STEPS
    limits = [int(limit) for _, limit, _ in steps]
    assert all(limit > 0 for limit in limits)
    total = sum(limit + KILL_AFTER for limit in limits)
    assert total <= NINE_MINUTES and f"at most {total} s in all" in done.stdout
    for _, _, command in steps:
        assert all((ROOT / script).is_file() for script in re.findall(r"\S+\.(?:py|sh)\b", command)), command
    assert "tests/drills/test_gpu.py -m gpu" in done.stdout and "--compile both --img-size 224" in done.stdout
    assert not (tmp_path / "out").exists()  # nothing ran, nothing was written


@pytest.mark.parametrize("argv", [["--bogus"], ["--dry-run", "extra"]])
def test_an_unknown_argument_exits_2_with_one_line(tmp_path, argv):
    done = check(*argv, out=tmp_path / "out")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and f"unknown argument {argv[-1]}" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_folder_holding_an_earlier_check_is_refused_untouched(tmp_path):
    earlier = tmp_path / "out" / "figures.jsonl"
    earlier.parent.mkdir()
    earlier.write_text('{"step": "tier", "limit_s": 115, "seconds": 96, "exit": 0}\n')
    done = check(out=tmp_path / "out")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "already holds figures.jsonl" in done.stderr
    assert sorted(path.name for path in earlier.parent.iterdir()) == ["figures.jsonl"]
    assert earlier.read_text().count("\n") == 1


def test_without_a_gpu_the_check_stops_after_the_preflight_and_still_summarises(tmp_path):
    out = tmp_path / "out"
    done = check(out=out, CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 1 and "no CUDA device is visible" in done.stderr
    steps = [record for record in summary.read_records(out / "figures.jsonl") if "step" in record]
    assert [(step["step"], step["exit"]) for step in steps][-2:] == [("preflight", 3), ("summary", 0)]
    text = (out / "summary.txt").read_text()
    assert text in done.stdout and "no CUDA device" in text
    assert "engine vs timm eager: not measured (its step did not run)" in text


def lines_of(folder: Path) -> list[str]:
    return summary.summary(folder).splitlines()


def test_summary_of_the_example_gives_each_ratio_and_verdict():
    lines = lines_of(EXAMPLE)
    assert lines[0].endswith("on NVIDIA H100 80GB HBM3")
    assert "tier 96 s of 115 (exit 1)" in lines[1] and "throughput 88 s of 100 (ok)" in lines[1]
    assert ("GPU tier (pytest -m gpu): 10 passed, 1 failed, 1 skipped, failed: "
            "test_four_trials_train_at_once_on_one_gpu_with_a_quarter_each") in lines
    # 4,800 / 3,000 and 6,000 / 3,200 img/s.
    assert "4,800 vs 3,000 img/s = 1.60x, goal >= 1.5x: met" in lines[4] and "engine eager" in lines[4]
    assert "6,000 vs 3,200 img/s = 1.88x, goal >= 1.5x: met" in lines[5] and "engine compiled" in lines[5]
    # 1,440 / 600 trials an hour.
    assert "= 2.40x, goal >= 2.5x: NOT met" in lines[6] and "(at most 4 at once)" in lines[6]
    # Epoch 1: 45 - 3 = 42 s more; later epochs: median(1.2, 1.0) - 0.6 = 0.5 s less; 1 + 42 / 0.5 = 85 epochs.
    assert ("compiling adds 42.0 s to epoch 1 and saves 0.50 s in each later epoch: pays back after 85.0 epochs; a "
            "search trial is 10 epochs: does NOT pay back") in lines[7]
    # 62.5 - 2.5 = 60 s of warm-up against 1/4,800 - 1/6,000 s an image: 60 / (1,200 / 28.8e6) = 1,440,000 images.
    assert "adds 60.0 s of warm-up and saves 0.042 ms an image: pays back after 1,440,000 images" in lines[8]
    assert lines[9].endswith("epoch 1 1,800, epoch 2 2,600 img/s")
    # 48,000 / 1,600 img/s; 1,600 / 20,000 of the step's pace.
    assert ("files 1,600 img/s on every core, image cache 48,000 img/s a batch at a time (30.0x), 120,000 img/s held "
            "on the GPU; a 3M XCiT trains at 20,000 img/s there, so the files feed it 8% of its pace and the cache "
            "100%") in lines[10]


def test_summary_names_what_a_timed_out_step_left_unmeasured(tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(EXAMPLE, folder)
    records = summary.read_records(folder / summary.FIGURES_FILE)
    kept = [record for record in records if record.get("part") != "throughput" and record.get("mode") != "compiled"
            and record.get("step") != "throughput"]
    kept += [{"step": "throughput", "limit_s": 100, "seconds": 103, "exit": 124},
             {"part": "compile_payback", "arch": "xcit-n12", "dataset": "synthetic", "img_size": 32,
              "trial_epochs": 10, "mode": "compiled", "epoch_s": [], "timed_out_s": 50}]
    (folder / summary.FIGURES_FILE).write_text("".join(json.dumps(record) + "\n" for record in kept))
    text = summary.summary(folder)
    assert "throughput 103 s of 100 (timed out)" in text
    assert "engine vs timm eager: not measured (step throughput timed out at its 100 s limit)" in text
    # Over 50 - 3 = 47 s of compiling, and no epoch saving more than an eager one (1.1 s): over 1 + 47 / 1.1 epochs.
    assert ("compiling adds over 47 s (epoch 1 unfinished at its 50 s limit); a later epoch saves at most its 1.10 s, "
            "so it pays back after more than 44 epochs; a search trial is 10 epochs: does NOT pay back") in text
    assert "train_throughput" not in text


def test_a_tier_stopped_at_its_limit_is_read_from_its_verbose_log(tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(EXAMPLE, folder)
    (folder / summary.TIER_FILE).unlink()
    records = [record for record in summary.read_records(folder / summary.FIGURES_FILE) if record.get("step") != "tier"]
    records.append({"step": "tier", "limit_s": 115, "seconds": 118, "exit": 124})
    (folder / summary.FIGURES_FILE).write_text("".join(json.dumps(record) + "\n" for record in records))
    (folder / "logs").mkdir()
    (folder / summary.TIER_LOG).write_text(
        "tests/drills/test_gpu.py::test_a PASSED                                       [  8%]\n"
        "tests/drills/test_gpu.py::test_b[1] FAILED                                    [ 16%]\n"
        "tests/drills/test_gpu.py::test_c SKIPPED (needs two CUDA GPUs)                [ 25%]\n"
        "tests/drills/test_gpu.py::test_d \n")  # cut off while test_d ran
    assert ("GPU tier: no report (step tier timed out at its 115 s limit); its log shows 1 passed, 1 failed, 1 "
            "skipped, failed: test_b[1]") in summary.summary(folder)


def test_payback_is_where_the_saved_seconds_catch_up_with_the_added_ones():
    assert summary.payback_epochs([10.0, 5.0, 5.0], [40.0, 2.0, 2.0]) == (30.0, 3.0, 11.0)
    assert summary.payback_epochs([10.0, 5.0], [12.0, 5.5]) == (2.0, -0.5, None)


def test_figures_count_the_trials_training_at_once_and_find_the_default_winner():
    assert figures.running_at_once([(0, 4), (1, 5), (2, 6), (3, 7), (7, 9)]) == 4
    assert figures.running_at_once([(0, 1), (1, 2), (2, 3)]) == 1  # an end and a start at one instant
    winner = figures.default_winner()
    assert (winner["embed_dim"], winner["depth"], winner["patch_size"]) == (64, 12, 2)  # xcit-1ee4c145, 99.31%


def test_trials_per_hour_come_from_the_studys_own_record(tmp_path):
    import optuna

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="per-gpu-4")
    start = datetime(2026, 12, 1, 12)
    # (asked, told, seconds trained, state), seconds after the start: two train together, the third after the first
    # ends; an infeasible draw (told at once, never trained) is not in the span.
    for asked, told, seconds, state in ((0, 10, 9, "complete"), (1, 11, 9, "complete"), (10, 20, 8, "complete"),
                                        (30, 30, 0, "infeasible")):
        study.add_trial(optuna.trial.FrozenTrial(
            number=0, state=optuna.trial.TrialState.COMPLETE, value=0.5,
            datetime_start=start + timedelta(seconds=asked), datetime_complete=start + timedelta(seconds=told),
            params={}, distributions={}, user_attrs={"state": state, "seconds": float(seconds)}, system_attrs={},
            intermediate_values={}, trial_id=0))
    (tmp_path / "search.json").write_text(json.dumps({"seconds": 42.0}))
    assert figures.search_figures(tmp_path, "per-gpu-4") == {
        "trained": 3, "complete": 3, "span_s": 20.0, "trials_per_hour": 3 / 20 * 3600, "most_at_once": 2,
        "search_s": 42.0}


def test_a_trials_length_is_the_searchs_default_epochs():
    from nas.settings import SearchSettings

    assert figures.TRIAL_EPOCHS == SearchSettings.epochs
