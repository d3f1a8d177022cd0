"""The sizing advisor: which pool settings serve a trace with the least memory.

:func:`suggest_config` replays a trace (offline, on the ``null`` backend) under candidate
settings and reports:

* the settings with the lowest peak reserved memory, as a ``PYPOOL_CONF`` string;
* the smallest ``max_pool_size`` that still runs the trace without out-of-memory, found
  by bisection at 2 MiB granularity (:data:`GRANULARITY`);
* a table of every candidate tried (peak reserved, utilization, fragmentation).

The defaults (or the ``base`` settings given) are always a candidate, so the suggestion
is never worse than them on the objective.

Note [Search strategy]: a full grid over the knobs is a few hundred replays; a
coordinate descent (try every value of one knob with the others fixed at the best so
far, keep the best, move to the next knob, repeat until a pass changes nothing) needs
a tenth of that, and each round's candidates run in parallel. Expandable segments
change the whole character of the large pool, so tuning the other knobs with them off
and then switching them on lands in a local optimum (on the transformer workload:
0.3% worse); the descent therefore runs twice, from the base settings with expandable
segments off and on, and the better end wins. With expandable segments the large pool
grows by mapping granules, so the growth policy and the large segment sizes do nothing
there (they only size fixed segments; the small pool always uses small_segment_size):
that descent skips them (:data:`_INERT_WITH_EXPANDABLE`; revisit if the core changes).

Note [Sync budget]: the suggestion must not buy memory with device synchronizations.
Every device free (and expandable-segment unmap) synchronizes a real GPU, and PyTorch's
native allocator makes none while a trace runs on a roomy device (it frees only when a
malloc would fail, or on empty_cache). So a setting whose replay on the whole device (the
capacity, no cap) makes more than :data:`SYNC_BUDGET_PER_1K` synchronizing calls per 1,000
allocations (PyTorch native's 0 plus 1, issue 15) is never suggested, however little memory
it needs: it ranks after every setting within the budget (the base settings excepted:
the advice is never worse than them). Under the smallest cap itself both allocators free
more (PyTorch native up to 65 per 1,000 on the recorded CNN): that column is reported, not
budgeted, and the text output says so beside the suggestion ("at the cap ... (not
budgeted)"); when plain expandable segments need at most 0.1% more memory and sync less
at their cap, it names them too, rather than changing the suggestion (whose tables the
README quotes). When PyTorch's rows were not run, its 0 is an assumption and is worded so.

Note [Threads, not processes]: ``_core.replay_trace`` releases the GIL for its whole
loop, so a thread pool runs replays truly in parallel without pickling the trace into
worker processes (a 1 M-event trace is 33 MB per copy).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import textwrap
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .config import _SIZE_FIELDS, PoolConfig, SizeLike, format_size, parse_size
from .mincap import STEP, min_capacity
from .replay import ConfigLike, ReplayResult, default_capacity, replay
from .trace import Trace

__all__ = ["SizingAdvice", "Candidate", "suggest_config", "min_pool_size", "pretty_conf", "KNOBS",
           "GRANULARITY", "OBJECTIVES", "SYNC_BUDGET_PER_1K"]

MiB = 1 << 20
GiB = 1 << 30
GRANULARITY = STEP  # bisection step for max_pool_size (the large pool's rounding; pypool.mincap)
OBJECTIVES = ("reserved", "pool_size")
#: Synchronizing device calls per 1,000 allocations a suggestion may make on the whole
#: device (Note [Sync budget]).
SYNC_BUDGET_PER_1K = 1.0

# Each knob: the alternatives tried by the coordinate descent, as field changes.
KNOBS: Dict[str, List[Dict[str, Any]]] = {
    # Not descended like the others: the search starts once from each value
    # (Note [Search strategy]).
    "expandable_segments": [{"expandable_segments": v} for v in (False, True)],
    "round_up_divisions": [{"round_up_divisions": d} for d in (0, 2, 4, 8, 16)],
    "growth": [
        {"growth": "segment", "growth_step": 0},
        {"growth": "exact", "growth_step": 0},
        {"growth": "double", "growth_step": 0},
        {"growth": "fixed", "growth_step": 256 * MiB},
        {"growth": "fixed", "growth_step": 1 * GiB},
        {"growth": "fixed", "growth_step": 4 * GiB},
    ],
    "segment_sizes": [
        {"large_segment_size": 20 * MiB, "min_large_alloc": 10 * MiB},
        {"large_segment_size": 64 * MiB, "min_large_alloc": 64 * MiB},
        {"large_segment_size": 256 * MiB, "min_large_alloc": 256 * MiB},
    ],
    "max_split_size": [{"max_split_size": v} for v in (None, 256 * MiB, 1 * GiB)],
}


@dataclass(frozen=True)
class Candidate:
    """One setting replayed: its figures (see :class:`pypool.replay.ReplayResult`)."""

    config: PoolConfig
    conf: str
    peak_reserved: int
    peak_allocated: int
    utilization: float
    allocated_utilization: float
    ooms: int
    num_device_alloc: int
    events_per_second: float
    fragmentation: Optional[float] = None
    num_device_free: int = 0
    num_segment_unmap: int = 0

    @classmethod
    def from_result(cls, cfg: PoolConfig, r: ReplayResult) -> "Candidate":
        unmaps = int(r.pool.memory_stats().get("num_segment_unmap", 0)) if r.pool is not None else 0
        return cls(cfg, pretty_conf(cfg), r.peak_reserved, r.peak_allocated, r.utilization,
                   r.allocated_utilization, r.ooms, r.num_device_alloc, r.events_per_second, r.fragmentation,
                   r.num_device_free, unmaps)

    @property
    def syncs(self) -> int:
        """Synchronizing device calls of the replay: device frees and expandable-segment
        unmaps, one per operation."""
        return self.num_device_free + self.num_segment_unmap

    def key(self) -> Tuple[int, int, int]:
        """Ranking: no out-of-memory first, then least reserved, then fewest device
        allocations (each is a ~ms cudaMalloc plus a device synchronization on free)."""
        return (self.ooms, self.peak_reserved, self.num_device_alloc)

    def to_dict(self) -> Dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "config"}
        return d


@dataclass
class SizingAdvice:
    """What :func:`suggest_config` found.

    Attributes:
        trace_name, events: the trace.
        peak_live: the physical floor (most requested bytes live at once).
        capacity: device size assumed by the replays.
        objective: what the suggestion minimizes.
        default: the base settings' figures.
        best: the suggested settings' figures.
        config: the suggested settings (no cap).
        pypool_conf: ``config`` as a ``PYPOOL_CONF`` string ("" = the defaults are best).
        min_pool_size: smallest ``max_pool_size`` (a multiple of :data:`GRANULARITY`) under
            which the suggested settings run the trace without out-of-memory; None if
            even the full capacity fails.
        min_pool_size_default: the same for the base settings.
        pypool_conf_capped: ``pypool_conf`` plus ``max_pool_size`` = ``min_pool_size``
            (no headroom: add some for runs that differ from the trace).
        candidates: every setting tried, best first.
        replays, seconds: the work done.
    """

    trace_name: str
    events: int
    peak_live: int
    capacity: int
    objective: str
    default: Candidate
    best: Candidate
    config: PoolConfig
    pypool_conf: str
    min_pool_size: Optional[int]
    min_pool_size_default: Optional[int]
    pypool_conf_capped: str
    candidates: List[Candidate] = field(default_factory=list)
    replays: int = 0
    seconds: float = 0.0
    granularity: int = GRANULARITY
    #: The base settings with expandable segments: figures and smallest cap (None when the
    #: search was not allowed expandable segments or the base has them already).
    expandable: Optional[Candidate] = None
    min_pool_size_expandable: Optional[int] = None
    #: Allocation events of the trace (for synchronizing calls per 1,000 allocations).
    allocations: int = 0
    #: PyTorch's own allocator on the simulated device (:mod:`pypool.torch_compare`), best
    #: first after the two baselines; filled by ``pypool size`` when it can run them.
    torch: List[Any] = field(default_factory=list)
    #: Why PyTorch's rows are missing (what to install), or None.
    torch_note: Optional[str] = None
    #: The replays at the smallest cap ("default", "expandable", "best"): device calls under
    #: memory pressure.
    at_min: Dict[str, Candidate] = field(default_factory=dict)
    #: Note [Sync budget]: the budget (None: none) and how many settings tried exceeded it.
    sync_budget: Optional[float] = SYNC_BUDGET_PER_1K
    over_sync_budget: int = 0

    def sync_per_1k(self, c: Candidate) -> float:
        return 1000.0 * c.syncs / self.allocations if self.allocations else 0.0

    def _at_cap_lines(self) -> List[str]:
        """The suggestion's syncs at its own cap, which the budget does not cover (Note [Sync
        budget]), and the expandable row's when it needs at most 0.1% more and syncs less."""
        b = self.at_min.get("best")
        if b is None or self.min_pool_size is None:
            return []
        spk = self.sync_per_1k(b)
        out = [f"at the cap       {spk:.2f} synchronizing device calls per 1,000 allocations with the suggestion "
               f"capped at {self.min_pool_size // MiB:,} MiB (not budgeted)"]
        e, em = self.at_min.get("expandable"), self.min_pool_size_expandable
        if (e is not None and em is not None and self.best.conf != (self.expandable.conf if self.expandable else None)
                and em <= self.min_pool_size * 1.001 and self.sync_per_1k(e) < spk):
            delta = em - self.min_pool_size
            out.append(f"                 pypool expandable needs {abs(delta) // MiB:,} MiB {'more' if delta >= 0 else 'less'} and "
                       f"makes {self.sync_per_1k(e):.2f} per 1,000 at its cap: prefer it if syncs there matter")
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {
            "trace": self.trace_name, "events": self.events, "peak_live": self.peak_live,
            "capacity": self.capacity, "objective": self.objective,
            "default": self.default.to_dict(), "best": self.best.to_dict(),
            "pypool_conf": self.pypool_conf, "min_pool_size": self.min_pool_size,
            "min_pool_size_default": self.min_pool_size_default,
            "pypool_conf_capped": self.pypool_conf_capped, "granularity": self.granularity,
            "candidates": [c.to_dict() for c in self.candidates],
            "replays": self.replays, "seconds": self.seconds,
            "expandable": self.expandable.to_dict() if self.expandable is not None else None,
            "min_pool_size_expandable": self.min_pool_size_expandable, "allocations": self.allocations,
            "min_capacity": self.capacity_rows(),
            "sync_budget_per_1k": self.sync_budget, "over_sync_budget": self.over_sync_budget,
            "torch": [r.to_dict() for r in self.torch], "torch_note": self.torch_note,
        }

    def capacity_rows(self) -> List[Dict[str, Any]]:
        """The headline: smallest capacity without OOM for pypool's defaults, expandable
        segments and the suggestion, then PyTorch's rows (if measured)."""
        am = self.at_min
        # The first row replays ``base``: called defaults only when it is them.
        rows = [pypool_row("pypool defaults" if not self.default.conf else "pypool base",
                           self.default, self.min_pool_size_default, self.peak_live,
                           self.allocations, am.get("default"))]
        if self.expandable is not None:
            rows.append(pypool_row("pypool expandable", self.expandable, self.min_pool_size_expandable,
                                   self.peak_live, self.allocations, am.get("expandable")))
        rows.append(pypool_row("pypool suggested", self.best, self.min_pool_size, self.peak_live, self.allocations,
                               am.get("best")))
        # PyTorch: its two modes, then the best PYTORCH_CUDA_ALLOC_CONF found when it is
        # another one (every setting tried is in the JSON).
        rows += [torch_row_dict(t) for t in self.torch[:2]]
        ok = [t for t in self.torch if t.min_capacity is not None]
        if ok and len(self.torch) > 2:
            best = min(ok, key=_torch_rank)
            if best not in self.torch[:2]:
                d = torch_row_dict(best)
                d["label"] = "PyTorch best conf"
                rows.append(d)
        return rows

    def to_text(self, top: int = 10) -> str:
        def pct(x: Optional[float]) -> str:
            return "   -" if x is None else f"{x:5.3f}"

        d, b = self.default, self.best

        def outcome(c: Candidate) -> str:
            # A replay that ran out of memory did not run the trace: its utilization is of
            # what it could allocate, so it is not shown as if it were a result.
            if c.ooms:
                return f"DOES NOT FIT: {c.ooms:,} allocations ran out of memory (peak reserved {format_size(c.peak_reserved)})"
            return f"peak reserved {format_size(c.peak_reserved)}, utilization {c.utilization:.3f}"

        lines = [
            f"trace            {self.trace_name or '(unnamed)'}: {self.events:,} events, "
            f"peak live (floor) {format_size(self.peak_live)}",
            "",
            capacity_table(self.capacity_rows(), self.peak_live, self.granularity),
        ]
        if self.torch_note:
            lines.append(f"PyTorch rows: not measured: {self.torch_note}")
        tb = [t for t in self.torch if t.min_capacity is not None]
        if tb and len(self.torch) > 2:
            best_t = min(tb, key=_torch_rank)
            lines.append(f"PYTORCH_CUDA_ALLOC_CONF for PyTorch's own allocator: {best_t.conf or '(unset: native is best)'}"
                         + (f" ({format_size(best_t.min_capacity)} min capacity, {len(self.torch)} settings tried)"
                            if best_t.min_capacity else ""))
        lines += [
            "",
            f"{'defaults' if not d.conf else 'base':<17}{outcome(d)}",
            f"suggested        {outcome(b)}"
            + (f"  ({(1 - b.peak_reserved / d.peak_reserved) * 100:.1f}% less)"
               if d.peak_reserved > b.peak_reserved and not b.ooms else ""),
        ]
        if b.ooms:
            lines += [
                f"DOES NOT FIT     no setting tried runs this trace within the "
                f"{format_size(self.capacity)} capacity (its floor, the peak of live bytes, is "
                f"{format_size(self.peak_live)}): give a capacity of at least the floor",
            ]
        else:
            lines += [
                f"PYPOOL_CONF      {self.pypool_conf or '(defaults are best)'}",
                f"min pool size    {format_size(self.min_pool_size)}"
                + (f" ({'defaults' if not d.conf else 'base'}: {format_size(self.min_pool_size_default)})" if self.min_pool_size_default is not None else "")
                + f"; no OOM at that cap, OOM {format_size(self.granularity)} below",
                f"capped           PYPOOL_CONF={self.pypool_conf_capped}",
            ]
            if self.sync_budget is not None:
                spk = self.sync_per_1k(b)
                native = ("PyTorch native's 0 + 1" if self.torch else
                          "0 + 1, assuming PyTorch native makes none on a roomy device: its rows were not run")
                lines.append(
                    f"sync budget      {spk:.2f} synchronizing device calls per 1,000 allocations on the whole "
                    f"device with the suggestion ({'within' if spk <= self.sync_budget else 'OVER'} the budget of "
                    f"{self.sync_budget:g}: {native}); {self.over_sync_budget} of the settings "
                    "compared exceeded it and were not suggested")
            lines += self._at_cap_lines()
        lines += [
            "",
            "util = peak live / peak reserved, alloc = peak allocated / peak reserved, frag = external",
            "fragmentation at peak reserved (- = not measured), dev.alloc = device allocations",
            f"{'peak reserved':>14} {'util':>5} {'alloc':>5} {'frag':>5} {'dev.alloc':>9} {'OOM':>4}  settings",
        ]
        rows = _distinct(self.candidates)
        for c in rows[:top]:
            same = sum(1 for o in self.candidates if _figures(o) == _figures(c)) - 1
            over = self.sync_budget is not None and self.sync_per_1k(c) > self.sync_budget
            lines.append(f"{format_size(c.peak_reserved):>14} {c.utilization:5.3f} {c.allocated_utilization:5.3f} "
                         f"{pct(c.fragmentation):>5} {c.num_device_alloc:9d} {c.ooms:4d}  {c.conf or '(defaults)'}"
                         + (f"  (+{same} equivalent)" if same else "")
                         + (f"  (over the sync budget: {self.sync_per_1k(c):.1f}/1k)" if over else ""))
        if len(rows) > top:
            lines.append(f"... {len(rows) - top} more distinct results (--top to see them)")
        lines.append(f"{self.replays} replays in {self.seconds:.1f} s")
        return "\n".join(lines)


