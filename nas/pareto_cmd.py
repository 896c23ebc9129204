"""`nas pareto results/<run>`: the run's Pareto front as pareto.csv and pareto.png / pareto.svg."""
from __future__ import annotations

import argparse
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from nas.pareto import SCORE, pareto_front, plot_front, scored_trials
from nas.results import Run, find_run, read_run
from core.errors import UsageError
from core.files import atomic_path

COST_COLUMNS = {"params": "params", "flops": "flops", "latency": "latency_ms"}
# Settings that name the run's limit on a cost; drawn as a vertical line on that cost's plot.
COST_LIMITS = {"params": "budget", "flops": "max_flops"}
LATENCY_COLUMNS = ("latency_ms", "throughput", "latency_device")
# (label, preset, ImageNet top-1, published params or None when the preset's count is the published one).
# The paper's F-SNE has 3.1M params; its hidden width is not given, so our preset (hidden ratio 1, 2.87M)
# only stands in for its FLOPs.
REFERENCE_MODELS = (("XCiT-N12", "xcit-n12", 0.699, None), ("F-SNE (paper)", "xcit-n12-fsne", 0.714, 3_100_000),
                    ("DeiT-Tiny", "deit-tiny", 0.722, None))


def parse_costs(values: Iterable[str] | None) -> list[str]:
    """['params,flops', 'latency'] -> ['params', 'flops', 'latency'], in order, without repeats; default params."""
    costs = [part.strip() for value in (values or ["params"]) for part in value.split(",") if part.strip()]
    for cost in costs:
        if cost not in COST_COLUMNS:
            raise UsageError(f"cost {cost!r}: expected params, flops or latency (repeat --cost or comma-separate)")
    return list(dict.fromkeys(costs)) or ["params"]


def _state_counts(table: pd.DataFrame) -> str:
    counts = table["state"].fillna("unknown").value_counts()
    return ", ".join(f"{count} {state}" for state, count in counts.items()) or "no trials"


def _with_latency(table: pd.DataFrame, rows: pd.Index, run: Run, device: str) -> pd.DataFrame:
    """`table` plus latency columns, measured for `rows` (one measurement per distinct architecture)."""
    from search_spaces.arch import ArchConfig
    from search_spaces.build import build_model
    from search_spaces.latency import device_name, measure_latency, resolve_device

    torch_device = resolve_device(device)
    why = "to build the models whose latency is measured"
    num_classes = int(run.setting("num_classes", why))
    img_size = int(run.setting("img_size", why))
    in_chans = int(run.settings.get("in_chans", 3))
    if "arch" not in table.columns:
        raise UsageError(f"{run.path / 'trials.csv'} has no arch column: expected it {why}")
    table = table.copy()
    for column in LATENCY_COLUMNS:
        table[column] = pd.Series(dtype=str if column == "latency_device" else float)
    print(f"measuring latency of {table.loc[rows, 'arch'].nunique()} architectures on {device}")
    measured: dict[str, dict[str, float]] = {}
    for index in rows:
        arch_json = table.at[index, "arch"]
        if arch_json not in measured:
            model = build_model(ArchConfig.from_json(str(arch_json)), num_classes, img_size, in_chans)
            measured[arch_json] = measure_latency(model, img_size, in_chans, torch_device)
        table.loc[index, ["latency_ms", "throughput"]] = [measured[arch_json]["latency_ms"],
                                                          measured[arch_json]["throughput"]]
        table.loc[index, "latency_device"] = device_name(torch_device)
    return table


def reference_points(run: Run) -> pd.DataFrame | None:
    """The published models at the run's image size and classes, or None (said why) off ImageNet."""
    dataset = run.settings.get("dataset", "an unknown dataset")
    if dataset != "imagenet":
        print(f"references left out: their accuracies are ImageNet top-1, not comparable with {dataset}")
        return None
    from search_spaces.cost import count_flops, count_params
    from search_spaces.presets import get_preset

    why = "to count the reference models' parameters and FLOPs"
    shape = (int(run.setting("num_classes", why)), int(run.setting("img_size", why)),
             int(run.settings.get("in_chans", 3)))
    rows = [{"name": name, "preset": preset, SCORE: accuracy,
             "params": published or count_params(get_preset(preset), *shape),
             "flops": count_flops(get_preset(preset), *shape)}
            for name, preset, accuracy, published in REFERENCE_MODELS]
    return pd.DataFrame(rows)


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False)


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)


