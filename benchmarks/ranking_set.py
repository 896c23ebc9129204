"""The ranking set: architectures drawn at random within a budget, each trained to the search's full length, a
quarter of them under a second seed, one CSV row per (architecture, seed, epoch). Training-free proxies and rung
choices are measured against it without training again (benchmarks/proxies.py).

    python benchmarks/ranking_set.py                                   # qkv at 1M on mnist5k: 48 archs, 12 twice
    python benchmarks/ranking_set.py --space lite --budget 300K --out benchmarks/data/ranking_lite.csv

Each (architecture, seed) trains as one search trial does (the proxy recipe for --epochs, the same data, split and
train fraction as benchmarks/search_quality.py's runs) in its own process, --workers at a time with one torch thread
each. The CSV is rewritten after every finished unit, so a killed run resumes with the same command: finished units
are kept, the ones in flight train again. The settings go to the CSV's sidecar .json; a CSV made with other settings
is refused. Columns: arch_id, arch (JSON), params, flops, seed, epoch, val_acc.
"""
from __future__ import annotations

import argparse
import io
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pandas as pd

from qkvnas_core.errors import UsageError
from qkvnas_core.files import write_json_atomic, write_text_atomic
from qkvnas_core.units import parse_count

DEFAULT_OUT = Path("benchmarks/data/ranking_qkv.csv")
COLUMNS = ["arch_id", "arch", "params", "flops", "seed", "epoch", "val_acc"]
# The settings that define the set: a CSV made with others is refused (they are written to its sidecar).
FIXED = ("dataset", "space", "budget", "epochs", "train_fraction", "recipe", "val_fraction", "split_seed",
         "draw_seed", "archs", "second_seed_every")

_worker_data = None


def search_settings(settings: dict[str, Any]):
    """The `nas search` settings whose trials the set imitates (data, split, recipe)."""
    from nas.settings import SearchSettings

    return SearchSettings(name="ranking-set", budget=settings["budget"], dataset=settings["dataset"],
                          space=settings["space"], epochs=settings["epochs"],
                          train_fraction=settings["train_fraction"], val_fraction=settings["val_fraction"],
                          seed=settings["split_seed"])


def units(settings: dict[str, Any]) -> list[tuple[dict[str, Any], int]]:
    """Every (architecture row, seed) of the set: each drawn architecture at seed 0, every k-th also at seed 1."""
    from nas.engine.budget import Budget, feasible_draws
    from nas.engine.search import load_search_data
    from search_spaces.spaces import load_space

    info = load_search_data(search_settings(settings)).info
    budget = Budget(settings["budget"], None, info.shape)
    draws = feasible_draws(load_space(settings["space"]), budget, settings["archs"], seed=settings["draw_seed"])
    if len(draws) < settings["archs"]:
        raise UsageError(f"space {settings['space']} gave {len(draws)} feasible architectures at budget "
                         f"{settings['budget']:,}; expected {settings['archs']}")
    planned = []
    for index, found in enumerate(draws):
        row = {"arch_id": found.arch.arch_id, "arch": found.arch.to_json(), "params": found.params,
               "flops": found.flops}
        planned.append((row, 0))
        if index % settings["second_seed_every"] == 0:
            planned.append((row, 1))
    return planned


def _load_worker(settings: dict[str, Any]) -> None:
    import torch

    from nas.engine.search import load_search_data

    global _worker_data
    torch.set_num_threads(1)
    _worker_data = load_search_data(search_settings(settings))


