"""`nas retrain results/<run>`: retrain a run's winners (and baselines) with a full recipe, then test each once.

Winners come from the run's Pareto front (`--top K`), its trial ids (`--trials`) or architectures
(`--arch`); `--baseline` adds a reference model under the very same recipe. Each model trains in
results/<run>/retrain/<arch-id>/ and results/<run>/retrain.csv gets its row when it finishes.
Also home of the recipe flags and the table printing that `nas transfer` uses too.

Exit codes: 0 every model trained; 1 a model's training diverged (the others still ran); 2 bad input;
130 interrupted (the last finished epoch of the model in training is kept; --resume continues it).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.budget import format_count

if TYPE_CHECKING:
    import pandas as pd

    from search_spaces.arch import ArchConfig
    from trainers.recipe import Recipe
    from trainers.retrain import RetrainTask

RETRAIN_COLUMNS = ["arch_id", "role", "source", "structure", "params", "flops", "top1", "top5", "best_val_acc",
                   "best_epoch", "epochs", "recipe", "overrides", "dataset", "img_size", "patch_size", "seed",
                   "world_size", "seconds"]
RECIPE_DEST = "recipe_field_"
METAVARS = {"int": "N", "float": "F", "str": "TEXT"}


# --- recipe flags (shared with nas transfer) -------------------------------------------------------------------------


def recipe_field_help() -> dict[str, str]:
    """Each Recipe field's description, read from the Recipe docstring ('name: text' lines)."""
    from trainers.recipe import Recipe

    helps: dict[str, str] = {}
    current: list[str] = []
    for line in (Recipe.__doc__ or "").splitlines():
        match = re.match(r"^    (\w+(?:, \w+)*): (.*)$", line)
        if match:
            current = match.group(1).split(", ")
            for name in current:
                helps[name] = match.group(2)
        elif current and line.startswith("        "):
            for name in current:
                helps[name] += " " + line.strip()
        else:
            current = []
    return helps


def _optional(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its error message
    return parse


def add_recipe_arguments(parser: argparse.ArgumentParser, default_recipe: str | None, default_text: str = "") -> None:
    """--recipe NAME plus one flag per Recipe field (--epochs, --batch-size, --ema/--no-ema, ...), generated from
    the dataclass so a new field gets its flag; flags not given keep the named recipe's values."""
    from trainers.recipe import RECIPES, Recipe

    group = parser.add_argument_group("recipe", "start from --recipe NAME; each flag below overrides one field "
                                                 f"(values shown as {' / '.join(RECIPES)})")
    group.add_argument("--recipe", default=default_recipe, metavar="NAME",
                       help=f"{', '.join(RECIPES)} (default {default_text or default_recipe})")
    helps = recipe_field_help()
    converters: dict[str, Callable[[str], Any]] = {"int": int, "float": float, "str": str}
    for field in dataclasses.fields(Recipe):
        if field.name == "name":
            continue
        kind = str(field.type).replace(" ", "")
        defaults = " / ".join(str(getattr(recipe, field.name)) for recipe in RECIPES.values())
        text = f"{helps.get(field.name, f'recipe field {field.name}')} [{defaults}]".replace("%", "%%")
        flag = "--" + field.name.replace("_", "-")
        dest = RECIPE_DEST + field.name
        if kind == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, dest=dest,
                               help=text)
            continue
        base, _, optional = kind.partition("|")
        convert = converters[base]
        if optional:
            convert, text = _optional(convert), text + " (none to disable)"
        group.add_argument(flag, type=convert, default=argparse.SUPPRESS, dest=dest, metavar=METAVARS[base],
                           help=text)


def recipe_from_args(args: argparse.Namespace) -> tuple[Recipe, dict[str, Any]]:
    """The named recipe with the fields given on the command line, and those fields alone (the overrides)."""
    from trainers.recipe import get_recipe

    overrides = {name[len(RECIPE_DEST):]: value for name, value in vars(args).items() if name.startswith(RECIPE_DEST)}
    return get_recipe(args.recipe, **overrides), overrides


def describe_recipe(recipe: Recipe, overrides: dict[str, Any]) -> str:
    changed = " ".join(f"{name}={value}" for name, value in overrides.items()) or "no overrides"
    return (f"recipe  {recipe.name} ({changed}): {recipe.epochs} epochs, batch {recipe.batch_size}, "
            f"lr {recipe.effective_lr:.3g} (= {recipe.lr:g} x {recipe.batch_size}/512)")


# --- tables ----------------------------------------------------------------------------------------------------------


def percent(value: Any) -> str:
    import pandas as pd

    return "" if value is None or pd.isna(value) else f"{float(value) * 100:.2f}"


