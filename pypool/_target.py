"""Which pool a report, snapshot or history call is about (shared by those modules).

Note [Reports never create pools]: the registry makes a device's pool on first use and
configures itself with defaults when nothing configured it. A report that created the
pool would freeze those defaults, and a later ``pypool.install(...)`` with other
settings would fail. So reading functions (:func:`fragmentation`, :func:`snapshot`) look
a registry pool up without creating it and report an empty pool when there is none;
only :func:`record_history` creates one, and only once the registry is configured.
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from . import _core
from ._pool import Pool

__all__ = ["default_device", "resolve_pool"]


def default_device() -> int:
    """The device a call without ``device=`` is about: torch's current CUDA device when
    torch has already initialized CUDA (never initializing it here), else 0."""
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_initialized():
                return int(torch.cuda.current_device())
        except Exception:  # a broken or partial torch must not break a report
            pass
    return 0


def _check_device(device: Any, name: str = "device") -> int:
    if isinstance(device, bool) or not isinstance(device, int):
        raise TypeError(f"{name}: expected an int device index or None, got {type(device).__name__}")
    if device < 0:
        raise ValueError(f"{name}: must be >= 0, got {device}")
    return device


def resolve_pool(device: Optional[int], pool: Any, create: bool, what: str) -> "tuple[Optional[Pool], int]":
    """Return ``(pool, device)`` for a call ``what(device=..., pool=...)``.

    ``pool`` may be a :class:`Pool` or a native ``_core.DevicePool``. Without one, the
    registry pool of ``device`` is used: ``None`` when it does not exist and ``create``
    is false (Note [Reports never create pools]).
    """
    if pool is not None:
        if isinstance(pool, _core.DevicePool):
            pool = Pool._wrap(pool)
        if not isinstance(pool, Pool):
            raise TypeError(f"{what}: pool must be a pypool.Pool, got {type(pool).__name__}")
        if device is not None and _check_device(device) != pool.device:
            raise ValueError(f"{what}: device={device} does not match pool.device={pool.device}")
        return pool, pool.device
    d = default_device() if device is None else _check_device(device)
    if _core.registry_has_pool(d):
        return Pool._wrap(_core.registry_pool(d)), d
    if not create:
        return None, d
    if not _core.registry_configured():
        raise RuntimeError(
            f"{what}: pypool is not installed yet (no pool for device {d}); call "
            "pypool.install(...) first, or pass pool= for a Pool of your own")
    return Pool._wrap(_core.registry_pool(d)), d
