"""Atomic file writes, and strict reads of the JSON files and paths users give.

A write goes to a temporary file beside the target, renamed over it once complete: a reader (or a crash) never
sees half a file, and a failed write leaves the old file as it was. The temporary file is created with the
umask's permissions, like any other file the project writes.

A read of a user's JSON is typed: `parse_json` refuses what is not strict JSON (NaN, Infinity, numbers beyond 64
bits, bytes that are not UTF-8), and `dataclass_from_json` checks each field's JSON type against the dataclass's
annotation, so a reader gets a valid object or one UsageError naming the file and the field.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import types
import typing
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


# Beyond 64 bits no count, seed or size in this project's files means anything; Python would parse 4,300 digits.
JSON_INT_LIMIT = 2**63


class _RefusedNumber(str):
    """A number `parse_json` refuses (NaN, Infinity, beyond 64 bits), kept as its text to name where it stands."""


def _refused_number_at(value: Any) -> tuple[str, str] | None:
    """(path, text) of the first refused number in a parsed document, walked without recursion (any depth)."""
    stack = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, _RefusedNumber):
            return path, str(item)
        children = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        stack.extend(reversed([(f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]", child)
                               for key, child in children]))
    return None


def parse_json(data: bytes | str, where: str, expected: str) -> Any:
    """JSON a user's file holds, strictly: bytes that are not UTF-8, malformed JSON, NaN or Infinity, an integer
    beyond 64 bits and nesting deeper than the parser's stack are each one UsageError naming `where` (and the
    field that holds a refused number)."""

    def finite_float(text: str) -> float | _RefusedNumber:
        value = float(text)
        return value if math.isfinite(value) else _RefusedNumber(text)

    def bounded_int(text: str) -> int | _RefusedNumber:
        # The length test first: Python refuses to convert more than 4,300 digits with a ValueError of its own.
        value = int(text) if len(text) <= 20 else None
        return value if value is not None and abs(value) < JSON_INT_LIMIT else _RefusedNumber(text)

    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        value = json.loads(text, parse_constant=_RefusedNumber, parse_float=finite_float, parse_int=bounded_int)
    except UnicodeDecodeError as error:
        raise UsageError(f"{where}: not UTF-8 text (byte {error.object[error.start]:#04x} at offset {error.start}); "
                         f"expected {expected}") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{where}: malformed JSON ({error.msg} at line {error.lineno} column {error.colno}); "
                         f"expected {expected}") from None
    except RecursionError:
        raise UsageError(f"{where}: JSON nested too deeply to read; expected {expected}") from None
    refused = _refused_number_at(value)
    if refused is not None:
        path, number = refused
        raise UsageError(f"{where}: {path.lstrip('.') or 'the value'} holds the number {number[:40]}; expected "
                         f"{expected} with finite numbers (integers below 2**63)")
    return value


def read_json_object(path: str | os.PathLike, expected: str) -> dict[str, Any]:
    """A JSON object from an existing file (`parse_json`'s rules); unreadable or not an object is one UsageError
    naming the file and `expected`."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UsageError(f"{path}: cannot be read ({error.strerror or error}); expected {expected}") from None
    value = parse_json(data, str(path), expected)
    if not isinstance(value, dict):
        raise UsageError(f"{path}: holds a JSON {_json_type(value)}; expected {expected}")
    return value


def user_path(text: str | os.PathLike, what: str) -> Path:
    """A path a user named, refused (one UsageError naming `what`) when no file system could hold it: empty, with
    a NUL byte or a character no file name can hold, or with a name longer than the file system allows. Whether
    it exists is the caller's question."""
    shown = repr(os.fspath(text))[:80]
    if not os.fspath(text):
        raise UsageError(f"{what}: empty; expected a path")
    try:
        os.stat(text)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        pass
    except OSError as error:
        if error.errno == errno.ENAMETOOLONG:
            raise UsageError(f"{what} {shown}: a name longer than the file system allows; expected a shorter "
                             "path") from None
    except ValueError:  # a NUL byte, or a character the file system's encoding lacks
        raise UsageError(f"{what} {shown}: holds a NUL byte or a character no file name can hold; expected a "
                         "path") from None
    return Path(text)


JSON_TYPES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null",
              dict: "an object", list: "a list", tuple: "a list"}


def _json_type(value: Any) -> str:
    kind = next((kind for kind in (bool, int, float, str, type(None), dict, list) if isinstance(value, kind)), None)
    return JSON_TYPES.get(kind, type(value).__name__).split(" ", 1)[-1]