def pypool_row(label: str, c: Optional[Candidate], min_cap: Optional[int], floor: int,
               allocations: int, at_min: Optional[Candidate] = None) -> Dict[str, Any]:
    """One pypool row of the capacity table (an offline replay: device frees and expandable
    segment unmaps stand for the calls that synchronize a real GPU; an unmap of n granules
    is n such calls on a device, so for expandable segments this undercounts); ``at_min``:
    the replay capped at ``min_cap``."""
    frees = (c.num_device_free + c.num_segment_unmap) if c is not None else None
    fm = (at_min.num_device_free + at_min.num_segment_unmap) if at_min is not None else None
    return {"label": label, "source": "pypool replay", "conf": c.conf if c is not None else None,
            "min_capacity": min_cap, "over_floor": (min_cap / floor) if (min_cap and floor) else None,
            "peak_reserved": c.peak_reserved if c is not None else None,
            "device_allocs": c.num_device_alloc if c is not None else None, "device_frees": c.num_device_free if c is not None else None,
            "sync": frees, "sync_per_1k_allocs": (1000.0 * frees / allocations) if (frees is not None and allocations) else None,
            "sync_at_min": fm,
            "sync_at_min_per_1k_allocs": (1000.0 * fm / allocations) if (fm is not None and allocations) else None,
            "error": None}


