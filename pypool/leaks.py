"""Leak detection: which line allocated the memory that is still alive.

Three tools, from narrow to wide:

* :func:`track_leaks` — a scope. Allocations made inside it and still live when it closes
  are reported, grouped by the call site that made them::

      with pypool.track_leaks() as leaks:
          train_one_step(model, batch)
      print(leaks.report())          # or leaks.assert_no_leaks()

* :class:`LeakWatch` — a per-iteration probe for training loops: warns when live memory
  grows steadily and names the call sites whose allocations keep piling up.

* The exit check — with ``PYPOOL_LEAK_CHECK=1`` in the environment, every allocation still
  live in a registry pool (the pools torch uses) when the interpreter exits is printed to
  stderr, grouped by call site (:func:`enable_exit_check`).

Cached free blocks are never leaks: only blocks handed out by ``malloc`` and not yet
given back with ``free`` (state ``active_allocated``) count as live.

Note [Leak scope by sequence number]: every allocation of a pool gets the next value of a
per-pool counter (``DevicePool.next_seq``). A scope remembers the counter when it opens
and when it closes; its leaks are the live blocks whose number falls in between. This
needs no per-allocation bookkeeping in Python (a tracker without stacks costs nothing on
the hot path), ignores everything allocated before the scope, and stays exact when other
threads allocate concurrently: an allocation racing with the scope's end gets a number
>= the end mark and is left out, never half-counted.
"""

from __future__ import annotations

import atexit
import gc
import math
import os
import sys
import threading
import time
import warnings
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass, field
from typing import (Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple,
                    Union)

from . import _context, _core
from ._context import Frame, format_stack
from ._pool import Pool
from ._registry import resolve_pool
from .config import SizeLike, format_size, parse_size

__all__ = [
    "track_leaks",
    "LeakTracker",
    "LeakReport",
    "LeakGroup",
    "LeakedBlock",
    "LeakError",
    "LeakWarning",
    "LeakWatch",
    "LeakWatchReport",
    "LeakWatchSite",
    "steady_growth",
    "enable_exit_check",
    "exit_check_requested",
    "format_stack",
]

PoolLike = Union[Pool, "_core.DevicePool"]


class LeakError(AssertionError):
    """Raised by :meth:`LeakTracker.assert_no_leaks`; ``.report`` is the :class:`LeakReport`."""

    def __init__(self, report: "LeakReport") -> None:
        super().__init__(report.to_text())
        self.report = report


class LeakWarning(UserWarning):
    """Emitted by :class:`LeakWatch` when live memory grows steadily.

    A ``UserWarning`` so that Python shows it by default (``ResourceWarning`` is hidden
    unless ``-W`` asks for it)."""


# ---------------------------------------------------------------------------- reports

@dataclass(frozen=True)
class LeakedBlock:
    """One allocation still live at the end of a scope.

    ``age_s`` is the time between the allocation and the report (None when the pool was
    not recording times: the core timestamps allocations only while stack capture or
    memory history is on). ``frames`` is the Python stack at allocation time, innermost
    first (empty without stack capture)."""

    address: int
    size: int
    requested_size: int
    stream: int
    seq: int
    age_s: Optional[float]
    frames: Tuple[Frame, ...]

    def to_dict(self) -> Dict[str, Any]:
        return {
            "address": self.address, "size": self.size, "requested_size": self.requested_size,
            "stream": self.stream, "seq": self.seq, "age_s": self.age_s,
            "frames": [dict(f) for f in self.frames],
        }


@dataclass
class LeakGroup:
    """The live allocations of one call site (or, without stacks, of one size and stream).

    ``filename``/``line``/``function`` name the call site (None without stacks);
    ``site`` is its one-line label."""

    site: str
    filename: Optional[str]
    line: Optional[int]
    function: Optional[str]
    blocks: List[LeakedBlock] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.blocks)

    @property
    def total_bytes(self) -> int:
        return sum(b.size for b in self.blocks)

    @property
    def requested_bytes(self) -> int:
        return sum(b.requested_size for b in self.blocks)

    @property
    def streams(self) -> List[int]:
        return sorted({b.stream for b in self.blocks})

    def stacks(self) -> List[Tuple[int, Tuple[Frame, ...]]]:
        """Distinct stacks of this group with their block counts, most frequent first."""
        counts: Dict[Tuple[Tuple[str, int, str], ...], List[Any]] = {}
        for b in self.blocks:
            key = tuple((f["filename"], f["line"], f["name"]) for f in b.frames)
            slot = counts.setdefault(key, [0, b.frames])
            slot[0] += 1
        return sorted(((n, fr) for n, fr in counts.values()), key=lambda t: -t[0])

    def to_dict(self) -> Dict[str, Any]:
        return {
            "site": self.site, "filename": self.filename, "line": self.line,
            "function": self.function, "count": self.count, "total_bytes": self.total_bytes,
            "requested_bytes": self.requested_bytes, "streams": self.streams,
            "blocks": [b.to_dict() for b in self.blocks],
        }


