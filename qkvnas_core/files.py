"""Atomic file writes: a temporary file beside the target, renamed over it once complete.

A reader (or a crash) never sees half a file, and a failed write leaves the old file as it was. The
temporary file is created with the umask's permissions, like any other file the project writes.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qkvnas_core.errors import UsageError


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to `path` to write to; moved over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | os.PathLike, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json_object(path: str | os.PathLike, expected: str) -> dict[str, Any]:
    """A JSON object from an existing file; unreadable, corrupt or not an object is one UsageError naming `expected`."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{path}: corrupt JSON ({str(error).splitlines()[0]}); expected {expected}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: holds a JSON {type(data).__name__}; expected {expected}")
    return data


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created, holding this process's id) for the block. Another process
    holding it is one UsageError naming `what` and that process; the kernel drops the lock when a holder dies."""
    import fcntl

    path = Path(path)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise UsageError(f"{what} is in use by another process (pid {holder}): expected one at a time; wait for "
                             "it to end, or stop it") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()
