"""`nas transfer CHECKPOINT ...`: fine-tune retrained models on the transfer sets and print the paper's table.

Each checkpoint (a retrain folder, whose best-by-validation weights are used, or a TAG.json) is
fine-tuned on every dataset of --datasets at the image size it was trained at, with a new classifier
head and every other weight loaded strictly; each is tested once at the end. transfer.csv (one row per
model: test top-1 per dataset and their average) lands in the first checkpoint's run folder or --out.

Exit codes: 0 done; 1 a fine-tune diverged (the others still ran); 2 bad input; 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nas.retrain_cmd import add_recipe_arguments

if TYPE_CHECKING:
    import pandas as pd

    from trainers.checkpoint import Checkpoint

PAPER_DATASETS = ("cifar10", "cifar100", "stanford_cars", "stl10")
DISPLAY_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "stanford_cars": "Stanford Cars", "stl10": "STL-10"}
LEAD_COLUMNS = ["arch_id", "role", "source", "structure", "params"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT",
                        help="a retrained model's folder (results/<run>/retrain/<arch-id>: its best checkpoint) "
                             "or a TAG.json")
    parser.add_argument("--baseline", action="append", metavar="CHECKPOINT",
                        help="a checkpoint whose row is marked baseline (repeatable)")
    data = parser.add_argument_group("data")
    data.add_argument("--datasets", default=",".join(PAPER_DATASETS), metavar="NAME,NAME",
                      help=f"transfer sets (default the paper's four: {','.join(PAPER_DATASETS)})")
    data.add_argument("--data-dir", action="append", metavar="DIR|NAME=DIR",
                      help="a root holding each dataset's own folder (cifar-10-batches-py/, cifar-100-python/, "
                           "stl10_binary/, stanford_cars/: torchvision's root), and/or NAME=DIR for one dataset "
                           "(repeatable)")
    data.add_argument("--download", action="store_true", help="download missing datasets that can be (torchvision)")
    data.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                      help="share of each training set held out for validation (default 0.1)")
    data.add_argument("--split-seed", type=int, default=0, metavar="S", help="seed of the validation split (default 0)")
    add_recipe_arguments(parser, "transfer")
    where = parser.add_argument_group("running")
    where.add_argument("--seed", type=int, default=0, metavar="S",
                       help="seed of the new head, data order and augmentation (default 0)")
    where.add_argument("--out", default=None, metavar="DIR",
                       help="output folder (default: the first checkpoint's run folder)")
    where.add_argument("--resume", action="store_true", help="continue interrupted fine-tunes, skip finished ones")
    where.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    where.add_argument("--compile", action="store_true", help="torch.compile the models (worth it on CUDA)")


def data_dirs(values: list[str] | None, datasets: list[str]) -> dict[str, str | None]:
    """Each dataset's folder from --data-dir: NAME=DIR for one dataset, a bare DIR as the root for the others."""
    from core.errors import UsageError

    root, named = None, {}
    for value in values or []:
        name, separator, folder = value.partition("=")
        if not separator:
            if root is not None:
                raise UsageError(f"--data-dir {value}: a second root (first {root}); expected one root and/or "
                                 "NAME=DIR entries")
            root = value
        elif name not in datasets:
            raise UsageError(f"--data-dir {value}: {name!r} is not among --datasets ({', '.join(datasets)}); "
                             "expected NAME=DIR for one of them")
        else:
            named[name] = folder
    return {name: named.get(name, root) for name in datasets}


def parse_datasets(text: str) -> list[str]:
    from core.errors import UsageError
    from trainers.data import dataset_names

    datasets = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in datasets if name not in dataset_names()]
    if unknown or not datasets:
        raise UsageError(f"--datasets {text}: {', '.join(map(repr, unknown)) or 'none given'}; expected names from "
                         f"{', '.join(dataset_names())}")
    return datasets


