"""Exported models in timm's Hub layout, and `load_exported(path)` that reads them back with model code only (no
Ray, Optuna or trainers).

An export folder (`nas export CHECKPOINT`) holds what `timm.models.save_for_hf` writes, the folder
`timm.models.push_to_hf_hub` uploads:

    config.json         architecture and model_args (what rebuilds the model: timm's own vit_tiny_patch16_224 or
                        xcit_nano_12_p16_224 with every size given for a plain-timm architecture, else qkvnas_vit or
                        qkvnas_xcit with the arch), num_classes, num_features, global_pool, pretrained_cfg
                        (input_size, mean, std, num_classes, label_names, tag: the dataset, ...)
    model.safetensors   the weights (a plain state_dict)

`--format onnx` writes model.onnx (input `images` (B, C, H, W) normalised with mean/std, output `logits`
(B, classes), dynamic batch) beside the same config.json.

    import timm
    import search_spaces.timm_models  # noqa: F401  registers qkvnas_vit, qkvnas_xcit (not needed for timm's own)
    model = timm.create_model("local-dir:results/run/retrain/xcit-1a2b3c4d/export", pretrained=True)

    from search_spaces.model_tools.export import load_exported
    model = load_exported("results/run/retrain/xcit-1a2b3c4d/export")   # eval mode; bad files are one UsageError
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

from search_spaces import timm_models  # noqa: F401  registers qkvnas_vit / qkvnas_xcit: what is exported loads in timm
from search_spaces.arch import ArchConfig
from search_spaces.build import build_model, load_weights
from search_spaces.model_tools.memory import INFERENCE_COPIES, check_fits
from search_spaces.shape import DataShape
from search_spaces.timm_config import read_timm_architecture, timm_architecture, timm_pretrained_cfg
from search_spaces.model_tools.torch_compat import torchscript_onnx_opsets
from qkvnas_core.errors import UsageError
from qkvnas_core.files import atomic_path, check_json_fields, json_value, read_json_object, user_path

CONFIG_FILE, WEIGHTS_FILE, ONNX_FILE = "config.json", "model.safetensors", "model.onnx"
LEGACY_FILES = ("arch.json", "model.json")  # what an export held before it was timm's Hub layout
ONNX_OPSET = 17
# What a checkpoint's dataset record says of a model's inputs, with the JSON types.
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


def check_opset(opset: int) -> None:
    """An opset torch's exporter does not support is one UsageError, before anything is built or written."""
    supported = torchscript_onnx_opsets()
    if opset not in supported:
        raise UsageError(f"ONNX opset {opset}: torch {torch.__version__}'s exporter supports opsets {supported.start} "
                         f"to {supported.stop - 1}; expected one of those (default {ONNX_OPSET})")


def with_data_cfg(model: nn.Module, arch: ArchConfig, shape: DataShape, *, mean: tuple[float, ...],
                  std: tuple[float, ...], dataset: str, label_names: tuple[str, ...] | None = None) -> nn.Module:
    """`model` (build_model's, of `arch` for `shape`) with a pretrained_cfg that states the data it was trained
    on: its normalisation, the dataset's name (timm's `tag`) and class names."""
    model.pretrained_cfg = model.default_cfg = timm_pretrained_cfg(arch, shape, mean=mean, std=std, dataset=dataset,
                                                                   label_names=label_names)
    return model


def hub_layout(model: nn.Module, arch: ArchConfig, shape: DataShape) -> dict[str, bytes]:
    """timm's Hub layout of `model` (build_model's, of `arch` for `shape`), file name -> contents: config.json and
    model.safetensors as timm's `save_for_hf` writes them. The rebuild arguments are passed explicitly, so a timm
    that does not record a model's arguments itself writes them too."""
    from timm.models import save_for_hf

    with tempfile.TemporaryDirectory(prefix="qkvnas-export-") as scratch:
        save_for_hf(model, scratch, model_args=timm_architecture(arch, shape)[1], safe_serialization=True)
        return {name: (Path(scratch) / name).read_bytes() for name in (CONFIG_FILE, WEIGHTS_FILE)}


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