def torch_row_dict(t: Any) -> Dict[str, Any]:
    """A :class:`pypool.torch_compare.TorchRow` as a row of the capacity table."""
    mem = (t.calls or {}).get("memory_calls") or {}
    return {"label": t.label, "source": "PyTorch on the simulated device", "conf": t.conf,
            "min_capacity": t.min_capacity, "over_floor": t.over_floor, "peak_reserved": t.peak_reserved,
            "device_allocs": (mem.get("cudaMalloc", 0) + mem.get("cuMemCreate", 0)) if t.calls else None,
            "device_frees": (mem.get("cudaFree", 0) + mem.get("cuMemRelease", 0)) if t.calls else None,
            "sync": (t.calls or {}).get("sync"), "sync_per_1k_allocs": t.sync_per_k(),
            "sync_at_min": (t.calls_at_min or {}).get("sync"), "sync_at_min_per_1k_allocs": t.sync_per_k(at_min=True),
            "error": t.error or (t.note if t.min_capacity is None else None), "attempts": t.attempts}


def _torch_rank(t: Any) -> Tuple[bool, int, int, int]:
    big = 1 << 62
    return (t.min_capacity is None, t.min_capacity or big, t.peak_reserved or big, len(t.conf))


def capacity_table(rows: Sequence[Mapping[str, Any]], floor: int, step: int = GRANULARITY) -> str:
    """The minimum-capacity table: one line per row of :meth:`SizingAdvice.capacity_rows`."""
    def mib(v: Optional[int]) -> str:
        return "-" if v is None else f"{v / MiB:,.0f}"

    head = (f"smallest capacity without out-of-memory ({step // MiB} MiB steps; floor = peak live "
            f"{mib(floor)} MiB)")
    lines = [head, f"  {'':<22} {'min cap MiB':>11} {'x floor':>7} {'peak rsv MiB':>12} {'dev.alloc':>9} "
             f"{'dev.free':>8} {'sync':>6} {'sync/1k':>7} {'@min/1k':>7}  settings"]
    for r in rows:
        if r.get("min_capacity") is None and r.get("error"):
            lines.append(f"  {r['label']:<22} {'-':>11} {'-':>7} {mib(r.get('peak_reserved')):>12}  {r['error']}")
            continue
        of = r.get("over_floor")
        spk = r.get("sync_per_1k_allocs")
        lines.append(
            f"  {r['label']:<22} {mib(r.get('min_capacity')):>11} {'-' if of is None else f'{of:.3f}':>7} "
            f"{mib(r.get('peak_reserved')):>12} {'-' if r.get('device_allocs') is None else r['device_allocs']:>9} "
            f"{'-' if r.get('device_frees') is None else r['device_frees']:>8} "
            f"{'-' if r.get('sync') is None else r['sync']:>6} {'-' if spk is None else f'{spk:.2f}':>7} "
            f"{'-' if r.get('sync_at_min_per_1k_allocs') is None else format(r['sync_at_min_per_1k_allocs'], '.2f'):>7}  "
            + (("PYTORCH_CUDA_ALLOC_CONF=" + r["conf"]) if r.get("source", "").startswith("PyTorch") and r.get("conf")
               else (r.get("conf") or "(defaults)") if not r.get("source", "").startswith("PyTorch") else "(unset)"))
    note = ("  dev.alloc, dev.free, sync: on the whole device from an empty cache; sync/1k: synchronizing "
            "calls per 1,000 allocations there, @min/1k: at the smallest capacity. pypool rows: offline "
            "replays with max_pool_size as the capacity (device frees and expandable-segment unmaps counted "
            "as synchronizing, one per operation: a device makes one per 2 MiB granule unmapped)")
    if any(str(r.get("source", "")).startswith("PyTorch") for r in rows):
        note += ("; PyTorch rows: its allocator on the simulated device in a child process, device calls "
                 "counted there")
    lines += textwrap.wrap(note, 110, initial_indent="", subsequent_indent="  ")
    return "\n".join(lines)


