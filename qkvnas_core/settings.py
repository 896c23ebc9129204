"""A setting declared once: a dataclass field whose metadata (`Setting`) holds its flag's help, parser, group and
whether a resume may change it. nas/settings/requests.py derives the flags, the API's keywords and the checks from such
fields; the field itself lives with the dataclass it configures, whichever layer that is (the requests of
nas/settings/requests.py).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SETTING = "setting"


@dataclass(frozen=True)
class Setting:
    """A setting's flag: `help` (for a VOCABULARY word: what this command adds to its meaning), the parser of its
    text (the argparse type; None: the text itself, or a switch where `metavar` is None too), the `group` it shows
    in, what its default means where the value alone does not say (`default_text`), whether a resume may change
    it, the older spellings of its flag still read (hidden from --help), whether the flag may be given again
    (`repeat`: each value adds to the field's tuple), and whether its text is a comma-separated list (`listed`: the
    Python API takes a list for it and joins it)."""

    help: str
    parse: Callable[[str], Any] | None = None
    metavar: str | None = None
    group: str = "output"
    default_text: str | None = None
    resumable: bool = False
    aliases: tuple[str, ...] = ()
    repeat: bool = False
    listed: bool = False

    def flag(self, name: str) -> str:
        return "--" + name.replace("_", "-")


def setting(default: Any = dataclasses.MISSING, *, default_factory: Any = dataclasses.MISSING, **spec: Any) -> Any:
    """A dataclass field that is a setting with a flag (`spec`: Setting's fields)."""
    return field(default=default, default_factory=default_factory, metadata={SETTING: Setting(**spec)})


def settings_of(cls: type) -> dict[str, tuple[dataclasses.Field, Setting]]:
    """The fields of `cls` that are settings with a flag, by name, in declaration order."""
    return {item.name: (item, item.metadata[SETTING]) for item in dataclasses.fields(cls) if SETTING in item.metadata}
