"""Python stacks of allocations: capture (shared by leak tracking and memory history) and
the classification of their frames (whose code each frame is, the call site of an
allocation, a stack folded for a report).

While capture is on for a pool, the core records the calling thread's Python stack on
each allocation and stores an integer id for it with the block and its trace entries
(Note [Native stack capture] in csrc/bindings/stack_capture.cpp: the walk is done in
C++ and stacks are interned, so the same call site gives the same id). :func:`frames`
turns an id into ``[{filename, line, name}]`` only when a report asks.

Under the torch-facing history (``torch.cuda.memory._record_memory_history`` while
pypool is installed) a pool records torch's own CapturedTraceback instead, as torch does
(:func:`use_torch_stacks`, Note [Torch tracebacks] in stack_capture.cpp); those ids have
the top bit set and :func:`frames_of` symbolises them through torch, in one batch.

Capture is refcounted per pool so that a leak tracker and memory history can both ask
for it; :func:`capture_new_registry_pools` keeps it on for the registry's pools for the
rest of the process (the ``PYPOOL_LEAK_CHECK`` exit check).

:func:`frame_owner` says whose code a frame is (Note [User frames]), :func:`call_site`
picks the frame a report names, :func:`format_stack` renders a stack with library frames
folded.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
import sysconfig
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import _core

__all__ = ["acquire", "release", "frames", "frames_of", "use_torch_stacks", "torch_stacks",
           "capture_new_registry_pools", "frame_owner", "call_site", "format_stack", "format_frame"]

Frame = Dict[str, Any]

_lock = threading.Lock()
_refs: Dict[int, int] = {}  # id(native pool) -> capture refcount
_pools: Dict[int, Any] = {}  # keeps the pool objects alive while captured
_registry_sticky = False
# id(native pool) -> (pool, hook name) for pools whose capture uses torch's tracebacks
# (use_torch_stacks); the others use the native walker.
_torch_hooks: Dict[int, Tuple[Any, str]] = {}
TORCH_BIT: int = _core.TORCH_CONTEXT_BIT  # set on the ids of torch tracebacks


def _hook(key: int) -> str:
    entry = _torch_hooks.get(key)
    return entry[1] if entry is not None else "native"


def acquire(core_pool: Any) -> None:
    """Turn stack capture on for a native pool (refcounted)."""
    with _lock:
        key = id(core_pool)
        _refs[key] = _refs.get(key, 0) + 1
        _pools[key] = core_pool
        if _refs[key] == 1:
            core_pool.set_capture_context(True, _hook(key))


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
        for pool, hook in _torch_hooks.values():  # that put the native hook on every pool
            pool.set_capture_context(True, hook)


def use_torch_stacks(core_pool: Any, stacks: Optional[str]) -> None:
    """Which stacks a native pool records while capture is on: ``"python"`` (torch's
    Python and TorchScript frames) or ``"all"`` (and C++ frames) through torch's
    CapturedTraceback, or ``None`` for pypool's native walker (the default). Only for
    registry pools (their tracebacks are collected by what they still name). Needs torch
    imported when not ``None``."""
    if stacks not in (None, "python", "all"):
        raise ValueError(f"stacks: expected None, 'python' or 'all', got {stacks!r}")
    hook = "native" if stacks is None else "torch_" + stacks
    if stacks is not None:
        if not _core.registry_owns(core_pool):
            raise ValueError("use_torch_stacks: only registry pools record torch tracebacks")
        torch = sys.modules.get("torch")
        if torch is None:
            raise RuntimeError(f"use_torch_stacks({stacks!r}): import torch first (its CapturedTraceback records the stacks)")
        _core.set_torch_traceback_gather(torch._C._profiler.gather_traceback)
    with _lock:
        key = id(core_pool)
        if hook == _hook(key):
            return
        if stacks is None:
            del _torch_hooks[key]
        else:
            _torch_hooks[key] = (core_pool, hook)
        if _refs.get(key, 0) > 0 or (_registry_sticky and _core.registry_owns(core_pool)):
            core_pool.set_capture_context(True, hook)  # swaps the hook of running capture


def torch_stacks(core_pool: Any) -> Optional[str]:
    """What :func:`use_torch_stacks` set for a pool (``None``: the native walker)."""
    with _lock:
        hook = _hook(id(core_pool))
    return None if hook == "native" else hook[len("torch_"):]


def frames(context_id: int) -> List[Dict[str, Any]]:
    """The stack of a context id, innermost frame first: ``[{filename, line, name}]``
    (the schema of torch memory snapshots); ``[]`` for 0 or an unknown id."""
    if context_id <= 0:
        return []
    if context_id & TORCH_BIT:
        return frames_of([context_id])[context_id]
    return _core.context_frames(context_id)  # type: ignore[no-any-return]


def frames_of(context_ids: Sequence[int]) -> Dict[int, List[Dict[str, Any]]]:
    """:func:`frames` of many ids; torch tracebacks are symbolised in one call (torch's
    symbolize_tracebacks, whose first call in a process takes seconds)."""
    out: Dict[int, List[Dict[str, Any]]] = {}
    torch_ids: List[int] = []
    for c in dict.fromkeys(context_ids):
        if c > 0 and c & TORCH_BIT:
            torch_ids.append(c)
        else:
            out[c] = frames(c)
    if torch_ids:
        tbs = _core.torch_tracebacks(torch_ids)
        have = [(c, tb) for c, tb in zip(torch_ids, tbs) if tb is not None]
        for c in torch_ids:
            out[c] = []  # collected (no block or entry named it any more)
        torch = sys.modules.get("torch")
        if have and torch is not None:
            symbolized = torch._C._profiler.symbolize_tracebacks([tb for _, tb in have])
            for (c, _), fs in zip(have, symbolized):
                out[c] = [{"filename": f["filename"], "line": f["line"], "name": f["name"]}
                          for f in _from_entry_point(fs)]
    return out


# pypool's C entry points, which torch's pluggable allocator calls (csrc/abi/c_api.cpp).
_ENTRY_POINTS = frozenset({"pypool_malloc", "pypool_free", "pypool_torch_malloc", "pypool_torch_free",
                           "pypool_empty_cache"})


def _from_entry_point(fs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """C++ frames from pypool's entry point outwards: the frames inside it (the unwinder,
    gather_traceback's call from the hook, the pool) say nothing about the caller, and
    pypool's own are misnamed (its symbols are hidden). Unchanged without C++ frames."""
    for i, f in enumerate(fs):
        if f["name"] in _ENTRY_POINTS:
            return fs[i:]
    return fs