class _Evaluator:
    """Runs replays (in parallel when jobs > 1), caching by configuration."""

    def __init__(self, trace: Trace, capacity: int, jobs: int, sync_budget: Optional[float] = None) -> None:
        self.trace = trace
        self.capacity = capacity
        self.jobs = jobs
        self.sync_budget = sync_budget
        self.allocations = int((trace.actions == 0).sum())
        self.cache: Dict[str, Candidate] = {}
        self.searched: Dict[str, None] = {}  # keys of the compared settings (not bisection probes)
        self.replays = 0
        self._ex: Optional[cf.ThreadPoolExecutor] = cf.ThreadPoolExecutor(jobs) if jobs > 1 else None

    def close(self) -> None:
        if self._ex is not None:
            self._ex.shutdown()

    def over_budget(self, c: Candidate) -> bool:
        """Whether ``c`` (a replay on the whole device) makes more synchronizing calls than
        the budget allows (Note [Sync budget])."""
        return (self.sync_budget is not None and self.allocations > 0
                and 1000.0 * c.syncs / self.allocations > self.sync_budget)

    def _one(self, cfg: PoolConfig, at_peak: bool) -> Candidate:
        r = replay(self.trace, cfg, capacity=self.capacity, at_peak=at_peak)
        return Candidate.from_result(cfg, r)

    def run(self, configs: Sequence[PoolConfig], at_peak: bool = False, probe: bool = False) -> List[Candidate]:
        """Figures for each config (cached; ``at_peak`` also measures fragmentation;
        ``probe``: a bisection step, not one of the compared settings)."""
        todo: Dict[str, PoolConfig] = {}
        for c in configs:
            k = c.to_string()
            if not probe:
                self.searched[k] = None
            have = self.cache.get(k)
            if have is None or (at_peak and have.fragmentation is None):
                todo[k] = c
        if todo:
            items = list(todo.items())
            if self._ex is None:
                results = [self._one(c, at_peak) for _, c in items]
            else:
                results = list(self._ex.map(lambda kc: self._one(kc[1], at_peak), items))
            for (k, _), res in zip(items, results):
                self.cache[k] = res
            self.replays += len(items) * (4 if at_peak else 1)
        return [self.cache[c.to_string()] for c in configs]


