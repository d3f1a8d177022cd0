"""Allocation traces: what a program asked of its allocator, event by event.

A :class:`Trace` holds five parallel numpy arrays, one entry per event:

=========  =======  ==============================================================
array      dtype    meaning
=========  =======  ==============================================================
actions    int8     0 = allocate, 1 = free
ids        int64    which allocation (dense: 0 .. num_ids-1; a free names the id
                    of a live allocation)
sizes      int64    requested bytes (for a free: the size of that allocation)
streams    int64    stream the allocation is for (``cudaStream_t`` as an integer)
times      float64  microseconds since some origin (zeros when unknown)
=========  =======  ==============================================================

plus a ``name`` and a ``meta`` dict (JSON-serializable: where the trace came from).

pypool trace format (``*.trace``, gzip-compressed when the path ends in ``.gz``)::

    # pypool-trace v1
    # name: transformer
    # meta: {"generator": "transformer", "seed": 0}
    a 0 67108864 0 0.0
    a 1 4096 0 1.5
    f 0 67108864 0 3.0

* the first line is the header ``# pypool-trace v1``;
* ``# name: ...`` and ``# meta: {json object}`` lines (optional) carry the name and
  metadata; any other line starting with ``#`` is a comment, and so is the rest of an
  event line from a ``#`` on (``a 0 4096 0 0.0  # weights``); blank lines are ignored;
* every other line is one event: ``action id size stream time_us`` separated by
  whitespace, where ``action`` is ``a`` (allocate) or ``f`` (free). ``stream`` and
  ``time_us`` may be left out (0); for a free, ``size`` may be left out too (the loader
  takes the allocation's size in every case);
* ``id`` is any non-negative integer naming the allocation (an address will do); an id
  may be used again once freed. The loader renumbers ids densely in allocation order;
* ``size`` is 1 byte to 1 PiB, ``stream`` 0 to 2**63 - 1, ``time_us`` a finite number.

A trace file is user input: :meth:`Trace.load` raises ``ValueError`` naming the file (and
the line, or the snapshot entry and field) for anything it cannot use, including corrupt
or truncated gzip data and pickles that are not torch snapshots, and ``OSError`` when the
file cannot be read at all.

:meth:`Trace.load` also reads the pickles written by
``torch.cuda.memory._dump_snapshot()`` (see :meth:`Trace.from_torch_snapshot`), and
:func:`torch_reserved_profile` gives what PyTorch's own allocator reserved in that run.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ._files import FORMAT_HEADER, read_maybe_gzipped
from ._files import show as _show
from .snapshot import load_snapshot, snapshot_from_bytes

__all__ = [
    "Trace",
    "TorchReservedProfile",
    "torch_reserved_profile",
    "load_torch_snapshot",
    "ALLOC",
    "FREE",
    "FORMAT_HEADER",
]

ALLOC = 0
FREE = 1

PathLike = Union[str, "os.PathLike[str]"]

# Note [Trace limits]: the largest request a pool accepts (_core.MAX_REQUEST, kept here as
# a literal so that traces load without the native module) and the stream range of the
# int64 arrays. Checked at load time, so a bad file is refused with its line rather than
# failing deep inside a replay.
MAX_SIZE = 1 << 50
MAX_STREAM = (1 << 63) - 1
MAX_LIVE = 1 << 60  # live bytes at once: keeps every replay capacity within _pool.MAX_CAPACITY
_ACTION_NAMES = {
    "a": ALLOC, "alloc": ALLOC, "malloc": ALLOC, ALLOC: ALLOC,
    "f": FREE, "free": FREE, FREE: FREE,
}


class Trace:
    """An allocation trace (see the module docstring for the arrays and the text format).

    Args:
        actions, ids, sizes: per-event arrays (anything numpy converts; copied to the
            documented dtypes).
        streams, times: per-event arrays, or None for zeros.
        name: a label for reports.
        meta: JSON-serializable metadata (source, generator parameters, ...).
        validate: check the event structure (:meth:`validate`); pass False only for
            arrays known to be valid (the bundled generators).
    """

    __slots__ = ("actions", "ids", "sizes", "streams", "times", "name", "meta")

    def __init__(
        self,
        actions: Any,
        ids: Any,
        sizes: Any,
        streams: Any = None,
        times: Any = None,
        name: str = "",
        meta: Optional[Mapping[str, Any]] = None,
        validate: bool = True,
    ) -> None:
        self.actions: np.ndarray = _as_array(actions, np.int8, "actions")
        n = len(self.actions)
        self.ids: np.ndarray = _as_array(ids, np.int64, "ids", n)
        self.sizes: np.ndarray = _as_array(sizes, np.int64, "sizes", n)
        self.streams: np.ndarray = (np.zeros(n, np.int64) if streams is None
                                    else _as_array(streams, np.int64, "streams", n))
        self.times: np.ndarray = (np.zeros(n, np.float64) if times is None
                                  else _as_array(times, np.float64, "times", n))
        if not isinstance(name, str):
            raise TypeError(f"name: expected a str, got {type(name).__name__}")
        self.name: str = name
        self.meta: Dict[str, Any] = dict(meta or {})
        if validate:
            self.validate()

    # ------------------------------------------------------------------ basic facts
    def __len__(self) -> int:
        return int(len(self.actions))

    @property
    def num_events(self) -> int:
        return len(self)

    @property
    def num_allocs(self) -> int:
        return int(np.count_nonzero(self.actions == ALLOC))

    @property
    def num_ids(self) -> int:
        """One more than the largest id (the size of an id-indexed table)."""
        return int(self.ids.max()) + 1 if len(self) else 0

    def live_bytes(self) -> np.ndarray:
        """Live requested bytes after each event (int64 array)."""
        sign = np.where(self.actions == ALLOC, 1, -1).astype(np.int64)
        return np.cumsum(sign * self.sizes)

    def peak_live(self) -> int:
        """The physical floor: the most requested bytes live at once. No allocator can
        serve the trace with less memory reserved."""
        return int(self.live_bytes().max(initial=0))

    def peak_index(self) -> int:
        """Index of the (first) event at which live requested bytes peak (-1 if empty)."""
        if len(self) == 0:
            return -1
        return int(np.argmax(self.live_bytes()))

    def __getitem__(self, key: slice) -> "Trace":
        """A contiguous slice of events (``trace[:k]``: the first k events)."""
        if not isinstance(key, slice):
            raise TypeError("Trace indices: only slices are supported (e.g. trace[:1000])")
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("Trace slices: step must be 1")
        meta = dict(self.meta)
        meta["slice"] = [start, stop]
        # A prefix of a valid trace is valid (each free follows its allocation); a slice
        # from elsewhere may free ids allocated before it, so it is checked.
        return Trace(self.actions[key], self.ids[key], self.sizes[key], self.streams[key],
                     self.times[key], self.name, meta, validate=start != 0)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trace):
            return NotImplemented
        return (self.name == other.name and self.meta == other.meta
                and all(np.array_equal(getattr(self, a), getattr(other, a))
                        for a in ("actions", "ids", "sizes", "streams", "times")))

    __hash__ = None  # type: ignore[assignment]  # mutable arrays

    def __repr__(self) -> str:
        return (f"Trace(name={self.name!r}, events={len(self)}, allocs={self.num_allocs}, "
                f"peak_live={self.peak_live()})")

    def validate(self) -> None:
        """Check the event structure; raise ``ValueError`` naming the first bad event.

        Rules: actions are 0 or 1; ids and streams are >= 0; allocations ask for 1 byte
        to 1 PiB; times are finite; at most 2**60 bytes are live at once; per id, events alternate allocate / free starting with an allocation
        (an id may be allocated again after its free); a free's size is its allocation's.
        """
        n = len(self)
        if n == 0:
            return
        bad = np.flatnonzero((self.actions != ALLOC) & (self.actions != FREE))
        if bad.size:
            raise ValueError(f"actions: event {bad[0]} has action {self.actions[bad[0]]} (expected 0=alloc or 1=free)")
        for arr, what in ((self.ids, "ids"), (self.streams, "streams")):
            bad = np.flatnonzero(arr < 0)
            if bad.size:
                raise ValueError(f"{what}: event {bad[0]} has a negative value {arr[bad[0]]}")
        bad = np.flatnonzero((self.actions == ALLOC) & ((self.sizes <= 0) | (self.sizes > MAX_SIZE)))
        if bad.size:
            raise ValueError(f"sizes: allocation at event {bad[0]} asks for {self.sizes[bad[0]]} bytes "
                             "(must be 1 byte to 1 PiB)")
        bad = np.flatnonzero(~np.isfinite(self.times))
        if bad.size:
            raise ValueError(f"times: event {bad[0]} has time {self.times[bad[0]]} (must be finite)")
        # Per id in event order, events must read a, f, a, f, ...
        order = np.lexsort((np.arange(n), self.ids))
        ids_sorted = self.ids[order]
        act_sorted = self.actions[order]
        first = np.ones(n, bool)
        first[1:] = ids_sorted[1:] != ids_sorted[:-1]
        bad = np.flatnonzero(first & (act_sorted != ALLOC))
        if bad.size:
            i = order[bad].min()
            raise ValueError(f"event {i}: free of id {self.ids[i]}, which was never allocated")
        same = ~first
        bad = np.flatnonzero(same & (act_sorted == act_sorted[np.maximum(np.arange(n) - 1, 0)]))
        if bad.size:
            i = order[bad].min()
            kind = "allocation of id {} which is still live" if self.actions[i] == ALLOC else "second free of id {}"
            raise ValueError(f"event {i}: " + kind.format(self.ids[i]))
        frees = np.flatnonzero(same & (act_sorted == FREE))
        mismatch = self.sizes[order[frees]] != self.sizes[order[frees - 1]]
        if mismatch.any():
            i = order[frees[np.argmax(mismatch)]]
            raise ValueError(f"event {i}: free of id {self.ids[i]} says {self.sizes[i]} bytes, "
                             f"its allocation asked for {self.sizes[order[frees[np.argmax(mismatch)] - 1]]}")
        # In float64, which cannot wrap as the int64 sum of many huge sizes would.
        live = np.cumsum(np.where(self.actions == ALLOC, 1.0, -1.0) * self.sizes)
        if live.max() > MAX_LIVE:
            i = int(np.argmax(live > MAX_LIVE))
            raise ValueError(f"event {i}: more than 1024 PiB (2**60 bytes) live at once; "
                             "no device holds that")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_events(
        cls,
        events: Iterable[Any],
        name: str = "",
        meta: Optional[Mapping[str, Any]] = None,
        skip_unknown_frees: bool = False,
    ) -> "Trace":
        """Build a trace from events in order.

        Each event is a tuple ``(action, key, size[, stream[, time_us]])`` or a dict with
        those keys (``action``, ``id``, ``size``, ``stream``, ``time_us``). ``action`` is
        ``"a"``/``"alloc"``/0 or ``"f"``/``"free"``/1; ``key`` is any hashable naming the
        allocation (an address, a name), reusable after its free; a free's size may be
        None (its allocation's size is used). Keys are renumbered densely.

        Args:
            skip_unknown_frees: drop frees of keys that are not live (e.g. allocated
                before a trace began) instead of raising ``ValueError``.
        """
        actions: List[int] = []
        ids: List[int] = []
        sizes: List[int] = []
        streams: List[int] = []
        times: List[float] = []
        live: Dict[Any, Tuple[int, int, int]] = {}  # key -> (dense id, size, stream)
        next_id = 0
        skipped = 0
        for i, ev in enumerate(events):
            if isinstance(ev, Mapping):
                try:
                    action, key = ev["action"], ev["id"]
                except KeyError as e:
                    raise ValueError(f"events[{i}]: missing key {e.args[0]!r}") from None
                size, stream, t = ev.get("size"), ev.get("stream", 0), ev.get("time_us", 0.0)
            else:
                ev = tuple(ev)
                if not 2 <= len(ev) <= 5:
                    raise ValueError(f"events[{i}]: expected (action, id, size[, stream[, time_us]]), got {ev!r}")
                action, key = ev[0], ev[1]
                size = ev[2] if len(ev) > 2 else None
                stream = ev[3] if len(ev) > 3 else 0
                t = ev[4] if len(ev) > 4 else 0.0
            try:
                act = _ACTION_NAMES.get(action.lower() if isinstance(action, str) else action)
            except TypeError:  # unhashable
                act = None
            if act is None:
                raise ValueError(f"events[{i}]: unknown action {action!r} (expected 'a'/'alloc'/0 or 'f'/'free'/1)")
            try:
                hash(key)
            except TypeError:
                raise ValueError(f"events[{i}]: id must be hashable, got {type(key).__name__}") from None
            if act == ALLOC:
                if key in live:
                    raise ValueError(f"events[{i}]: allocation of {key!r}, which is still live")
                size = _event_int(size, i, "size", 1, MAX_SIZE, f"allocation of {key!r}: ")
                stream = _event_int(stream, i, "stream", 0, MAX_STREAM)
                live[key] = (next_id, size, stream)
                actions.append(ALLOC)
                ids.append(next_id)
                sizes.append(size)
                streams.append(stream)
                next_id += 1
            else:
                entry = live.pop(key, None)
                if entry is None:
                    if skip_unknown_frees:
                        skipped += 1
                        continue
                    raise ValueError(f"events[{i}]: free of {key!r}, which is not live")
                actions.append(FREE)
                ids.append(entry[0])
                sizes.append(entry[1])
                streams.append(entry[2])
            times.append(_event_time(t, i))
        m = dict(meta or {})
        if skipped:
            m["skipped_unknown_frees"] = m.get("skipped_unknown_frees", 0) + skipped
        return cls(actions, ids, sizes, streams, times, name, m, validate=False)

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, path: PathLike, device: Optional[int] = None) -> "Trace":
        """Read a pypool trace file (``.gz`` or not) or a torch memory snapshot pickle.

        The format is detected from the content, not the name. ``device`` picks the
        device of a torch snapshot (default: the one with the most allocations).
        """
        if not isinstance(path, (str, bytes, os.PathLike)):
            # open() takes an int as a file descriptor: it would read and close that one.
            raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
        where = os.fsdecode(path)
        data = read_maybe_gzipped(path)
        stem = os.path.basename(where)
        if data[:1] == b"\x80":  # pickle protocol >= 2: a torch snapshot
            snapshot = snapshot_from_bytes(data, where, for_replay=True)
            try:
                trace = cls.from_torch_snapshot(snapshot, device=device, name=stem)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            trace.meta["path"] = where
        else:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(
                    f"{where}: not a trace pypool can read: expected the text header "
                    f"{FORMAT_HEADER!r} or a torch memory snapshot pickle "
                    f"(torch.cuda.memory._dump_snapshot), found binary data (byte {e.start} "
                    "is not UTF-8)") from None
            if not text.lstrip().startswith(FORMAT_HEADER):
                first = text.lstrip().splitlines()[0][:60] if text.strip() else "(empty file)"
                raise ValueError(
                    f"{where}: not a trace pypool can read: expected the header "
                    f"{FORMAT_HEADER!r} or a torch memory snapshot pickle "
                    f"(torch.cuda.memory._dump_snapshot), found {first!r}")
            trace = cls._parse_text(text, where, default_name=stem)
        # Backstop: whatever the loaders checked, a loaded trace obeys validate().
        try:
            trace.validate()
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        return trace

    def save(self, path: PathLike) -> None:
        """Write the pypool text format (gzip-compressed when ``path`` ends in ``.gz``)."""
        out = io.StringIO()
        out.write(FORMAT_HEADER + "\n")
        if self.name:
            out.write(f"# name: {self.name}\n")
        if self.meta:
            try:
                meta = json.dumps(self.meta, sort_keys=True)
            except (TypeError, ValueError) as e:
                raise ValueError(f"Trace.meta: must be JSON-serializable to be saved ({e})") from None
            out.write("# meta: " + meta + "\n")
        letters = np.where(self.actions == ALLOC, "a", "f")
        # Note [Trace text times]: str(float) is the shortest text that reads back to the
        # same float, so times round-trip exactly.
        for row in zip(letters.tolist(), self.ids.tolist(), self.sizes.tolist(),
                       self.streams.tolist(), self.times.tolist()):
            out.write("%s %d %d %d %r\n" % row)
        raw = out.getvalue().encode("utf-8")
        p = os.fspath(path)
        if p.endswith(".gz"):
            raw = gzip.compress(raw, compresslevel=6, mtime=0)
        with open(p, "wb") as f:
            f.write(raw)

    @classmethod
    def _parse_text(cls, text: str, where: str, default_name: str = "") -> "Trace":
        name = default_name
        meta: Dict[str, Any] = {}
        rows: List[str] = []
        line_of: List[int] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if not s:
                continue
            if s[0] == "#":
                if s.startswith("# name:"):
                    name = s[len("# name:"):].strip()
                elif s.startswith("# meta:"):
                    meta = _parse_meta(s[len("# meta:"):], f"{where}:{lineno}")
                continue
            if "#" in s:  # a trailing comment
                s = s[:s.index("#")].rstrip()
            rows.append(s)
            line_of.append(lineno)
        n = len(rows)
        tokens = " ".join(rows).split()
        if len(tokens) == 5 * n:
            # Fast path: every line has all five fields (what save() writes).
            cols = np.array(tokens, dtype=object).reshape(n, 5) if n else np.empty((0, 5), object)
            letters = cols[:, 0]
            try:
                raw_ids = cols[:, 1].astype(np.int64)
                sizes = cols[:, 2].astype(np.int64)
                streams = cols[:, 3].astype(np.int64)
                times = cols[:, 4].astype(np.float64)
            except (ValueError, OverflowError):
                return cls._parse_rows_slowly(rows, line_of, where, name, meta)
            is_a = letters == "a"
            is_f = letters == "f"
            bad = np.flatnonzero(~(is_a | is_f))
            if bad.size:
                raise ValueError(f"{where}:{line_of[bad[0]]}: unknown action {letters[bad[0]]!r} (expected 'a' or 'f')")
            actions = np.where(is_a, ALLOC, FREE).astype(np.int8)
            return cls._densified(actions, raw_ids, sizes, streams, times, name, meta, where, line_of)
        return cls._parse_rows_slowly(rows, line_of, where, name, meta)

    @classmethod
    def _parse_rows_slowly(cls, rows: Sequence[str], line_of: Sequence[int], where: str,
                           name: str, meta: Dict[str, Any]) -> "Trace":
        n = len(rows)
        actions = np.empty(n, np.int8)
        raw_ids = np.empty(n, np.int64)
        sizes = np.zeros(n, np.int64)
        streams = np.zeros(n, np.int64)
        times = np.zeros(n, np.float64)
        for i, row in enumerate(rows):
            f = row.split()
            at = f"{where}:{line_of[i]}"
            if f[0] not in ("a", "f"):
                raise ValueError(f"{at}: unknown action {f[0]!r} (expected 'a' or 'f')")
            need = 3 if f[0] == "a" else 2
            if not need <= len(f) <= 5:
                raise ValueError(f"{at}: expected 'action id size [stream [time_us]]', got {row!r}")
            try:
                actions[i] = ALLOC if f[0] == "a" else FREE
                raw_ids[i] = int(f[1])
                if len(f) > 2:
                    sizes[i] = int(f[2])
                if len(f) > 3:
                    streams[i] = int(f[3])
                if len(f) > 4:
                    times[i] = float(f[4])
            except OverflowError:
                raise ValueError(f"{at}: a number is out of range in {row!r} (id, size and "
                                 "stream must fit in 64-bit signed integers)") from None
            except ValueError:
                raise ValueError(f"{at}: cannot read numbers in {row!r} (expected "
                                 "'action id size [stream [time_us]]' with integer id, size "
                                 "and stream)") from None
        return cls._densified(actions, raw_ids, sizes, streams, times, name, meta, where, line_of)

    @classmethod
    def _densified(cls, actions: np.ndarray, raw_ids: np.ndarray, sizes: np.ndarray,
                   streams: np.ndarray, times: np.ndarray, name: str, meta: Dict[str, Any],
                   where: str, line_of: Sequence[int]) -> "Trace":
        """Renumber raw ids (reusable after free) into dense allocation ids, check the
        alternation per raw id, and copy each allocation's size and stream to its free."""
        n = len(actions)
        if n == 0:
            return cls(actions, raw_ids, sizes, streams, times, name, meta, validate=False)
        bad = np.flatnonzero(raw_ids < 0)
        if bad.size:
            raise ValueError(f"{where}:{line_of[bad[0]]}: negative id {raw_ids[bad[0]]} (ids are >= 0)")
        bad = np.flatnonzero(streams < 0)
        if bad.size:
            raise ValueError(f"{where}:{line_of[bad[0]]}: negative stream {streams[bad[0]]} "
                             "(streams are >= 0: a cudaStream_t as an integer, 0 = the default stream)")
        bad = np.flatnonzero(~np.isfinite(times))
        if bad.size:
            raise ValueError(f"{where}:{line_of[bad[0]]}: time_us must be a finite number, got {times[bad[0]]}")
        order = np.lexsort((np.arange(n), raw_ids))
        rid = raw_ids[order]
        act = actions[order]
        first = np.ones(n, bool)
        first[1:] = rid[1:] != rid[:-1]
        prev_act = np.empty_like(act)
        prev_act[0] = FREE
        prev_act[1:] = act[:-1]
        # In sorted order each event must be an alloc after a free (or first) or a free
        # right after an alloc of the same raw id.
        ok = np.where(act == ALLOC, first | (prev_act == FREE), ~first & (prev_act == ALLOC))
        if not ok.all():
            i = int(order[np.flatnonzero(~ok)].min())
            what = ("allocation of id {} which is still live" if actions[i] == ALLOC
                    else "free of id {} which is not live")
            raise ValueError(f"{where}:{line_of[i]}: " + what.format(raw_ids[i]))
        bad = np.flatnonzero((actions == ALLOC) & ((sizes <= 0) | (sizes > MAX_SIZE)))
        if bad.size:
            raise ValueError(f"{where}:{line_of[bad[0]]}: allocation size must be 1 byte to 1 PiB "
                             f"({MAX_SIZE}), got {sizes[bad[0]]}")
        dense_of_alloc = np.cumsum(actions == ALLOC) - 1  # dense id at each alloc event
        # Each event's allocation event: itself for allocs, the previous sorted event for frees.
        src_sorted = order.copy()
        free_pos = np.flatnonzero(act == FREE)
        src_sorted[free_pos] = order[free_pos - 1]
        src = np.empty(n, np.int64)
        src[order] = src_sorted
        ids = dense_of_alloc[src].astype(np.int64)
        return cls(actions, ids, sizes[src], streams[src], times, name, meta, validate=False)

    # ------------------------------------------------------------------ torch snapshots
    @classmethod
    def from_torch_snapshot(
        cls,
        snapshot: Union[Mapping[str, Any], PathLike],
        device: Optional[int] = None,
        name: str = "",
        free_action: str = "auto",
    ) -> "Trace":
        """The allocation trace recorded in a torch memory snapshot.

        ``snapshot`` is the dict of ``torch.cuda.memory._snapshot()`` or the path of a
        ``_dump_snapshot()`` pickle. Its ``device_traces`` entries ``alloc`` and
        ``free_completed`` (or ``free_requested``) are keyed by address and renumbered;
        frees of blocks allocated before the recording began are skipped (counted in
        ``meta["skipped_unknown_frees"]``).

        Args:
            device: which device's trace (default: the one with the most allocations).
            free_action: ``"free_completed"`` (when the block was really back in the
                cache, after any ``record_stream`` events), ``"free_requested"`` (when
                the tensor died), or ``"auto"``: completed when the trace has any, else
                requested (or the legacy ``"free"``).

        ``meta["torch"]`` holds :func:`torch_reserved_profile` of the snapshot.
        """
        if isinstance(snapshot, Mapping):
            snap = snapshot
        elif isinstance(snapshot, (str, bytes, os.PathLike)):
            snap = load_torch_snapshot(snapshot)
        else:
            raise TypeError(f"snapshot: expected a snapshot dict or a path, got {type(snapshot).__name__}")
        traces = _device_traces(snap)
        dev = _pick_device(traces, device)
        entries = traces[dev]
        if free_action not in ("auto", "free_completed", "free_requested"):
            raise ValueError(f"free_action: must be 'auto', 'free_completed' or 'free_requested', got {free_action!r}")
        if free_action == "auto":
            free_action = ("free_completed" if any(e.get("action") == "free_completed" for e in entries)
                           else "free_requested")
        free_names = {free_action, "free"}
        events: List[Tuple[Any, ...]] = []
        for i, e in enumerate(entries):
            a = e.get("action")
            # isinstance first: an unhashable action (a list) must not reach the set.
            if isinstance(a, str) and (a == "alloc" or a in free_names):
                at = f"snapshot: device_traces[{dev}][{i}] ({a!r})"
                addr = _entry_int(e, "addr", at, 0, (1 << 64) - 1)
                t = e.get("time_us", 0)
                if t is not None and not _is_finite_number(t):
                    raise ValueError(f"{at}: 'time_us' must be a finite number, got {_show(t)}")
                if a == "alloc":
                    size = _entry_int(e, "size", at, 1, MAX_SIZE)
                    stream = (0 if e.get("stream") is None
                              else _entry_int(e, "stream", at, 0, MAX_STREAM))
                    events.append(("a", addr, size, stream, t or 0))
                else:
                    events.append(("f", addr, None, 0, t or 0))
        meta: Dict[str, Any] = {"source": "torch_snapshot", "device": dev, "free_action": free_action}
        try:
            meta["torch"] = torch_reserved_profile(snap, device=dev).to_dict()
        except ValueError as err:  # no segment information: the trace is still usable
            meta["torch"] = {"error": str(err)}
        # Who recorded it (replay labels its figures): pypool's snapshots carry a "pypool" part.
        meta["allocator"] = "pypool" if isinstance(snap.get("pypool"), Mapping) else "PyTorch"
        return cls.from_events(_replace_live_allocs(events, meta), name=name or f"torch-snapshot-dev{dev}",
                               meta=meta, skip_unknown_frees=True)


def _replace_live_allocs(events: List[Tuple[Any, ...]], meta: Dict[str, Any]) -> List[Tuple[Any, ...]]:
    """A torch trace may allocate an address whose free fell outside the recorded window
    (or was filtered out): free it implicitly just before, so the replay stays valid."""
    live = set()
    out: List[Tuple[Any, ...]] = []
    implicit = 0
    for ev in events:
        if ev[0] == "a":
            if ev[1] in live:
                out.append(("f", ev[1], None, 0, ev[4]))
                implicit += 1
            live.add(ev[1])
        else:
            live.discard(ev[1])
        out.append(ev)
    if implicit:
        meta["implicit_frees"] = implicit
    return out


def _device_traces(snap: Mapping[str, Any]) -> List[List[Mapping[str, Any]]]:
    """``snap["device_traces"]``, checked: a list (one per device) of lists of dicts."""
    traces = snap.get("device_traces")
    if not isinstance(traces, Sequence) or isinstance(traces, (str, bytes)):
        raise ValueError("snapshot: no 'device_traces' list (record with "
                         "torch.cuda.memory._record_memory_history() before _dump_snapshot())")
    for d, entries in enumerate(traces):
        if not isinstance(entries, Sequence) or isinstance(entries, (str, bytes)):
            raise ValueError(f"snapshot: device_traces[{d}]: expected a list of trace entries, "
                             f"got {type(entries).__name__}")
        for i, e in enumerate(entries):
            if not isinstance(e, Mapping):
                raise ValueError(f"snapshot: device_traces[{d}][{i}]: expected a dict (a trace "
                                 f"entry with 'action', 'addr', 'size', ...), got {type(e).__name__}")
    return list(traces)


def _entry_int(e: Mapping[str, Any], key: str, at: str, lo: int, hi: int) -> int:
    """``e[key]``, an int in lo..hi, or ValueError naming the entry and the field."""
    if key not in e:
        raise ValueError(f"{at}: missing field {key!r}")
    v = e[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{at}: {key!r} must be an int, got {type(v).__name__} {_show(v)}")
    if not lo <= v <= hi:
        raise ValueError(f"{at}: {key!r} must be in {lo}..{hi}, got {_show(v)}")
    return v


def _is_finite_number(t: Any) -> bool:
    """A real number (not a bool) that is finite as a float: an int too large for a
    float (``10**400``) is not, and must not raise OverflowError from math.isfinite."""
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        return False
    try:
        return math.isfinite(t)
    except OverflowError:
        return False


def _event_int(v: Any, i: int, name: str, lo: int, hi: int, what: str = "") -> int:
    """A from_events field as an int in lo..hi, or ValueError naming the event."""
    if v is None or isinstance(v, bool):
        raise ValueError(f"events[{i}]: {what}{name} must be an int in {lo}..{hi}, got {_show(v)}")
    try:
        n = int(v)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"events[{i}]: {what}{name} must be an int in {lo}..{hi}, got {_show(v)}") from None
    if n != v or not lo <= n <= hi:
        raise ValueError(f"events[{i}]: {what}{name} must be an int in {lo}..{hi}, got {_show(v)}")
    return n


def _event_time(t: Any, i: int) -> float:
    try:
        f = float(t or 0.0)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"events[{i}]: time_us must be a number, got {_show(t)}") from None
    if not math.isfinite(f):
        raise ValueError(f"events[{i}]: time_us must be finite, got {_show(t)}")
    return f


