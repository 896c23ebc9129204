"""Checkpoints: safetensors weights, a JSON record, and a safetensors resume state. Never pickle.

A checkpoint named TAG (`last` or `best`) in a directory is up to three files:

    TAG.safetensors         model weights (the state_dict), metadata: format, tag, epoch
    TAG-state.safetensors   resume state (`last` only): optimizer, EMA, RNG tensors; JSON scalars in metadata
    TAG.json                the record: arch, recipe, dataset info, seed, epoch, step, history, versions

Each file is written to a temporary name and moved into place with os.replace; the JSON goes last, and
every file carries the epoch, so a write cut short is detected on load instead of resuming from a mix.
"""
from __future__ import annotations

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
from search_spaces.model_tools.export import read_inputs
from search_spaces.model_tools.memory import INFERENCE_COPIES, check_fits
from search_spaces.shape import DataShape
from qkvnas_core.errors import UsageError
from qkvnas_core.files import check_json_fields, dataclass_from_json, parse_json, read_json_object, write_bytes_atomic
from trainers.metrics import EpochMetrics
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


def trained_checkpoint(path: str | Path) -> Path:
    """The checkpoint a trained-model path means: a folder's `best` (the weights that were tested), else its
    `last`; a TAG.json / TAG.safetensors file as given. A missing path is a UsageError."""
    path = Path(path)
    if path.is_dir():
        for tag in ("best", "last"):
            record_path = checkpoint_files(path, tag)[2]
            if record_path.is_file():
                return record_path
        raise UsageError(f"checkpoint folder {path}: holds no best.json or last.json; expected a folder written by "
                         "nas retrain, nas train or nas transfer")
    if not path.exists():
        raise UsageError(f"checkpoint {path}: not found; expected a checkpoint folder (e.g. "
                         "results/<run>/retrain/<arch-id>) or its best.json")
    return path


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
        "dataset": dataset.to_dict(),
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

    @property
    def shape(self) -> DataShape:
        """The data shape the model was trained for (its dataset's images and classes)."""
        return read_inputs(self.record["dataset"], "dataset")

    def build_model(self, drop_path_rate: float = 0.0, device: torch.device = torch.device("cpu"),
                    copies: int = INFERENCE_COPIES) -> nn.Module:
        """The model this checkpoint was trained as (its arch at its dataset's classes and image size), refused
        before it is built when `copies` of its parameters do not fit `device` (search_spaces.memory)."""
        arch = self.arch
        if arch is None:
            raise UsageError(f"checkpoint {self.weights_path}: its record holds no architecture to build")
        try:
            check_fits(arch, self.shape, device, copies)
        except UsageError as error:
            raise UsageError(f"checkpoint {self.weights_path}: {error}") from None
        model = build_model(arch, self.shape, drop_path_rate=drop_path_rate)
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
        raise UsageError(f"checkpoint {record_path}: format={json.dumps(record.get('format'))[:40]}: expected "
                         f"{FORMAT!r}, the record `nas train` writes")
    check_record(record, record_path)
    weights, weights_meta = _read_safetensors(weights_path)
    files = [(weights_path, weights_meta)]
    state = scalars = None
    if with_state:
        state, state_meta = _read_safetensors(state_path)
        files.append((state_path, state_meta))
        scalars = check_resume_scalars(state_meta.get("resume"), state_path)
    for file_path, file_meta in files:
        if file_meta.get("epoch") != str(record["epoch"]):
            raise UsageError(f"checkpoint {file_path}: holds epoch {file_meta.get('epoch')} but {record_path.name} "
                             f"says {record['epoch']} (an interrupted write?); expected matching files")
    checkpoint = Checkpoint(weights_path, weights, record, state, scalars)
    if model is not None:
        checkpoint.load_into(model)
    return checkpoint


# What a record holds, with its JSON type; `dataset` is DatasetInfo.to_dict() (its name and the model's inputs, as
# search_spaces.export reads them), `history` EpochMetrics as dicts.
RECORD_FIELDS = {"format": str, "epoch": int, "step": int, "seed": int, "arch": dict | None, "arch_id": str | None,
                 "recipe": dict, "dataset": dict, "best_val_acc": float, "weights": str, "history": list[dict],
                 "versions": dict[str, str]}
WEIGHTS = ("model", "ema")