def _variants(current: PoolConfig, options: Iterable[Mapping[str, Any]]) -> List[PoolConfig]:
    out = []
    for changes in options:
        try:
            out.append(current.replace(**changes))
        except (ValueError, TypeError):
            continue  # not valid together with the base settings (e.g. a custom small_size)
    return out


def min_pool_size(trace: Trace, config: ConfigLike = None, capacity: Optional[SizeLike] = None,
                  jobs: Optional[int] = None, granularity: int = GRANULARITY,
                  _evaluator: Optional[_Evaluator] = None) -> Optional[int]:
    """The smallest ``max_pool_size`` (a multiple of ``granularity``) with which ``config``
    replays ``trace`` without out-of-memory, by bisection.

    Guarantee: the trace runs without OOM at the returned cap and fails with at least one
    OOM at the cap one ``granularity`` below. (The allocator is not strictly monotone in
    its cap, so a still smaller cap could in rare cases pass again; the bisection does
    not look for such islands.) Returns None when the trace does not fit in ``capacity``
    even uncapped.
    """
    if granularity <= 0:
        raise ValueError(f"granularity: must be > 0, got {granularity}")
    cfg = PoolConfig.coerce(config)
    cap_dev = _capacity_for(trace, capacity)
    ev = _evaluator or _Evaluator(trace, cap_dev, _jobs(jobs))
    try:
        free_run = ev.run([cfg.replace(max_pool_size=None)], probe=True)[0]
        if free_run.ooms:
            return None
        # Below the floor some moment needs more live bytes than the cap; a cap below the
        # initial pool is not a valid config. A cap at the uncapped peak is probed, not
        # assumed to pass: reclaim_threshold and garbage_collection_threshold act on a
        # fraction of the cap, so a cap the pool never reaches still changes what it does
        # (Note [Reclaim under pressure]; on random x0.01 the defaults fail at their
        # uncapped peak, 17,490 MiB, and pass at 17,600).
        floor = max(trace.peak_live(), int(cfg.initial_pool_size))  # parsed to bytes by PoolConfig

        def probe(caps: Sequence[int]) -> List[bool]:
            return [r.ooms == 0 for r in ev.run([cfg.replace(max_pool_size=c) for c in caps], probe=True)]

        found = min_capacity(probe, floor=floor, start=max(free_run.peak_reserved, 1), step=granularity,
                             width=ev.jobs)
        return found.capacity
    finally:
        if _evaluator is None:
            ev.close()


