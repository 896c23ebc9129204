"""Ray's private API this project reaches, in one place: each wrapper names what it reaches and why no public API
does. tests/test_nas/test_compat.py checks them against the installed Ray and names the version they were written for."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ray._private import ray_constants


@contextlib.contextmanager
def cluster_mode(enabled: bool) -> Iterator[None]:
    """Ray's cluster mode (ray._private.ray_constants.ENABLE_RAY_CLUSTER) set to `enabled` for the block, then
    restored: Ray reads it from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER once, at import, and offers no setter."""
    kept = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = enabled
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = kept