def table_text(frame: pd.DataFrame, formats: dict[str, Callable[[Any], str]]) -> str:
    """An aligned text table: the columns of `formats`, each value through its formatter (empty when missing)."""
    import pandas as pd

    shown = pd.DataFrame({name: ["" if value is None or (not isinstance(value, str) and pd.isna(value))
                                 else format_value(value) for value in frame[name]]
                          for name, format_value in formats.items() if name in frame.columns})
    return shown.to_string(index=False)


def results_frame(folders: list[Path], columns: list[str], extra: list[dict[str, Any]] = ()) -> pd.DataFrame:
    """One row per result.json found in `folders`, updated by `extra` results (same arch_id), in `columns`."""
    import pandas as pd

    from trainers.retrain import RESULT_FILE, read_result

    rows: dict[str, dict[str, Any]] = {}
    for folder in folders:
        if (folder / RESULT_FILE).is_file():
            result = read_result(folder)
            rows[str(result.get("arch_id"))] = result
    for result in extra:
        rows[str(result["arch_id"])] = result
    records = [{**row, "overrides": json.dumps(row.get("overrides") or {}, sort_keys=True)} for row in rows.values()]
    # Baselines first, then the best test top-1, as papers print them.
    return pd.DataFrame(records, columns=columns).sort_values(["role", "top1"], ascending=[True, False],
                                                               na_position="last", kind="stable")


# --- picking the models ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Candidate:
    """A model to retrain before its patch size meets the dataset: where it came from and in which role.

    searched_at: the image size (px) a search chose its patch size for; None for presets and arch files.
    """

    arch: ArchConfig
    role: str
    source: str
    searched_at: int | None = None


def fitted_arch(candidate: Candidate, img_size: int, dataset_patch_size: int, patch_size: int | None) -> ArchConfig:
    """The candidate at the retrain images: an explicit patch size; else a searched winner retrained at another
    image size takes the dataset's (patch 2 from 8 px digits becomes 16 at 224 px); else `fit_patch_size`."""
    from search_spaces.presets import fit_patch_size

    if patch_size is None and candidate.searched_at not in (None, img_size):
        patch_size = dataset_patch_size
    return fit_patch_size(candidate.arch, img_size, dataset_patch_size, patch_size)


def _trial_arch(row: Any, path: Path) -> ArchConfig:
    from search_spaces.arch import ArchConfig
    from core.errors import UsageError

    try:
        return ArchConfig.from_json(str(row["arch"]))
    except UsageError as error:
        raise UsageError(f"{path}: trial {row['trial_id']} has an unreadable arch ({error})") from None


def front_winners(table: pd.DataFrame, top: int, path: Path, searched_at: int | None,
                  say: Callable[[str], None] = print) -> list[Candidate]:
    """The best `top` members of the params Pareto front by val_acc (fewer params first among equals)."""
    from nas.pareto import pareto_front, scored_trials
    from core.errors import UsageError

    if scored_trials(table).empty:
        counts = table["state"].fillna("unknown").value_counts()
        states = ", ".join(f"{count} {state}" for state, count in counts.items()) or "no trials"
        raise UsageError(f"{path} has no Pareto front ({states}): expected at least one complete or stopped trial "
                         "with a val_acc, or pick models with --trials / --arch")
    front = pareto_front(table, ["params"]).sort_values(["val_acc", "params", "trial_id"],
                                                        ascending=[False, True, True], kind="stable")
    if len(front) < top:
        say(f"--top {top}: the Pareto front has {len(front)} member(s); retraining all of them")
    return [Candidate(_trial_arch(row, path), "winner", str(row["trial_id"]), searched_at)
            for _, row in front.head(top).iterrows()]


def trial_winners(table: pd.DataFrame, trial_ids: list[str], path: Path, searched_at: int | None,
                  say: Callable[[str], None] = print) -> list[Candidate]:
    from nas.results import TrialTable
    from core.errors import UsageError

    rows = {str(row["trial_id"]): row for _, row in table.iterrows()}
    picked = []
    for trial_id in trial_ids:
        key = TrialTable.trial_id(int(trial_id)) if trial_id.isdigit() else trial_id
        if key not in rows:
            known = sorted(rows)
            listed = ", ".join(known[:8]) + (f" ... ({len(known)} trials)" if len(known) > 8 else "")
            raise UsageError(f"--trials {trial_id}: no such trial in {path}; expected one of {listed or 'none'}")
        if rows[key]["state"] not in ("complete", "stopped"):
            say(f"note: trial {key} is {rows[key]['state']}; retraining it as asked")
        picked.append(Candidate(_trial_arch(rows[key], path), "winner", key, searched_at))
    return picked


