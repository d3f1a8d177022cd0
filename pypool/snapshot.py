"""Memory snapshots and allocation history in PyTorch's snapshot schema.

With pypool installed, ``torch.cuda.memory._snapshot()`` and
``torch.cuda.memory._record_memory_history()`` raise (the pluggable allocator does not
support them). These functions give the same things back:

* :func:`record_history` turns on the pool's ring buffer of allocator events (and,
  with ``stacks="python"``, Python stack capture for each allocation);
* :func:`snapshot` returns a dict in the schema of ``torch.cuda.memory._snapshot()``
  (README, "Memory reports, snapshots and history"): ``segments`` with their ``blocks``, ``device_traces`` and
  ``allocator_settings``, so torch's offline tools read it;
* :func:`dump_snapshot` pickles it to a file, as ``torch.cuda.memory._dump_snapshot``:
  ``python -m torch.cuda._memory_viz stats|trace FILE`` and the page at
  pytorch.org/memory_viz open it; ``python -m pypool report FILE`` reports on it.

Example::

    pypool.record_history(max_entries=100_000)
    train_step()
    pypool.dump_snapshot("step.pickle")
"""

from __future__ import annotations

import io
import os
import pickle
import threading
import time
from typing import Any, Dict, List, Optional, Union

from . import _context, _core
from ._files import FORMAT_HEADER, read_maybe_gzipped, show
from ._pool import Pool
from ._registry import pending_config, resolve_pool
from ._version import __version__
from .config import PoolConfig, interval_divisions, parse_size

MiB = 1 << 20

__all__ = ["snapshot", "record_history", "dump_snapshot", "load_snapshot"]

PathLike = Union[str, "os.PathLike[str]"]

_lock = threading.Lock()
# id(native pool) -> native pool, for pools whose stack capture record_history turned on
# (the reference keeps the id from being reused while we hold capture).
_capturing: Dict[int, Any] = {}

MAX_HISTORY = 1 << 26  # ring entries record_history accepts (each is tens of bytes)


def record_history(
    enabled: Union[bool, str, None] = True,
    max_entries: int = 100_000,
    stacks: str = "python",
    device: Optional[int] = None,
    pool: Optional[Pool] = None,
    free_stacks: bool = False,
) -> None:
    """Start or stop recording allocator events, like torch's ``_record_memory_history``.

    Args:
        enabled: ``True`` (or ``"all"``) records every event (alloc, free_requested,
            free_completed, segment_alloc / segment_free / segment_map / segment_unmap,
            oom) into a ring buffer of ``max_entries``; ``"state"`` records no events but
            keeps a stack for each live block; ``False`` (or ``None``) stops both and
            drops the buffer.
        max_entries: ring buffer size; the oldest events are overwritten. Calling again
            with another size starts a new, empty buffer.
        stacks: ``"python"`` keeps the Python stack of every allocation (shown as
            ``frames`` in the snapshot); ``"none"`` keeps none (cheaper).
        device: which registry pool (default: torch's current device, else 0). The
            pool is made if it does not exist yet, from ``$PYPOOL_CONF`` before
            ``install()`` and on the host backend without a GPU (Note [Pools before
            install] in :mod:`pypool.memory`); a device that does not exist raises
            ``ValueError``.
        pool: a :class:`~pypool.Pool` of your own instead of the registry's. While stack
            capture is on, its native pool is kept alive: turn history off
            (``record_history(False, pool=p)``) before dropping such a pool.
        free_stacks: with ``stacks="python"``, also record the stack of each free (its
            ``free_requested`` / ``free_completed`` entries carry it instead of the
            allocation's) and of each ``empty_cache`` (on the ``segment_free`` /
            ``segment_unmap`` entries it makes), as torch's ``context="all"`` does. Each
            free then takes the GIL, as each allocation already does.
    """
    if enabled is None or enabled is False:
        mode = "off"
    elif enabled is True or enabled == "all":
        mode = "all"
    elif enabled == "state":
        mode = "state"
    else:
        raise ValueError(f"enabled: expected True, False, None, 'all' or 'state', got {enabled!r}")
    if stacks not in ("python", "none"):
        raise ValueError(f"stacks: expected 'python' or 'none', got {stacks!r}")
    if isinstance(max_entries, bool) or not isinstance(max_entries, int) or not 1 <= max_entries <= MAX_HISTORY:
        # The ring is allocated (and touched) up front: a huge size would take the
        # machine's memory or reach pybind11 as an unconvertible int.
        raise ValueError(f"max_entries: expected an int in 1..{MAX_HISTORY}, got {max_entries!r}")
    if not isinstance(free_stacks, bool):
        raise TypeError(f"free_stacks: expected a bool, got {type(free_stacks).__name__}")
    if free_stacks and stacks == "none":
        raise ValueError("free_stacks=True needs stacks='python'")
    if mode == "state" and stacks == "none":
        raise ValueError("stacks: enabled='state' only keeps stacks, so stacks='none' would record nothing")
    target, _ = resolve_pool(device, pool, create=mode != "off", what="record_history")
    if target is None:  # turning off a registry pool that was never made: nothing to do
        return
    core = target._pool
    if mode == "all":
        core.set_history(True, max_entries)
    else:
        core.set_history(False, 0)
    want_stacks = mode != "off" and stacks == "python"
    core.set_capture_free_context(want_stacks and free_stacks)
    with _lock:
        have = id(core) in _capturing
        if want_stacks and not have:
            _context.acquire(core)
            _capturing[id(core)] = core
        elif not want_stacks and have:
            _context.release(core)
            del _capturing[id(core)]


