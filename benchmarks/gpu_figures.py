"""GPU figures that take whole `nas` commands, each appended to a record file for benchmarks/gpu_summary.py.

    python benchmarks/gpu_figures.py preflight --record OUT/figures.jsonl         # modules, the GPU: exit 3 if none
    python benchmarks/gpu_figures.py trials-per-hour --record OUT/figures.jsonl   # 1 and 4 trials per GPU
    python benchmarks/gpu_figures.py compile-payback --record OUT/figures.jsonl   # nas train, eager and --compile
    python benchmarks/gpu_figures.py retrain-epoch --record OUT/figures.jsonl     # the default winner at 224 px

- preflight: which of the modules the check imports are missing (the GPU image lacks some: .whl/ carries them),
  and the GPU's name; exit 3 when no CUDA device is visible, 1 when a module is missing.
- trials-per-hour: two `nas search` runs on `synthetic` (32 px), one trial per GPU then four (`--gpus-per-model 1`
  and `0.25`, as many at once), the same seed, so the same first draws; trials per hour are the complete trials
  over the span from the first trial's start to the last one's end, both as Optuna recorded them in study.db.
- compile-payback: `nas train` eager, then with `--compile`, at a search trial's size; each epoch's seconds from
  metrics.csv (training and validation, as the CPU measurement in docs/training.md).
- retrain-epoch: the default run's best trial (docs/default-run/pareto.csv) trained by `nas train` with the retrain
  recipe (xcit) at 224 px, patch 16, on `synthetic`; images/s of each epoch from metrics.csv.
Every command runs on the first visible GPU.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from gpu_summary import append_record

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUN_FRONT = ROOT / "docs" / "default-run" / "pareto.csv"
# `nas search --epochs` by default: a search trial's length.
TRIAL_EPOCHS = 10
# What the check imports beyond the standard library (sklearn: digits; moocore: the search's fronts).
MODULES = ("torch", "torchvision", "timm", "safetensors", "sklearn", "scipy", "pandas", "matplotlib", "yaml", "tqdm",
           "ray", "optuna", "moocore", "pytest")
NO_CUDA = 3


def first_gpu_environment() -> dict[str, str]:
    """This environment with only the first visible GPU: "per GPU" figures on one device, whatever the machine."""
    return {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}


def nas(argv: list[str], timeout: float | None = None) -> bool:
    """Run `nas ARGV` on the first GPU, its output passed through; False when it ran past `timeout` (then killed).
    A failure ends this script (exit 1, naming the command). The command stays in this process group, so the
    step's time limit stops it with this script."""
    process = subprocess.Popen([sys.executable, "-m", "nas.cli", *argv], env=first_gpu_environment())
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
    if code:
        raise SystemExit(f"nas {' '.join(argv)}: exited {code}")
    return True


def running_at_once(intervals: list[tuple[float, float]]) -> int:
    """The most (start, end) intervals holding one instant; at a tie an end comes before a start."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = running = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def search_figures(run_dir: Path, study_name: str) -> dict[str, float | int]:
    """Trials per hour of a finished search, from its study: complete trials over the span from the first trained
    trial's start (Optuna's ask) to the last one's end (its tell); and the most trials that trained at once, each
    for its own `seconds` before its end."""
    from nas.runs.results import RunFolder

    import optuna

    study = optuna.load_study(study_name=study_name, storage=RunFolder(run_dir).storage)
    trained = [trial for trial in study.trials if trial.user_attrs.get("state") in ("complete", "stopped", "failed")]
    complete = [trial for trial in trained if trial.user_attrs["state"] == "complete"]
    start = min(trial.datetime_start.timestamp() for trial in trained)
    end = max(trial.datetime_complete.timestamp() for trial in trained)
    spans = [(trial.datetime_complete.timestamp() - trial.user_attrs["seconds"], trial.datetime_complete.timestamp())
             for trial in complete]
    return {"trained": len(trained), "complete": len(complete), "span_s": end - start,
            "trials_per_hour": len(complete) / (end - start) * 3600, "most_at_once": running_at_once(spans),
            "search_s": json.loads(RunFolder(run_dir).settings_file.read_text())["seconds"]}


def preflight(args: argparse.Namespace, work: Path) -> int:
    """The modules this check lacks and the GPU it runs on, recorded before anything heavy starts."""
    import importlib.util

    import torch

    missing = [name for name in MODULES if importlib.util.find_spec(name) is None]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    append_record(args.record, {"part": "preflight", "missing": missing, "cuda": torch.version.cuda,
                                "torch": torch.__version__, **({"device": device} if device else {})})
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device {device or 'none visible'}; missing "
          f"modules: {', '.join(missing) or 'none'}")
    return NO_CUDA if device is None else 1 if missing else 0


def trials_per_hour(args: argparse.Namespace, work: Path) -> None:
    """One search with a trial per GPU, then one with four; each recorded as soon as it ends."""
    for per_gpu in (1, 4):
        name = f"per-gpu-{per_gpu}"
        nas(["search", "--budget", args.budget, "--dataset", "synthetic", "--img-size", str(args.img_size),
             "--trials", str(args.trials), "--epochs", str(args.epochs), "--early-stopping", "none",
             "--gpus-per-model", f"{1 / per_gpu:g}", "--cpus-per-model", "1", "--max-concurrent", str(per_gpu),
             "--logger", "none", "--seed", "0", "--results-dir", str(work), "--name", name])
        append_record(args.record, {"part": "trials_per_hour", "per_gpu": per_gpu, "dataset": "synthetic",
                                    "img_size": args.img_size, "epochs": args.epochs, "budget": args.budget,
                                    **search_figures(work / name, name)})


def metrics(folder: Path) -> list[dict[str, str]]:
    """metrics.csv of a `nas train` folder, a row per finished epoch (none when no epoch finished)."""
    path = folder / "metrics.csv"
    if not path.is_file():
        return []
    with open(path) as stream:
        return list(csv.DictReader(stream))


def compile_payback(args: argparse.Namespace, work: Path) -> None:
    """`nas train` eager, then compiled under a time limit, whose epochs so far are recorded either way."""
    train = ["train", args.arch, "--dataset", "synthetic", "--img-size", str(args.img_size), "--epochs",
             str(args.epochs), "--device", "cuda"]
    facts = {"part": "compile_payback", "arch": args.arch, "dataset": "synthetic", "img_size": args.img_size,
             "trial_epochs": TRIAL_EPOCHS}
    nas([*train, "--out", str(work / "eager")])
    append_record(args.record, {**facts, "mode": "eager",
                                "epoch_s": [float(row["seconds"]) for row in metrics(work / "eager")]})
    finished = nas([*train, "--compile", "--out", str(work / "compiled")], timeout=args.compiled_timeout)
    record = {**facts, "mode": "compiled", "epoch_s": [float(row["seconds"]) for row in metrics(work / "compiled")]}
    append_record(args.record, record if finished else {**record, "timed_out_s": args.compiled_timeout})


def default_winner() -> dict[str, object]:
    """The architecture of the default run's best trial by val_acc."""
    with open(DEFAULT_RUN_FRONT) as stream:
        best = max(csv.DictReader(stream), key=lambda row: float(row["val_acc"]))
    return json.loads(best["arch"])


