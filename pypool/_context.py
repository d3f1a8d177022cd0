"""Python stack capture for allocations (shared by leak tracking and memory history).

The core calls one Python function on each allocation while capture is on for a pool
(``DevicePool.set_capture_context``); it returns an integer id for the caller's stack.
Stacks are interned: the same call site returns the same id, and frames are only turned
into strings when a report asks for them.

Note [Stack capture cost]: the hook walks ``sys._getframe`` and interns a tuple of
(code object, line) pairs; no strings are built on the hot path. Capture is refcounted
per pool so that a leak tracker and memory history can both ask for it.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Dict, List, Tuple

from . import _core

__all__ = ["acquire", "release", "frames", "MAX_FRAMES"]

MAX_FRAMES = 48

_lock = threading.Lock()
_ids: Dict[Tuple[Any, ...], int] = {}
_stacks: List[Tuple[Any, ...]] = [()]  # id 0 = no stack
_refs: Dict[int, int] = {}  # id(core pool) -> capture refcount
_pools: Dict[int, Any] = {}


def _capture() -> int:
    f = sys._getframe(1)
    key = []
    n = 0
    while f is not None and n < MAX_FRAMES:
        key.append(f.f_code)
        key.append(f.f_lineno)
        f = f.f_back
        n += 1
    k = tuple(key)
    i = _ids.get(k)
    if i is None:
        with _lock:
            i = _ids.get(k)
            if i is None:
                i = len(_stacks)
                _stacks.append(k)
                _ids[k] = i
    return i


def acquire(core_pool: Any) -> None:
    """Turn stack capture on for a native pool (refcounted)."""
    with _lock:
        _core.set_context_function(_capture)
        key = id(core_pool)
        _refs[key] = _refs.get(key, 0) + 1
        _pools[key] = core_pool
        if _refs[key] == 1:
            core_pool.set_capture_context(True)


def release(core_pool: Any) -> None:
    """Undo one :func:`acquire`; capture stops when the last user releases."""
    with _lock:
        key = id(core_pool)
        n = _refs.get(key, 0)
        if n <= 0:
            return
        if n == 1:
            del _refs[key]
            _pools.pop(key, None)
            core_pool.set_capture_context(False)
        else:
            _refs[key] = n - 1


def frames(context_id: int) -> List[Dict[str, Any]]:
    """The stack of a context id, innermost frame first: ``[{filename, line, name}]``
    (the schema of torch memory snapshots)."""
    if context_id <= 0 or context_id >= len(_stacks):
        return []
    k = _stacks[context_id]
    return [
        {"filename": k[i].co_filename, "line": k[i + 1], "name": k[i].co_name}
        for i in range(0, len(k), 2)
    ]
