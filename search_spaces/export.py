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
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search_spaces.arch import ArchConfig
from search_spaces.build import build_model, load_weights
from qkvnas_core.errors import UsageError
from qkvnas_core.files import atomic_path, read_json_object, write_bytes_atomic

EXPORT_FORMAT = "qkvnas-export/1"
WEIGHTS_FILE, ARCH_FILE, MODEL_FILE, ONNX_FILE = "model.safetensors", "arch.json", "model.json", "model.onnx"
MODEL_FIELDS = ("num_classes", "img_size", "in_chans", "mean", "std")
ONNX_OPSET = 17


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


def export_onnx(model: nn.Module, path: Path, *, img_size: int, in_chans: int, opset: int = ONNX_OPSET) -> Path:
    """model.onnx with a dynamic batch axis, through torch's TorchScript-based exporter: the torch.export-based
    one needs onnxscript, which this project does not depend on."""
    model = model.eval()
    example = torch.randn(1, in_chans, img_size, img_size)
    with atomic_path(path) as temporary, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer warnings are not the user's
        torch.onnx.export(model, (example,), str(temporary), dynamo=False, input_names=["images"],
                          output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=opset)
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

    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not folder.is_dir():
        raise UsageError(f"export {path}: not found; expected a folder written by `nas export --format safetensors`")
    arch = ArchConfig.from_dict(_read_json(folder / ARCH_FILE, "the model's ArchConfig"))
    description = _read_json(folder / MODEL_FILE, "the model's inputs (num_classes, img_size, ...)")
    absent = [name for name in MODEL_FIELDS if name not in description]
    if absent:
        raise UsageError(f"{folder / MODEL_FILE}: lacks {', '.join(absent)}; expected the fields "
                         f"{', '.join(MODEL_FIELDS)}")
    weights_path = folder / WEIGHTS_FILE
    try:
        weights = load(weights_path.read_bytes())
    except (OSError, SafetensorError, ValueError) as error:
        raise UsageError(f"{weights_path}: not a readable safetensors file ({str(error).splitlines()[0]}); expected "
                         "the weights `nas export` writes") from None
    model = build_model(arch, int(description["num_classes"]), int(description["img_size"]),
                        int(description["in_chans"]))
    load_weights(model, weights, f"{weights_path} (for {folder / ARCH_FILE}, {arch.arch_id})")
    model.pretrained_cfg = {
        "input_size": (int(description["in_chans"]), int(description["img_size"]), int(description["img_size"])),
        "mean": tuple(description["mean"]), "std": tuple(description["std"]),
        "num_classes": int(description["num_classes"]), "interpolation": "bicubic", "crop_pct": 0.875,
        "label_names": description.get("class_names"),
    }
    return model.eval()