def retrain_epoch(args: argparse.Namespace, work: Path) -> None:
    """The default winner trained as `nas retrain` would at 224 px: patch 16 (digits' 2 would leave 112x112 tokens)."""
    arch = work / "winner.json"
    arch.write_text(json.dumps(default_winner()))
    out = work / "retrain"
    nas(["train", str(arch), "--dataset", "synthetic", "--img-size", "224", "--patch-size", "16", "--recipe", "xcit",
         "--epochs", str(args.epochs), "--warmup-epochs", "0", "--batch-size", str(args.batch_size), "--device",
         "cuda", "--out", str(out)])
    append_record(args.record, {
        "part": "retrain_epoch", "arch_id": json.loads((out / "result.json").read_text())["arch_id"], "img_size": 224,
        "patch_size": 16, "recipe": "xcit", "batch_size": args.batch_size,
        "images_per_s": [float(row["images_per_s"]) for row in metrics(out)]})


def parse_args() -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--record", type=Path, required=True, metavar="FILE", help="figures.jsonl to append to")
    common.add_argument("--work", type=Path, default=None, metavar="DIR",
                        help="where the runs go (default: a temporary folder, removed at the end)")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    figures = parser.add_subparsers(dest="figure", required=True)
    figures.add_parser("preflight", parents=[common], help="the modules and the GPU this check needs")
    search = figures.add_parser("trials-per-hour", parents=[common], help="two searches: 1 and 4 trials per GPU")
    search.add_argument("--budget", default="1M", help="parameter budget (default 1M)")
    search.add_argument("--img-size", type=int, default=32, help="synthetic images' side (default 32)")
    search.add_argument("--trials", type=int, default=8, help="trials of each search (default 8)")
    search.add_argument("--epochs", type=int, default=2, help="epochs of each trial, none stopped early (default 2)")
    payback = figures.add_parser("compile-payback", parents=[common], help="nas train eager, then compiled")
    payback.add_argument("--arch", default="xcit-n12", help="preset or arch.json (default xcit-n12)")
    payback.add_argument("--img-size", type=int, default=32, help="synthetic images' side (default 32)")
    payback.add_argument("--epochs", type=int, choices=range(2, 11), default=3, metavar="N",
                         help="epochs of each run, 2 to 10: the first compiles, the others save (default 3)")
    payback.add_argument("--compiled-timeout", type=float, default=60.0, metavar="S",
                         help="stop the compiled run after S seconds and record how far it got (default 60)")
    retrain = figures.add_parser("retrain-epoch", parents=[common],
                                 help="the default winner at 224 px with the xcit recipe")
    retrain.add_argument("--epochs", type=int, default=2, help="epochs (default 2: the first warms up)")
    retrain.add_argument("--batch-size", type=int, default=256, help="batch (default 256)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    run = {"preflight": preflight, "trials-per-hour": trials_per_hour, "compile-payback": compile_payback,
           "retrain-epoch": retrain_epoch}[args.figure]
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        return run(args, args.work) or 0
    with tempfile.TemporaryDirectory() as folder:
        return run(args, Path(folder)) or 0


if __name__ == "__main__":
    raise SystemExit(main())
