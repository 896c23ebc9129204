"""`nas export CHECKPOINT --format safetensors|onnx`: a trained model for use outside qkvnas, in timm's Hub layout
(nas/winners/export.py).

Exit codes: 0 written; 1 ONNX outputs differ from PyTorch beyond the tolerance, or onnxruntime could not run
the file; 2 bad input.
"""
from __future__ import annotations

import argparse

from nas.settings.flags import argument_type, output_folder, path_argument, positive_int


@argument_type
def opset_argument(text: str) -> int:
    """An ONNX opset torch's exporter supports (torch is imported only when the flag is given)."""
    from search_spaces.model_tools.export import check_opset

    opset = positive_int(text)
    check_opset(opset)
    return opset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=path_argument, metavar="CHECKPOINT",
                        help="a trained model folder (its best checkpoint, else last) or a TAG.json")
    parser.add_argument("--format", default="safetensors", metavar="FORMAT", help="safetensors (default) or onnx")
    parser.add_argument("--out", type=output_folder, default=None, metavar="DIR",
                        help="output folder (default: CHECKPOINT's folder/export)")
    parser.add_argument("--opset", type=opset_argument, default=None, metavar="N", help="ONNX opset (default 17)")


def run(args: argparse.Namespace) -> int:
    from nas.winners.export import ONNX_TOLERANCE, ExportRequest, export_checkpoint

    outcome = export_checkpoint(ExportRequest(args.checkpoint, args.format, args.out, args.opset))
    print(f"model   {outcome.arch.arch_id}  {outcome.arch.summary()}  {outcome.params:,} params, "
          f"{outcome.num_classes} classes, input {outcome.input_shape} (epoch {outcome.epoch} of {outcome.source})")
    print(f"wrote   {', '.join(str(file) for file in outcome.written)}")
    if args.format == "safetensors":
        out = outcome.written[0].parent
        needs = (f"after `import search_spaces.timm_models` ({outcome.timm_name})" if outcome.needs_qkvnas
                 else f"(timm's own {outcome.timm_name}: qkvnas not needed)")
        print(f"load    timm.create_model('local-dir:{out}', pretrained=True) {needs}, or "
              f"search_spaces.model_tools.export.load_exported({str(out)!r})")
        return 0
    onnx_file = outcome.written[0]
    if outcome.onnx_error is not None:
        print(f"check   onnxruntime could not run {onnx_file} ({outcome.onnx_error}): FAILED")
    elif outcome.onnx_difference is None:
        print("check   skipped: onnxruntime is not installed (pip install onnxruntime, or qkvnas[onnx])")
    else:
        verdict = "ok" if outcome.onnx_ok else "FAILED"
        print(f"check   onnxruntime vs PyTorch on 3 random images (batch 3; exported at batch 1): max |difference| "
              f"{outcome.onnx_difference:.1e} of the largest logit (tolerance {ONNX_TOLERANCE:.0e}): {verdict}")
    return 0 if outcome.onnx_ok else 1