def check_record(record: dict[str, Any], path: Path) -> None:
    """Every field a later step reads, present, of its JSON type and in range (the arch, recipe, data shape and
    epoch history as their classes read them): one UsageError naming the file and the field."""
    try:
        check_json_fields(record, RECORD_FIELDS)
        check_json_fields(record["dataset"], {"name": str}, "dataset")
        read_inputs(record["dataset"], "dataset")
        for name in ("epoch", "step", "seed"):
            if record[name] < 0:
                raise UsageError(f"{name}={record[name]}: expected a non-negative integer")
        if record["weights"] not in WEIGHTS:
            raise UsageError(f"weights={record['weights']!r}: expected one of {', '.join(WEIGHTS)}")
        if record.get("arch") is not None:
            ArchConfig.from_dict(record["arch"])
        Recipe.from_dict(record["recipe"])
        for index, entry in enumerate(record["history"]):
            dataclass_from_json(EpochMetrics, entry, f"history[{index}]")
    except UsageError as error:
        raise UsageError(f"checkpoint {path}: {error}") from None


# The JSON scalars of a resume state (`pack_resume_state`), with their JSON types.
RESUME_FIELDS = {"epoch": int, "step": int, "best_val_acc": float, "optimizer_param_groups": list[dict],
                 "optimizer_scalars": dict[str, dict], "scheduler": dict | None,
                 "rng_numpy": tuple[str, int, int, float], "rng_python": tuple[int, float | None]}


def check_resume_scalars(text: str | None, path: Path) -> dict[str, Any]:
    """The resume scalars a state file's metadata holds, each field present and of its JSON type."""
    where = f"checkpoint {path}"
    if text is None:
        raise UsageError(f"{where}: its metadata holds no resume state; expected a file written by `nas train`")
    scalars = parse_json(text, f"{where} (resume metadata)", "the resume state `nas train` writes")
    try:
        check_json_fields(scalars, RESUME_FIELDS)
        for index, group in enumerate(scalars["optimizer_param_groups"]):
            check_json_fields(group, {"params": list[int]}, f"optimizer_param_groups[{index}]")
        for param_id in scalars["optimizer_scalars"]:
            if not (param_id.isascii() and param_id.isdigit()):
                raise UsageError(f"optimizer_scalars key {param_id!r}: expected a parameter index")
    except UsageError as error:
        raise UsageError(f"{where} (resume metadata): {error}") from None
    return scalars


def check_resumable(record: dict[str, Any], where: Path, recipe: Recipe, seed: int,
                    dataset: Any = None) -> None:
    """The one "may this run continue" check: the recipe, seed (and dataset, when given: a DatasetInfo) that a
    checkpoint record was started with must be the ones asked for now."""
    check_record(record, where)
    saved = Recipe.from_dict(record["recipe"])
    saved_seed = record["seed"]
    changed = [f"{name} ({getattr(saved, name)!r} saved, {getattr(recipe, name)!r} now)"
               for name in recipe.to_dict() if getattr(saved, name) != getattr(recipe, name)]
    if changed:
        raise UsageError(f"cannot resume {where}: it was started with another recipe: {', '.join(changed)}; "
                         "expected the same recipe to continue it, or another output folder")
    if saved_seed != seed:
        raise UsageError(f"cannot resume {where} with seed {seed}: it was started with seed {saved_seed}; expected "
                         "the same seed to continue it, or another output folder")
    if dataset is not None and record.get("dataset") != json.loads(json.dumps(dataset.to_dict())):
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


def _check_like(saved: Any, current: Any, path: str) -> None:
    """`saved` (read from JSON) has the structure of `current`: the same keys, lengths and kinds of value."""
    if isinstance(current, dict):
        if not isinstance(saved, dict) or set(saved) != {str(key) for key in current}:
            raise UsageError(f"{path} holds other fields than this run's")
        for key, value in current.items():
            _check_like(saved[str(key)], value, f"{path}.{key}")
    elif isinstance(current, (list, tuple)):
        if not isinstance(saved, list) or len(saved) != len(current):
            raise UsageError(f"{path} holds {len(saved) if isinstance(saved, list) else 'no'} values where this run "
                             f"has {len(current)}")
        for index, (saved_item, item) in enumerate(zip(saved, current)):
            _check_like(saved_item, item, f"{path}[{index}]")
    elif isinstance(current, (bool, str)) or current is None:
        if type(saved) is not type(current):
            raise UsageError(f"{path}={json.dumps(saved)[:40]}: expected {type(current).__name__}")
    elif isinstance(current, (int, float)) and (isinstance(saved, bool) or not isinstance(saved, (int, float))):
        raise UsageError(f"{path}={json.dumps(saved)[:40]}: expected a number")