# What config.json and its pretrained_cfg say that loading reads, with the JSON types (timm writes more).
CONFIG_FIELDS = {"architecture": str, "num_classes": int, "model_args": dict, "pretrained_cfg": dict}
DATA_CFG_FIELDS = {"input_size": tuple[int, int, int], "num_classes": int, "mean": tuple[float, ...],
                   "std": tuple[float, ...], "label_names": tuple[str, ...] | None, "tag": str | None}


def read_hub_config(config: dict[str, Any]) -> tuple[ArchConfig, DataShape, dict[str, Any]]:
    """The architecture, data shape and pretrained_cfg a config.json (parsed) describes. A field of the wrong JSON
    type or out of range, or one that disagrees with the others, is one UsageError naming it."""
    check_json_fields(config, CONFIG_FIELDS)
    arch, shape = read_timm_architecture(config["architecture"], config["model_args"])
    check_json_fields(config["pretrained_cfg"], DATA_CFG_FIELDS, "pretrained_cfg")
    data = {name: json_value(config["pretrained_cfg"].get(name), hint, f"pretrained_cfg.{name}")
            for name, hint in DATA_CFG_FIELDS.items()}
    expected = {"input_size": (shape.in_chans, shape.img_size, shape.img_size), "num_classes": shape.num_classes}
    for name, value in expected.items():
        if data[name] != value:
            raise UsageError(f"pretrained_cfg.{name}={json.dumps(data[name])}: expected {json.dumps(value)}, as "
                             "model_args say")
    if config["num_classes"] != shape.num_classes:
        raise UsageError(f"num_classes={config['num_classes']}: expected {shape.num_classes}, as model_args say")
    for name, count, what in (("mean", shape.in_chans, "channel"), ("std", shape.in_chans, "channel"),
                              ("label_names", shape.num_classes, "class")):
        if data[name] is not None and len(data[name]) != count:
            raise UsageError(f"pretrained_cfg.{name} has {len(data[name])} values: expected one per {what} ({count})")
    if min(data["std"]) <= 0:
        raise UsageError(f"pretrained_cfg.std={list(data['std'])}: expected positive numbers")
    cfg = timm_pretrained_cfg(arch, shape, mean=data["mean"], std=data["std"], dataset=data["tag"],
                              label_names=data["label_names"])
    return arch, shape, cfg


def load_exported(path: str | os.PathLike) -> nn.Module:
    """The model an export folder holds (the folder, or a file in it), weights loaded, in eval mode: the model
    `timm.create_model("local-dir:<folder>", pretrained=True)` builds, read with qkvnas's checks.

    Its inputs are described in `model.pretrained_cfg` (timm's convention): input_size (C, H, W), mean, std,
    num_classes, interpolation, crop_pct, label_names, tag (the dataset). Anything missing, corrupt or not
    matching is one UsageError naming the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = user_path(path, "export")
    folder = path if path.is_dir() else path.parent
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    if not config_path.is_file():
        if all((folder / name).is_file() for name in LEGACY_FILES):
            raise UsageError(f"{folder}: an export from before exports were timm's Hub layout (arch.json and "
                             "model.json, no config.json); expected config.json: export the checkpoint again")
        raise UsageError(f"{config_path}: not found; expected a folder written by `nas export` (timm's config.json "
                         "and model.safetensors)")
    config = read_json_object(config_path, "timm's config.json of an exported model")
    try:
        arch, shape, cfg = read_hub_config(config)
    except UsageError as error:
        raise UsageError(f"{config_path}: {error}") from None
    try:
        weights = load(weights_path.read_bytes())
    except (OSError, SafetensorError, ValueError) as error:
        raise UsageError(f"{weights_path}: not a readable safetensors file ({str(error).splitlines()[0]}); expected "
                         "the weights `nas export` writes") from None
    try:
        check_fits(arch, shape, torch.device("cpu"), INFERENCE_COPIES)
        model = build_model(arch, shape)
    except UsageError as error:
        raise UsageError(f"{config_path}: {error}") from None
    load_weights(model, weights, f"{weights_path} (for {config_path}, {arch.arch_id})")
    model.pretrained_cfg = model.default_cfg = cfg
    return model.eval()