def split_list(values: list[str] | None) -> list[str]:
    """['t1,t2', 't3'] -> ['t1', 't2', 't3']."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


# --- the command -----------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run folder (results/<run>) or a run name under results/")
    picks = parser.add_argument_group("models", "at least one of --top, --trials, --arch, --baseline")
    picks.add_argument("--top", type=int, default=None, metavar="K",
                       help="the K best members of the run's Pareto front (params), best val_acc first")
    picks.add_argument("--trials", action="append", metavar="ID,ID", help="trial ids of the run (t0003 or 3)")
    picks.add_argument("--arch", action="append", metavar="PRESET|arch.json", help="an architecture (repeatable)")
    picks.add_argument("--baseline", action="append", metavar="PRESET|arch.json",
                       help="a reference model trained under the same recipe, e.g. xcit-n12 (repeatable)")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default=None, help="dataset to retrain on (default: the run's), e.g. imagenet")
    data.add_argument("--data-dir", default=None, metavar="DIR",
                      help="folder holding the dataset's files (default: the run's when it is the run's dataset)")
    data.add_argument("--download", action="store_true", help="download the dataset into --data-dir if missing")
    data.add_argument("--img-size", type=int, default=None, metavar="PX", help="resize images (default: native)")
    data.add_argument("--patch-size", type=int, default=None, metavar="P",
                      help="patch size of every model (default: each arch's, or the dataset's where it does not fit)")
    data.add_argument("--val-fraction", type=float, default=None, metavar="F",
                      help="share of the training set held out for validation (default: the run's)")
    data.add_argument("--split-seed", type=int, default=None, metavar="S",
                      help="seed of the validation split (default: the run's seed)")
    add_recipe_arguments(parser, None, "xcit, or small on digits")
    where = parser.add_argument_group("running")
    where.add_argument("--seed", type=int, default=0, metavar="S",
                       help="seed of initialisation, data order and augmentation (default 0)")
    where.add_argument("--out", default=None, metavar="DIR", help="output folder instead of the run folder")
    where.add_argument("--resume", action="store_true",
                       help="continue interrupted models exactly and skip finished ones")
    where.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    where.add_argument("--compile", action="store_true", help="torch.compile the models (worth it on CUDA)")
    where.add_argument("--address", default=None, metavar="ADDR",
                       help="run the models at once as Ray tasks on this cluster (auto, ray://host:10001, or local)")
    where.add_argument("--gpus-per-model", type=float, default=0.0, metavar="G",
                       help="GPUs per Ray task, at most 1 (default 0: CPU)")
    where.add_argument("--cpus-per-model", type=float, default=1.0, metavar="C", help="CPUs per Ray task (default 1)")


def _check_arguments(args: argparse.Namespace) -> None:
    from core.errors import UsageError

    if args.top is not None and args.top < 1:
        raise UsageError(f"--top {args.top}: expected a positive number of winners")
    if args.top is None and not args.trials and not args.arch and not args.baseline:
        raise UsageError("nothing to retrain: expected --top K, --trials ID,ID, --arch PRESET|arch.json or "
                         "--baseline PRESET|arch.json")
    if args.seed < 0:
        raise UsageError(f"--seed {args.seed}: expected a non-negative integer")
    if args.address is None and (args.gpus_per_model != 0.0 or args.cpus_per_model != 1.0):
        raise UsageError("--gpus-per-model / --cpus-per-model: expected --address (they size Ray tasks)")
    if not 0 <= args.gpus_per_model <= 1:
        raise UsageError(f"--gpus-per-model {args.gpus_per_model}: expected 0 to 1 (one process per model; "
                         "train one model on several GPUs with torchrun instead)")
    if args.cpus_per_model <= 0:
        raise UsageError(f"--cpus-per-model {args.cpus_per_model}: expected a positive number")


def _candidates(args: argparse.Namespace, run_dir: Path, searched_at: int | None,
                say: Callable[[str], None]) -> list[Candidate]:
    from nas.results import load_trials
    from search_spaces.presets import load_arch

    candidates: list[Candidate] = []
    if args.top is not None or args.trials:
        table = load_trials(run_dir)
        path = run_dir / "trials.csv"
        if args.top is not None:
            candidates += front_winners(table, args.top, path, searched_at, say)
        candidates += trial_winners(table, split_list(args.trials), path, searched_at, say)
    candidates += [Candidate(load_arch(spec), "winner", spec) for spec in args.arch or []]
    candidates += [Candidate(load_arch(spec), "baseline", spec) for spec in args.baseline or []]
    return candidates


def _tasks(candidates: list[Candidate], info: Any, args: argparse.Namespace, out: Path, recipe: Recipe,
           overrides: dict[str, Any], request: Any, say: Callable[[str], None]) -> list[RetrainTask]:
    """Fit each candidate's patch size to the images and give it its folder; the same model twice trains once."""
    from trainers.retrain import RetrainTask

    tasks: dict[str, RetrainTask] = {}
    for candidate in candidates:
        arch = fitted_arch(candidate, info.img_size, info.patch_size, args.patch_size)
        if arch.patch_size != candidate.arch.patch_size:
            searched = "" if candidate.searched_at is None else f"searched at {candidate.searched_at} px; "
            why = "(--patch-size)" if args.patch_size is not None else f"({searched}override with --patch-size)"
            say(f"patch size {candidate.arch.patch_size} -> {arch.patch_size} for {candidate.source} on {info.name} "
                f"at {info.img_size} px {why}")
        if arch.arch_id in tasks:
            say(f"note: {candidate.source} is the same model as {tasks[arch.arch_id].source} ({arch.arch_id}); "
                "trained once")
            continue
        tasks[arch.arch_id] = RetrainTask(
            arch=arch, role=candidate.role, source=candidate.source, folder=out / "retrain" / arch.arch_id,
            recipe=recipe, overrides=overrides, data=request, seed=args.seed, resume=args.resume, device=args.device,
            compile=args.compile)
    return list(tasks.values())


