"""A trained checkpoint written for use outside qkvnas: `export_checkpoint(request) -> ExportOutcome`.

Both formats write timm's Hub layout's config.json (search_spaces/model_tools/export.py): safetensors beside it
model.safetensors, as `timm.models.save_for_hf` writes them, which `timm.create_model("local-dir:<folder>",
pretrained=True)` and `search_spaces.model_tools.export.load_exported` read back; onnx model.onnx (dynamic batch),
checked against PyTorch with onnxruntime when it is installed. Nothing is overwritten: both formats of one
checkpoint may share a folder, nothing else may.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from qkvnas_core.errors import UsageError
from qkvnas_core.files import read_json_object, write_bytes_atomic
from search_spaces.arch import ArchConfig
from nas.settings.requests import ExportRequest
from search_spaces.model_tools.export import (CONFIG_FILE, ONNX_FILE, ONNX_OPSET, WEIGHTS_FILE, export_onnx, hub_layout,
                                              onnx_difference, with_data_cfg)
from search_spaces.timm_config import VARIANTS
from trainers.checkpoint import load_checkpoint, trained_checkpoint

# Largest |ONNX - PyTorch| logit accepted, relative to max(1, largest |logit|): float32 kernels round differently.
ONNX_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportOutcome:
    """What an export wrote. timm_name: config.json's architecture, the timm model that rebuilds it.
    onnx_difference: the largest |ONNX - PyTorch| logit relative to the largest logit, None when onnxruntime is
    absent or could not run the file (onnx_error says why)."""

    arch: ArchConfig
    params: int
    num_classes: int
    input_shape: str
    epoch: int
    source: Path
    written: list[Path]
    timm_name: str
    onnx_difference: float | None = None
    onnx_error: str | None = None

    @property
    def needs_qkvnas(self) -> bool:
        """False when the export is timm's own model, which loads where qkvnas is not installed."""
        return self.timm_name in VARIANTS.values()

    @property
    def onnx_ok(self) -> bool:
        return self.onnx_error is None and (self.onnx_difference is None or self.onnx_difference <= ONNX_TOLERANCE)


def export_checkpoint(request: ExportRequest) -> ExportOutcome:
    """Write the checkpoint's model in the requested format; every check runs before anything is written."""
    path = trained_checkpoint(request.checkpoint)
    checkpoint = load_checkpoint(path)
    if checkpoint.arch is None:
        raise UsageError(f"checkpoint {checkpoint.weights_path}: its record holds no architecture to export")
    arch, dataset, shape = checkpoint.arch, checkpoint.record["dataset"], checkpoint.shape
    model = with_data_cfg(checkpoint.build_model().eval(), arch, shape, mean=dataset["mean"], std=dataset["std"],
                          dataset=dataset["name"], label_names=dataset.get("class_names"))
    files = hub_layout(model, arch, shape)
    config = json.loads(files[CONFIG_FILE])
    out = Path(request.out) if request.out is not None else checkpoint.weights_path.parent / "export"
    target = out / (WEIGHTS_FILE if request.format == "safetensors" else ONNX_FILE)
    same_config = (out / CONFIG_FILE).is_file() and read_json_object(out / CONFIG_FILE, "a config.json") == config
    taken = [file.name for file in (target, out / CONFIG_FILE)
             if file.exists() and not (file.name == CONFIG_FILE and same_config)]
    if taken:
        raise UsageError(f"--out {out} already holds {', '.join(taken)}: expected a new folder, or one holding the "
                         "other format of the same checkpoint (nothing is overwritten)")
    facts = dict(arch=arch, params=sum(parameter.numel() for parameter in model.parameters()),
                 num_classes=shape.num_classes, epoch=checkpoint.epoch, source=path, timm_name=config["architecture"],
                 input_shape=f"{shape.in_chans}x{shape.img_size}x{shape.img_size}")
    if request.format == "onnx":
        export_onnx(model, target, img_size=shape.img_size, in_chans=shape.in_chans, opset=request.opset or ONNX_OPSET)
    for name in [WEIGHTS_FILE, CONFIG_FILE] if request.format == "safetensors" else [CONFIG_FILE]:
        write_bytes_atomic(out / name, files[name])
    written = [target, out / CONFIG_FILE]
    if request.format == "safetensors":
        return ExportOutcome(written=written, **facts)
    try:
        difference = onnx_difference(model, target, img_size=shape.img_size, in_chans=shape.in_chans)
    except Exception as error:  # onnxruntime's errors (Fail, InvalidGraph, ...) share no base class
        return ExportOutcome(written=written, onnx_error=str(error).splitlines()[0][:200], **facts)
    return ExportOutcome(written=written, onnx_difference=difference, **facts)
