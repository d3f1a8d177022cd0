"""Which pool a report, snapshot or history call is about (shared by those modules).

Note [Reports never create pools]: a pool, once made, fixes the registry's settings, and
on a GPU it retains the device's context. So reading functions (:func:`fragmentation`,
:func:`snapshot`) look a registry pool up without creating it and report an empty pool
when there is none; :func:`record_history` creates one, configuring the registry from
``$PYPOOL_CONF`` when nothing did yet. The whole rule: Note [Pools before install] in
``memory.py``.
"""

from __future__ import annotations

from typing import Any, Optional

from . import _core
from ._pool import Pool
from .memory import _checked_device, _device_index, _ensure_registry

__all__ = ["resolve_pool"]


def resolve_pool(device: Any, pool: Any, create: bool, what: str) -> "tuple[Optional[Pool], int]":
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
        if device is not None and _device_index(device) != pool.device:
            raise ValueError(f"{what}: device={device} does not match pool.device={pool.device}")
        return pool, pool.device
    d = _checked_device(device)  # None: torch's current device once CUDA is up, else 0
    if _core.registry_has_pool(d):
        return Pool._wrap(_core.registry_pool(d)), d
    if not create:
        return None, d
    _ensure_registry()  # Note [Pools before install]
    return Pool._wrap(_core.registry_pool(d)), d