def snapshot(device: Optional[int] = None, pool: Optional[Pool] = None) -> Dict[str, Any]:
    """The state of a pool as a dict in the schema of ``torch.cuda.memory._snapshot()``.

    Keys: ``segments`` (each with ``device``, ``address``, ``total_size``,
    ``allocated_size``, ``active_size``, ``requested_size``, ``stream``,
    ``segment_type``, ``segment_pool_id``, ``is_expandable``, ``frames`` and ``blocks``
    of ``address``, ``size``, ``requested_size``, ``state``, ``frames``),
    ``device_traces`` (one list per device index up to ``device``, the recorded events
    of this pool at its index) and ``allocator_settings``; plus a ``pypool`` entry with
    the pool's ``memory_stats`` (torch's tools ignore it; pypool's reports use it).

    Without ``pool``, the registry pool of ``device``; a device without a pool gives an
    empty snapshot (no pool is created) with the settings the pool would get, and a
    device that does not exist raises ``ValueError`` (Note [Pools before install] in
    :mod:`pypool.memory`). ``allocator_settings["PYPOOL_CONF"]`` is the settings in effect
    in ``PYPOOL_CONF`` syntax, not the environment variable.
    """
    target, d = resolve_pool(device, pool, create=False, what="snapshot")
    traces: List[List[Dict[str, Any]]] = [[] for _ in range(d + 1)]
    out: Dict[str, Any] = {"segments": [], "device_traces": traces}
    if target is None:
        # What the pool will have, once made.
        out["allocator_settings"] = _settings(pending_config())
        out["pypool"] = _extra(d, None, None)
        return out
    core = target._pool
    # Read history before segments: an event racing with the snapshot then shows up in
    # the segments rather than as a trace entry for a block the segments lack.
    history = core.history()
    segments = target.segments()
    stats = target.memory_stats()
    frames_of = _FrameCache()
    frames_of.prefetch([b["context"] for s in segments for b in s["blocks"]] + [e["context"] for e in history])
    out["segments"] = [_segment(s, d, frames_of) for s in segments]
    traces[d] = _trace(history, frames_of)
    # The fraction in effect now: set_memory_fraction (and torch's
    # set_per_process_memory_fraction) change it after the pool was made.
    fraction = float(core.memory_fraction())
    out["allocator_settings"] = _settings(
        PoolConfig.from_core(core.config).replace(memory_fraction=None if fraction == 0.0 else fraction))
    out["pypool"] = _extra(d, target.backend_name, stats)
    return out


def dump_snapshot(path: PathLike, device: Optional[int] = None, pool: Optional[Pool] = None) -> str:
    """Pickle :func:`snapshot` to ``path`` (what ``torch.cuda.memory._dump_snapshot``
    writes); returns the path."""
    _check_path(path)
    data = snapshot(device=device, pool=pool)
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return os.fspath(path)


def _check_path(path: Any) -> None:
    # open() takes an int as a file descriptor: it would use, then close, that one.
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every global: snapshot pickles hold only dicts, lists, strings and numbers,
    and refusing classes makes loading a hostile file unable to run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a memory snapshot holds only plain "
            "data (dicts, lists, strings, numbers)")