def _jobs(jobs: Optional[int]) -> int:
    if jobs is None:
        return max(1, min(4, os.cpu_count() or 1))
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs: expected an int >= 1, got {jobs!r}")
    return jobs


def _capacity_for(trace: Trace, capacity: Optional[SizeLike]) -> int:
    if capacity is not None:
        cap = parse_size(capacity, "capacity")
        if cap == 0:
            raise ValueError("capacity: must be > 0")
        return cap
    return default_capacity(trace)


def suggest_config(
    trace: Trace,
    capacity: Optional[SizeLike] = None,
    objective: str = "reserved",
    candidates: Optional[Sequence[ConfigLike]] = None,
    jobs: Optional[int] = None,
    base: ConfigLike = None,
    allow_expandable: bool = True,
    detail: int = 1,
    sync_budget: Optional[float] = SYNC_BUDGET_PER_1K,
) -> SizingAdvice:
    """Replay ``trace`` under candidate settings and suggest the best.

    Args:
        trace: the allocation trace (:class:`pypool.trace.Trace`).
        capacity: the device's memory (default: 80 GiB, or twice the trace's peak if
            larger). Candidates that hit out-of-memory there rank last.
        objective: ``"reserved"``: least peak reserved memory (ties: fewest device
            allocations); ``"pool_size"``: least ``max_pool_size`` that still runs without
            OOM (bisection for the best few settings by reserved; slower).
        candidates: settings to compare (PoolConfig, dicts or ``PYPOOL_CONF`` strings)
            instead of the built-in search over :data:`KNOBS`. ``base`` is always added.
        jobs: parallel replays (threads; default min(4, CPUs)).
        base: the settings to start from and compare against (default: the defaults).
        allow_expandable: let the search turn on ``expandable_segments`` (it needs a GPU
            and driver with virtual memory management, which all recent ones have).
        detail: measure fragmentation at peak for the base settings, the suggestion and
            this many more of the best distinct candidates.
        sync_budget: synchronizing device calls per 1,000 allocations a suggestion may
            make on the whole device (Note [Sync budget]; None: no budget).
    """
    if not isinstance(trace, Trace):
        raise TypeError(f"trace: expected a pypool.trace.Trace, got {type(trace).__name__}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective: must be one of {OBJECTIVES}, got {objective!r}")
    if len(trace) == 0:
        raise ValueError("trace: has no events")
    t0 = time.perf_counter()
    base_cfg = PoolConfig.coerce(base).replace(max_pool_size=None)
    cap = _capacity_for(trace, capacity)
    if sync_budget is not None and not sync_budget >= 0:
        raise ValueError(f"sync_budget: must be >= 0 or None, got {sync_budget!r}")
    ev = _Evaluator(trace, cap, _jobs(jobs), sync_budget)
    try:
        default = ev.run([base_cfg])[0]
        if candidates is not None:
            cfgs = [PoolConfig.coerce(c) for c in candidates]
            ev.run(cfgs)
        else:
            _descend(ev, base_cfg, allow_expandable)
        def rank(c: Candidate) -> Tuple[int, bool, Tuple[int, int, int], int]:
            return (c.ooms, ev.over_budget(c), c.key(), len(c.conf))

        ranked = sorted((ev.cache[k] for k in ev.searched), key=rank)
        best = ranked[0]
        if objective == "pool_size":
            # With candidates given, only they (and base) are compared: no variants, no descent.
            best, best_min = _best_by_pool_size(ev, _distinct(ranked)[:3], variants=candidates is None)
            if candidates is None:
                # The settings that reserve least on a roomy device are not always those that
                # fit the smallest device (Note [Descent on the smallest cap]).
                d_best, d_min = _descend_pool_size(ev, base_cfg, allow_expandable)
                if d_min is not None and (best_min is None or d_min < best_min):
                    best, best_min = d_best, d_min
        else:
            best_min = min_pool_size(trace, best.config, cap, _evaluator=ev)
        default_min = (best_min if best.conf == default.conf
                       else min_pool_size(trace, base_cfg, cap, _evaluator=ev))
        if objective == "pool_size" and default_min is not None and (best_min is None or default_min < best_min):
            best, best_min = default, default_min  # never worse than the base settings
        exp_cand, exp_min = None, None
        if allow_expandable and not base_cfg.expandable_segments:
            exp_cfg = base_cfg.replace(expandable_segments=True)
            exp_cand = ev.run([exp_cfg], probe=True)[0]
            exp_min = min_pool_size(trace, exp_cfg, cap, _evaluator=ev)
        # Fragmentation at peak for the rows people read first.
        shown = [base_cfg, best.config] + [c.config for c in _distinct(ranked)[:detail]]
        ev.run(shown, at_peak=True)
        table = sorted((ev.cache[k] for k in ev.searched), key=rank)
        over = sum(1 for c in _distinct(table) if ev.over_budget(c))
        best = ev.cache[best.config.to_string()]
        default = ev.cache[default.config.to_string()]
        if exp_cand is not None:
            exp_cand = ev.cache[exp_cand.config.to_string()]
        at_min: Dict[str, Candidate] = {}
        for key, c, m in (("default", default, default_min), ("expandable", exp_cand, exp_min),
                          ("best", best, best_min)):
            if c is not None and m is not None:
                at_min[key] = ev.run([c.config.replace(max_pool_size=m)], probe=True)[0]
    finally:
        ev.close()
    capped = best.config.replace(max_pool_size=best_min) if best_min is not None else best.config
    return SizingAdvice(
        trace_name=trace.name, events=len(trace), peak_live=trace.peak_live(), capacity=cap,
        objective=objective, default=default, best=best, config=best.config,
        pypool_conf=best.conf, min_pool_size=best_min, min_pool_size_default=default_min,
        pypool_conf_capped=pretty_conf(capped), candidates=table, replays=ev.replays,
        seconds=time.perf_counter() - t0, expandable=exp_cand, min_pool_size_expandable=exp_min, at_min=at_min,
        allocations=ev.allocations, sync_budget=sync_budget, over_sync_budget=over)