def _parse_meta(text: str, at: str) -> Dict[str, Any]:
    """A ``# meta:`` line: a JSON object; the keys pypool itself reads are checked."""
    try:
        meta = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{at}: bad meta JSON: {e}") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{at}: meta must be a JSON object, got {type(meta).__name__}")
    def count(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_SIZE * 1024
    for key in ("skipped_unknown_frees", "implicit_frees"):
        if key in meta and not count(meta[key]):
            raise ValueError(f"{at}: meta {key!r} must be a non-negative int, got {meta[key]!r}"[:200])
    torch = meta.get("torch")
    if torch is not None:
        if not isinstance(torch, dict):
            raise ValueError(f"{at}: meta 'torch' must be an object, got {type(torch).__name__}")
        for key in ("initial_reserved", "peak_reserved", "final_reserved", "segment_allocs", "segment_frees"):
            if key in torch and not count(torch[key]):
                raise ValueError(f"{at}: meta torch.{key} must be a non-negative int, got {torch[key]!r}"[:200])
        if "peak_reserved" in torch and "initial_reserved" not in torch:
            raise ValueError(f"{at}: meta torch.peak_reserved needs torch.initial_reserved too")
    return meta


def _pick_device(traces: Sequence[Any], device: Optional[int]) -> int:
    if device is not None:
        if isinstance(device, bool) or not isinstance(device, int) or not 0 <= device < len(traces):
            raise ValueError(f"device: the snapshot has traces for devices 0..{len(traces) - 1}, got {device!r}")
        return device
    counts = [sum(1 for e in t if e.get("action") == "alloc") for t in traces]
    if not counts or max(counts) == 0:
        raise ValueError("snapshot: the device traces hold no 'alloc' entries "
                         "(was torch.cuda.memory._record_memory_history() on?)")
    return int(np.argmax(counts))


def load_torch_snapshot(path: PathLike) -> Dict[str, Any]:
    """Read a ``torch.cuda.memory._dump_snapshot()`` pickle (optionally gzipped) as a dict,
    without executing any code from it: :func:`pypool.snapshot.load_snapshot`, the one
    snapshot loader, under the name this module has always had."""
    return load_snapshot(path)


@dataclass(frozen=True)
class TorchReservedProfile:
    """What PyTorch's caching allocator reserved during a recorded run (one device).

    Attributes:
        device: the device index.
        initial_reserved: bytes reserved when the recording window began (the segments
            present at the end minus those the trace shows being added).
        peak_reserved: the most bytes reserved at once inside the recording window.
        final_reserved: bytes reserved at the snapshot (its ``segments``).
        segment_allocs, segment_frees: ``cudaMalloc``/``cudaFree`` (or map/unmap) events
            in the window.
        consistent: False when the segment list and the trace disagree (initial reserved
            would be negative); initial is then raised to keep reserved >= 0.
    """

    device: int
    initial_reserved: int
    peak_reserved: int
    final_reserved: int
    segment_allocs: int
    segment_frees: int
    consistent: bool

    def to_dict(self) -> Dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def torch_reserved_profile(snapshot: Union[Mapping[str, Any], PathLike],
                           device: Optional[int] = None) -> TorchReservedProfile:
    """PyTorch's own reserved-memory figures from a memory snapshot.

    Walks the ``segment_alloc``/``segment_free`` (and, for expandable segments,
    ``segment_map``/``segment_unmap``) trace entries of one device, starting from the
    memory reserved when the recording began. A recording may start mid-run (and torch's
    ring buffer drops the oldest entries), so the start is derived from the end: the
    snapshot's ``segments`` of that device minus the net change shown by the trace.

    Args:
        snapshot: the snapshot dict, or the path of a ``_dump_snapshot()`` pickle.
        device: default: the device with the most allocations in its trace.
    """
    snap = load_torch_snapshot(snapshot) if not isinstance(snapshot, Mapping) else snapshot
    segments = snap.get("segments")
    if not isinstance(snap.get("device_traces"), Sequence) or segments is None:
        raise ValueError("snapshot: needs both 'segments' and 'device_traces' for the reserved profile")
    traces = _device_traces(snap)
    if not isinstance(segments, Sequence) or isinstance(segments, (str, bytes)):
        raise ValueError(f"snapshot: 'segments' must be a list, got {type(segments).__name__}")
    dev = _pick_device(traces, device)
    final = 0
    for i, seg in enumerate(segments):
        if not isinstance(seg, Mapping):
            raise ValueError(f"snapshot: segments[{i}]: expected a dict, got {type(seg).__name__}")
        at = f"snapshot: segments[{i}]"
        seg_dev = _entry_int(seg, "device", at, 0, 1 << 31) if "device" in seg else 0
        if seg_dev == dev:
            final += _entry_int(seg, "total_size", at, 0, MAX_SIZE) if "total_size" in seg else 0
    steps: List[int] = []
    n_alloc = n_free = 0
    for i, e in enumerate(traces[dev]):
        a = e.get("action")
        at = f"snapshot: device_traces[{dev}][{i}] ({a!r})"
        if a in ("segment_alloc", "segment_map"):
            steps.append(_entry_int(e, "size", at, 0, MAX_SIZE))
            n_alloc += 1
        elif a in ("segment_free", "segment_unmap"):
            steps.append(-_entry_int(e, "size", at, 0, MAX_SIZE))
            n_free += 1
    if not steps and final == 0 and any(e.get("action") == "alloc" for e in traces[dev]):
        # e.g. a snapshot made from a profiler run (torch.cuda._memory_viz): blocks only.
        raise ValueError(f"snapshot: no segments or segment events for device {dev}, so what "
                         "PyTorch reserved is unknown")
    prefix = np.cumsum(np.asarray(steps, np.int64)) if steps else np.zeros(1, np.int64)
    net = int(prefix[-1])
    initial = final - net
    consistent = initial >= 0 and initial + int(prefix.min(initial=0)) >= 0
    if not consistent:
        initial = max(0, -int(prefix.min(initial=0)))
    peak = initial + max(0, int(prefix.max(initial=0)))
    return TorchReservedProfile(dev, initial, peak, final if consistent else initial + net,
                                n_alloc, n_free, consistent)


def _as_array(value: Any, dtype: Any, name: str, n: Optional[int] = None) -> np.ndarray:
    try:
        arr = np.ascontiguousarray(np.asarray(value), dtype=dtype)
    except (TypeError, ValueError, OverflowError) as e:
        raise TypeError(f"{name}: cannot convert to {np.dtype(dtype).name}: {e}") from None
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {arr.shape}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name}: has {len(arr)} entries, actions has {n}")
    return arr
