"""`nas export CHECKPOINT --format safetensors|onnx`: a trained model for use outside qkvnas.

safetensors: model.safetensors + arch.json + model.json, read back by `search_spaces.export.load_exported`.
onnx: model.onnx (dynamic batch) + arch.json + model.json, checked against PyTorch with onnxruntime when it is
installed. Exit codes: 0 written; 1 ONNX outputs differ from PyTorch beyond the tolerance; 2 bad input.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from nas.flags import argument_type, output_folder, path_argument, positive_int

FORMATS = ("safetensors", "onnx")
# Largest |ONNX - PyTorch| logit accepted, relative to max(1, largest |logit|): float32 kernels round differently.
ONNX_TOLERANCE = 1e-4


@argument_type
def opset_argument(text: str) -> int:
    """An ONNX opset torch's exporter supports (torch is imported only when the flag is given)."""
    from search_spaces.export import check_opset

    opset = positive_int(text)
    check_opset(opset)
    return opset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=path_argument, metavar="CHECKPOINT",
                        help="a trained model folder (its best checkpoint, else last) or a TAG.json")
    parser.add_argument("--format", choices=FORMATS, default="safetensors", help="safetensors (default) or onnx")
    parser.add_argument("--out", type=output_folder, default=None, metavar="DIR",
                        help="output folder (default: CHECKPOINT's folder/export)")
    parser.add_argument("--opset", type=opset_argument, default=None, metavar="N", help="ONNX opset (default 17)")


def run(args: argparse.Namespace) -> int:
    from qkvnas_core.errors import UsageError
    from qkvnas_core.files import read_json_object
    from search_spaces.export import (MODEL_FILE, ONNX_FILE, ONNX_OPSET, WEIGHTS_FILE, export_onnx,
                                      export_safetensors, model_description, onnx_difference, write_description)
    from trainers.checkpoint import load_checkpoint
    from trainers.checkpoint import trained_checkpoint

    path = trained_checkpoint(args.checkpoint)
    checkpoint = load_checkpoint(path)
    if checkpoint.arch is None:
        raise UsageError(f"checkpoint {checkpoint.weights_path}: its record holds no architecture to export")
    if args.opset is not None and args.format != "onnx":
        raise UsageError(f"--opset {args.opset}: expected --format onnx")
    arch, dataset = checkpoint.arch, checkpoint.record["dataset"]
    description = model_description(arch, num_classes=dataset["num_classes"], img_size=dataset["img_size"],
                                    in_chans=dataset["in_chans"], mean=dataset["mean"], std=dataset["std"],
                                    class_names=dataset.get("class_names"), source=str(path))
    out = Path(args.out) if args.out is not None else checkpoint.weights_path.parent / "export"
    target = out / (WEIGHTS_FILE if args.format == "safetensors" else ONNX_FILE)
    # Both formats of one checkpoint may share a folder (same model.json); anything else is never overwritten.
    described = (out / MODEL_FILE).is_file() and read_json_object(out / MODEL_FILE, "a model.json") == description
    taken = [file.name for file in (target, out / MODEL_FILE) if file.exists() and not (file.name == MODEL_FILE
                                                                                       and described)]
    if taken:
        raise UsageError(f"--out {out} already holds {', '.join(taken)}: expected a new folder, or one holding the "
                         "other format of the same checkpoint (nothing is overwritten)")
    model = checkpoint.build_model().eval()
    params = sum(parameter.numel() for parameter in model.parameters())
    shape = f"{dataset['in_chans']}x{dataset['img_size']}x{dataset['img_size']}"
    print(f"model   {arch.arch_id}  {arch.summary()}  {params:,} params, {dataset['num_classes']} classes, "
          f"input {shape} (epoch {checkpoint.epoch} of {path})")
    if args.format == "safetensors":
        written = export_safetensors(model, arch, description, out)
        print(f"wrote   {', '.join(str(file) for file in written)}")
        print(f"load    from search_spaces.export import load_exported; model = load_exported({str(out)!r})")
        return 0

    export_onnx(model, target, img_size=dataset["img_size"], in_chans=dataset["in_chans"],
                opset=args.opset or ONNX_OPSET)
    written = [target, *write_description(out, arch, description)]
    print(f"wrote   {', '.join(str(file) for file in written)}")
    try:
        difference = onnx_difference(model, target, img_size=dataset["img_size"], in_chans=dataset["in_chans"])
    except Exception as error:  # onnxruntime's errors (Fail, InvalidGraph, ...) share no base class
        print(f"check   onnxruntime could not run {target} ({str(error).splitlines()[0][:200]}): FAILED")
        return 1
    if difference is None:
        print("check   skipped: onnxruntime is not installed (pip install onnxruntime, or qkvnas[onnx])")
        return 0
    verdict = "ok" if difference <= ONNX_TOLERANCE else "FAILED"
    print(f"check   onnxruntime vs PyTorch on 3 random images (batch 3; exported at batch 1): max |difference| "
          f"{difference:.1e} of the largest logit (tolerance {ONNX_TOLERANCE:.0e}): {verdict}")
    return 0 if difference <= ONNX_TOLERANCE else 1