def write_pareto(run_dir: str | Path, costs: Sequence[str] = ("params",), reference: bool = False,
                 measure_latency: bool = False, device: str = "cpu", out_dir: str | Path | None = None) -> Path:
    """Write pareto.csv (the front over all `costs`) and one plot per cost into `out_dir` (default: the run).

    With several costs, plots are pareto_<cost>.png/.svg and the first is also pareto.png/.svg.
    Returns the path of pareto.csv.
    """
    run = read_run(run_dir)
    costs = parse_costs(costs)
    out = Path(out_dir) if out_dir is not None else run.path
    table = run.table
    scored = scored_trials(table)
    if scored.empty:
        raise UsageError(f"{run.path / 'trials.csv'} has no scored trial ({_state_counts(table)}): "
                         "expected at least one complete or stopped trial with a val_acc")
    for cost in costs:
        column = COST_COLUMNS[cost]
        if cost != "latency" and (column not in table.columns or scored[column].isna().all()):
            raise UsageError(f"{run.path / 'trials.csv'} has no {column} values for its scored trials: "
                             f"expected a {column} column to use cost {cost!r}")
    if "latency" in costs:
        # Any scored trial may be on a front that includes latency, so all of them are measured.
        table = _with_latency(table, scored.index, run, device)
    front = pareto_front(table, [COST_COLUMNS[cost] for cost in costs])
    if measure_latency and "latency" not in costs:
        front = _with_latency(front, front.index, run, device)
    references = reference_points(run) if reference else None

    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "pareto.csv"
    _write_csv(front, csv_path)
    title = f"{run.name} ({run.settings.get('dataset', 'dataset unknown')}, {len(scored)} scored trials)"
    written = [csv_path]
    for cost in costs:
        stem = out / ("pareto" if len(costs) == 1 else f"pareto_{cost}")
        limit = run.settings.get(COST_LIMITS[cost]) if cost in COST_LIMITS else None
        plots = plot_front(table, front, COST_COLUMNS[cost], limit, stem, references, title=title)
        written += plots
        if len(costs) > 1 and cost == costs[0]:
            for plot in plots:
                _copy(plot, out / f"pareto{plot.suffix}")
                written.append(out / f"pareto{plot.suffix}")
    if references is not None:
        print("references: " + "; ".join(f"{row.name} {getattr(row, SCORE) * 100:.1f}% top-1, "
                                          f"{row.params / 1e6:.2f}M params, {row.flops / 1e9:.2f} GFLOPs"
                                          for row in references.itertuples(index=False)))
    print(f"front over {' + '.join(costs)}: {len(front)} of {len(scored)} scored trials; "
          f"wrote {', '.join(path.name for path in written)} to {out}")
    return csv_path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder (results/<run>) or a run name under results/")
    parser.add_argument("--cost", action="append", metavar="COST",
                        help="params, flops or latency; repeat or comma-separate for one front over several "
                             "(default params)")
    parser.add_argument("--reference", action="store_true",
                        help="mark XCiT-N12, the paper's F-SNE and DeiT-Tiny (ImageNet runs only)")
    parser.add_argument("--measure-latency", action="store_true",
                        help="time each front member and add latency_ms / throughput to pareto.csv")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where latency is measured")
    parser.add_argument("--out", metavar="DIR", help="folder for the files (default: the run folder)")


def run(args: argparse.Namespace) -> int:
    write_pareto(find_run(args.run), costs=parse_costs(args.cost), reference=args.reference,
                 measure_latency=args.measure_latency, device=args.device, out_dir=args.out)
    return 0
