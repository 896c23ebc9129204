"""Exported models, loaded back with `load_exported(path)`: model code only (no Ray, Optuna or trainers).

An export folder (`nas export CHECKPOINT --format safetensors`) holds:

    model.safetensors   the weights (a plain state_dict), metadata format qkvnas-export/1
    arch.json           the ArchConfig alone (nas describe / nas train read it as any arch file)
    model.json          what the model expects and says: num_classes, img_size, in_chans, mean, std,
                        class_names, arch_id, and the checkpoint it came from

`--format onnx` writes model.onnx (input `images` (B, C, H, W) normalised with mean/std, output
`logits` (B, classes), dynamic batch) beside the same model.json.

    from search_spaces.export import load_exported
    model = load_exported("results/run/retrain/xcit-1a2b3c4d/export")   # eval mode
    logits = model((images - mean) / std)       # mean, std: model.pretrained_cfg["mean"], ["std"]
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search_spaces.arch import ArchConfig
from search_spaces.build import build_model, load_weights
from search_spaces.memory import INFERENCE_COPIES, check_fits
from search_spaces.shape import DataShape
from qkvnas_core.errors import UsageError
from qkvnas_core.files import atomic_path, check_json_fields, read_json_object, user_path, write_bytes_atomic

EXPORT_FORMAT = "qkvnas-export/1"
WEIGHTS_FILE, ARCH_FILE, MODEL_FILE, ONNX_FILE = "model.safetensors", "arch.json", "model.json", "model.onnx"
ONNX_OPSET = 17
# What model.json (and a checkpoint's dataset record) says of a model's inputs, with the JSON types.
INPUT_FIELDS = {"img_size": int, "in_chans": int, "num_classes": int, "patch_size": int | None,
                "mean": tuple[float, ...], "std": tuple[float, ...], "class_names": tuple[str, ...] | None}


def read_inputs(data: Any, path: str = "") -> DataShape:
    """The data shape a description of a model's inputs holds (`path` names it in errors): each field of
    INPUT_FIELDS of its JSON type, a valid DataShape, mean and std one per channel (std positive), class names
    one per class. Anything else is one UsageError naming the field."""
    prefix = f"{path}." if path else ""
    check_json_fields(data, INPUT_FIELDS, path)
    patch_size = {"patch_size": data["patch_size"]} if data.get("patch_size") is not None else {}
    try:
        shape = DataShape(img_size=data["img_size"], in_chans=data["in_chans"], num_classes=data["num_classes"],
                          **patch_size)
    except UsageError as error:
        raise UsageError(f"{prefix}{error}") from None
    for name in ("mean", "std"):
        if len(data[name]) != shape.in_chans:
            raise UsageError(f"{prefix}{name} has {len(data[name])} values: expected one per channel "
                             f"({shape.in_chans})")
    if min(data["std"]) <= 0:
        raise UsageError(f"{prefix}std={list(data['std'])}: expected positive numbers")
    if data.get("class_names") is not None and len(data["class_names"]) != shape.num_classes:
        raise UsageError(f"{prefix}class_names has {len(data['class_names'])} names: expected one per class "
                         f"({shape.num_classes})")
    return shape


def supported_opsets() -> range:
    """The ONNX opsets torch's TorchScript-based exporter supports, as this torch records them."""
    from torch.onnx import _constants

    return range(_constants.ONNX_MIN_OPSET, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET + 1)


def check_opset(opset: int) -> None:
    """An opset torch's exporter does not support is one UsageError, before anything is built or written."""
    supported = supported_opsets()
    if opset not in supported:
        raise UsageError(f"ONNX opset {opset}: torch {torch.__version__}'s exporter supports opsets {supported.start} "
                         f"to {supported.stop - 1}; expected one of those (default {ONNX_OPSET})")


def model_description(arch: ArchConfig, *, num_classes: int, img_size: int, in_chans: int, mean: tuple[float, ...],
                      std: tuple[float, ...], class_names: tuple[str, ...] | None = None,
                      source: str | None = None) -> dict[str, Any]:
    """The contents of model.json."""
    return {"format": EXPORT_FORMAT, "arch_id": arch.arch_id, "num_classes": num_classes, "img_size": img_size,
            "in_chans": in_chans, "mean": list(mean), "std": list(std),
            "class_names": None if class_names is None else list(class_names), "source": source}


