"""A trained checkpoint written for use outside qkvnas: `export_checkpoint(request) -> ExportOutcome`.

safetensors: model.safetensors + arch.json + model.json, read back by `search_spaces.export.load_exported`.
onnx: model.onnx (dynamic batch) + arch.json + model.json, checked against PyTorch with onnxruntime when it is
installed. Nothing is overwritten: both formats of one checkpoint may share a folder, nothing else may.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qkvnas_core.errors import UsageError
from qkvnas_core.files import read_json_object
from search_spaces.arch import ArchConfig
from search_spaces.export import (MODEL_FILE, ONNX_FILE, ONNX_OPSET, WEIGHTS_FILE, export_onnx, export_safetensors,
                                  model_description, onnx_difference, write_description)
from trainers.checkpoint import load_checkpoint, trained_checkpoint

FORMATS = ("safetensors", "onnx")
# Largest |ONNX - PyTorch| logit accepted, relative to max(1, largest |logit|): float32 kernels round differently.
ONNX_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ExportRequest:
    """What `nas export` asks for: a trained model folder or TAG.json, the format, the output folder (None: the
    checkpoint's folder/export) and the ONNX opset (None: ONNX_OPSET)."""

    checkpoint: str
    format: str = "safetensors"
    out: str | None = None
    opset: int | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise UsageError(f"--format {self.format}: expected one of {', '.join(FORMATS)}")
        if self.opset is not None and self.format != "onnx":
            raise UsageError(f"--opset {self.opset}: expected --format onnx")


@dataclass(frozen=True)
class ExportOutcome:
    """What an export wrote. onnx_difference: the largest |ONNX - PyTorch| logit relative to the largest logit,
    None when onnxruntime is absent or could not run the file (onnx_error says why)."""

    arch: ArchConfig
    params: int
    num_classes: int
    input_shape: str
    epoch: int
    source: Path
    written: list[Path]
    onnx_difference: float | None = None
    onnx_error: str | None = None

    @property
    def onnx_ok(self) -> bool:
        return self.onnx_error is None and (self.onnx_difference is None or self.onnx_difference <= ONNX_TOLERANCE)


def export_checkpoint(request: ExportRequest) -> ExportOutcome:
    """Write the checkpoint's model in the requested format; every check runs before anything is written."""
    path = trained_checkpoint(request.checkpoint)
    checkpoint = load_checkpoint(path)
    if checkpoint.arch is None:
        raise UsageError(f"checkpoint {checkpoint.weights_path}: its record holds no architecture to export")
    arch, dataset = checkpoint.arch, checkpoint.record["dataset"]
    description = model_description(arch, num_classes=dataset["num_classes"], img_size=dataset["img_size"],
                                    in_chans=dataset["in_chans"], mean=dataset["mean"], std=dataset["std"],
                                    class_names=dataset.get("class_names"), source=str(path))
    out = Path(request.out) if request.out is not None else checkpoint.weights_path.parent / "export"
    target = out / (WEIGHTS_FILE if request.format == "safetensors" else ONNX_FILE)
    described = (out / MODEL_FILE).is_file() and read_json_object(out / MODEL_FILE, "a model.json") == description
    taken = [file.name for file in (target, out / MODEL_FILE)
             if file.exists() and not (file.name == MODEL_FILE and described)]
    if taken:
        raise UsageError(f"--out {out} already holds {', '.join(taken)}: expected a new folder, or one holding the "
                         "other format of the same checkpoint (nothing is overwritten)")
    model = checkpoint.build_model().eval()
    facts = dict(arch=arch, params=sum(parameter.numel() for parameter in model.parameters()),
                 num_classes=dataset["num_classes"], epoch=checkpoint.epoch, source=path,
                 input_shape=f"{dataset['in_chans']}x{dataset['img_size']}x{dataset['img_size']}")
    if request.format == "safetensors":
        return ExportOutcome(written=export_safetensors(model, arch, description, out), **facts)
    export_onnx(model, target, img_size=dataset["img_size"], in_chans=dataset["in_chans"],
                opset=request.opset or ONNX_OPSET)
    written = [target, *write_description(out, arch, description)]
    try:
        difference = onnx_difference(model, target, img_size=dataset["img_size"], in_chans=dataset["in_chans"])
    except Exception as error:  # onnxruntime's errors (Fail, InvalidGraph, ...) share no base class
        return ExportOutcome(written=written, onnx_error=str(error).splitlines()[0][:200], **facts)
    return ExportOutcome(written=written, onnx_difference=difference, **facts)