_SIZE_KEYS = frozenset(_SIZE_FIELDS)  # from the config table (Note [PoolConfig from the table])


def pretty_conf(cfg: PoolConfig) -> str:
    """``cfg.to_string()`` with whole MiB / GiB sizes written as such (``growth_step:1GiB``
    rather than ``growth_step:1073741824``); reads back to the same config."""
    parts = []
    for item in filter(None, cfg.to_string().split(",")):
        key, _, value = item.partition(":")
        if key in _SIZE_KEYS and value.isdigit() and int(value) > 0:
            n = int(value)
            if n % GiB == 0:
                value = f"{n // GiB}GiB"
            elif n % MiB == 0:
                value = f"{n // MiB}MiB"
        parts.append(f"{key}:{value}")
    return ",".join(parts)


def _figures(c: Candidate) -> Tuple[int, int, int, int]:
    return (c.ooms, c.peak_reserved, c.peak_allocated, c.num_device_alloc)


def _distinct(ranked: Sequence[Candidate]) -> List[Candidate]:
    """The first (simplest) of each run of candidates with identical figures: many knob
    values make no difference to a given trace."""
    seen = set()
    out = []
    for c in ranked:
        if _figures(c) not in seen:
            seen.add(_figures(c))
            out.append(c)
    return out


def _descend(ev: _Evaluator, base: PoolConfig, allow_expandable: bool) -> None:
    """Coordinate descent over KNOBS from each expandable_segments start (Note [Search
    strategy]); every replay lands in ``ev``."""
    starts = [base]
    if allow_expandable and not base.expandable_segments:
        starts += _variants(base, [{"expandable_segments": True}])
    for start in starts:
        _descend_from(ev, start)


_INERT_WITH_EXPANDABLE = ("growth", "segment_sizes")


def _descend_from(ev: _Evaluator, start: PoolConfig, max_passes: int = 3) -> PoolConfig:
    current = start
    cur = ev.run([current])[0]
    knobs = [k for k in KNOBS if k != "expandable_segments"
             and not (start.expandable_segments and k in _INERT_WITH_EXPANDABLE)]
    for _ in range(max_passes):
        changed = False
        for knob in knobs:
            variants = _variants(current, KNOBS[knob])
            for cand in ev.run(variants):
                if cand.key() < cur.key():
                    cur, current, changed = cand, cand.config, True
        if not changed:
            break
    return current


