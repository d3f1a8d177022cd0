"""Offline replay: run an allocation trace through a pool and measure what it reserves.

Replays use the ``null`` backend by default: the pool does all its bookkeeping but never
touches memory, so an 80 GiB training trace replays on a laptop. The event loop runs in
C++ (``_core.replay_trace``) without the GIL, at millions of events per second.

Figures (see :class:`ReplayResult`):

* ``peak_live``: the physical floor, the most requested bytes live at once;
* ``peak_reserved``: the most bytes the pool held from the device;
* ``utilization = peak_live / peak_reserved`` (1.0 is perfect; when allocations failed,
  the replay's own peak live bytes take the floor's place, so it never exceeds 1) and
  ``allocated_utilization = peak_allocated / peak_reserved`` (GMLake's measure, which
  does not count rounding as waste);
* ``fragmentation``: external fragmentation at the moment of peak reserved,
  ``1 - largest_free_block / free_bytes`` (with ``at_peak=True``): the share of the
  cached free bytes that one request could not get at once;
* when an allocation fails (``ooms > 0``, ``completed`` False): ``limit`` and
  ``limit_source`` (the setting that bound the pool) and ``first_oom``, the pool's state
  at the first failure (:func:`pypool.fragmentation.explain_oom` says where the memory
  was).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Union

import numpy as np

from . import _core
from ._pool import Pool
from .config import PoolConfig, SizeLike, format_size, parse_size
from .fragmentation import FragmentationReport, expandable_bound, explain_oom, pool_limit
from .trace import ALLOC, Trace
from .workloads import generate

__all__ = ["ReplayResult", "replay", "replay_workload", "free_block_summary", "default_capacity",
           "first_oom_text", "DEFAULT_CAPACITY"]

DEFAULT_CAPACITY = "80GiB"
ConfigLike = Union[PoolConfig, Mapping[str, Any], str, None]


@dataclass
class ReplayResult:
    """What a replay measured. Byte counts are ints; ratios are floats in [0, 1].

    Attributes:
        name: the trace's name.
        events: events replayed.
        seconds, events_per_second: time of the C++ replay loop alone.
        peak_reserved: most bytes reserved from the device at once.
        peak_allocated: most bytes in live blocks at once (after rounding).
        peak_live: most requested bytes live at once in the trace: the physical floor.
        final_reserved: reserved at the end of the trace.
        utilization: ``peak_live / peak_reserved``; when some allocation failed, the
            replay's own peak live bytes / ``peak_reserved`` instead (the trace's floor
            never fit, so it is no measure of the pool). Always in [0, 1].
        allocated_utilization: ``peak_allocated / peak_reserved``.
        ooms: allocations that failed with out-of-memory (their frees are skipped).
        num_alloc_retries: allocations that had to release cached memory and retry.
        num_device_alloc, num_device_free: backend segment allocations and frees.
        num_segment_map: expandable-segment growth steps.
        skipped_events: events the replay could not apply (frees of failed allocations).
        config: the pool's settings as a ``PYPOOL_CONF`` string ("" = defaults).
        capacity: device capacity the replay assumed.
        limit: the most the pool could reserve: ``capacity``, or less under
            ``max_pool_size`` / ``memory_fraction``.
        limit_source: which of those set ``limit``: "device capacity", "max_pool_size"
            or "memory_fraction".
        first_oom: when an allocation failed: ``event`` (its index; that many events ran
            before it), ``size``, ``stream``, ``live`` / ``allocated`` / ``reserved``
            bytes just before it, and ``error`` (the pool's message). None otherwise.
        first_oom_pool: the pool right after that first failed allocation (its cached
            segments released by the retry), for ``explain_oom`` and reports.
        peak_event: index of the first event after which reserved was at its peak
            (``at_peak=True`` only).
        fragmentation: external fragmentation at that moment (``at_peak=True`` only).
        at_peak: reserved / allocated / live / free bytes / largest free block at that
            moment (``at_peak=True`` only).
        pool: the pool after the replay (for reports: ``pool.segments()``).
        peak_pool: a pool replayed up to ``peak_event`` (``at_peak=True`` only).
        timeline: ``{"event", "live", "allocated", "reserved"}`` int64 arrays, one entry
            every ``sample_every`` events (empty unless asked for).
    """

    name: str
    events: int
    seconds: float
    events_per_second: float
    peak_reserved: int
    peak_allocated: int
    peak_live: int
    final_reserved: int
    utilization: float
    allocated_utilization: float
    ooms: int
    num_alloc_retries: int
    num_device_alloc: int
    num_device_free: int
    num_segment_map: int
    skipped_events: int
    config: str
    capacity: int
    limit: int = 0
    limit_source: str = "device capacity"
    first_oom: Optional[Dict[str, Any]] = None
    peak_event: Optional[int] = None
    fragmentation: Optional[float] = None
    at_peak: Optional[Dict[str, int]] = None
    pool: Optional[Pool] = field(default=None, repr=False, compare=False)
    peak_pool: Optional[Pool] = field(default=None, repr=False, compare=False)
    first_oom_pool: Optional[Pool] = field(default=None, repr=False, compare=False)
    timeline: Dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def completed(self) -> bool:
        """True when every allocation of the trace succeeded."""
        return self.ooms == 0

    def limit_text(self) -> str:
        """"80.00 GiB limit (device capacity)": the limit the replay ran under; when the
        first failure was a stream's expandable segment reaching the end of its virtual
        range (``expandable_reserve``), that range, which binds below the limit."""
        text = f"{format_size(self.limit)} limit ({self.limit_source})"
        fo = self.first_oom or {}
        rng = fo.get("expandable_reserve")
        if rng is not None:
            return (f"{format_size(int(rng))} expandable_reserve of stream {fo['stream']}'s "
                    f"expandable segment (its virtual range; the {text} was not reached)")
        return text

    @property
    def overhead(self) -> float:
        """``peak_reserved / peak_live`` (1.0 = no memory beyond the floor); ``nan`` when
        the replay did not complete (the floor never fit, so the ratio means nothing)."""
        if not self.completed:
            return math.nan
        return self.peak_reserved / self.peak_live if self.peak_live else math.inf

    def to_dict(self, timeline: bool = False) -> Dict[str, Any]:
        """JSON-ready figures (no pools; the timeline as lists if ``timeline``)."""
        d: Dict[str, Any] = {k: getattr(self, k) for k in (
            "name", "events", "seconds", "events_per_second", "peak_reserved", "peak_allocated",
            "peak_live", "final_reserved", "utilization", "allocated_utilization", "ooms",
            "num_alloc_retries", "num_device_alloc", "num_device_free", "num_segment_map",
            "skipped_events", "config", "capacity", "limit", "limit_source", "first_oom",
            "peak_event", "fragmentation", "at_peak")}
        d["completed"] = self.completed
        d["overhead"] = self.overhead if self.peak_live and self.completed else None
        if timeline:
            d["timeline"] = {k: v.tolist() for k, v in self.timeline.items()}
        return d

    def to_text(self) -> str:
        """A short human-readable summary. A replay that ran out of memory says so first:
        the limit and what set it, and the state at the first failure."""
        lines = [
            f"trace              {self.name or '(unnamed)'}: {self.events:,} events",
            f"config             {self.config or '(defaults)'}",
        ]
        limit = self.limit_text()
        if not self.completed:
            lines.append(f"RESULT             DOES NOT FIT: the trace needs {format_size(self.peak_live)} live "
                         f"at its peak; the pool could not serve it under the {limit}")
            fo = self.first_oom
            if fo is not None:
                lines.append(
                    f"first OOM          after {fo['event']:,} of {self.events:,} events: a request for "
                    f"{format_size(fo['size'])} on stream {fo['stream']} failed with "
                    f"{format_size(fo['live'])} live ({format_size(fo['allocated'])} allocated, "
                    f"{format_size(fo['reserved'])} reserved)")
            lines.append(f"out of memory      {_count(self.ooms, 'allocation')} failed in all; the replay went on "
                         f"without them ({_count(self.skipped_events, 'free')} of them skipped)")
            lines.append(f"peak live (floor)  {format_size(self.peak_live)} in the trace, "
                         f"{self.peak_live / self.limit:.2f}x the limit" if self.limit else
                         f"peak live (floor)  {format_size(self.peak_live)} in the trace")
            lines.append(f"peak reserved      {format_size(self.peak_reserved)} ("
                         + ("at" if self.peak_reserved >= self.limit else "under")
                         + f" the {format_size(self.limit)} limit)")
        else:
            lines.append(f"peak live (floor)  {format_size(self.peak_live)}")
            lines.append(f"peak reserved      {format_size(self.peak_reserved)}"
                         + (f"  ({self.overhead:.3f}x the floor)" if self.peak_live else ""))
        lines.append(f"peak allocated     {format_size(self.peak_allocated)}")
        if self.completed:
            lines.append(f"utilization        {self.utilization:.3f} (floor/reserved), "
                         f"{self.allocated_utilization:.3f} (allocated/reserved)")
        else:
            lines.append(f"utilization        {self.utilization:.3f} (live/reserved, of what the replay "
                         f"could allocate: the trace did not complete), "
                         f"{self.allocated_utilization:.3f} (allocated/reserved)")
        if self.fragmentation is not None and self.at_peak is not None:
            ap = self.at_peak
            lines.append(
                f"at peak reserved   event {self.peak_event:,}: {format_size(ap['free_bytes'])} free in the "
                f"cache, largest free block {format_size(ap['largest_free'])}: external fragmentation "
                f"{100 * self.fragmentation:.1f}% of those free bytes (1 - largest free block / free bytes)")
        if self.completed:
            lines.append(f"out of memory      0 ({limit})")
        lines += [
            f"device allocations {self.num_device_alloc} allocs, {self.num_device_free} frees"
            + (f", {self.num_segment_map} maps" if self.num_segment_map else "")
            + (f", {self.num_alloc_retries} release-and-retry" if self.num_alloc_retries else ""),
            f"replay speed       {self.events_per_second / 1e6:.1f} M events/s ({self.seconds * 1e3:.1f} ms)",
        ]
        return "\n".join(lines)


def default_capacity(trace: Trace) -> int:
    """Device size to assume when none is given: 80 GiB, or twice the trace's peak live
    bytes (rounded up to GiB) when that is more, so a trace recorded on a bigger GPU
    does not fail for want of an imaginary device (the null backend costs nothing)."""
    gib = 1 << 30
    return max(parse_size(DEFAULT_CAPACITY), -(-2 * trace.peak_live() // gib) * gib)


def free_block_summary(pool: Pool) -> Dict[str, int]:
    """Free (cached) bytes and the largest free block of a pool, from its segments."""
    free = largest = 0
    for seg in pool.segments():
        for b in seg["blocks"]:
            if b["state"] == "inactive":
                free += b["size"]
                largest = max(largest, b["size"])
    return {"free_bytes": free, "largest_free": largest}


def _make_pool(config: ConfigLike, capacity: int, backend: str) -> Pool:
    return Pool(backend=backend, capacity=capacity, config=PoolConfig.coerce(config))


def _run(pool: Pool, trace: Trace, sample_every: int) -> Dict[str, Any]:
    return _core.replay_trace(pool._pool, trace.actions, trace.ids, trace.sizes, trace.streams, sample_every)


def replay(
    trace: Trace,
    config: ConfigLike = None,
    capacity: SizeLike = DEFAULT_CAPACITY,
    backend: str = "null",
    sample_every: int = 0,
    at_peak: bool = False,
) -> ReplayResult:
    """Replay ``trace`` through a fresh ``Pool(backend, capacity=capacity, config=config)``.

    Args:
        trace: the events.
        config: a :class:`PoolConfig`, a dict of its fields or a ``PYPOOL_CONF`` string.
        capacity: the device's size (default 80 GiB). ``max_pool_size`` in ``config``
            caps the pool below it.
        backend: ``"null"`` (bookkeeping only; default) or ``"host"`` (real host memory
            reserved lazily, never touched by the replay).
        sample_every: record live / allocated / reserved every this many events in
            ``timeline`` (0 = never; 1 doubles the replay time).
        at_peak: also find the moment of peak reserved and replay up to it, filling
            ``peak_event``, ``fragmentation``, ``at_peak`` and ``peak_pool`` (about three
            more replays' worth of time).

    The replay is deterministic: the same trace and settings give the same figures.
    """
    if not isinstance(trace, Trace):
        raise TypeError(f"trace: expected a pypool.trace.Trace, got {type(trace).__name__}")
    if backend not in ("null", "host"):
        raise ValueError(f"backend: replays run on 'null' or 'host', got {backend!r}")
    if isinstance(sample_every, bool) or not isinstance(sample_every, int) or sample_every < 0:
        raise ValueError(f"sample_every: expected an int >= 0, got {sample_every!r}")
    cap = parse_size(capacity, "capacity")
    if cap == 0:
        raise ValueError("capacity: must be > 0")
    cfg = PoolConfig.coerce(config)
    pool = _make_pool(cfg, cap, backend)
    r = _run(pool, trace, sample_every)
    s = pool.memory_stats()
    # Note [Floor from the trace]: the floor is the trace's own demand, not what the
    # replay managed to allocate: with out-of-memory failures the replay's live peak
    # would understate what the program needed.
    peak_live = trace.peak_live()
    peak_reserved = int(s["reserved_bytes.all.peak"])
    peak_allocated = int(s["allocated_bytes.all.peak"])
    ooms = int(r["ooms"])
    # Utilization never exceeds 1: without the whole trace, what the replay held live.
    util_live = peak_live if ooms == 0 else min(peak_live, int(r["peak_live_requested"]))
    limit, limit_source = pool_limit(pool)
    tl = r["timeline"]
    result = ReplayResult(
        name=trace.name,
        events=int(r["events"]),
        seconds=float(r["seconds"]),
        events_per_second=float(r["events_per_second"]),
        peak_reserved=peak_reserved,
        peak_allocated=peak_allocated,
        peak_live=peak_live,
        final_reserved=int(s["reserved_bytes.all.current"]),
        utilization=util_live / peak_reserved if peak_reserved else 0.0,
        allocated_utilization=peak_allocated / peak_reserved if peak_reserved else 0.0,
        ooms=ooms,
        num_alloc_retries=int(s["num_alloc_retries"]),
        num_device_alloc=int(s["num_device_alloc"]),
        num_device_free=int(s["num_device_free"]),
        num_segment_map=int(s["num_segment_map"]),
        skipped_events=int(r["skipped_events"]),
        config=cfg.to_string(),
        capacity=cap,
        limit=limit,
        limit_source=limit_source,
        pool=pool,
        timeline={k: np.asarray(v, np.int64) for k, v in tl.items()} if sample_every else {},
    )
    if ooms:
        _fill_first_oom(result, trace, cfg, cap, backend, int(r.get("first_oom_event", -1)))
    if at_peak and len(trace):
        _fill_at_peak(result, trace, cfg, cap, backend)
    return result


def _count(n: int, noun: str) -> str:
    """"1 allocation", "3,006 allocations"."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _fill_first_oom(result: ReplayResult, trace: Trace, cfg: PoolConfig, cap: int, backend: str,
                    k: int) -> None:
    """Rebuild the pool just before the first failed allocation (event ``k``; the replay
    is deterministic, Note [Peak by re-replay]), record its state, then make the failing
    request again so that the pool is left as the failure left it."""
    if not 0 <= k < len(trace):
        return
    pool = _make_pool(cfg, cap, backend)
    _run(pool, trace[:k], 0)
    st = pool.memory_stats()
    size, stream = int(trace.sizes[k]), int(trace.streams[k])
    error = None
    try:
        pool._pool.malloc(size, stream)
    except _core.OutOfMemoryError as e:
        error = str(e)
    else:  # not reproduced: report nothing rather than a wrong state
        return
    result.first_oom = {
        "event": k, "size": size, "stream": stream,
        "live": int(st["requested_bytes.all.current"]),
        "allocated": int(st["allocated_bytes.all.current"]),
        "reserved": int(st["reserved_bytes.all.current"]),
        "error": error,
    }
    # Note [Expandable reserve] (fragmentation.py): with expandable segments the stream's
    # virtual range can be what failed, far below the device or the cap.
    core_cfg = pool._pool.config
    rounded = int(_core.round_size(core_cfg, size))
    if _core.pool_for(core_cfg, rounded) == "large":
        vmm = expandable_bound(core_cfg, pool.segments(), rounded, stream)
        if vmm is not None and vmm["blocked"]:
            result.first_oom["expandable_reserve"] = vmm["range"]
    result.first_oom_pool = pool


def first_oom_text(result: ReplayResult) -> Optional[str]:
    """Where the memory was at the replay's first out-of-memory failure: what
    :func:`pypool.fragmentation.explain_oom` says of ``result.first_oom_pool``, then the
    pool's full fragmentation report. None when nothing failed."""
    fo, pool = result.first_oom, result.first_oom_pool
    if fo is None or pool is None:
        return None
    head = (f"# {result.name or 'trace'}: the pool at the first out-of-memory failure, after "
            f"{fo['event']:,} of {result.events:,} events; settings: {result.config or '(defaults)'}\n"
            f"# live just before it: {format_size(fo['live'])} requested, "
            f"{format_size(fo['allocated'])} allocated, {format_size(fo['reserved'])} reserved\n\n")
    return (head + explain_oom(pool, fo["size"], fo["stream"], error=fo["error"]) + "\n"
            + FragmentationReport.from_pool(pool).to_text())


def _fill_at_peak(result: ReplayResult, trace: Trace, cfg: PoolConfig, cap: int, backend: str) -> None:
    """Find the first event after which reserved reached its peak, rebuild the pool's
    state at that moment in a fresh pool, and measure its free blocks there.

    Note [Peak by re-replay]: the replay is deterministic (the null backend hands out the
    same addresses each time), so replaying a prefix reproduces the pool's exact state at
    the peak; no need to snapshot the pool inside the C++ loop. Locating the event cheaply:
    a replay sampled every ``n/4096`` events brackets it, a replay of the prefix before
    the bracket rebuilds the state, and the few events of the bracket are stepped in
    Python. This needs reserved memory to be non-decreasing (no segment was released)
    and the prefix to be free of out-of-memory (so allocation sequence numbers map back
    to trace ids); otherwise every event is sampled, which costs several replays.
    """
    n = len(trace)
    peak = result.peak_reserved
    stats = result.pool.memory_stats() if result.pool is not None else {}
    monotone = stats.get("num_device_free", 1) == 0 and stats.get("num_segment_unmap", 1) == 0
    found = None
    if monotone:
        every = max(1, n // 4096)
        tl = _run(_make_pool(cfg, cap, backend), trace, every)["timeline"]
        events = np.asarray(tl["event"], np.int64)
        hits = np.flatnonzero(np.asarray(tl["reserved"], np.int64) == peak)
        if hits.size:
            j = int(hits[0])
            first = int(events[j - 1]) + 1 if j > 0 else 0
            found = _step_to_peak(trace, cfg, cap, backend, first, int(events[j]), peak)
    if found is None:
        tl = _run(_make_pool(cfg, cap, backend), trace, 1)["timeline"]
        reserved = np.asarray(tl["reserved"], np.int64)
        if reserved.size == 0:
            return
        k = int(np.argmax(reserved))
        pool = _make_pool(cfg, cap, backend)
        _run(pool, trace[: k + 1], 0)
        found = (pool, k)
    peak_pool, k = found
    st = peak_pool.memory_stats()
    fb = free_block_summary(peak_pool)
    result.peak_event = k
    result.peak_pool = peak_pool
    result.at_peak = {
        "reserved": int(st["reserved_bytes.all.current"]),
        "allocated": int(st["allocated_bytes.all.current"]),
        "live": int(st["requested_bytes.all.current"]),
        **fb,
    }
    result.fragmentation = 1.0 - fb["largest_free"] / fb["free_bytes"] if fb["free_bytes"] else 0.0


def _step_to_peak(trace: Trace, cfg: PoolConfig, cap: int, backend: str, first: int, last: int,
                  peak: int) -> Optional["tuple[Pool, int]"]:
    """Replay events [0, first) in C++, then step events first..last in Python until
    reserved reaches ``peak``. Returns (pool, event index) or None if that fails."""
    pool = _make_pool(cfg, cap, backend)
    base = pool._pool.next_seq  # sequence number of the next successful allocation
    r = _run(pool, trace[:first], 0)
    if r["ooms"] or r["skipped_events"]:
        return None
    alloc_ids = trace.ids[:first][trace.actions[:first] == ALLOC]
    ptr: Dict[int, int] = {}
    for b in pool.live_blocks():
        ptr[int(alloc_ids[b["seq"] - base])] = b["address"]
    core = pool._pool
    rows = zip(trace.actions[first:last + 1].tolist(), trace.ids[first:last + 1].tolist(),
               trace.sizes[first:last + 1].tolist(), trace.streams[first:last + 1].tolist())
    for i, (act, ident, size, stream) in enumerate(rows, first):
        try:
            if act == ALLOC:
                ptr[ident] = core.malloc(size, stream)
            else:
                core.free(ptr.pop(ident))
        except (_core.OutOfMemoryError, KeyError):
            return None
        if core.memory_stats()["reserved_bytes.all.current"] == peak:
            return pool, i
    return None


_REPLAY_KEYS = ("capacity", "backend", "sample_every", "at_peak")


def replay_workload(name: str, config: ConfigLike = None, *, seed: int = 0, scale: float = 1.0,
                    **kw: Any) -> ReplayResult:
    """Generate (or load) a bundled workload (:data:`pypool.workloads.ALL_WORKLOADS`) and
    replay it.

    Keyword arguments ``capacity``, ``backend``, ``sample_every`` and ``at_peak`` go to
    :func:`replay`; any others are the generator's parameters.
    """
    replay_kw = {k: kw.pop(k) for k in _REPLAY_KEYS if k in kw}
    trace = generate(name, seed=seed, scale=scale, **kw)
    return replay(trace, config, **replay_kw)