def plan_folder(folder: Path, *, resume: bool, recipe: Recipe, seed: int, source: str,
                asked: dict[str, Any]) -> dict[str, Any] | None:
    """What to do with one model's folder before anything is written: None to train it (new, or interrupted and
    resumable), its result when it finished with the settings `asked` (skipped), or one UsageError."""
    from core.errors import UsageError
    from trainers.retrain import check_continuable, folder_state, read_result

    state = folder_state(folder)
    if state != "new" and not resume:
        what = {"finished": "a finished run", "partial": "an interrupted run"}.get(state, "files")
        raise UsageError(f"{folder} already holds {what} of {source}: expected --resume to "
                         f"{'skip' if state == 'finished' else 'continue'} it, or --out DIR for a new one")
    if state == "finished":
        result = read_result(folder)
        differs = [name for name, value in asked.items() if result.get(name) != value]
        if differs:
            raise UsageError(f"{folder} finished with another {', '.join(differs)}: expected the same settings to "
                             "resume, or --out DIR for a new one")
        return result
    if state == "partial":
        check_continuable(folder, recipe, seed)
    return None


def plan(tasks: list[RetrainTask], info: Any) -> tuple[list[RetrainTask], list[dict[str, Any]]]:
    """(models to train, results of models already finished), or one UsageError before anything is written."""
    to_train, finished = [], []
    for task in tasks:
        asked = {"recipe_fields": task.recipe.to_dict(), "dataset": info.name, "img_size": info.img_size,
                 "seed": task.seed, "val_fraction": task.data.val_fraction, "split_seed": task.data.split_seed}
        result = plan_folder(task.folder, resume=task.resume, recipe=task.recipe, seed=task.seed, source=task.source,
                             asked=asked)
        if result is None:
            to_train.append(task)
        else:
            finished.append(result)
    return to_train, finished


def run_on_ray(tasks: list[RetrainTask], address: str, cpus: float, gpus: float,
               on_result: Callable[[RetrainTask, dict[str, Any] | None, BaseException | None], None]) -> None:
    """Every model as its own Ray task, all submitted at once; on_result runs on the driver as each ends."""
    import logging
    import os

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # each model's epoch lines look alike; deduplication hides them
    import ray

    from core.errors import UsageError
    from trainers.engine import TrainingDiverged
    from trainers.retrain import retrain_model

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR)
    try:
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(retrain_model)
        device = "cuda" if gpus > 0 else "cpu"
        pending = {remote.remote(dataclasses.replace(task, device=device, threads=max(1, int(cpus)))): task
                   for task in tasks}
        while pending:
            (done,), _ = ray.wait(list(pending), num_returns=1)
            task = pending.pop(done)
            try:
                result = ray.get(done)
            except ray.exceptions.RayTaskError as error:
                if isinstance(error.cause, TrainingDiverged):
                    on_result(task, None, error.cause)
                    continue
                if isinstance(error.cause, UsageError):
                    raise UsageError(str(error.cause)) from None
                raise
            on_result(task, result, None)
    finally:
        if started:
            ray.shutdown()