#: Knobs of the descent on the smallest cap: those of KNOBS, plus those that act only under
#: pressure (garbage_collection_threshold, reclaim_before_grow, reclaim_threshold: they do
#: little or nothing on a roomy device, so the reserved descent cannot see them).
#: The growth policy is tried together with each threshold: exact-size growth alone can fit
#: worse (cached exact segments are freed only at OOM), with early release better (on
#: recorded_gpt_train: 1.170 and 1.029 x floor, defaults 1.057), and a descent that changes
#: one knob at a time would not find the pair.
_GC_VALUES = (0.0, 0.6, 0.8)
_POOL_SIZE_KNOBS: Dict[str, List[Dict[str, Any]]] = {
    **{k: v for k, v in KNOBS.items() if k not in ("expandable_segments", "growth")},
    "growth": [dict(g, garbage_collection_threshold=t) for g in KNOBS["growth"] for t in _GC_VALUES],
    "garbage_collection_threshold": [{"garbage_collection_threshold": t} for t in _GC_VALUES],
    "reclaim_before_grow": [{"reclaim_before_grow": v} for v in (True, False)],
    "reclaim_threshold": [{"reclaim_threshold": t} for t in (0.0, 0.7, 0.8, 0.9)],
}


def _min_below(ev: _Evaluator, cfgs: Sequence[PoolConfig], bound: int) -> List[Optional[int]]:
    """For each config, its smallest cap if that is below ``bound`` (a passing cap), else
    None. One replay at ``bound - step`` settles every config that cannot beat the bound
    (Note [Descent on the smallest cap])."""
    g = GRANULARITY
    floor = ev.trace.peak_live()
    if bound - g < floor:
        return [None] * len(cfgs)
    valid = [c for c in cfgs if int(c.initial_pool_size) <= bound - g]
    res = dict(zip((c.to_string() for c in valid),
                   ev.run([c.replace(max_pool_size=bound - g) for c in valid], probe=True)))
    out: List[Optional[int]] = []
    for c in cfgs:
        r = res.get(c.to_string())
        if r is None or r.ooms:
            out.append(None)
            continue
        f = max(floor, int(c.initial_pool_size))

        def probe(caps: Sequence[int], c: PoolConfig = c) -> List[bool]:
            return [x.ooms == 0 for x in ev.run([c.replace(max_pool_size=p) for p in caps], probe=True)]

        out.append(min_capacity(probe, floor=f, start=bound - g, step=g, width=ev.jobs, start_passes=True).capacity)
    return out


def _descend_pool_size(ev: _Evaluator, base: PoolConfig, allow_expandable: bool,
                       max_passes: int = 3) -> Tuple[Candidate, Optional[int]]:
    """Coordinate descent with the smallest OOM-free cap as the objective, from the base
    settings and from them with expandable segments.

    Note [Descent on the smallest cap]: bisecting every candidate would cost a hundred
    replays each; but a candidate matters only if it beats the best cap so far, and one
    replay capped one step below that settles it (allocators are close to monotone in
    their cap; a candidate that fails there is dropped, one that passes is bisected
    downward). So most candidates cost one replay, run in parallel per knob.
    """
    starts = [base]
    if allow_expandable and not base.expandable_segments:
        starts += _variants(base, [{"expandable_segments": True}])
    best: Optional[Tuple[int, PoolConfig]] = None
    for start in starts:
        cur_min = min_pool_size(ev.trace, start, ev.capacity, _evaluator=ev)
        if cur_min is None:
            continue
        current = start
        knobs = [k for k in _POOL_SIZE_KNOBS if not (start.expandable_segments and k in _INERT_WITH_EXPANDABLE)]
        for _ in range(max_passes):
            changed = False
            for knob in knobs:
                variants = [v for v in _variants(current, _POOL_SIZE_KNOBS[knob]) if v != current]
                # Only settings within the sync budget on the whole device (Note [Sync budget]).
                variants = [v for v, r in zip(variants, ev.run(variants, probe=True)) if not ev.over_budget(r)]
                for v, m in zip(variants, _min_below(ev, variants, cur_min)):
                    if m is not None and m < cur_min:
                        current, cur_min, changed = v, m, True
            if not changed:
                break
        if ev.over_budget(ev.run([current], probe=True)[0]) and current != base:
            continue  # a start over the budget that no variant improved (the base always counts)
        if best is None or cur_min < best[0]:
            best = (cur_min, current)
    if best is None:
        return ev.run([base])[0], None
    ev.run([best[1]])  # among the compared settings (the table)
    return ev.cache[best[1].to_string()], best[0]


def _best_by_pool_size(ev: _Evaluator, top: Sequence[Candidate],
                       variants: bool = True) -> Tuple[Candidate, Optional[int]]:
    """Among ``top``, the settings (also tried with garbage collection thresholds unless
    ``variants`` is false) whose smallest OOM-free cap is least."""
    tried: List[Tuple[int, int, Candidate]] = []
    configs: List[PoolConfig] = []
    for c in top:
        configs.append(c.config)
        if variants:
            configs += _variants(c.config, [{"garbage_collection_threshold": t} for t in (0.6, 0.8)])
    results = ev.run(configs)
    for cfg, r in zip(configs, results):
        if ev.over_budget(r):
            continue  # Note [Sync budget]
        m = min_pool_size(ev.trace, cfg, ev.capacity, _evaluator=ev)
        if m is not None:
            cand = ev.cache[cfg.to_string()]
            tried.append((m, cand.peak_reserved, cand))
    if not tried:
        return top[0], None
    m, _, cand = min(tried, key=lambda t: (t[0], t[1], len(t[2].conf)))
    return cand, m
