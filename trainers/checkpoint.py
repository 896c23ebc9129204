"""Checkpoints: safetensors weights, a JSON record, and a safetensors resume state. Never pickle.

A checkpoint named TAG (`last` or `best`) in a directory is up to three files:

    TAG.safetensors         model weights (the state_dict), metadata: format, tag, epoch
    TAG-state.safetensors   resume state (`last` only): optimizer, EMA, RNG tensors; JSON scalars in metadata
    TAG.json                the record: arch, recipe, dataset info, seed, epoch, step, history, versions

Each file is written to a temporary name and moved into place with os.replace; the JSON goes last, and
every file carries the epoch, so a write cut short is detected on load instead of resuming from a mix.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import random
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors_bytes
from torch import nn

from search_spaces.arch import ArchConfig
from search_spaces.build import build_model, load_weights
from qkvnas_core.errors import UsageError
from qkvnas_core.files import read_json_object, write_bytes_atomic
from trainers.recipe import Recipe

FORMAT = "qkvnas-checkpoint/1"
TAGS = ("last", "best")


def checkpoint_files(directory: Path, tag: str) -> tuple[Path, Path, Path]:
    """(weights, resume state, record) paths of checkpoint `tag` in `directory`."""
    directory = Path(directory)
    return directory / f"{tag}.safetensors", directory / f"{tag}-state.safetensors", directory / f"{tag}.json"


def existing_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files already in `directory` (empty when it holds none or does not exist)."""
    return [path for tag in TAGS for path in checkpoint_files(directory, tag) if path.exists()]


def library_versions() -> dict[str, str]:
    import safetensors
    import timm

    versions = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
                "safetensors": safetensors.__version__, "numpy": np.__version__}
    try:
        versions["qkvnas"] = metadata.version("qkvnas")
    except metadata.PackageNotFoundError:
        versions["qkvnas"] = "not installed"
    return versions


def checkpoint_record(*, epoch: int, step: int, seed: int, recipe: Recipe, dataset: Any, arch: ArchConfig | None,
                      history: list[dict[str, Any]], best_val_acc: float, scored_weights: str) -> dict[str, Any]:
    """The JSON record of a checkpoint. `dataset` is a DatasetInfo; `scored_weights` is 'model' or 'ema'."""
    return {
        "format": FORMAT,
        "epoch": epoch,
        "step": step,
        "seed": seed,
        "arch": None if arch is None else arch.to_dict(),
        "arch_id": None if arch is None else arch.arch_id,
        "recipe": recipe.to_dict(),
        "dataset": dataclasses.asdict(dataset),
        "best_val_acc": best_val_acc,
        "weights": scored_weights,
        "history": history,
        "versions": library_versions(),
    }


def _cpu_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Clones so that no two entries share storage, which safetensors refuses.
    return {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}


