"""torch's private API this project reaches, in one place: each wrapper names what it reaches and why no public API
does. tests/test_nas/test_compat.py checks them against the installed torch and names the version they were written for."""
from __future__ import annotations

from torch.onnx import _constants


def torchscript_onnx_opsets() -> range:
    """The ONNX opsets torch's TorchScript-based exporter supports, as this torch records them: only its private
    torch.onnx._constants names them."""
    return range(_constants.ONNX_MIN_OPSET, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET + 1)
