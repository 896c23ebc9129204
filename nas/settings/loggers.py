"""`--logger`: the experiment trackers a search's trials report to, as a setting (the names, the default, the check
that each one's package is installed); nas.runtime.tracking makes Ray Tune's callbacks of them."""
from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from qkvnas_core.errors import UsageError
from nas.settings.naming import given

# Each logger and the module it needs, which is also its pip name.
LOGGER_MODULES = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}
DEFAULT_LOGGERS = ("tensorboard",)
NO_LOGGERS = "none"


def parse_loggers(text: str) -> list[str]:
    """The `--logger` value: 'tensorboard,mlflow' -> ['tensorboard', 'mlflow']; 'none' -> []."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == [NO_LOGGERS]:
        return []
    _check_names(names or [text])
    return names


def check_loggers(names: Sequence[str]) -> None:
    """Known loggers, each once, each one's package installed; else one UsageError naming --logger."""
    _check_names(names)
    for name in names:
        module = LOGGER_MODULES[name]
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"{_given([name])}: {module} is not installed; pip install {module}")


def _check_names(names: Sequence[str]) -> None:
    if isinstance(names, str) or any(name not in LOGGER_MODULES for name in names) or len(set(names)) != len(names):
        raise UsageError(f"{_given(names)}: expected {NO_LOGGERS}, or any of {', '.join(LOGGER_MODULES)} "
                         "comma-separated, each once")


def _given(names: Sequence[str]) -> str:
    """'--logger tensorboard,mlflow', or "logger='tensorboard,mlflow'" inside the Python API (nas.settings.naming)."""
    return given("logger", names if isinstance(names, str) else ",".join(map(str, names)) or NO_LOGGERS)
