"""Statistics against an independent Python model of requested and rounded bytes.

Rounding comes from ``pool_model.round_size`` (written from the documented policy), not
from ``_core.round_size``. Where the pool hands out exactly the rounded size (small pool;
expandable segments, which split any remainder) allocated bytes are predicted exactly;
with fixed large segments a block may keep an unsplit remainder of up to 1 MiB, and the
model bounds it. A generic suite: every test runs on each backend (pool_backends.py; cuda
in tests/gpu/test_generic_cuda.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Tuple

import pytest

import pool_model as pm
import pypool
from pool_backends import Backend

KiB = 1 << 10
MiB = 1 << 20


@dataclass
class Counter:
    """current / peak / allocated / freed of one stat, as the model sees it."""

    current: int = 0
    peak: int = 0
    allocated: int = 0
    freed: int = 0

    def add(self, n: int) -> None:
        self.current += n
        self.allocated += n
        self.peak = max(self.peak, self.current)

    def sub(self, n: int) -> None:
        self.current -= n
        self.freed += n

    def reset_peak(self) -> None:
        self.peak = self.current


@dataclass
class Model:
    divisions: int = 0
    live: Dict[int, Tuple[int, int, str]] = field(default_factory=dict)  # ptr -> (requested, rounded, kind)
    stats: Dict[str, Counter] = field(default_factory=dict)

    def counter(self, name: str, kind: str) -> List[Counter]:
        return [self.stats.setdefault(f"{name}.{k}", Counter()) for k in ("all", kind)]

    def malloc(self, ptr: int, size: int) -> int:
        rounded = pm.round_size(size, self.divisions)
        kind = "small_pool" if pm.is_small(rounded) else "large_pool"
        self.live[ptr] = (size, rounded, kind)
        for c in self.counter("requested_bytes", kind):
            c.add(size)
        for c in self.counter("allocated_bytes", kind):
            c.add(rounded)
        for c in self.counter("allocation", kind):
            c.add(1)
        return rounded

    def free(self, ptr: int) -> None:
        size, rounded, kind = self.live.pop(ptr)
        for c in self.counter("requested_bytes", kind):
            c.sub(size)
        for c in self.counter("allocated_bytes", kind):
            c.sub(rounded)
        for c in self.counter("allocation", kind):
            c.sub(1)

    def reset_peaks(self) -> None:
        for c in self.stats.values():
            c.reset_peak()

    def compare(self, pool: pypool.Pool, exact_allocated: bool = True) -> None:
        st = pool.memory_stats()
        for key, c in self.stats.items():
            name, kind = key.split(".")
            if name == "allocated_bytes" and not exact_allocated:
                continue
            for field_name in ("current", "peak", "allocated", "freed"):
                got = st[f"{name}.{kind}.{field_name}"]
                want = getattr(c, field_name)
                assert got == want, f"{name}.{kind}.{field_name}: pool {got}, model {want}"


def sizes(rng: random.Random, mix: str) -> int:
    if mix == "small":
        return rng.choice([rng.randint(1, 600), rng.randint(1, 16 * KiB), rng.randint(1, 1 * MiB), 512, 1 * MiB, 513])
    return rng.choice([
        rng.randint(1, 4 * KiB),
        rng.randint(1, 1 * MiB),
        rng.randint(1 * MiB, 10 * MiB),
        rng.randint(10 * MiB, 40 * MiB),
        1 * MiB + 1,
        10 * MiB,
        20 * MiB + 1,
    ])


def run_workload(pool: pypool.Pool, model: Model, rng: random.Random, mix: str, steps: int,
                 exact_allocated: bool, check: Callable[[pypool.Pool], None]) -> None:
    for step in range(steps):
        if model.live and (rng.random() < 0.45 or len(model.live) > 200):
            ptr = rng.choice(list(model.live))
            pool.free(ptr)
            model.free(ptr)
        else:
            size = sizes(rng, mix)
            ptr = pool.malloc(size)
            rounded = model.malloc(ptr, size)
            block = pool.size_of(ptr)
            slack = pm.max_block_slack(rounded, expandable=pool.config.expandable_segments)
            assert rounded <= block <= rounded + slack, (size, rounded, block)
        if step == steps // 2:
            pool.reset_peak_memory_stats()
            model.reset_peaks()
        if step % 50 == 0:
            model.compare(pool, exact_allocated)
            check(pool)
    model.compare(pool, exact_allocated)


@pytest.mark.parametrize("divisions", [0, 4])
def test_small_pool_exact(divisions: int, backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend(round_up_divisions=divisions)
    model = Model(divisions=divisions)
    run_workload(pool, model, random.Random(11 + divisions), "small", 1500, True, pool_ok)
    for ptr in list(model.live):
        pool.free(ptr)
        model.free(ptr)
    model.compare(pool)
    assert pool.memory_allocated() == 0


@pytest.mark.parametrize("divisions", [0, 4, 16])
def test_mixed_sizes_expandable_exact(divisions: int, backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend(round_up_divisions=divisions, expandable_segments=True)
    model = Model(divisions=divisions)
    run_workload(pool, model, random.Random(23 + divisions), "mixed", 1500, True, pool_ok)
    for ptr in list(model.live):
        pool.free(ptr)
        model.free(ptr)
    model.compare(pool)


@pytest.mark.parametrize("divisions", [0, 4])
def test_mixed_sizes_fixed_segments(divisions: int, backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend(round_up_divisions=divisions)
    model = Model(divisions=divisions)
    run_workload(pool, model, random.Random(37 + divisions), "mixed", 1500, False, pool_ok)
    # Allocated bytes: at least the rounded sizes, at most 1 MiB more per large block.
    st = pool.memory_stats()
    lo = sum(r for _, r, _ in model.live.values())
    n_large = sum(1 for _, _, k in model.live.values() if k == "large_pool")
    assert lo <= st["allocated_bytes.all.current"] <= lo + n_large * pm.SMALL_SIZE
    assert st["allocated_bytes.all.current"] == sum(pool.size_of(p) for p in model.live)
    small = sum(r for _, r, k in model.live.values() if k == "small_pool")
    assert st["allocated_bytes.small_pool.current"] == small  # the small pool is exact
    for ptr in list(model.live):
        pool.free(ptr)
        model.free(ptr)
    model.compare(pool, exact_allocated=False)
    st = pool.memory_stats()
    assert st["allocated_bytes.all.current"] == 0
    assert st["allocated_bytes.all.allocated"] == st["allocated_bytes.all.freed"]


def test_peaks_and_reset(backend: Backend) -> None:
    pool = backend()
    a = pool.malloc(3000)  # 3072
    b = pool.malloc(5 * MiB + 1)  # 5 MiB + 512
    st = pool.memory_stats()
    assert st["allocated_bytes.all.peak"] == 3072 + 5 * MiB + 512
    assert st["requested_bytes.all.peak"] == 3000 + 5 * MiB + 1
    assert st["reserved_bytes.all.peak"] == 22 * MiB
    assert st["allocation.all.peak"] == 2
    pool.free(b)
    assert pool.max_memory_allocated() == 3072 + 5 * MiB + 512  # peak stays
    assert pool.memory_allocated() == 3072
    pool.reset_peak_memory_stats()
    st = pool.memory_stats()
    assert st["allocated_bytes.all.peak"] == 3072
    assert st["allocated_bytes.large_pool.peak"] == 0
    assert st["requested_bytes.all.peak"] == 3000
    assert st["reserved_bytes.all.peak"] == 22 * MiB  # still reserved (cached)
    assert st["allocation.all.peak"] == 1
    pool.empty_cache()
    pool.reset_peak_memory_stats()
    assert pool.max_memory_reserved() == 2 * MiB
    # Cumulative counters are not touched by a peak reset.
    st = pool.memory_stats()
    assert st["allocated_bytes.all.allocated"] == 3072 + 5 * MiB + 512
    assert st["allocated_bytes.all.freed"] == 5 * MiB + 512
    assert st["reserved_bytes.all.allocated"] == 22 * MiB
    assert st["reserved_bytes.all.freed"] == 20 * MiB
    assert st["segment.all.allocated"] == 2 and st["segment.all.freed"] == 1
    assert st["num_device_alloc"] == 2 and st["num_device_free"] == 1
    pool.free(a)


def test_reset_accumulated_stats(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend.with_limit("64MiB")
    a = pool.malloc(1000)
    b = pool.malloc(2000)
    pool.free(b)
    with pytest.raises(pypool.OutOfMemoryError):
        pool.malloc(100 * MiB)
    pool.reset_accumulated_memory_stats()
    st = pool.memory_stats()
    assert st["allocated_bytes.all.allocated"] == 0 and st["allocated_bytes.all.freed"] == 0
    assert st["num_ooms"] == 0 and st["num_alloc_retries"] == 0 and st["num_device_alloc"] == 0
    assert st["allocated_bytes.all.current"] == 1024  # currents stay
    assert st["allocated_bytes.all.peak"] == 3072  # and peaks
    pool_ok(pool)
    pool.free(a)
    st = pool.memory_stats()
    assert st["allocated_bytes.all.freed"] == 1024


def test_stats_keys_follow_torch(backend: Backend) -> None:
    st = backend().memory_stats()
    for name in ("allocation", "segment", "active", "inactive_split", "allocated_bytes",
                 "reserved_bytes", "active_bytes", "inactive_split_bytes", "requested_bytes"):
        for kind in ("all", "small_pool", "large_pool"):
            for f in ("current", "peak", "allocated", "freed"):
                assert st[f"{name}.{kind}.{f}"] == 0
    for name in ("num_alloc_retries", "num_ooms", "num_device_alloc", "num_device_free",
                 "num_sync_all_streams", "num_segment_map", "num_segment_unmap", "num_oom_rejections"):
        assert st[name] == 0
    for name in ("oversize_allocations", "oversize_segments"):  # one Stat each, as torch's
        for f in ("current", "peak", "allocated", "freed"):
            assert st[f"{name}.{f}"] == 0
    assert st["max_pool_size"] == -1
    assert st["max_split_size"] == -1  # unlimited, as torch reports it
    assert backend(max_split_size="64MiB").memory_stats()["max_split_size"] == 64 * MiB


# ---------------------------------------------------------------------------- oversize
# Note [Oversize stats]: allocations (block sizes) and fixed segments of max_split_size or
# more, each counted when made and uncounted when freed / released.


def oversize(st: Dict[str, int], name: str) -> Tuple[int, int, int, int]:
    return tuple(st[f"{name}.{f}"] for f in ("current", "peak", "allocated", "freed"))  # type: ignore[return-value]


def test_oversize_counters_step_by_step(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend(max_split_size="64MiB")
    a = pool.malloc(100 * MiB)  # its own 100 MiB segment: both oversize
    b = pool.malloc(30 * MiB)  # below the limit: neither
    s = pool.malloc(4 * KiB)  # small pool: never
    st = pool.memory_stats()
    assert oversize(st, "oversize_allocations") == (1, 1, 1, 0)
    assert oversize(st, "oversize_segments") == (1, 1, 1, 0)
    pool.free(a)  # the allocation ends; the segment stays cached
    st = pool.memory_stats()
    assert oversize(st, "oversize_allocations") == (0, 1, 1, 1)
    assert oversize(st, "oversize_segments") == (1, 1, 1, 0)
    # 90 MiB takes the cached 100 MiB block whole (kept unsplit, waste under 20 MiB): the
    # block handed out is 100 MiB, so the allocation is oversize.
    c = pool.malloc(90 * MiB)
    assert pool.size_of(c) == 100 * MiB
    st = pool.memory_stats()
    assert oversize(st, "oversize_allocations") == (1, 1, 2, 1)
    assert oversize(st, "oversize_segments") == (1, 1, 1, 0)
    pool_ok(pool)
    pool.free(c)
    pool.empty_cache()  # the 100 MiB segment goes back; b's does not
    st = pool.memory_stats()
    assert oversize(st, "oversize_allocations") == (0, 1, 2, 2)
    assert oversize(st, "oversize_segments") == (0, 1, 1, 1)
    pool.reset_peak_memory_stats()
    pool.reset_accumulated_memory_stats()
    st = pool.memory_stats()
    assert oversize(st, "oversize_allocations") == (0, 0, 0, 0)
    assert oversize(st, "oversize_segments") == (0, 0, 0, 0)
    pool.free(b)
    pool.free(s)
    pool_ok(pool)


def test_oversize_counters_against_the_pools_blocks(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    """A random workload across the limit: current is the number of live blocks and
    fixed segments of the limit or more (sizes as the pool reports them), allocated /
    freed count every such block handed out / given back."""
    limit = 48 * MiB
    pool = backend(max_split_size=limit)
    rng = random.Random(7)
    live: Dict[int, int] = {}
    made = ended = 0
    for step in range(400):
        if live and rng.random() < 0.45:
            ptr = rng.choice(list(live))
            ended += live.pop(ptr) >= limit
            pool.free(ptr)
        else:
            size = rng.choice([rng.randint(1, 1 * MiB), rng.randint(1 * MiB, 40 * MiB),
                               rng.randint(40 * MiB, 120 * MiB)])
            ptr = pool.malloc(size)
            live[ptr] = pool.size_of(ptr)
            made += live[ptr] >= limit
        if step % 97 == 0:
            pool.empty_cache()
        st = pool.memory_stats()
        assert oversize(st, "oversize_allocations")[0::2] == (sum(n >= limit for n in live.values()), made)
        assert st["oversize_allocations.freed"] == ended
        segs = [s for s in pool.segments() if not s["is_expandable"]]
        assert st["oversize_segments.current"] == sum(s["total_size"] >= limit for s in segs)
    assert made > 20 and ended > 10  # the workload crossed the limit both ways
    pool_ok(pool)
    for ptr in live:
        pool.free(ptr)
    pool.empty_cache()
    st = pool.memory_stats()
    assert st["oversize_allocations.current"] == 0 and st["oversize_segments.current"] == 0
    assert st["oversize_segments.allocated"] == st["oversize_segments.freed"] > 0


def test_oversize_segments_leave_out_expandable_segments(backend: Backend) -> None:
    # As torch: an expandable segment is not a device allocation of that size.
    pool = backend(max_split_size="64MiB", expandable_segments=True)
    a = pool.malloc(100 * MiB)
    st = pool.memory_stats()
    assert oversize(st, "oversize_allocations")[:3] == (1, 1, 1)
    assert oversize(st, "oversize_segments") == (0, 0, 0, 0)
    pool.free(a)
    assert pool.memory_stats()["oversize_allocations.freed"] == 1


def test_no_oversize_without_max_split_size(backend: Backend) -> None:
    pool = backend()
    pool.free(pool.malloc(1 << 30))
    st = pool.memory_stats()
    assert oversize(st, "oversize_allocations") == (0, 0, 0, 0)
    assert oversize(st, "oversize_segments") == (0, 0, 0, 0)
    assert st["max_split_size"] == -1