def write_description(folder: Path, arch: ArchConfig, description: dict[str, Any]) -> list[Path]:
    """arch.json and model.json into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(folder / ARCH_FILE, (arch.to_json(indent=2) + "\n").encode())
    write_bytes_atomic(folder / MODEL_FILE, (json.dumps(description, indent=2) + "\n").encode())
    return [folder / ARCH_FILE, folder / MODEL_FILE]


def export_safetensors(model: nn.Module, arch: ArchConfig, description: dict[str, Any], folder: Path) -> list[Path]:
    """model.safetensors (+ arch.json, model.json) that `load_exported` reads back."""
    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    # Cloned to the CPU so that no two entries share storage, which safetensors refuses.
    weights = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in model.state_dict().items()}
    write_bytes_atomic(folder / WEIGHTS_FILE, save(weights, metadata={"format": EXPORT_FORMAT, "arch_id": arch.arch_id}))
    return [folder / WEIGHTS_FILE, *write_description(folder, arch, description)]


@contextmanager
def _exporter_log_dropped() -> Iterator[None]:
    """Point standard output (file descriptor 1) at a scratch file for the block: when an export fails, torch's
    TorchScript exporter prints the whole graph there from C++ (its ONNX log is left on), not the user's to read."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as scratch:
        os.dup2(scratch.fileno(), 1)
        try:
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


def export_onnx(model: nn.Module, path: Path, *, img_size: int, in_chans: int, opset: int = ONNX_OPSET) -> Path:
    """model.onnx with a dynamic batch axis, through torch's TorchScript-based exporter: the torch.export-based
    one needs onnxscript, which this project does not depend on. An opset at which torch cannot export one of
    the model's operators is one UsageError naming the opset and torch's reason."""
    check_opset(opset)
    model = model.eval()
    example = torch.randn(1, in_chans, img_size, img_size)
    with atomic_path(path) as temporary, warnings.catch_warnings(), torch.no_grad(), _exporter_log_dropped():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings are not the user's
        try:
            torch.onnx.export(model, (example,), str(temporary), dynamo=False, input_names=["images"],
                              output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=opset)
        except torch.onnx.OnnxExporterError as error:
            if opset == ONNX_OPSET:
                raise  # the default opset must export every model: a failure there is this project's bug
            raise UsageError(f"ONNX opset {opset}: torch cannot export this model at it ("
                             f"{str(error).strip().splitlines()[0][:200]}); expected a later opset, e.g. "
                             f"{ONNX_OPSET}") from None
    return path


def onnx_difference(model: nn.Module, path: Path, *, img_size: int, in_chans: int, batch: int = 3) -> float | None:
    """Largest |ONNX Runtime - PyTorch| logit over `batch` random images, relative to max(1, largest |logit|);
    a batch size other than the exported example's, so the dynamic axis is exercised. None without onnxruntime."""
    try:
        import onnxruntime
    except ImportError:
        return None
    images = torch.randn(batch, in_chans, img_size, img_size, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    with torch.no_grad():
        expected = model.eval()(images)
    return float((torch.from_numpy(logits) - expected).abs().max()) / max(1.0, float(expected.abs().max()))


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise UsageError(f"{path}: not found; expected {what} in a folder written by `nas export --format safetensors`")
    return read_json_object(path, what)


def load_exported(path: str | os.PathLike) -> nn.Module:
    """The model an export folder holds (the folder, or its model.safetensors), weights loaded, in eval mode.

    Its inputs are described in `model.pretrained_cfg` (timm's convention): input_size (C, H, W), mean, std,
    num_classes, interpolation, crop_pct, label_names. Anything missing, corrupt or not matching is one
    UsageError naming the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = user_path(path, "export")
    folder = path if path.is_dir() else path.parent
    if not folder.is_dir():
        raise UsageError(f"export {path}: not found; expected a folder written by `nas export --format safetensors`")
    arch_data = _read_json(folder / ARCH_FILE, "the model's ArchConfig")
    description = _read_json(folder / MODEL_FILE, "the model's inputs (num_classes, img_size, ...)")
    try:
        arch = ArchConfig.from_dict(arch_data)
    except UsageError as error:
        raise UsageError(f"{folder / ARCH_FILE}: {error}") from None
    try:
        shape = read_inputs(description)
    except UsageError as error:
        raise UsageError(f"{folder / MODEL_FILE}: {error}") from None
    weights_path = folder / WEIGHTS_FILE
    try:
        weights = load(weights_path.read_bytes())
    except (OSError, SafetensorError, ValueError) as error:
        raise UsageError(f"{weights_path}: not a readable safetensors file ({str(error).splitlines()[0]}); expected "
                         "the weights `nas export` writes") from None
    try:
        check_fits(arch, shape, torch.device("cpu"), INFERENCE_COPIES)
    except UsageError as error:
        raise UsageError(f"{folder / ARCH_FILE} at {folder / MODEL_FILE}'s inputs: {error}") from None
    model = build_model(arch, shape)
    load_weights(model, weights, f"{weights_path} (for {folder / ARCH_FILE} at {folder / MODEL_FILE}'s inputs, "
                                 f"{arch.arch_id})")
    model.pretrained_cfg = {
        "input_size": (shape.in_chans, shape.img_size, shape.img_size), "mean": tuple(description["mean"]),
        "std": tuple(description["std"]), "num_classes": shape.num_classes, "interpolation": "bicubic",
        "crop_pct": 0.875, "label_names": description.get("class_names"),
    }
    return model.eval()