@dataclass(frozen=True)
class Pretrained:
    """A checkpoint to fine-tune, with its role and where it came from."""

    checkpoint: Checkpoint
    role: str
    source: str

    @property
    def arch_id(self) -> str:
        return self.checkpoint.arch.arch_id


def _source(checkpoint: Checkpoint) -> str:
    """The retrain's source (trial id or preset) when the checkpoint sits in a retrain folder, else the folder."""
    import json

    from trainers.retrain import RESULT_FILE

    result_path = checkpoint.weights_path.parent / RESULT_FILE
    try:
        return str(json.loads(result_path.read_text())["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return checkpoint.weights_path.parent.name


def load_models(checkpoints: list[str], baselines: list[str]) -> list[Pretrained]:
    """Every checkpoint read, and its model built and loaded strictly, before anything trains."""
    from core.errors import UsageError
    from trainers.transfer import load_pretrained

    models: dict[str, Pretrained] = {}
    for path, role in [(path, "winner") for path in checkpoints] + [(path, "baseline") for path in baselines]:
        checkpoint = load_pretrained(path)
        checkpoint.build_model()  # a checkpoint whose weights do not fit its architecture fails here, first
        model = Pretrained(checkpoint, role, _source(checkpoint))
        if model.arch_id in models:
            raise UsageError(f"checkpoint {path}: the same architecture ({model.arch_id}) as "
                             f"{models[model.arch_id].checkpoint.weights_path}; expected each model once")
        models[model.arch_id] = model
    return list(models.values())


def default_out(checkpoint: Checkpoint) -> Path:
    """results/<run> for results/<run>/retrain/<arch-id>/best.json; else the checkpoint folder's parent."""
    folder = checkpoint.weights_path.parent
    return folder.parent.parent if folder.parent.name == "retrain" else folder.parent


def transfer_table(results: list[dict[str, Any]], datasets: list[str]) -> pd.DataFrame:
    """One row per model: test top-1 on each dataset (fractions) and their average (when it has them all)."""
    import pandas as pd

    order = list(dict.fromkeys(datasets + [result["dataset"] for result in results]))
    rows: dict[str, dict[str, Any]] = {}
    for result in results:
        row = rows.setdefault(result["arch_id"], {"arch_id": result["arch_id"], "role": result["role"],
                                                  "source": result["source"], "structure": result["structure"],
                                                  "params": result["backbone_params"]})
        row[f"{result['dataset']}_top1"] = result["top1"]
    columns = LEAD_COLUMNS + [f"{name}_top1" for name in order] + ["average_top1"]
    frame = pd.DataFrame(list(rows.values()), columns=columns)
    scores = frame[[f"{name}_top1" for name in order]].astype(float)
    frame["average_top1"] = scores.mean(axis=1).where(scores.notna().all(axis=1))
    return frame.sort_values(["role", "average_top1"], ascending=[True, False], na_position="last", kind="stable")


def paper_table(frame: pd.DataFrame, datasets: list[str]) -> str:
    """The paper's layout: model, params, test top-1 (%) per dataset, average."""
    from nas.budget import format_count
    from nas.retrain_cmd import percent, table_text

    shown = frame.copy()
    shown["model"] = [f"{row.source} ({row.arch_id}, {row.structure})" + (" [baseline]" if row.role == "baseline"
                                                                          else "") for row in frame.itertuples()]
    formats: dict[str, Callable[[Any], str]] = {"model": str, "params": format_count}
    for name in datasets:
        shown[DISPLAY_NAMES.get(name, name)] = shown[f"{name}_top1"]
        formats[DISPLAY_NAMES.get(name, name)] = percent
    shown["average"] = shown["average_top1"]
    formats["average"] = percent
    return table_text(shown, formats)


def _finished_results(out: Path) -> list[dict[str, Any]]:
    """Every finished fine-tune under out/transfer/<arch-id>/<dataset>/."""
    from trainers.retrain import RESULT_FILE, read_result

    return [read_result(path.parent) for path in sorted((out / "transfer").glob(f"*/*/{RESULT_FILE}"))]


def run(args: argparse.Namespace) -> int:
    import torch

    from nas.retrain_cmd import describe_recipe, plan_folder, recipe_from_args
    from core.errors import UsageError
    from trainers.engine import TrainingDiverged, init_distributed
    from core.files import write_text_atomic
    from trainers.retrain import DataRequest
    from trainers.transfer import TransferTask, finetune, pretrained_img_size

    if not args.checkpoints and not args.baseline:
        raise UsageError("nothing to fine-tune: expected CHECKPOINT arguments or --baseline CHECKPOINT")
    if args.seed < 0:
        raise UsageError(f"--seed {args.seed}: expected a non-negative integer")
    datasets = parse_datasets(args.datasets)
    folders_of = data_dirs(args.data_dir, datasets)
    recipe, overrides = recipe_from_args(args)
    world = init_distributed(args.device)

    def say(line: str) -> None:
        if world.is_main:
            print(line, flush=True)

    models = load_models(args.checkpoints, args.baseline or [])
    out = Path(args.out) if args.out is not None else default_out(models[0].checkpoint)
    tasks: list[tuple[Pretrained, TransferTask]] = []
    results: list[dict[str, Any]] = []
    for name in datasets:
        for model in models:
            request = DataRequest(name, folders_of[name], args.download, args.val_fraction, args.split_seed,
                                  pretrained_img_size(model.checkpoint))
            task = TransferTask(model.checkpoint.weights_path, model.role, model.source, request,
                                out / "transfer" / model.arch_id / name, recipe, overrides, args.seed, args.resume,
                                args.device, args.compile)
            asked = {"recipe_fields": recipe.to_dict(), "dataset": name, "img_size": request.img_size,
                     "seed": args.seed, "val_fraction": args.val_fraction, "split_seed": args.split_seed,
                     "pretrained": str(model.checkpoint.weights_path.resolve())}
            finished = plan_folder(task.folder, resume=args.resume, recipe=recipe, seed=args.seed,
                                   source=f"{model.source} on {name}", asked=asked)
            if finished is None:
                tasks.append((model, task))
            else:
                results.append(finished)
    if world.active:
        torch.distributed.barrier()  # every rank has read the folders before rank 0 writes to them
    say(describe_recipe(recipe, overrides) + f", seed {args.seed}")
    say(f"models  {len(models)} x {len(datasets)} datasets: {len(tasks)} fine-tunes to run"
        + (f", {len(results)} already finished (skipped)" if results else "") + f" -> {out / 'transfer'}")

    diverged = 0
    loaded: dict[tuple[str, int], Any] = {}
    for model, task in tasks:
        key = (task.data.name, task.data.img_size)
        if key not in loaded:
            loaded.clear()  # one transfer set in memory at a time (CIFAR-10 at 224 px is 7.5 GB as uint8)
            loaded[key] = task.data.load()
        try:
            result = finetune(task, model.checkpoint, loaded[key], say=say)
        except TrainingDiverged as error:
            diverged += 1
            if world.is_main:
                print(f"nas transfer: error: {model.arch_id} on {task.data.name}: {error}", file=sys.stderr,
                      flush=True)
            continue
        results.append(result)
        if world.is_main:
            finished = {(r["arch_id"], r["dataset"]): r for r in _finished_results(out) + results}
            table = transfer_table(list(finished.values()), datasets)
            write_text_atomic(out / "transfer.csv", table.to_csv(index=False))

    ours = [result for result in results if result["arch_id"] in {model.arch_id for model in models}]
    if ours:
        say(f"\ntransfer test top-1 (%), fine-tuned at each model's training resolution; params without the "
            f"classifier head -> {out / 'transfer.csv'}")
        say(paper_table(transfer_table(ours, datasets), datasets))
    return 1 if diverged else 0
