"""A run's Pareto front as files: pareto.csv (or search_front.csv) and a plot per cost (nas.runs.plots), the front
drawn by nas.runs.fronts' rule; with latency measured on a device, and the paper's reference models, where asked.
"""
from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from qkvnas_core.errors import UsageError
from qkvnas_core.files import atomic_path
from qkvnas_core.log import logger
from nas.settings.objectives import COST_LIMIT_SETTINGS, FRONT_COSTS, SCORE
from nas.settings.requests import ParetoRequest
from nas.runs.fronts import pareto_front, scored_trials
from nas.runs.plots import plot_front, plot_retrained
from nas.runs.results import Run, find_run, read_run, state_counts
from nas.runs.seed_stats import read_retrain, seed_summary
from search_spaces.model_tools.device import DEFAULT_DEVICE
from search_spaces.shape import DataShape

log = logger(__name__)
# The column of trials.csv (pareto.csv for latency) that holds each cost a front may be drawn against.
COST_COLUMNS = dict(zip(FRONT_COSTS, ("params", "flops", "latency_ms")))
LATENCY_COLUMNS = ("latency_ms", "throughput", "latency_device")
# (label, preset, ImageNet top-1, published params or None when the preset's count is the published one).
# The paper's F-SNE has 3.1M params; its hidden width is not given, so our preset (hidden ratio 1, 2.87M)
# only stands in for its FLOPs.
REFERENCE_MODELS = (("XCiT-N12", "xcit-n12", 0.699, None), ("F-SNE (paper)", "xcit-n12-fsne", 0.714, 3_100_000),
                    ("DeiT-Tiny", "deit-tiny", 0.722, None))


def _run_shape(run: Run, why: str) -> DataShape:
    """The data shape the run's trials were built for, from its search.json."""
    return DataShape(img_size=int(run.setting("img_size", why)), in_chans=int(run.settings.get("in_chans", 3)),
                     num_classes=int(run.setting("num_classes", why)))


def _with_latency(table: pd.DataFrame, rows: pd.Index, run: Run, device: str) -> pd.DataFrame:
    """`table` plus latency columns, measured for `rows` (one measurement per distinct architecture)."""
    from search_spaces.arch import ArchConfig
    from search_spaces.build import build_model
    from search_spaces.model_tools.device import parse_device
    from search_spaces.model_tools.latency import device_name, measure_latency

    torch_device = parse_device(device)
    why = "to build the models whose latency is measured"
    shape = _run_shape(run, why)
    if "arch" not in table.columns:
        raise UsageError(f"{run.folder.trials_file} has no arch column: expected it {why}")
    table = table.copy()
    for column in LATENCY_COLUMNS:
        table[column] = pd.Series(dtype=str if column == "latency_device" else float)
    log.info(f"measuring latency of {table.loc[rows, 'arch'].nunique()} architectures on {device}")
    measured: dict[str, dict[str, float]] = {}
    for index in rows:
        arch_json = table.at[index, "arch"]
        if arch_json not in measured:
            model = build_model(ArchConfig.from_json(str(arch_json)), shape)
            measured[arch_json] = measure_latency(model, shape, torch_device)
        table.loc[index, ["latency_ms", "throughput"]] = [measured[arch_json]["latency_ms"],
                                                          measured[arch_json]["throughput"]]
        table.loc[index, "latency_device"] = device_name(torch_device)
    return table


def reference_points(run: Run) -> pd.DataFrame | None:
    """The published models at the run's image size and classes, or None off ImageNet (their accuracies are
    ImageNet top-1, comparable with no other dataset)."""
    if run.settings.get("dataset") != "imagenet":
        return None
    from search_spaces.cost import count_flops, count_params
    from search_spaces.presets import get_preset

    why = "to count the reference models' parameters and FLOPs"
    shape = _run_shape(run, why)
    rows = [{"name": name, "preset": preset, SCORE: accuracy,
             "params": published or count_params(get_preset(preset), shape),
             "flops": count_flops(get_preset(preset), shape)}
            for name, preset, accuracy, published in REFERENCE_MODELS]
    return pd.DataFrame(rows)


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False)


def _copy(source: Path, target: Path) -> None:
    with atomic_path(target) as temporary:
        shutil.copyfile(source, temporary)


