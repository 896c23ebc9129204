"""The library's messages: Python's logging, under one logger tree named "qkvnas".

Each module logs to `log = logger(__name__)` ("qkvnas.nas.winners.retrain", "qkvnas.trainers.model_folder"): the
lines a command shows at INFO, a warning at WARNING, a model's failure that the run survives at ERROR. The library
prints nothing, shows nothing by itself (the tree's root has a NullHandler) and configures no other library's
logging: the application does. `nas` (nas/cli.py) shows the tree's lines for a command's duration; the Python API forwards
them to its `progress` callback (`Forward`); a notebook sees them with `logging.basicConfig(level=logging.INFO)`.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

ROOT = "qkvnas"
logging.getLogger(ROOT).addHandler(logging.NullHandler())


def logger(name: str) -> logging.Logger:
    """The logger of module `name` in the tree: logger(__name__) in nas/winners/retrain.py is
    "qkvnas.nas.winners.retrain"."""
    return logging.getLogger(f"{ROOT}.{name}")


def line(record: logging.LogRecord) -> str:
    """A record's line: the message object itself when it is a str logged without arguments (a
    nas.engine.progress.ProgressLine keeps its figures), else the formatted message."""
    if isinstance(record.msg, str) and not record.args:
        return record.msg
    return record.getMessage()


class Forward(logging.Handler):
    """Gives each record's line (`line`) to `callback`: the Python API's `progress=print` or `lines.append`.

    The callback is the caller's code: the first exception it raises is kept in `error` (not printed through
    Handler.handleError, nor raised into whatever library logged the line), no line is given to it after that, and
    the work that logs watches `failed` to stop cleanly, then the caller raises `error` (nas.api)."""

    def __init__(self, callback: Callable[[str], None], level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.callback = callback
        self.error: Exception | None = None

    def failed(self) -> bool:
        return self.error is not None

    def emit(self, record: logging.LogRecord) -> None:
        if self.error is not None:
            return
        try:
            self.callback(line(record))
        except Exception as error:  # the caller's own exception, given back to the caller
            self.error = error


class _Onward(logging.Handler):
    """Passes a record on to the handlers above the tree, as propagation would (see `handled_by`)."""

    def emit(self, record: logging.LogRecord) -> None:
        above = logging.getLogger(ROOT).parent
        while above is not None:
            for handler in above.handlers:
                if record.levelno >= handler.level:
                    handler.handle(record)
            if not above.propagate:
                break
            above = above.parent


@contextlib.contextmanager
def handled_by(handler: logging.Handler, level: int = logging.INFO) -> Iterator[logging.Handler]:
    """`handler` gets the tree's records at `level` and above for the duration, then everything is as before.

    Where the tree passed fewer records (a level above `level`, as Python's default WARNING), it passes `level`
    and up while this lasts, but only to its own handlers: the handlers above it (the root logger's, which a
    program or pytest configured) still get only what they got before, not the extra lines.
    """
    tree = logging.getLogger(ROOT)
    before = (tree.level, tree.propagate)
    threshold = tree.getEffectiveLevel()
    added = [handler]
    if threshold > level:
        onward = _Onward(threshold)
        added.append(onward)
        tree.setLevel(level)
        tree.propagate = False
    if handler.level < level:
        handler.setLevel(level)
    for each in added:
        tree.addHandler(each)
    try:
        yield handler
    finally:
        for each in added:
            tree.removeHandler(each)
        tree.setLevel(before[0])
        tree.propagate = before[1]