def _group_key_and_label(b: LeakedBlock) -> Tuple[Tuple[Any, ...], str, Optional[Frame]]:
    site = _context.call_site(b.frames) if b.frames else None
    if site is not None:
        return (("site", site["filename"], site["line"], site["name"]),
                _context.format_frame(site), site)
    # Without a stack the best grouping left is what the allocator knows.
    return (("nostack", b.size, b.stream),
            f"(no stack) {format_size(b.size)} blocks on stream {b.stream}", None)


def _group(blocks: Iterable[LeakedBlock]) -> List[LeakGroup]:
    groups: Dict[Tuple[Any, ...], LeakGroup] = {}
    for b in blocks:
        key, label, site = _group_key_and_label(b)
        g = groups.get(key)
        if g is None:
            g = groups[key] = LeakGroup(
                site=label,
                filename=site["filename"] if site else None,
                line=site["line"] if site else None,
                function=site["name"] if site else None)
        g.blocks.append(b)
    return sorted(groups.values(), key=lambda g: (-g.total_bytes, -g.count, g.site))


class LeakReport:
    """Allocations still live at the end of a scope, grouped by call site, largest first.

    Attributes:
        groups: the :class:`LeakGroup` list, largest total first.
        total_bytes / requested_bytes / count: totals over all groups.
        device: the pool's device; title: what the report is about.
        stacks_captured: whether stack capture was on for the scope.
    """

    def __init__(self, blocks: Sequence[LeakedBlock], device: int, title: str,
                 stacks_captured: bool) -> None:
        self.groups: List[LeakGroup] = _group(blocks)
        self.device = device
        self.title = title
        self.stacks_captured = stacks_captured

    @property
    def count(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def total_bytes(self) -> int:
        return sum(g.total_bytes for g in self.groups)

    @property
    def requested_bytes(self) -> int:
        return sum(g.requested_bytes for g in self.groups)

    @property
    def blocks(self) -> List[LeakedBlock]:
        return sorted((b for g in self.groups for b in g.blocks), key=lambda b: b.seq)

    def __bool__(self) -> bool:
        return self.count > 0

    def __len__(self) -> int:
        return self.count

    def to_text(self, max_groups: int = 10, max_stacks: int = 2, max_user_frames: int = 8) -> str:
        """The report as text: one paragraph per call site with its stack(s)."""
        if not self.groups:
            return f"pypool: {self.title} on device {self.device}: none"
        n_sites = len(self.groups)
        lines = [
            f"pypool: {self.title} on device {self.device}: {self.count} "
            f"{'allocation' if self.count == 1 else 'allocations'}, "
            f"{format_size(self.total_bytes)} ({format_size(self.requested_bytes)} requested), "
            f"from {n_sites} {'call site' if n_sites == 1 else 'call sites'}"
        ]
        if not self.stacks_captured:
            lines.append("  (stack capture was off: grouped by size and stream)")
        for g in self.groups[:max_groups]:
            ages = [b.age_s for b in g.blocks if b.age_s is not None]
            seqs = [b.seq for b in g.blocks]
            extra = [f"seq {min(seqs)}" + (f"–{max(seqs)}" if max(seqs) != min(seqs) else "")]
            if g.filename is not None:
                extra.insert(0, f"stream {', '.join(map(str, g.streams))}")
            if ages:
                lo, hi = min(ages), max(ages)
                extra.append(f"age {_format_age(lo)}" if math.isclose(lo, hi, rel_tol=0.05, abs_tol=1e-3)
                             else f"ages {_format_age(lo)}–{_format_age(hi)}")
            lines.append(
                f"  {g.site}: {g.count} {'block' if g.count == 1 else 'blocks'}, "
                f"{format_size(g.total_bytes)} ({format_size(g.requested_bytes)} requested); "
                + ", ".join(extra))
            stacks = g.stacks()
            for n, frames in stacks[:max_stacks]:
                if not frames:
                    continue
                if len(stacks) > 1:
                    lines.append(f"    stack of {n} {'block' if n == 1 else 'blocks'}:")
                for text in format_stack(frames, max_user_frames):
                    lines.append(f"      {text}")
            if len(stacks) > max_stacks:
                lines.append(f"    … {len(stacks) - max_stacks} more distinct stacks")
        if n_sites > max_groups:
            rest = self.groups[max_groups:]
            lines.append(f"  … {len(rest)} more call sites, "
                         f"{format_size(sum(g.total_bytes for g in rest))}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return (f"LeakReport(device={self.device}, count={self.count}, "
                f"total_bytes={self.total_bytes}, groups={len(self.groups)})")

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable form (frames use torch's snapshot schema
        ``{filename, line, name}``)."""
        return {
            "title": self.title, "device": self.device, "count": self.count,
            "total_bytes": self.total_bytes, "requested_bytes": self.requested_bytes,
            "stacks_captured": self.stacks_captured,
            "groups": [g.to_dict() for g in self.groups],
        }


def _format_age(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.0f} ms"
    return f"{seconds:.1f} s"


def _leaked_blocks(core_pool: Any, start: int, end: Optional[int], now_us: float) -> List[LeakedBlock]:
    out = []
    for b in core_pool.live_blocks(start):
        if end is not None and b["seq"] >= end:
            continue
        t = b["time_us"]
        # Note [Allocation age]: the core stamps blocks with std::chrono::steady_clock,
        # which libstdc++ and libc++ implement with CLOCK_MONOTONIC on Linux, the clock of
        # time.monotonic(); both count from the same origin, so the difference is an age.
        # A zero stamp means the pool was not annotating (no capture, no history).
        age = max(0.0, (now_us - t) / 1e6) if t > 0 else None
        out.append(LeakedBlock(
            address=b["address"], size=b["size"], requested_size=b["requested_size"],
            stream=b["stream"], seq=b["seq"], age_s=age,
            frames=tuple(_context.frames(b["context"]))))
    return out


# ---------------------------------------------------------------------------- which pool

def _resolve_pool(pool: Optional[PoolLike], device: Any) -> Tuple[Any, int]:
    """(native pool, device index) for ``pool=`` / ``device=``: which pool is
    :func:`pypool._registry.resolve_pool`'s answer (the registry pool is made if needed,
    Note [Pools before install] in memory.py); a leak scope takes one of the two."""
    if pool is not None:
        if device is not None:
            raise ValueError("pool, device: pass one of them, not both")
        if not isinstance(pool, (Pool, _core.DevicePool)):
            raise TypeError(f"pool: expected a pypool.Pool, got {type(pool).__name__}")
    target, d = resolve_pool(device, pool, create=True, what="track_leaks")
    assert target is not None  # create=True always gives a pool
    return target._pool, d


# ---------------------------------------------------------------------------- tracker

class LeakTracker:
    """A leak-tracking scope over one pool (use :func:`track_leaks` to make one).

    The report is fixed when the scope closes: an allocation made inside the scope and
    still live at that moment is a leak of the scope, even if it is freed later. Before
    the scope closes, :meth:`report` gives the allocations made so far and live now.
    """

    def __init__(self, core_pool: Any, device: int, capture_stacks: bool) -> None:
        self._core = core_pool
        self.device = device
        self.capture_stacks = bool(capture_stacks)
        self.start_seq: Optional[int] = None
        self.end_seq: Optional[int] = None
        self._report: Optional[LeakReport] = None
        self._captured = False

    def __enter__(self) -> "LeakTracker":
        if self.start_seq is not None:
            raise RuntimeError("track_leaks: a tracker is single-use; make a new one")
        if self.capture_stacks:
            _context.acquire(self._core)
            self._captured = True
        self.start_seq = int(self._core.next_seq)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """End the scope (what leaving the ``with`` block does); idempotent."""
        if self.start_seq is None or self.end_seq is not None:
            return
        self.end_seq = int(self._core.next_seq)
        try:
            self._report = self._snapshot(self.end_seq)
        finally:
            if self._captured:
                self._captured = False
                _context.release(self._core)

    @property
    def active(self) -> bool:
        """True between entering and leaving the scope."""
        return self.start_seq is not None and self.end_seq is None

    def _snapshot(self, end: int) -> LeakReport:
        assert self.start_seq is not None
        blocks = _leaked_blocks(self._core, self.start_seq, end, time.monotonic() * 1e6)
        return LeakReport(blocks, self.device, "allocations made in the scope and still live",
                          self.capture_stacks)

    def report(self) -> LeakReport:
        """Allocations made in the scope and live at its end (inside the scope: live now)."""
        if self.start_seq is None:
            raise RuntimeError("track_leaks: the scope has not been entered yet")
        if self._report is not None:
            return self._report
        return self._snapshot(int(self._core.next_seq))

    def assert_no_leaks(self) -> None:
        """Raise :class:`LeakError` (an ``AssertionError``) carrying the report if any
        allocation of the scope is live."""
        r = self.report()
        if r.count:
            raise LeakError(r)

    def __repr__(self) -> str:
        state = "new" if self.start_seq is None else ("active" if self.active else "closed")
        return f"<LeakTracker device={self.device} {state} start_seq={self.start_seq} end_seq={self.end_seq}>"


def track_leaks(capture_stacks: bool = True, device: Any = None,
                pool: Optional[PoolLike] = None) -> LeakTracker:
    """A scope that reports the allocations made inside it and still live at its end.

    Args:
        capture_stacks: record the Python stack of each allocation made in the scope
            (a few microseconds per allocation) so that the report names call sites.
            Without it, leaks are grouped by size and stream.
        device: the registry pool (the one torch allocates from) of this device;
            default: the current CUDA device once torch has initialised CUDA, else 0.
            The pool is made if it does not exist yet, from ``$PYPOOL_CONF`` before
            ``install()`` and on the host backend without a GPU (Note [Pools before
            install] in :mod:`pypool.memory`); a device that does not exist raises
            ``ValueError``.
        pool: a :class:`pypool.Pool` to watch instead of a registry pool.

    Returns a :class:`LeakTracker`; use it as a context manager::

        with track_leaks() as leaks:
            step()
        leaks.assert_no_leaks()

    Allocations made before the scope are never reported, nor are cached free blocks.
    """
    _check_bool(capture_stacks, "capture_stacks")
    core, d = _resolve_pool(pool, device)
    return LeakTracker(core, d, capture_stacks)


def _check_bool(value: Any, name: str) -> None:
    # bool("false") is True: a string here would silently switch stack capture on.
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {type(value).__name__} {value!r}"[:200])


# ---------------------------------------------------------------------------- LeakWatch

@dataclass(frozen=True)
class LeakWatchSite:
    """A call site (or size/stream group without stacks) whose allocations made during
    the window are still live. ``steps`` counts the distinct steps they come from."""

    site: str
    bytes: int
    count: int
    steps: int
    frames: Tuple[Frame, ...] = ()

    def to_dict(self) -> Dict[str, Any]:
        return {"site": self.site, "bytes": self.bytes, "count": self.count,
                "steps": self.steps, "frames": [dict(f) for f in self.frames]}


@dataclass(frozen=True)
class LeakWatchReport:
    """What :class:`LeakWatch` saw: the window of samples and the suspected call sites.

    ``suspects`` are the sites whose survivors come from at least three distinct steps
    of the window; ``weak`` is True when none qualified and ``suspects`` lists the
    largest survivor groups instead."""

    step: int
    device: int
    samples: Tuple[Tuple[int, int], ...]  # (step, allocated bytes)
    growth_bytes: int
    slope_bytes_per_step: float
    suspects: Tuple[LeakWatchSite, ...]
    weak: bool
    stacks_captured: bool

    def to_text(self, max_sites: int = 5) -> str:
        first, last = self.samples[0], self.samples[-1]
        lines = [
            f"pypool: live memory on device {self.device} grew by {format_size(self.growth_bytes)} "
            f"over steps {first[0]}–{last[0]} (≈ {format_size(self.slope_bytes_per_step)} per step, "
            f"{format_size(first[1])} → {format_size(last[1])})"
        ]
        if not self.suspects:
            lines.append("  no allocation made during the window is still live: the growth "
                         "was freed since, or comes from before the window")
        else:
            head = ("  largest survivors of the window (no site kept allocations from 3+ steps):"
                    if self.weak else "  call sites whose allocations keep piling up:")
            lines.append(head)
            for s in self.suspects[:max_sites]:
                lines.append(f"    {s.site}: {s.count} live {'block' if s.count == 1 else 'blocks'}, "
                             f"{format_size(s.bytes)}, from {s.steps} "
                             f"{'step' if s.steps == 1 else 'steps'}")
                for text in format_stack(s.frames, 4)[1:]:
                    lines.append(f"        {text}")
            if len(self.suspects) > max_sites:
                lines.append(f"    … {len(self.suspects) - max_sites} more")
        if not self.stacks_captured:
            lines.append("  (stack capture is off: sites are grouped by size and stream; "
                         "use LeakWatch(capture_stacks=True) for file and line)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()

    def to_dict(self) -> Dict[str, Any]:
        return {
            "step": self.step, "device": self.device, "samples": [list(s) for s in self.samples],
            "growth_bytes": self.growth_bytes, "slope_bytes_per_step": self.slope_bytes_per_step,
            "suspects": [s.to_dict() for s in self.suspects], "weak": self.weak,
            "stacks_captured": self.stacks_captured,
        }


def _slope(ys: Sequence[int]) -> float:
    n = len(ys)
    mx = (n - 1) / 2.0
    my = sum(ys) / n
    num = sum((i - mx) * (y - my) for i, y in enumerate(ys))
    den = sum((i - mx) ** 2 for i in range(n))
    return num / den


def _r_squared(ys: Sequence[int], slope: float) -> float:
    """Share of the samples' variance the fitted line explains (1 for a flat series)."""
    n = len(ys)
    mx = (n - 1) / 2.0
    my = sum(ys) / n
    total = sum((y - my) ** 2 for y in ys)
    if total == 0:
        return 1.0
    resid = sum((y - (my + slope * (i - mx))) ** 2 for i, y in enumerate(ys))
    return 1.0 - resid / total


def steady_growth(samples: Sequence[int], min_growth: int) -> bool:
    """The rule :class:`LeakWatch` applies to a full window of live-bytes samples
    (Note [Steady growth rule])."""
    ys = list(samples)
    w = len(ys)
    if w < 4:
        return False
    slope = _slope(ys)
    if slope * (w - 1) < min_growth:
        return False
    if _r_squared(ys, slope) < 0.7:
        return False
    ups = sum(1 for a, b in zip(ys, ys[1:]) if b >= a)
    if 2 * ups < w - 1:
        return False
    mid = w // 2
    return ys[mid] > ys[0] and ys[-1] > ys[mid]


class LeakWatch:
    """Watches live memory across training iterations; call :meth:`step` once per iteration.

    Args:
        warmup: steps ignored at the start (and after :meth:`reset`): the first
            iterations legitimately allocate (optimizer state, caches).
        window: samples per decision (>= 4).
        min_growth: bytes (or a size string such as ``"16MiB"``) the window must grow by.
        callback: called with a :class:`LeakWatchReport` instead of warning.
        device / pool: which pool (as for :func:`track_leaks`).
        capture_stacks: record allocation stacks from now on so the report names files
            and lines (a few µs per allocation). Call :meth:`close` (or use ``with``) to
            stop.

    Note [Steady growth rule]: over the last ``window`` samples of
    ``allocated_bytes.all.current`` (taken at each :meth:`step`), a leak is reported when
    all four hold (:func:`steady_growth`):
    (1) the least-squares slope times ``window - 1`` (the fitted growth across the
    window) is at least ``min_growth``;
    (2) the line explains the samples: R² >= 0.7 (noise, such as a batch of varying size
    kept across iterations, can fit a steep line by chance but rarely a tight one);
    (3) monotone-ish: at least half of the step-to-step changes are >= 0 (a series that
    mostly falls between rare big jumps is left alone; such a leak is still caught over
    a window longer than its period);
    (4) sustained: both halves of the window end higher than they start (one jump, such
    as a cache filled once, fails).
    A sawtooth such as gradient accumulation fails (1) or (2). On uniform noise 16x
    ``min_growth`` wide with ``window=10`` this fires on about one window position in
    1,000; a leak of ``min_growth`` per step under noise 4x as wide is caught at about 9
    window positions in 10 (measured on synthetic series while choosing the thresholds).
    A leak slower than its noise needs a longer window. After a report the window starts
    afresh, so a persisting leak is reported at most once per ``window`` steps.

    Note [Growing call sites]: instead of diffing two snapshots of all live blocks, each
    sample remembers the pool's allocation counter. At a report, the live blocks
    allocated during the window are bucketed by the step that made them. A leaking
    site has survivors from many steps; a site whose tensors are replaced each iteration
    (activations, the latest loss) only from the last one or two. Sites with survivors
    from three or more steps are the suspects. This costs one ``live_blocks`` call per
    report and nothing per step beyond reading the statistics.
    """

    HISTORY_LEN = 10_000

    def __init__(self, warmup: int = 5, window: int = 10, min_growth: SizeLike = 1 << 20,
                 callback: Optional[Callable[[LeakWatchReport], Any]] = None,
                 device: Any = None, pool: Optional[PoolLike] = None,
                 capture_stacks: bool = False) -> None:
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup: expected an int >= 0, got {warmup!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 4:
            raise ValueError(f"window: expected an int >= 4, got {window!r}")
        growth = parse_size(min_growth, "min_growth")
        if growth <= 0:
            raise ValueError("min_growth: must be > 0")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback: expected a callable, got {type(callback).__name__}")
        _check_bool(capture_stacks, "capture_stacks")
        self.warmup = warmup
        self.window = window
        self.min_growth = growth
        self.callback = callback
        self._core, self.device = _resolve_pool(pool, device)
        self.capture_stacks = bool(capture_stacks)
        self._captured = False
        if self.capture_stacks:
            _context.acquire(self._core)
            self._captured = True
        self._lock = threading.Lock()
        self._steps = 0
        self._samples: Deque[Tuple[int, int, int]] = deque(maxlen=window)  # step, bytes, next_seq
        self._history: Deque[Tuple[int, int]] = deque(maxlen=self.HISTORY_LEN)
        self.reports: List[LeakWatchReport] = []

    # -- lifecycle
    def close(self) -> None:
        """Stop the stack capture this watch turned on (idempotent)."""
        if self._captured:
            self._captured = False
            _context.release(self._core)

    def __enter__(self) -> "LeakWatch":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def reset(self) -> None:
        """Forget the samples and start a new warmup (after a phase change such as the
        start of evaluation). Reports already made stay in :attr:`reports`."""
        with self._lock:
            self._steps = 0
            self._samples.clear()
            self._history.clear()

    @property
    def history(self) -> List[Tuple[int, int]]:
        """``(step, allocated bytes)`` of every step since construction or :meth:`reset`
        (warmup included; the last 10,000 are kept)."""
        with self._lock:
            return list(self._history)

    @property
    def steps(self) -> int:
        return self._steps

    # -- the probe
    def step(self) -> Optional[LeakWatchReport]:
        """Record one iteration. Returns the report when this step detected a leak (it
        has also been passed to ``callback`` or warned as :class:`LeakWarning`)."""
        with self._lock:
            self._steps += 1
            n = self._steps
            live = int(self._core.memory_stats()["allocated_bytes.all.current"])
            seq = int(self._core.next_seq)
            self._history.append((n, live))
            if n <= self.warmup:
                return None
            self._samples.append((n, live, seq))
            if len(self._samples) < self.window or not self._growing():
                return None
            report = self._make_report()
            self._samples.clear()
            self.reports.append(report)
        if self.callback is not None:
            self.callback(report)
        else:
            warnings.warn(LeakWarning(report.to_text()), stacklevel=2)
        return report

    def _growing(self) -> bool:
        return steady_growth([s[1] for s in self._samples], self.min_growth)

    def _make_report(self) -> LeakWatchReport:
        samples = list(self._samples)
        marks = [s[2] for s in samples]  # allocations of step k+1 have seq in [marks[k], marks[k+1])
        blocks = _leaked_blocks(self._core, marks[0], marks[-1], time.monotonic() * 1e6)
        sites: Dict[Tuple[Any, ...], Dict[str, Any]] = {}
        for b in blocks:
            key, label, _ = _group_key_and_label(b)
            s = sites.setdefault(key, {"site": label, "bytes": 0, "count": 0, "steps": set(),
                                       "frames": b.frames})
            s["bytes"] += b.size
            s["count"] += 1
            s["steps"].add(bisect_right(marks, b.seq))
        ranked = sorted(
            (LeakWatchSite(site=s["site"], bytes=s["bytes"], count=s["count"],
                           steps=len(s["steps"]), frames=tuple(s["frames"]))
             for s in sites.values()),
            key=lambda s: (-s.bytes, s.site))
        suspects = [s for s in ranked if s.steps >= 3]
        weak = not suspects
        if weak:
            suspects = ranked[:5]
        ys = [s[1] for s in samples]
        return LeakWatchReport(
            step=samples[-1][0], device=self.device,
            samples=tuple((s[0], s[1]) for s in samples),
            growth_bytes=ys[-1] - ys[0], slope_bytes_per_step=_slope(ys),
            suspects=tuple(suspects), weak=weak, stacks_captured=self.capture_stacks)

    def __repr__(self) -> str:
        return (f"<LeakWatch device={self.device} steps={self._steps} window={self.window} "
                f"min_growth={self.min_growth} reports={len(self.reports)}>")


# ---------------------------------------------------------------------------- exit check

_exit_check_enabled = False
_exit_lock = threading.Lock()


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def exit_check_requested(environ: Optional[Dict[str, str]] = None) -> bool:
    """Whether ``PYPOOL_LEAK_CHECK`` asks for the exit check: ``1``, ``true``, ``yes`` or
    ``on`` (any case) turn it on; unset, empty, ``0``, ``false``, ``no`` or ``off`` leave
    it off. Any other value leaves it off too, with a ``RuntimeWarning`` naming the
    variable (a typo must neither switch the check on nor pass unnoticed; a warning rather
    than an error, because ``import pypool`` reads it)."""
    value = (os.environ if environ is None else environ).get("PYPOOL_LEAK_CHECK", "")
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v not in _FALSE:
        warnings.warn(f"PYPOOL_LEAK_CHECK={value!r} is not understood (expected 1/true/yes/on or "
                      "0/false/no/off); the exit leak check stays off", RuntimeWarning, stacklevel=2)
    return False


def enable_exit_check() -> None:
    """Print the allocations still live in every registry pool at interpreter exit
    (to stderr, grouped by call site) and capture allocation stacks from now on.

    ``pypool`` calls this at import when ``PYPOOL_LEAK_CHECK=1``; idempotent.

    Stacks are captured on every registry pool, those that exist when this runs and
    those the C++ registry makes later at a device's first allocation.
    """
    global _exit_check_enabled
    with _exit_lock:
        if _exit_check_enabled:
            return
        _exit_check_enabled = True
    # atexit runs handlers last-registered-first: registered at import, this runs after
    # the handlers of modules imported later (torch's among them), while module globals
    # (and the tensors they hold) are still alive.
    atexit.register(_exit_check)
    _context.capture_new_registry_pools(True)


def exit_reports() -> List[LeakReport]:
    """The reports the exit check prints: every registry pool's live allocations."""
    now = time.monotonic() * 1e6
    out = []
    for d in _core.registry_devices():
        core = _core.registry_pool(d)
        blocks = _leaked_blocks(core, 0, None, now)
        stacks = _exit_check_enabled or any(b.frames for b in blocks)
        out.append(LeakReport(blocks, d, "allocations still live at exit", stacks))
    return out


def _exit_check() -> None:
    try:
        gc.collect()  # garbage cycles are not outstanding allocations
        reports = exit_reports()
        stream = sys.stderr
        if stream is None:
            return
        if not reports:
            print("pypool leak check (PYPOOL_LEAK_CHECK): no pypool device pool was used",
                  file=stream)
        for r in reports:
            print(r.to_text(max_groups=20), file=stream)
        stream.flush()
    except Exception as e:  # never turn a clean exit into a traceback
        try:
            print(f"pypool leak check failed: {e!r}", file=sys.stderr)
        except Exception:
            pass