def save_checkpoint(directory: Path, tag: str, *, weights: dict[str, torch.Tensor], record: dict[str, Any],
                    state: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None) -> Path:
    """Write checkpoint `tag` (weights, optional resume state, record) atomically; returns the weights path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights_path, state_path, record_path = checkpoint_files(directory, tag)
    stamp = {"format": FORMAT, "tag": tag, "epoch": str(record["epoch"])}
    write_bytes_atomic(weights_path, save_safetensors_bytes(_cpu_tensors(weights), metadata=stamp))
    if state is not None:
        tensors, scalars = state
        state_meta = {**stamp, "resume": json.dumps(scalars)}
        write_bytes_atomic(state_path, save_safetensors_bytes(_cpu_tensors(tensors), metadata=state_meta))
    write_bytes_atomic(record_path, (json.dumps(record, indent=1) + "\n").encode())
    return weights_path


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(path, framework="pt") as handle:
            header_meta = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, ValueError, OSError, RuntimeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UsageError(f"checkpoint {path}: not a readable safetensors file ({reason}); "
                         "expected a file written by `nas train`") from None
    if header_meta.get("format") != FORMAT:
        raise UsageError(f"checkpoint {path}: format {header_meta.get('format')!r}, expected {FORMAT!r}")
    return tensors, header_meta


def _resolve(path: Path) -> tuple[Path, Path, Path]:
    path = Path(path)
    if path.is_dir():
        return checkpoint_files(path, "last")
    name = path.name
    for suffix in ("-state.safetensors", ".safetensors", ".json"):
        if name.endswith(suffix):
            return checkpoint_files(path.parent, name[: -len(suffix)])
    raise UsageError(f"checkpoint {path}: expected a checkpoint directory, TAG.safetensors or TAG.json")


@dataclass
class Checkpoint:
    """A checkpoint read from disk. `state` (tensors) and `state_scalars` are set for a resumable `last`."""

    weights_path: Path
    weights: dict[str, torch.Tensor]
    record: dict[str, Any]
    state: dict[str, torch.Tensor] | None = None
    state_scalars: dict[str, Any] | None = None

    @property
    def epoch(self) -> int:
        return int(self.record["epoch"])

    @property
    def arch(self) -> ArchConfig | None:
        return None if self.record.get("arch") is None else ArchConfig.from_dict(self.record["arch"])

    @property
    def recipe(self) -> Recipe:
        return Recipe.from_dict(self.record["recipe"])

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.record.get("history", []))

    def load_into(self, model: nn.Module) -> nn.Module:
        """Copy the weights into `model`; UsageError naming the file and the mismatch if they do not fit."""
        return load_weights(model, self.weights, f"checkpoint {self.weights_path}")

    def build_model(self, drop_path_rate: float = 0.0) -> nn.Module:
        """The model this checkpoint was trained as (its arch at its dataset's classes and image size)."""
        arch = self.arch
        if arch is None:
            raise UsageError(f"checkpoint {self.weights_path}: its record holds no architecture to build")
        dataset = self.record["dataset"]
        model = build_model(arch, dataset["num_classes"], dataset["img_size"], dataset["in_chans"],
                            drop_path_rate=drop_path_rate)
        return self.load_into(model)


def load_checkpoint(path: Path, model: nn.Module | None = None, *, with_state: bool = False) -> Checkpoint:
    """Read and validate a checkpoint (a directory means its `last`); load the weights into `model` if given.

    Corrupt or missing files, files from an interrupted write, and weights that do not fit `model` raise
    UsageError with one line naming the file and the problem.
    """
    weights_path, state_path, record_path = _resolve(Path(path))
    for required in (record_path, weights_path) + ((state_path,) if with_state else ()):
        if not required.is_file():
            raise UsageError(f"checkpoint {required}: not found; expected a checkpoint written by `nas train`")
    record = read_json_object(record_path, "a checkpoint record")
    if record.get("format") != FORMAT:
        raise UsageError(f"checkpoint {record_path}: not a {FORMAT} record")
    check_record(record, record_path)
    weights, weights_meta = _read_safetensors(weights_path)
    files = [(weights_path, weights_meta)]
    state = scalars = None
    if with_state:
        state, state_meta = _read_safetensors(state_path)
        files.append((state_path, state_meta))
        scalars = json.loads(state_meta["resume"])
    for file_path, file_meta in files:
        if file_meta.get("epoch") != str(record["epoch"]):
            raise UsageError(f"checkpoint {file_path}: holds epoch {file_meta.get('epoch')} but {record_path.name} "
                             f"says {record['epoch']} (an interrupted write?); expected matching files")
    checkpoint = Checkpoint(weights_path, weights, record, state, scalars)
    if model is not None:
        checkpoint.load_into(model)
    return checkpoint


# What a record must hold, with its JSON type; `dataset` is a DatasetInfo as JSON.
RECORD_FIELDS = {"epoch": int, "step": int, "seed": int, "recipe": dict, "dataset": dict, "best_val_acc": (int, float),
                 "weights": str, "history": list}
DATASET_FIELDS = {"name": str, "num_classes": int, "img_size": int, "in_chans": int, "mean": list, "std": list}


def check_record(record: dict[str, Any], path: Path) -> None:
    """Every field a later step reads, present and of its type (and the arch buildable): one UsageError naming
    the file and the field, not a KeyError deep in an export or a transfer."""
    for fields, where, data in ((RECORD_FIELDS, "", record), (DATASET_FIELDS, "dataset.", record.get("dataset"))):
        if not isinstance(data, dict):
            break
        for name, kind in fields.items():
            value = data.get(name)
            if isinstance(value, bool) or not isinstance(value, kind):
                expected = kind.__name__ if isinstance(kind, type) else "a number"
                raise UsageError(f"checkpoint {path}: field {where}{name} is {json.dumps(value)}; expected "
                                 f"{'an object' if kind is dict else 'a list' if kind is list else expected}")
    if record.get("arch") is not None:
        try:
            ArchConfig.from_dict(record["arch"])
        except UsageError as error:
            raise UsageError(f"checkpoint {path}: {error}") from None


def check_resumable(record: dict[str, Any], where: Path, recipe: Recipe, seed: int,
                    dataset: Any = None) -> None:
    """The one "may this run continue" check: the recipe, seed (and dataset, when given: a DatasetInfo) that a
    checkpoint record was started with must be the ones asked for now."""
    try:
        saved = Recipe.from_dict(record["recipe"])
        saved_seed = record["seed"]
    except (KeyError, UsageError) as error:
        raise UsageError(f"checkpoint record in {where} is corrupt ({error}); expected one written by nas train, "
                         "retrain or transfer") from None
    changed = [f"{name} ({getattr(saved, name)!r} saved, {getattr(recipe, name)!r} now)"
               for name in recipe.to_dict() if getattr(saved, name) != getattr(recipe, name)]
    if changed:
        raise UsageError(f"cannot resume {where}: it was started with another recipe: {', '.join(changed)}; "
                         "expected the same recipe to continue it, or another output folder")
    if saved_seed != seed:
        raise UsageError(f"cannot resume {where} with seed {seed}: it was started with seed {saved_seed}; expected "
                         "the same seed to continue it, or another output folder")
    if dataset is not None and record.get("dataset") != json.loads(json.dumps(dataclasses.asdict(dataset))):
        raise UsageError(f"cannot resume {where} on dataset {dataset.name!r} as loaded now: it was trained on "
                         f"{(record.get('dataset') or {}).get('name')!r} with other settings")


def _split_tensors(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name[len(prefix):]: tensor for name, tensor in tensors.items() if name.startswith(prefix)}


def pack_resume_state(*, optimizer: torch.optim.Optimizer, scheduler: Any, ema_weights: dict[str, torch.Tensor] | None,
                      epoch: int, step: int, best_val_acc: float) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Everything an exact continuation needs, as (tensors, JSON scalars): optimizer, schedule, EMA, RNGs."""
    tensors: dict[str, torch.Tensor] = {}
    optimizer_state = optimizer.state_dict()
    optimizer_scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in optimizer_state["state"].items():
        for key, value in param_state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{param_id}.{key}"] = value
            else:
                optimizer_scalars.setdefault(str(param_id), {})[key] = value
    if ema_weights is not None:
        tensors.update({f"ema.{name}": tensor for name, tensor in ema_weights.items()})
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = cuda_state
    numpy_kind, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(numpy_keys.astype(np.int64))
    python_version, python_state, python_gauss = random.getstate()
    tensors["rng.python"] = torch.tensor(python_state, dtype=torch.int64)
    scalars = {
        "epoch": epoch,
        "step": step,
        "best_val_acc": best_val_acc,
        "optimizer_param_groups": optimizer_state["param_groups"],
        "optimizer_scalars": optimizer_scalars,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng_numpy": [numpy_kind, int(numpy_pos), int(numpy_has_gauss), float(numpy_gauss)],
        "rng_python": [python_version, python_gauss],
    }
    return tensors, scalars


def restore_resume_state(checkpoint: Checkpoint, *, optimizer: torch.optim.Optimizer, scheduler: Any,
                         ema_module: nn.Module | None) -> None:
    """Put the optimizer, schedule, EMA weights and RNGs back as `pack_resume_state` found them."""
    if checkpoint.state is None or checkpoint.state_scalars is None:
        raise UsageError(f"checkpoint {checkpoint.weights_path}: has no resume state; expected a `last` checkpoint")
    tensors, scalars = checkpoint.state, checkpoint.state_scalars
    param_states: dict[int, dict[str, Any]] = {}
    for name, tensor in _split_tensors("optimizer.", tensors).items():
        param_id, key = name.split(".", 1)
        param_states.setdefault(int(param_id), {})[key] = tensor
    for param_id, values in scalars["optimizer_scalars"].items():
        param_states.setdefault(int(param_id), {}).update(values)
    groups = scalars["optimizer_param_groups"]
    if [len(group["params"]) for group in groups] != [len(group["params"]) for group in optimizer.param_groups]:
        raise UsageError(f"checkpoint {checkpoint.weights_path}: its optimizer state does not match this model's "
                         "parameter groups; expected a checkpoint of the same architecture and recipe")
    optimizer.load_state_dict({"state": param_states, "param_groups": groups})
    if scheduler is not None and scalars["scheduler"] is not None:
        scheduler.load_state_dict(scalars["scheduler"])
    if ema_module is not None:
        load_weights(ema_module, _split_tensors("ema.", tensors), f"checkpoint {checkpoint.weights_path} (EMA weights)")
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = _split_tensors("rng.cuda.", tensors)
    if cuda_states and torch.cuda.is_available():
        for index in range(min(len(cuda_states), torch.cuda.device_count())):
            torch.cuda.set_rng_state(cuda_states[str(index)], index)
    numpy_kind, numpy_pos, numpy_has_gauss, numpy_gauss = scalars["rng_numpy"]
    np.random.set_state((numpy_kind, tensors["rng.numpy"].numpy().astype(np.uint32), numpy_pos, numpy_has_gauss,
                         numpy_gauss))
    python_version, python_gauss = scalars["rng_python"]
    random.setstate((python_version, tuple(tensors["rng.python"].tolist()), python_gauss))