def load_snapshot(path: PathLike) -> Dict[str, Any]:
    """Read a snapshot pickle (pypool's or torch's ``_dump_snapshot``, gzipped or not)
    safely: only plain data is accepted. A bare list of segments (older torch) becomes
    ``{"segments": ..., "device_traces": []}``. A file that is not a readable snapshot
    raises ``ValueError`` naming it (and the segment or block field that is wrong);
    ``OSError`` when it cannot be read at all.

    The one snapshot loader: ``python -m pypool report``, :meth:`pypool.trace.Trace.load`
    and :func:`pypool.trace.load_torch_snapshot` read snapshots through it.
    """
    _check_path(path)
    return snapshot_from_bytes(read_maybe_gzipped(path), os.fsdecode(os.fspath(path)))


def snapshot_from_bytes(data: bytes, where: str, for_replay: bool = False) -> Dict[str, Any]:
    """:func:`load_snapshot` of bytes already read (gunzipped) from the file ``where``.

    ``for_replay``: the caller replays the allocation history (``Trace.load``), so a dict
    with ``device_traces`` but no ``segments`` is fine, and a bare segment list, which
    has no history, is refused saying so."""
    # A snapshot file is user input: corrupt, truncated or gzipped data must give a
    # ValueError naming the file, not the unpickler's own exception (UnpicklingError,
    # EOFError, RecursionError, ...).
    if data.lstrip().startswith(FORMAT_HEADER.encode()):
        raise ValueError(f"{where}: is a pypool trace (allocation events), not a readable torch memory "
                         f"snapshot; `python -m pypool replay {where} --report DIR` writes its reports")
    try:
        snap = _PlainUnpickler(io.BytesIO(data)).load()
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError):
            why = f"not a readable torch memory snapshot: {e}"
        else:  # a truncated or corrupt pickle raises many types
            why = f"not a readable torch memory snapshot: corrupt or truncated pickle ({type(e).__name__}: {e})"
        if data[:1] != b"\x80":  # every snapshot writer uses pickle protocol 2 or later
            why = ("not a memory snapshot: expected a pickle from pypool.dump_snapshot or "
                   f"torch.cuda.memory._dump_snapshot ({why})")
        raise ValueError(f"{where}: {why}"[:300]) from None
    if isinstance(snap, list) and all(isinstance(seg, dict) for seg in snap):
        if for_replay:
            raise ValueError(f"{where}: a bare list of segments (the snapshot format of older torch) holds no "
                             f"allocation history to replay; `python -m pypool report {where}` shows its segments")
        snap = {"segments": snap, "device_traces": []}  # older torch: the bare segment list
    if not isinstance(snap, dict):
        raise ValueError(f"{where}: expected a torch memory snapshot (a pickled dict with 'segments' and "
                         f"'device_traces'), found a pickled {type(snap).__name__}")
    if "segments" not in snap:
        if for_replay and "device_traces" in snap:
            return snap  # the history alone is what a replay reads
        raise ValueError(f"{where}: not a memory snapshot: expected a pickled dict with 'segments', found a "
                         "pickled dict without it")
    if not isinstance(snap["segments"], list):
        raise ValueError(f"{where}: not a memory snapshot: 'segments' must be a list, got "
                         f"{type(snap['segments']).__name__}")
    for i, seg in enumerate(snap["segments"]):
        _check_fields(seg, f"{where}: segments[{i}]", _SEGMENT_INTS)
        blocks = seg.get("blocks", [])
        if not isinstance(blocks, list):
            raise ValueError(f"{where}: segments[{i}].blocks: expected a list, got {type(blocks).__name__}")
        for j, b in enumerate(blocks):
            _check_fields(b, f"{where}: segments[{i}].blocks[{j}]", _BLOCK_INTS)
    return snap


_U64_MAX = (1 << 64) - 1
_SEGMENT_INTS = ("device", "address", "total_size", "allocated_size", "active_size", "requested_size", "stream")
_BLOCK_INTS = ("address", "size", "requested_size")


def _check_fields(d: Any, at: str, ints: Any) -> None:
    """Byte counts and addresses in a snapshot must be non-negative ints: a hand-made or
    damaged file would otherwise give negative sizes in the report."""
    if not isinstance(d, dict):
        raise ValueError(f"{at}: expected a dict, got {type(d).__name__}")
    for key in ints:
        v = d.get(key)
        # At most 2**64 - 1: what a 64-bit allocator can report. A damaged file's 2**70
        # used to be printed as "1073741824.00 TiB reserved".
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _U64_MAX):
            raise ValueError(f"{at}: {key!r} must be a non-negative int of at most 64 bits, got {show(v)}")


# ============================================================================ helpers