def run(args: argparse.Namespace) -> int:
    import os

    import torch

    from nas.results import find_run, load_settings
    from core.errors import UsageError
    from trainers.engine import TrainingDiverged, init_distributed
    from trainers.recipe import full_recipe_name
    from core.files import write_text_atomic
    from trainers.retrain import DataRequest, retrain_model

    _check_arguments(args)
    if args.address is not None and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise UsageError("--address under torchrun: expected one or the other (Ray tasks, or one DDP job)")
    world = init_distributed(args.device) if args.address is None else None

    def say(line: str) -> None:
        if world is None or world.is_main:
            print(line, flush=True)

    run_dir = find_run(args.run)
    settings = load_settings(run_dir, required=False)
    searched_at = settings.get("img_size")
    candidates = _candidates(args, run_dir, None if searched_at is None else int(searched_at), say)
    dataset = args.dataset or settings.get("dataset")
    if dataset is None:
        raise UsageError(f"{run_dir} has no search.json naming its dataset: expected --dataset NAME")
    args.recipe = args.recipe or full_recipe_name(dataset)  # the full recipe that fits the dataset
    recipe, overrides = recipe_from_args(args)
    same_data = dataset == settings.get("dataset")
    request = DataRequest(
        name=dataset, data_dir=args.data_dir or (settings.get("data_dir") if same_data else None),
        download=args.download, img_size=args.img_size,
        val_fraction=args.val_fraction if args.val_fraction is not None else settings.get("val_fraction", 0.2),
        split_seed=args.split_seed if args.split_seed is not None else int(settings.get("seed", 0)))
    data = request.load()
    info = data.info
    out = Path(args.out) if args.out is not None else run_dir
    tasks = _tasks(candidates, info, args, out, recipe, overrides, request, say)
    to_train, finished = plan(tasks, info)
    if world is not None and world.active:
        torch.distributed.barrier()  # every rank has read the folders before rank 0 writes to them
    test_size = "no" if data.test is None else f"{len(data.test):,}"
    say(f"data    {info.name}: {len(data.train):,} train / {len(data.val):,} val / {test_size} test at "
        f"{info.img_size} px, {info.num_classes} classes")
    say(describe_recipe(recipe, overrides) + f", seed {args.seed}")
    where = (f"Ray at {args.address}" if args.address is not None else
             f"{args.device}{f' x {world.world_size} processes' if world.active else ''}")
    say(f"models  {len(to_train)} to train on {where}"
        + (f", {len(finished)} already finished (skipped)" if finished else "") + f" -> {out / 'retrain'}")

    folders = [task.folder for task in tasks]
    results = list(finished)
    diverged: list[str] = []

    def on_result(task: RetrainTask, result: dict[str, Any] | None, error: BaseException | None) -> None:
        if error is not None:
            diverged.append(task.arch.arch_id)
            if world is None or world.is_main:
                print(f"nas retrain: error: {task.arch.arch_id} ({task.source}): {error}", file=sys.stderr, flush=True)
            return
        results.append(result)
        if world is None or world.is_main:
            # Every finished model under the output folder, earlier retrains' included.
            earlier = sorted((out / "retrain").iterdir()) if (out / "retrain").is_dir() else []
            frame = results_frame(earlier, RETRAIN_COLUMNS, results)
            write_text_atomic(out / "retrain.csv", frame.to_csv(index=False))

    if args.address is not None:
        # Ray workers may start elsewhere: they get absolute paths.
        to_train = [dataclasses.replace(task, folder=task.folder.resolve(), data=dataclasses.replace(
            task.data, data_dir=None if task.data.data_dir is None else str(Path(task.data.data_dir).resolve())))
            for task in to_train]
        run_on_ray(to_train, args.address, args.cpus_per_model, args.gpus_per_model, on_result)
    else:
        for task in to_train:
            try:
                on_result(task, retrain_model(task, data, say=say), None)
            except TrainingDiverged as error:
                on_result(task, None, error)

    if results:
        frame = results_frame(folders, RETRAIN_COLUMNS, results)
        say(f"\nretrained on {info.name} (test top-1 / top-5 in %, best-by-validation weights) -> "
            f"{out / 'retrain.csv'}")
        say(table_text(frame, RETRAIN_FORMATS))
    return 1 if diverged else 0


RETRAIN_FORMATS: dict[str, Callable[[Any], str]] = {
    "arch_id": str, "role": str, "source": str, "structure": str,
    "params": lambda value: f"{int(value):,}", "flops": format_count,
    "top1": percent, "top5": percent, "best_val_acc": percent, "epochs": lambda value: f"{int(value)}",
    "recipe": str, "seconds": lambda value: f"{float(value):.0f}s",
}
