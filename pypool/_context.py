"""Python stack capture for allocations (shared by leak tracking and memory history).

While capture is on for a pool, the core records the calling thread's Python stack on
each allocation and stores an integer id for it with the block and its trace entries
(Note [Native stack capture] in csrc/bindings/stack_capture.cpp: the walk is done in
C++ and stacks are interned, so the same call site gives the same id). :func:`frames`
turns an id into ``[{filename, line, name}]`` only when a report asks.

Capture is refcounted per pool so that a leak tracker and memory history can both ask
for it; :func:`capture_new_registry_pools` keeps it on for the registry's pools for the
rest of the process (the ``PYPOOL_LEAK_CHECK`` exit check).
"""

from __future__ import annotations

import threading
from typing import Any, Dict, List

from . import _core

__all__ = ["acquire", "release", "frames", "capture_new_registry_pools"]

_lock = threading.Lock()
_refs: Dict[int, int] = {}  # id(native pool) -> capture refcount
_pools: Dict[int, Any] = {}  # keeps the pool objects alive while captured
_registry_sticky = False


def acquire(core_pool: Any) -> None:
    """Turn stack capture on for a native pool (refcounted)."""
    with _lock:
        key = id(core_pool)
        _refs[key] = _refs.get(key, 0) + 1
        _pools[key] = core_pool
        if _refs[key] == 1:
            core_pool.set_capture_context(True)


def release(core_pool: Any) -> None:
    """Undo one :func:`acquire`; capture stops when the last user releases (except on
    registry pools while :func:`capture_new_registry_pools` is on)."""
    with _lock:
        key = id(core_pool)
        n = _refs.get(key, 0)
        if n <= 0:
            return
        if n > 1:
            _refs[key] = n - 1
            return
        del _refs[key]
        _pools.pop(key, None)
        if not (_registry_sticky and _core.registry_owns(core_pool)):
            core_pool.set_capture_context(False)


def capture_new_registry_pools(on: bool = True) -> None:
    """Capture stacks on every registry pool, including those C++ makes later (at a
    device's first allocation), for the rest of the process."""
    global _registry_sticky
    with _lock:
        _registry_sticky = on
        _core.registry_capture_new_pools(on)


def frames(context_id: int) -> List[Dict[str, Any]]:
    """The stack of a context id, innermost frame first: ``[{filename, line, name}]``
    (the schema of torch memory snapshots); ``[]`` for 0 or an unknown id."""
    if context_id <= 0:
        return []
    return _core.context_frames(context_id)