def check_state_fits(tensors: dict[str, torch.Tensor], scalars: dict[str, Any], optimizer: torch.optim.Optimizer,
                     scheduler: Any) -> None:
    """A resume state matches what it will be loaded into: this optimizer's groups and parameter shapes, this
    scheduler's state, and random-generator states of the sizes torch, numpy and Python keep."""
    _check_like(scalars["optimizer_param_groups"], optimizer.state_dict()["param_groups"], "optimizer_param_groups")
    if scheduler is not None and scalars.get("scheduler") is not None:
        _check_like(scalars["scheduler"], scheduler.state_dict(), "scheduler")
    params = [param for group in optimizer.param_groups for param in group["params"]]
    for param_id in scalars["optimizer_scalars"]:
        if int(param_id) >= len(params):
            raise UsageError(f"optimizer_scalars.{param_id} names no parameter of this model ({len(params)})")
    for name, tensor in _split_tensors("optimizer.", tensors).items():
        param_id = name.partition(".")[0]
        if not (param_id.isascii() and param_id.isdigit()) or int(param_id) >= len(params):
            raise UsageError(f"tensor optimizer.{name} names no parameter of this model ({len(params)})")
        if tensor.dim() and tensor.shape != params[int(param_id)].shape:
            raise UsageError(f"tensor optimizer.{name} has shape {tuple(tensor.shape)}, its parameter "
                             f"{tuple(params[int(param_id)].shape)}")
    references = {"rng.torch": torch.get_rng_state(), "rng.numpy": torch.from_numpy(np.random.get_state()[1]),
                  "rng.python": torch.tensor(random.getstate()[1])}
    if torch.cuda.is_available():
        saved_devices = min(len(_split_tensors("rng.cuda.", tensors)), torch.cuda.device_count())
        references.update({f"rng.cuda.{index}": torch.cuda.get_rng_state(index) for index in range(saved_devices)})
    for name, reference in references.items():
        tensor = tensors.get(name)
        if tensor is None or tensor.shape != reference.shape:
            raise UsageError(f"tensor {name} is {'missing' if tensor is None else tuple(tensor.shape)}: expected "
                             f"{tuple(reference.shape)}")
        # torch keeps its generators' states as bytes; numpy's and Python's words are saved as int64.
        if name not in ("rng.numpy", "rng.python") and tensor.dtype != reference.dtype:
            raise UsageError(f"tensor {name} is {tensor.dtype}: expected {reference.dtype}")
    words = len(references["rng.numpy"])
    for name in ("rng.numpy", "rng.python"):
        if tensors[name].is_floating_point() or tensors[name].min() < 0 or tensors[name].max() >= 2**32:
            raise UsageError(f"tensor {name}: expected 32-bit unsigned words")
    numpy_kind, numpy_pos = scalars["rng_numpy"][:2]
    python_version = scalars["rng_python"][0]
    if (numpy_kind != np.random.get_state()[0] or not 0 <= numpy_pos <= words
            or python_version != random.getstate()[0] or not 0 <= tensors["rng.python"][-1] <= words):
        raise UsageError("the random-generator states are not numpy's and Python's (kind, version or position)")


def restore_resume_state(checkpoint: Checkpoint, *, optimizer: torch.optim.Optimizer, scheduler: Any,
                         ema_module: nn.Module | None) -> None:
    """Put the optimizer, schedule, EMA weights and RNGs back as `pack_resume_state` found them."""
    if checkpoint.state is None or checkpoint.state_scalars is None:
        raise UsageError(f"checkpoint {checkpoint.weights_path}: has no resume state; expected a `last` checkpoint")
    tensors, scalars = checkpoint.state, checkpoint.state_scalars
    state_path = checkpoint_files(checkpoint.weights_path.parent, "last")[1]
    try:
        check_state_fits(tensors, scalars, optimizer, scheduler)
    except UsageError as error:
        raise UsageError(f"checkpoint {state_path}: {error}; expected the resume state of this architecture and "
                         "recipe") from None
    param_states: dict[int, dict[str, Any]] = {}
    for name, tensor in _split_tensors("optimizer.", tensors).items():
        param_id, key = name.split(".", 1)
        param_states.setdefault(int(param_id), {})[key] = tensor
    for param_id, values in scalars["optimizer_scalars"].items():
        param_states.setdefault(int(param_id), {}).update(values)
    optimizer.load_state_dict({"state": param_states, "param_groups": scalars["optimizer_param_groups"]})
    if scheduler is not None and scalars.get("scheduler") is not None:
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