def _shown(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def type_text(hint: Any) -> str:
    """How a JSON value of this annotation is described in an error: 'an integer', 'a list of integers or null'."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_text(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) in (tuple, list):
        args = typing.get_args(hint)
        if typing.get_origin(hint) is tuple and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values ({', '.join(type_text(arg) for arg in args)})"
        return f"a list of {type_text(args[0]).split(' ', 1)[1]}s"
    if typing.get_origin(hint) is dict or hint is dict:
        return "an object"
    if dataclasses.is_dataclass(hint):
        return f"an object of {hint.__name__} fields"
    return JSON_TYPES.get(hint, getattr(hint, "__name__", str(hint)))


def json_value(value: Any, hint: Any, path: str) -> Any:
    """`value` (parsed JSON) as the annotation `hint` reads it: a nested dataclass built (`dataclass_from_json`), a
    list made a tuple where a tuple is meant. Another JSON type, or a number that is not finite, is one UsageError
    naming `path` and the type expected."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return dataclass_from_json(hint, value, path)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            try:
                return json_value(value, arg, path)
            except UsageError:
                continue
    elif origin in (tuple, list):
        args = typing.get_args(hint)
        # tuple[int, ...] and list[int] hold any number of one type; tuple[str, int] one value of each, in order.
        items = value if isinstance(value, (list, tuple)) else None
        kinds = [args[0]] * len(items or ()) if origin is list or args[-1] is Ellipsis else list(args)
        if items is not None and len(items) == len(kinds):
            read = [json_value(item, kind, f"{path}[{index}]") for index, (item, kind) in enumerate(zip(items, kinds))]
            return tuple(read) if origin is tuple else read
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            args = typing.get_args(hint)
            return {key: json_value(item, args[1], f"{path}.{key}") for key, item in value.items()} if args else value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is type(None):
        if value is None:
            return value
    elif isinstance(value, hint):
        return value
    raise UsageError(f"{path}={_shown(value)}: expected {type_text(hint)}")


def check_json_fields(data: Any, hints: dict[str, Any], path: str = "") -> dict[str, Any]:
    """`data` as a JSON object holding each field of `hints` with its JSON type (`json_value`); a field whose type
    admits null may be absent. Other fields are left alone. One UsageError naming the first field that is not."""
    prefix = f"{path}." if path else ""
    if not isinstance(data, dict):
        raise UsageError(f"{path + ': ' if path else ''}expected a JSON object, got {_json_type(data)}")
    for name, hint in hints.items():
        if name not in data and not _admits_null(hint):
            raise UsageError(f"{prefix}{name} is missing: expected {type_text(hint)}")
        json_value(data.get(name), hint, prefix + name)
    return data


def _admits_null(hint: Any) -> bool:
    return hint is Any or type(None) in typing.get_args(hint)


def dataclass_from_json(cls: type, data: Any, path: str = "") -> Any:
    """An instance of the dataclass `cls` from a parsed JSON object, nested dataclasses too, each field read by
    `json_value`; an unknown field, a missing one without a default, or a value of the wrong JSON type is one
    UsageError naming the field by its dotted `path`. The dataclass's own checks (ranges) run as it is built."""
    if not isinstance(data, dict):
        raise UsageError(f"{path + ': ' if path else ''}expected a JSON object of {cls.__name__} fields, got "
                         f"{_json_type(data)}")
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UsageError(f"{path + ' has ' if path else ''}unknown fields {_shown(unknown)}: expected only "
                         f"{', '.join(sorted(fields))}")
    hints = typing.get_type_hints(cls)
    prefix = f"{path}." if path else ""
    missing = [name for name, field in fields.items() if name not in data and field.default is dataclasses.MISSING
               and field.default_factory is dataclasses.MISSING]
    if missing:
        raise UsageError(f"{prefix}{missing[0]} is missing: expected {type_text(hints[missing[0]])}")
    return cls(**{name: json_value(value, hints[name], prefix + name) for name, value in data.items()})


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str,
                   on_wait: typing.Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created, holding this process's id) for the block; the kernel drops the
    lock when a holder dies. Another process holding it is one UsageError naming `what` and that process, or,
    with `on_wait`, a wait for it: on_wait(holder's pid) is called once, then the lock is taken when it is free."""
    import fcntl

    path = Path(path)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            if on_wait is None:
                raise UsageError(f"{what} is in use by another process (pid {holder}): expected one at a time; wait "
                                 "for it to end, or stop it") from None
            on_wait(holder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        handle.close()