class _FrameCache:
    """Frames of each context id, built once per snapshot and shared between entries
    (pickle then stores each stack once)."""

    def __init__(self) -> None:
        self._cache: Dict[int, List[Dict[str, Any]]] = {}

    def prefetch(self, contexts: List[int]) -> None:
        """Look up many ids at once: torch tracebacks are symbolised in one batch
        (Note [Torch tracebacks] in csrc/bindings/stack_capture.cpp)."""
        self._cache.update(_context.frames_of([c for c in contexts if c and c not in self._cache]))

    def __call__(self, context: int) -> List[Dict[str, Any]]:
        if not context:
            return []
        f = self._cache.get(context)
        if f is None:
            f = self._cache[context] = _context.frames(context)
        return f


def _segment(s: Dict[str, Any], device: int, frames_of: _FrameCache) -> Dict[str, Any]:
    blocks = []
    allocated = active = requested = 0
    for b in s["blocks"]:
        state = b["state"]
        if state == "active_allocated":
            allocated += b["size"]
        if state != "inactive":
            active += b["size"]
            requested += b["requested_size"]
        blocks.append({
            "address": b["address"],
            "size": b["size"],
            # torch shows a free block's last request (Note [Last requested size]).
            "requested_size": b["requested_size"] if state != "inactive" else b.get("last_requested_size", 0),
            "state": state,
            "frames": frames_of(b["context"]) if state != "inactive" else [],
        })
    return {
        "device": device,
        "address": s["address"],
        "total_size": s["total_size"],
        "allocated_size": allocated,
        "active_size": active,
        "requested_size": requested,
        "stream": s["stream"],
        "segment_type": s["segment_type"],
        # Note [segment_pool_id]: torch names the private pool of CUDA graphs / MemPool
        # here; pypool has only the default pool, which torch writes as (0, 0).
        "segment_pool_id": (0, 0),
        "is_expandable": s["is_expandable"],
        "frames": [],
        "blocks": blocks,
    }


def _trace(history: List[Dict[str, Any]], frames_of: _FrameCache) -> List[Dict[str, Any]]:
    # Note [Trace clock]: the core stamps events with steady_clock (CLOCK_MONOTONIC on
    # Linux, the clock of time.monotonic()); torch's snapshots carry Unix-epoch
    # microseconds, so shift by the offset between the two clocks now.
    offset_us = (time.time() - time.monotonic()) * 1e6
    out = []
    for e in history:
        entry = {
            "action": e["action"],
            "addr": e["addr"],
            "size": e["size"],
            "stream": e["stream"],
            "time_us": int(round(e["time_us"] + offset_us)),
            "frames": frames_of(e["context"]),
            # torch's _set_memory_metadata label of the thread that made the entry
            # (Note [Trace metadata] in csrc/include/pypool/device_pool.h).
            "user_metadata": _core.trace_metadata_label(e.get("metadata", 0)),
        }
        if e["action"] == "oom":
            # torch stores the device's free bytes in an oom entry's addr and exports it
            # as device_free (its `trace` tool reads that key).
            entry["device_free"] = e["addr"]
        out.append(entry)
    return out


def _settings(settings: PoolConfig) -> Dict[str, Any]:
    d: Dict[str, Any] = {"allocator": "pypool"}
    # Every field of the table (Note [PoolConfig from the table]), as PoolConfig has it:
    # None for an unlimited size or memory_fraction off, growth by name.
    d.update(settings.to_dict())
    # The names torch itself reports, where pypool has the same setting.
    d["PYTORCH_CUDA_ALLOC_CONF"] = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    # The settings in effect, in PYPOOL_CONF syntax (not the variable, which install()'s
    # arguments override and which may have changed since the pool was made).
    d["PYPOOL_CONF"] = settings.to_string()
    # torch's key, in torch's form: {interval start in MiB (as text): divisions}, 0 = off.
    # round_up_divisions applies only above small_size: the intervals it reaches show it.
    if settings.round_up_interval_divisions:
        per_interval = interval_divisions(settings.round_up_interval_divisions)
    else:
        n = settings.round_up_divisions if settings.round_up_divisions > 1 else 0
        small = parse_size(settings.small_size, "small_size")
        per_interval = [n if (MiB << i) * 2 > small else 0 for i in range(16)]
    d["roundup_power2_divisions"] = {str(1 << i): per_interval[i] for i in range(16)}
    return d


def _extra(device: int, backend: Optional[str], stats: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    return {"version": __version__, "device": device, "backend": backend, "memory_stats": stats}
