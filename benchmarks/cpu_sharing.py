"""Two CPU trainings on one machine: per-epoch time of one `nas train` alone against two at once.

    python benchmarks/cpu_sharing.py                         # xcit-n12-fsne on digits, 3 epochs, CPU
    python benchmarks/cpu_sharing.py --env OMP_WAIT_POLICY=PASSIVE   # try a thread setting on both runs

A fair share of the cores makes two at once about 2x slower per epoch than one alone; the target is <= 2.5x.
Epoch times are the `seconds` column of each run's metrics.csv (training and validation of one epoch), the
first epoch left out (warm-up); the figure is the median.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def train(out: Path, arch: str, epochs: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "nas.cli", "train", arch, "--epochs", str(epochs), "--out", str(out),
                             "--device", "cpu"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def epoch_seconds(out: Path) -> list[float]:
    with open(out / "metrics.csv") as stream:
        return [float(row["seconds"]) for row in csv.DictReader(stream)][1:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="xcit-n12-fsne")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for both runs (repeatable)")
    args = parser.parse_args()
    env = {**os.environ, **dict(item.split("=", 1) for item in args.env)}
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        alone = train(root / "alone", args.arch, args.epochs, env)
        if alone.wait():
            raise SystemExit(alone.stderr.read())
        pair = [train(root / name, args.arch, args.epochs, env) for name in ("first", "second")]
        for process in pair:
            if process.wait():
                raise SystemExit(process.stderr.read())
        alone_s = statistics.median(epoch_seconds(root / "alone"))
        together_s = statistics.median(epoch_seconds(root / "first") + epoch_seconds(root / "second"))
    settings = " ".join(args.env) or "the product's own thread settings"
    print(f"{args.arch} on digits, {os.cpu_count()} CPUs, {settings}: epoch {alone_s:.1f} s alone, "
          f"{together_s:.1f} s with a second training at once: {together_s / alone_s:.2f}x (fair share 2x, "
          "target <= 2.5x)")


if __name__ == "__main__":
    main()