@dataclass
class ParetoOutcome:
    """What `write_pareto` computed and wrote: the front over `costs`, out of `scored` trials, and its files (the
    csv first); references are the published models drawn, None when not asked for or off ImageNet."""

    front: pd.DataFrame
    costs: list[str]
    scored: int
    dataset: str | None
    out: Path
    written: list[Path]
    references: pd.DataFrame | None
    full_fidelity: int  # trials scored at full fidelity (complete), the front's candidates unless include_stopped
    epochs: int | None  # the run's full number of epochs
    include_stopped: bool

    @property
    def csv_path(self) -> Path:
        return self.written[0]


def write_pareto(request: ParetoRequest) -> ParetoOutcome:
    """`nas pareto`: the run folder read back (checked against its study), its front drawn (`draw_front`), with
    the retrained models' plot when the run has retrain.csv."""
    run = read_run(find_run(request.run))
    return draw_front(run, request.costs, request.reference, request.measure_latency, request.device, request.out,
                      include_stopped=request.include_stopped, retrained=read_retrain(run.path))


def draw_front(run: Run, costs: Sequence[str] = ("params",), reference: bool = False, measure_latency: bool = False,
               device: str = DEFAULT_DEVICE, out_dir: str | Path | None = None, name: str | None = None,
               include_stopped: bool = False, retrained: pd.DataFrame | None = None) -> ParetoOutcome:
    """Write <name>.csv (the front over all `costs`) and one plot per cost into `out_dir` (default: the run), from
    the run as given (a search's session passes what it holds; nothing is read back).

    With several costs, plots are <name>_<cost>.png/.svg and the first is also <name>.png/.svg. The front is
    drawn from trials scored at the full number of epochs unless `include_stopped`; stopped trials are drawn hollow.
    `nas search` writes its own front as `search_front.*`, so a front a user drew with `nas pareto` (pareto.*)
    is never overwritten by a resumed search. Logs a line while latency is measured.
    """
    costs = list(dict.fromkeys(costs))
    out = Path(out_dir) if out_dir is not None else run.path
    name = name or run.folder.pareto.name
    table = run.table
    scored = scored_trials(table)
    if scored.empty:
        raise UsageError(f"{run.folder.trials_file} has no scored trial ({state_counts(table)}): "
                         "expected at least one complete or stopped trial with a val_acc")
    epochs = run.settings.get("epochs")
    full_fidelity = scored_trials(table, include_stopped=False)
    if full_fidelity.empty and not include_stopped:
        raise UsageError(f"{run.folder.trials_file} has no trial scored at full fidelity (every epoch run; "
                         f"{state_counts(table)}): expected a complete trial, or --include-stopped to draw a front "
                         "of trials ASHA scored after fewer epochs")
    for cost in costs:
        column = COST_COLUMNS[cost]
        if cost != "latency" and (column not in table.columns or scored[column].isna().all()):
            raise UsageError(f"{run.folder.trials_file} has no {column} values for its scored trials: "
                             f"expected a {column} column to use cost {cost!r}")
    if "latency" in costs:
        # Any scored trial may be on a front that includes latency, so all of them are measured.
        table = _with_latency(table, scored.index, run, device)
    front = pareto_front(table, [COST_COLUMNS[cost] for cost in costs], include_stopped)
    if measure_latency and "latency" not in costs:
        front = _with_latency(front, front.index, run, device)
    references = reference_points(run) if reference else None

    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{name}.csv"
    _write_csv(front, csv_path)
    fidelity = (f"front of {len(full_fidelity)} trials scored at {epochs or 'all'} epochs" if not include_stopped
                else f"front of {len(scored)} trials, stopped ones scored at fewer epochs")
    title = f"{run.name} ({run.settings.get('dataset', 'dataset unknown')}): {fidelity}"
    written = [csv_path]
    for cost in costs:
        stem = out / (name if len(costs) == 1 else f"{name}_{cost}")
        limit = run.settings.get(COST_LIMIT_SETTINGS[cost]) if cost in COST_LIMIT_SETTINGS else None
        plots = plot_front(table, front, COST_COLUMNS[cost], limit, stem, references, title=title)
        written += plots
        if len(costs) > 1 and cost == costs[0]:
            for plot in plots:
                _copy(plot, out / f"{name}{plot.suffix}")
                written.append(out / f"{name}{plot.suffix}")
    if retrained is not None and len(retrained):
        written += plot_retrained(seed_summary(retrained), out / f"{name}_retrained",
                                  f"{run.name}: retrained models, each seed tested once ({len(retrained)} runs)")
    return ParetoOutcome(front=front, costs=costs, scored=len(scored), dataset=run.settings.get("dataset"), out=out,
                         written=written, references=references, full_fidelity=len(full_fidelity), epochs=epochs,
                         include_stopped=include_stopped)