def train_unit(row: dict[str, Any], seed: int, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """One architecture trained as a search trial (`trainers.trial`'s steps without Ray): a row per epoch."""
    from search_spaces.arch import ArchConfig
    from search_spaces.build import build_model
    from trainers.engine import fit
    from trainers.recipe import get_recipe
    from trainers.runtime import seed_everything

    recipe = get_recipe(settings["recipe"], epochs=settings["epochs"])
    arch = ArchConfig.from_json(row["arch"])
    seed_everything(seed)
    model = build_model(arch, _worker_data.info.shape, drop_path_rate=recipe.drop_path)
    fitted = fit(model, _worker_data, recipe, device="cpu", seed=seed)
    return [{**row, "seed": seed, "epoch": metrics.epoch, "val_acc": metrics.val_acc} for metrics in fitted.history]


def read_set(path: Path) -> pd.DataFrame:
    """A ranking-set CSV, checked: its columns, one row per (arch_id, seed, epoch), accuracies in [0, 1]."""
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: {error}; expected a ranking-set CSV (benchmarks/ranking_set.py)") from None
    missing = [name for name in COLUMNS if name not in table.columns]
    if missing:
        raise UsageError(f"{path}: no column {', '.join(missing)}; expected {', '.join(COLUMNS)}")
    if table.duplicated(["arch_id", "seed", "epoch"]).any():
        raise UsageError(f"{path}: an (arch_id, seed, epoch) appears twice; expected one row each")
    accuracy = pd.to_numeric(table["val_acc"], errors="coerce")
    if not accuracy.between(0, 1).all():
        raise UsageError(f"{path}: val_acc outside [0, 1] or not a number; expected fractions")
    return table


def complete_units(table: pd.DataFrame, epochs: int) -> set[tuple[str, int]]:
    """The (arch_id, seed) units whose every epoch is in the table."""
    counts = table.groupby(["arch_id", "seed"])["epoch"].nunique()
    return {(str(arch_id), int(seed)) for (arch_id, seed), count in counts.items() if count == epochs}


def check_sidecar(path: Path, settings: dict[str, Any]) -> None:
    if not path.is_file():
        return
    recorded = json.loads(path.read_text())
    for name in FIXED:
        if recorded.get(name) != settings[name]:
            raise UsageError(f"{path}: {name}={recorded.get(name)!r}, this run {settings[name]!r}; expected another "
                             "--out for other settings")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--space", default="qkv")
    parser.add_argument("--budget", default="1M", help="params budget (default 1M, the qkv budget of "
                                                       "benchmarks/search_quality.py)")
    parser.add_argument("--archs", type=int, default=48, help="architectures drawn (default 48)")
    parser.add_argument("--second-seed-every", type=int, default=4,
                        help="every k-th architecture also trains at seed 1 (default 4: a quarter)")
    parser.add_argument("--epochs", type=int, default=10, help="a trial's full length (default 10, as nas search)")
    parser.add_argument("--train-fraction", type=float, default=0.3)
    parser.add_argument("--draw-seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="units trained at once, one thread each")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    from nas.settings import SearchSettings
    from trainers.recipe import PROXY

    try:
        settings = {"dataset": args.dataset, "space": args.space, "budget": parse_count(args.budget),
                    "epochs": args.epochs, "train_fraction": args.train_fraction, "recipe": PROXY.name,
                    "val_fraction": SearchSettings.__dataclass_fields__["val_fraction"].default, "split_seed": 0,
                    "draw_seed": args.draw_seed, "archs": args.archs, "second_seed_every": args.second_seed_every}
        sidecar = args.out.with_suffix(".json")
        check_sidecar(sidecar, settings)
        planned = units(settings)
        table = read_set(args.out) if args.out.is_file() else pd.DataFrame(columns=COLUMNS)
        done = complete_units(table, settings["epochs"])
        table = table[[(str(a), int(s)) in done for a, s in zip(table["arch_id"], table["seed"])]]
        todo = [(row, seed) for row, seed in planned if (row["arch_id"], seed) not in done]
    except UsageError as error:
        raise SystemExit(f"error: {error}") from None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(sidecar, settings)
    print(f"{len(planned)} units ({settings['archs']} architectures): {len(planned) - len(todo)} done, "
          f"{len(todo)} to train -> {args.out}", flush=True)
    rows = table.to_dict("records")
    start = time.monotonic()
    with ProcessPoolExecutor(args.workers, initializer=_load_worker, initargs=(settings,)) as pool:
        futures = {pool.submit(train_unit, row, seed, settings): (row, seed) for row, seed in todo}
        for finished, future in enumerate(as_completed(futures), 1):
            row, seed = futures[future]
            epochs = future.result()
            rows += epochs
            text = io.StringIO()
            pd.DataFrame(rows, columns=COLUMNS).sort_values(["arch_id", "seed", "epoch"]).to_csv(text, index=False)
            write_text_atomic(args.out, text.getvalue())
            print(f"[{finished}/{len(todo)}] {row['arch_id']} seed {seed}: val_acc {epochs[-1]['val_acc']:.4f} "
                  f"({time.monotonic() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