# ---------------------------------------------------------------------------- whose frames

_PYPOOL_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


@functools.lru_cache(maxsize=1)
def _torch_dir() -> Optional[str]:
    """Directory of the torch package, found without importing torch."""
    mod = sys.modules.get("torch")
    origin = getattr(mod, "__file__", None) if mod is not None else None
    if origin is None:
        try:
            spec = importlib.util.find_spec("torch")
        except (ImportError, ValueError):
            spec = None
        origin = spec.origin if spec is not None else None
    return os.path.dirname(os.path.abspath(origin)) + os.sep if origin else None


@functools.lru_cache(maxsize=1)
def _stdlib_dirs() -> Tuple[str, ...]:
    paths = sysconfig.get_paths()
    out = {os.path.abspath(paths[k]) + os.sep for k in ("stdlib", "platstdlib") if k in paths}
    return tuple(sorted(out))


@functools.lru_cache(maxsize=4096)
def frame_owner(filename: str) -> Optional[str]:
    """Who a frame belongs to: ``None`` for user code, else the name of the library
    (``"pypool"``, ``"torch"``, ``"stdlib"`` or an installed package's top-level name).

    Note [User frames]: a frame is the user's unless it is inside pypool, torch, the
    standard library or an installed package (site-packages / dist-packages). The call
    site of an allocation is its innermost user frame: for ``nn.Linear(...)`` that is the
    line of the user's model code, not torch's ``Linear.__init__``; for a test, the test
    function rather than pytest's machinery.
    """
    if filename.startswith("<frozen"):
        return "stdlib"
    if filename.startswith("<"):
        return None  # "<string>", "<stdin>", notebooks: code the user typed
    path = os.path.abspath(filename)
    if path.startswith(_PYPOOL_DIR):
        return "pypool"
    torch_dir = _torch_dir()
    if torch_dir is not None and path.startswith(torch_dir):
        return "torch"
    for marker in (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep):
        i = path.rfind(marker)
        if i >= 0:
            rest = path[i + len(marker):]
            top = rest.split(os.sep, 1)[0]
            return top[:-3] if top.endswith(".py") else top
    for d in _stdlib_dirs():
        if path.startswith(d):
            return "stdlib"
    return None


def _short_path(filename: str) -> str:
    """A path readable in a report: relative to the working directory when below it,
    relative to site-packages for installed code, else unchanged."""
    if filename.startswith("<"):
        return filename
    path = os.path.abspath(filename)
    try:
        cwd = os.getcwd() + os.sep
    except OSError:
        cwd = None
    if cwd is not None and path.startswith(cwd):
        return path[len(cwd):]
    for marker in (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep):
        i = path.rfind(marker)
        if i >= 0:
            return path[i + len(marker):]
    return filename


def format_frame(f: Frame) -> str:
    return f"{_short_path(f['filename'])}:{f['line']} {f['name']}"


def _fold_label(owners: List[str]) -> str:
    names: List[str] = []
    for o in owners:
        if o not in names:
            names.append(o)
    n = len(owners)
    return f"… {n} {'frame' if n == 1 else 'frames'} in {', '.join(names)}"


def format_stack(frames: Sequence[Frame], max_user_frames: int = 8) -> List[str]:
    """Render a stack (innermost first, as :func:`frames` gives it) as
    lines ``file:line function``: user frames shown, each run of library frames (pypool,
    torch, the standard library, installed packages) folded into one line such as
    ``… 3 frames in torch``. At most ``max_user_frames`` user frames are shown."""
    lines: List[str] = []
    run: List[str] = []
    shown = 0
    for i, f in enumerate(frames):
        owner = frame_owner(f["filename"])
        if owner is not None:
            run.append(owner)
            continue
        if run:
            lines.append(_fold_label(run))
            run = []
        if shown == max_user_frames:
            rest = len(frames) - i
            lines.append(f"… {rest} more {'frame' if rest == 1 else 'frames'}")
            return lines
        lines.append(format_frame(f))
        shown += 1
    if run:
        lines.append(_fold_label(run))
    return lines


def call_site(frames: Sequence[Frame]) -> Optional[Frame]:
    """The innermost user frame; failing that the innermost frame outside pypool."""
    for f in frames:
        if frame_owner(f["filename"]) is None:
            return f
    for f in frames:
        if frame_owner(f["filename"]) != "pypool":
            return f
    return None
