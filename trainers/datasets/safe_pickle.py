"""Dataset pickles (CIFAR's python batches, downsampled ImageNet's batches) read without running their code.

A pickle can name any importable callable, so `pickle.load` on a file from the internet runs whatever it asks
for. `load_pickle` builds only numpy arrays and plain containers (dict, list, tuple, set, str, bytes, numbers):
any other global the file names is refused in one UsageError naming the file and the global, as is a file that
is not a pickle at all. Python 2 pickles (CIFAR's) are read as torchvision reads them, `str` through latin-1.
"""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from qkvnas_core.errors import UsageError

# numpy's own rebuilders, taken from what numpy's pickling names (numpy 1 spells their module numpy.core, numpy 2
# numpy._core: a file written by either reads).
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_SCALAR = np.float64(0).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_ALLOWED = {
    **{(module, "_reconstruct"): _RECONSTRUCT for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "scalar"): _SCALAR for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(module, "_frombuffer"): _FROMBUFFER for module in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(module, name): kind for module in ("builtins", "__builtin__")
       for name, kind in (("set", set), ("frozenset", frozenset), ("bytearray", bytearray))},
    ("collections", "OrderedDict"): dict,
}
# How Python 3 pickles bytes under protocols 0-2: _codecs.encode(text, "latin1").
_BYTES_ENCODINGS = ("latin1", "latin-1", "iso-8859-1")


class RefusedGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allowed set."""


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    if not isinstance(encoding, str) or encoding.lower() not in _BYTES_ENCODINGS:
        raise RefusedGlobal(f"_codecs.encode with encoding {encoding!r}"[:120])
    return codecs.encode(text, "latin1")


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) not in _ALLOWED:
            raise RefusedGlobal(f"{module}.{name}"[:120])
        return _ALLOWED[(module, name)]


def load_pickle(path: Path, expected: str) -> Any:
    """The object a dataset pickle holds; anything but numpy arrays and plain containers, or bytes that are not
    a readable pickle, is one UsageError naming `path` and `expected` (the dataset's layout)."""
    try:
        with open(path, "rb") as handle:
            return _DataUnpickler(handle, encoding="latin1").load()
    except RefusedGlobal as error:
        raise UsageError(f"{path}: the pickle asks for {error}, which a dataset file never holds; refused (only numpy "
                         f"arrays and plain containers are read); expected {expected}") from None
    except OSError as error:
        raise UsageError(f"{path}: cannot be read ({error.strerror or error}); expected {expected}") from None
    except (MemoryError, RecursionError) as error:
        raise UsageError(f"{path}: a pickle too large or deep to read ({type(error).__name__}); expected "
                         f"{expected}") from None
    except Exception as error:  # any other failure on untrusted bytes is a malformed file, not a bug of ours
        detail = " ".join(str(error).split())[:80]
        raise UsageError(f"{path}: not a readable pickle ({type(error).__name__}: {detail}); expected "
                         f"{expected}") from None
