"""How a message names a setting the user gave: as the `nas` flag that sets it (`--max-flops 3.1X`), or, inside a
call of the Python API (nas/api.py), as the keyword argument (`max_flops='3.1X'`).

The libraries build their messages with `named` and `given`; the API calls them inside `python_names()`, a
context manager like timm's `set_layer_config`, so one message serves both front doors.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_PYTHON_NAMES: ContextVar[bool] = ContextVar("qkvnas_python_names", default=False)


def named(name: str) -> str:
    """A setting's name: 'max_flops' -> '--max-flops', or 'max_flops' in the Python API."""
    return name if _PYTHON_NAMES.get() else "--" + name.replace("_", "-")


def given(name: str, value: object) -> str:
    """A setting with its value: '--max-flops 3.1X', or "max_flops='3.1X'" in the Python API."""
    return f"{named(name)}={value!r}" if _PYTHON_NAMES.get() else f"{named(name)} {value}"


@contextlib.contextmanager
def python_names() -> Iterator[None]:
    """Messages raised inside name settings as Python keyword arguments."""
    token = _PYTHON_NAMES.set(True)
    try:
        yield
    finally:
        _PYTHON_NAMES.reset(token)
