"""`nas export CHECKPOINT --format safetensors|onnx`: a trained model for use outside qkvnas, in timm's Hub layout
(nas/winners/export.py).

Exit codes: 0 written; 1 ONNX outputs differ from PyTorch beyond the tolerance, or onnxruntime could not run
the file; 2 bad input.
"""
from __future__ import annotations

import argparse

from nas.settings.flags import path_argument
from nas.settings.requests import EXPORT_GROUPS, ExportRequest, add_setting_flags, given_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=path_argument, metavar="CHECKPOINT",
                        help="a trained model folder (its best checkpoint, else last) or a TAG.json")
    add_setting_flags(parser, ExportRequest, EXPORT_GROUPS)


def run(args: argparse.Namespace) -> int:
    from nas.winners.export import ONNX_TOLERANCE, export_checkpoint

    request = ExportRequest(checkpoint=args.checkpoint, **given_settings(args, ExportRequest))
    outcome = export_checkpoint(request)
    print(f"model   {outcome.arch.arch_id}  {outcome.arch.summary()}  {outcome.params:,} params, "
          f"{outcome.num_classes} classes, input {outcome.input_shape} (epoch {outcome.epoch} of {outcome.source})")
    print(f"wrote   {', '.join(str(file) for file in outcome.written)}")
    if request.format == "safetensors":
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
