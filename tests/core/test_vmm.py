"""Expandable segments (CUDA VMM, and the host's mmap analogue of it: reserve a virtual
range, map 2 MiB granules at its end): growth in place, coalescing across mapped chunks,
shrinking on empty_cache, out of memory, accounting, and less reserved memory than fixed
segments for a workload of changing sizes. A generic suite: the tests taking ``backend``
run on each backend (pool_backends.py; cuda in tests/gpu/test_generic_cuda.py); fault
injection while mapping is host-only (core/host/test_oom_faults.py)."""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Tuple

import pytest

import pypool
from pool_backends import Backend
from pypool import _core

MiB = 1 << 20
GiB = 1 << 30

A, I = "active_allocated", "inactive"


def expandable(pool: pypool.Pool) -> List[Dict[str, Any]]:
    return [s for s in pool.segments() if s["is_expandable"]]


def blocks(seg: Dict[str, Any]) -> List[Tuple[int, str]]:
    return [(b["size"], b["state"]) for b in seg["blocks"]]


def test_growth_in_place(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend(expandable_segments=True)
    a = pool.malloc(5 * MiB)
    pool_ok(pool)
    (seg,) = pool.segments()
    assert seg["is_expandable"] and seg["segment_type"] == "large"
    assert seg["total_size"] == 6 * MiB  # three granules
    assert seg["reserved_va"] == pool.config.expandable_reserve
    assert seg["address"] == a
    assert blocks(seg) == [(5 * MiB, A), (1 * MiB, I)]  # any rest >= 512 B is split
    st = pool.memory_stats()
    assert st["num_segment_map"] == 1 and st["num_device_alloc"] == 1
    assert st["reserved_bytes.all.current"] == 6 * MiB
    backend.check_used(pool, 6 * MiB)

    b = pool.malloc(5 * MiB)  # uses the 1 MiB tail + 4 MiB newly mapped after it
    pool_ok(pool)
    (seg,) = pool.segments()
    assert seg["address"] == a and b == a + 5 * MiB
    assert seg["total_size"] == 10 * MiB
    assert blocks(seg) == [(5 * MiB, A), (5 * MiB, A)]
    st = pool.memory_stats()
    assert st["num_segment_map"] == 2
    assert st["num_device_alloc"] == 1  # still one segment
    assert st["segment.all.current"] == 1
    backend.check_used(pool, 10 * MiB)

    c = pool.malloc(30 * MiB)
    (seg,) = pool.segments()
    assert c == a + 10 * MiB and seg["total_size"] == 40 * MiB
    assert pool.memory_stats()["num_segment_map"] == 3
    for p in (a, b, c):
        pool.free(p)
    pool_ok(pool)


def test_coalescing_across_mapped_chunks(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend(expandable_segments=True)
    ptrs = [pool.malloc(3 * MiB) for _ in range(4)]  # mapped in four steps, 12 MiB
    assert pool.memory_stats()["num_segment_map"] == 4
    (seg,) = pool.segments()
    assert seg["total_size"] == 12 * MiB
    pool.free(ptrs[1])
    pool.free(ptrs[2])  # coalesce with each other across the 6 MiB granule edge
    pool_ok(pool)
    (seg,) = pool.segments()
    assert blocks(seg) == [(3 * MiB, A), (6 * MiB, I), (3 * MiB, A)]
    pool.free(ptrs[0])
    pool.free(ptrs[3])
    pool_ok(pool)
    (seg,) = pool.segments()
    assert blocks(seg) == [(12 * MiB, I)]
    # The whole mapped range serves one request without mapping more.
    big = pool.malloc(11 * MiB)
    assert big == ptrs[0]
    assert pool.memory_stats()["num_segment_map"] == 4
    assert blocks(pool.segments()[0]) == [(11 * MiB, A), (1 * MiB, I)]
    pool.free(big)
    pool_ok(pool)


def test_shrink_on_empty_cache(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend(expandable_segments=True)
    a = pool.malloc(5 * MiB)
    b = pool.malloc(5 * MiB)
    pool.free(b)
    pool.empty_cache()  # the free tail from the first granule edge after a is unmapped
    pool_ok(pool)
    (seg,) = pool.segments()
    assert seg["total_size"] == 6 * MiB
    assert blocks(seg) == [(5 * MiB, A), (1 * MiB, I)]
    st = pool.memory_stats()
    assert st["num_segment_unmap"] == 1
    assert st["reserved_bytes.all.current"] == 6 * MiB
    assert st["reserved_bytes.all.freed"] == 4 * MiB
    backend.check_used(pool, 6 * MiB)
    pool.free(a)
    pool.empty_cache()
    pool_ok(pool)
    st = pool.memory_stats()
    assert pool.segments() == []
    assert st["num_segment_unmap"] == 2
    assert st["num_device_free"] == 1
    assert st["reserved_bytes.all.current"] == 0
    assert st["segment.all.current"] == 0
    backend.check_used(pool, 0)
    if backend.name == "host":  # the one backend that counts its allocations
        assert pool.backend.live_allocations == 0
    # And it grows again from nothing.
    c = pool.malloc(3 * MiB)
    assert pool.memory_reserved() == 4 * MiB
    pool.free(c)
    pool_ok(pool)


def layout(pool: pypool.Pool, base: int) -> List[Tuple[float, float, str]]:
    """(offset from base in MiB, size in MiB, state) of the blocks of the expandable
    segments as listed (each mapped run on its own), in address order."""
    return sorted(((b["address"] - base) / MiB, b["size"] / MiB, b["state"])
                  for seg in expandable(pool) for b in seg["blocks"])


def test_free_hole_in_the_middle_is_unmapped_and_mapped_again(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    # Note [VMM holes]: the granules of a free block between live ones go back to the
    # device, and a request that fits the hole maps them again in place.
    pool = backend(expandable_segments=True)
    a = pool.malloc(4 * MiB)
    b = pool.malloc(4 * MiB)
    c = pool.malloc(4 * MiB)
    pool.free(b)
    pool.empty_cache()
    pool_ok(pool)
    backend.check_used(pool, 8 * MiB)  # reserved drops by exactly the hole
    st = pool.memory_stats()
    assert st["num_segment_unmap"] == 1 and st["reserved_bytes.all.freed"] == 4 * MiB
    # The snapshot leaves the hole out, as PyTorch's does: each mapped run is listed as a
    # segment of its own, tiled by its blocks.
    assert [(s["address"], s["total_size"]) for s in pool.segments()] == [(a, 4 * MiB), (c, 4 * MiB)]
    assert pool.memory_stats()["segment.all.current"] == 1
    assert layout(pool, a) == [(0, 4, A), (8, 4, A)]
    d = pool.malloc(3 * MiB)  # the hole, not the tail
    assert d == b
    pool_ok(pool)
    backend.check_used(pool, 12 * MiB)
    assert layout(pool, a) == [(0, 4, A), (4, 3, A), (7, 1, I), (8, 4, A)]
    assert pool.memory_stats()["num_segment_map"] == 4
    pool.free(c)
    pool.free(d)
    pool.empty_cache()  # d's block coalesced with c's: one free tail from 4 MiB on
    pool_ok(pool)
    backend.check_used(pool, 4 * MiB)
    pool.free(a)
    pool.empty_cache()
    assert pool.segments() == []
    backend.check_used(pool, 0)
    pool_ok(pool)


def test_hole_maps_only_the_granules_next_to_a_free_neighbour(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend(expandable_segments=True)
    a = pool.malloc(4 * MiB)
    b = pool.malloc(10 * MiB)
    c = pool.malloc(4 * MiB)
    pool.free(b)
    pool.empty_cache()  # hole [4, 14) MiB
    backend.check_used(pool, 8 * MiB)
    pool.free(a)  # free and mapped, left of the hole: 4 + 2 MiB of the hole hold 6 MiB
    d = pool.malloc(6 * MiB)
    assert d == a
    pool_ok(pool)
    backend.check_used(pool, 10 * MiB)
    assert layout(pool, a) == [(0, 6, A), (14, 4, A)]
    pool.free(c)  # the free tail, right of the hole: the same 2 MiB of the hole's end
    e = pool.malloc(6 * MiB)  # as the tail would need, without growing the extent
    assert e == a + 12 * MiB
    pool_ok(pool)
    backend.check_used(pool, 12 * MiB)
    assert layout(pool, a) == [(0, 6, A), (12, 6, A)]
    pool.free(d)
    pool.free(e)
    f = pool.malloc(18 * MiB)  # the whole hole with both neighbours
    assert f == a
    pool_ok(pool)
    backend.check_used(pool, 18 * MiB)
    pool.free(f)
    pool_ok(pool)


def test_retry_unmaps_interior_holes(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    # Growing past the cap fails; the retry gives the free middle back and the tail grows.
    pool = backend.with_limit("16MiB", expandable_segments=True)
    a = pool.malloc(4 * MiB)
    b = pool.malloc(4 * MiB)
    c = pool.malloc(4 * MiB)
    pool.free(b)
    d = pool.malloc(6 * MiB)  # 12 + 6 > 16 until the hole's 4 MiB are unmapped
    assert d == a + 12 * MiB
    st = pool.memory_stats()
    assert st["num_alloc_retries"] == 1 and st["num_ooms"] == 0
    pool_ok(pool)
    backend.check_used(pool, 14 * MiB)
    e = pool.malloc(2 * MiB)  # fits the hole again
    assert e == b
    backend.check_used(pool, 16 * MiB)
    for p in (a, c, d, e):
        pool.free(p)
    pool_ok(pool)


def test_empty_cache_leaves_no_whole_free_granule_mapped(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    rng = random.Random(11)
    pool = backend(expandable_segments=True)
    live = [pool.malloc(rng.randint(1 * MiB, 9 * MiB)) for _ in range(40)]
    for p in live[::3] + live[1::5]:
        if p in live:
            live.remove(p)
            pool.free(p)
    pool.empty_cache()
    pool_ok(pool)
    runs = expandable(pool)
    assert len(runs) > 1 and pool.memory_stats()["segment.all.current"] == 1
    g = 2 * MiB
    base = min(s["address"] for s in runs)
    for seg in runs:
        assert (seg["address"] - base) % g == 0 and seg["total_size"] % g == 0
        for blk in seg["blocks"]:
            if blk["state"] == I:
                lo = -(-(blk["address"] - base) // g) * g
                hi = (blk["address"] + blk["size"] - base) // g * g
                assert lo >= hi, f"free block {blk} still holds a whole granule"
    mapped = sum(s["total_size"] for s in runs)
    backend.check_used(pool, mapped)
    for p in live:
        pool.free(p)
    pool.empty_cache()
    backend.check_used(pool, 0)
    pool_ok(pool)


def test_release_threshold_keeps_mapped_bytes(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend(expandable_segments=True, release_threshold="8MiB")
    s = pool.malloc(1000)  # a 2 MiB small segment, cached below
    pool.free(s)
    a = pool.malloc(20 * MiB)
    pool.free(a)
    pool.empty_cache()  # 22 MiB cached: the small segment goes, 8 MiB stay mapped
    pool_ok(pool)
    assert [(x["segment_type"], x["total_size"]) for x in pool.segments()] == [("large", 8 * MiB)]
    backend.check_used(pool, 8 * MiB)
    pool._pool.release_all_cached()  # ignores the threshold
    assert pool.segments() == []
    backend.check_used(pool, 0)
    pool_ok(pool)


def test_release_threshold_walks_back_across_holes(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    # After the free tail is cut and the trailing hole dropped, the free block before that
    # hole is the new tail: one empty_cache cuts it too, and a repeat changes nothing.
    pool = backend(expandable_segments=True)
    a, b, c = pool.malloc(30 * MiB), pool.malloc(10 * MiB), pool.malloc(20 * MiB)
    pool.free(b)
    pool.empty_cache()  # no threshold: a hole where b was
    assert [blocks(s) for s in expandable(pool)] == [[(30 * MiB, A)], [(20 * MiB, A)]]  # split at it
    pool.update_config(release_threshold=8 * MiB)
    pool.free(a)
    pool.free(c)
    pool.empty_cache()
    pool_ok(pool)
    assert pool.memory_reserved() == 8 * MiB  # was 30 MiB (the hole stopped the cut)
    assert [blocks(s) for s in expandable(pool)] == [[(8 * MiB, I)]]
    backend.check_used(pool, 8 * MiB)
    unmaps = pool.memory_stats()["num_segment_unmap"]
    pool.empty_cache()  # the fixed point: nothing more
    assert pool.memory_reserved() == 8 * MiB
    assert pool.memory_stats()["num_segment_unmap"] == unmaps
    pool_ok(pool)


def test_release_threshold_after_an_oom_retry_hole(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    # The same with the hole made by the retry of a growth past max_pool_size.
    pool = backend(expandable_segments=True, release_threshold=8 * MiB, max_pool_size="64MiB")
    a, b, c = pool.malloc(30 * MiB), pool.malloc(10 * MiB), pool.malloc(20 * MiB)
    pool.free(b)
    d = pool.malloc(12 * MiB)  # 60 + 12 > 64: the retry unmaps b's range, the tail grows
    for p in (a, c, d):
        pool.free(p)
    pool.empty_cache()
    pool_ok(pool)
    assert pool.memory_reserved() == 8 * MiB
    pool.empty_cache()
    assert pool.memory_reserved() == 8 * MiB
    pool_ok(pool)


def test_small_requests_use_fixed_segments(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend(expandable_segments=True)
    p = pool.malloc(4096)
    q = pool.malloc(2 * MiB)
    segs = {s["segment_type"]: s for s in pool.segments()}
    assert segs["small"]["is_expandable"] is False and segs["small"]["total_size"] == 2 * MiB
    assert segs["large"]["is_expandable"] is True and segs["large"]["total_size"] == 2 * MiB
    pool.free(p)
    pool.free(q)
    pool.empty_cache()
    assert pool.segments() == []
    pool_ok(pool)


def test_one_expandable_segment_per_stream(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend(expandable_segments=True)
    s1, s2 = backend.stream(1), backend.stream(2)
    a = pool.malloc(3 * MiB, stream=s1)
    b = pool.malloc(3 * MiB, stream=s2)
    c = pool.malloc(3 * MiB, stream=s1)
    segs = expandable(pool)
    assert sorted(s["stream"] for s in segs) == sorted([s1, s2])
    by_stream = {s["stream"]: s for s in segs}
    assert by_stream[s1]["total_size"] == 6 * MiB and by_stream[s2]["total_size"] == 4 * MiB
    assert c == a + 3 * MiB
    for p in (a, b, c):
        pool.free(p)
    pool.empty_cache()
    assert pool.segments() == []
    pool_ok(pool)


def test_out_of_memory(backend: Backend, pool_ok: Callable[[pypool.Pool], None], pool_state: Callable[..., Any]) -> None:
    pool = backend(capacity="16MiB", expandable_segments=True)
    a = pool.malloc(10 * MiB)
    before = pool_state(pool)
    with pytest.raises(pypool.OutOfMemoryError):
        pool.malloc(8 * MiB)  # 10 + 8 > 16: a partial mapping must be undone
    pool_ok(pool)
    backend.check_used(pool, 10 * MiB)
    assert pool.segments() == before[1]
    st = pool.memory_stats()
    assert st["num_ooms"] == 1
    assert st["num_segment_map"] == before[0]["num_segment_map"]
    b = pool.malloc(6 * MiB)  # exactly what is left: grows in place
    (seg,) = pool.segments()
    assert seg["total_size"] == 16 * MiB
    pool.free(a)
    pool.free(b)
    c = pool.malloc(16 * MiB)  # the whole coalesced range
    assert c == a
    pool.free(c)
    pool_ok(pool)


def test_out_of_memory_with_max_pool_size(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend(max_pool_size="32MiB", expandable_segments=True)
    a = pool.malloc(20 * MiB)
    with pytest.raises(pypool.OutOfMemoryError):
        pool.malloc(13 * MiB)
    b = pool.malloc(12 * MiB)
    assert pool.memory_reserved() == 32 * MiB
    pool.free(a)
    pool.free(b)
    pool_ok(pool)


def test_release_and_retry_shrinks_then_grows(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend(capacity="22MiB", expandable_segments=True)
    small = [pool.malloc(1000, stream=s) for s in (5, 6)]  # two 2 MiB small segments
    for p in small:
        pool.free(p)
    a = pool.malloc(20 * MiB)  # 4 MiB cached in small segments + 20 > 22: retry releases them
    assert pool.memory_stats()["num_alloc_retries"] == 1
    assert pool.memory_reserved() == 20 * MiB
    pool.free(a)
    pool_ok(pool)


def test_accounting_identities(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    rng = random.Random(5)
    pool = backend.with_limit("512MiB", expandable_segments=True)
    live: List[int] = []
    streams = [0, backend.stream(3)]
    for step in range(600):
        if live and rng.random() < 0.45:
            pool.free(live.pop(rng.randrange(len(live))))
        else:
            size = rng.choice([rng.randint(1, 64 << 10), rng.randint(1 * MiB, 8 * MiB), rng.randint(8 * MiB, 30 * MiB)])
            try:
                live.append(pool.malloc(size, stream=rng.choice(streams)))
            except pypool.OutOfMemoryError:
                pass  # checked precisely in test_oom_faults / test_out_of_memory
        if step % 60 == 0:
            pool.empty_cache()
        if step % 20 == 0:
            pool_ok(pool)
            st = pool.memory_stats()
            maps, unmaps = st["num_segment_map"], st["num_segment_unmap"]
            assert maps >= unmaps
            segs = pool.segments()
            for s in segs:
                if s["is_expandable"]:
                    assert s["total_size"] % (2 * MiB) == 0
                    assert s["total_size"] <= s["reserved_va"]
            large_reserved = sum(s["total_size"] for s in segs if s["segment_type"] == "large")
            assert st["reserved_bytes.large_pool.current"] == large_reserved
    for p in live:
        pool.free(p)
    pool.empty_cache()
    pool_ok(pool)
    backend.check_used(pool, 0)
    st = pool.memory_stats()
    assert st["reserved_bytes.all.allocated"] == st["reserved_bytes.all.freed"]


PATTERNS = [[7 * MiB, 9 * MiB], [13 * MiB], [7 * MiB, 9 * MiB], [13 * MiB]]


def alternating_workload(pool: pypool.Pool, n: int = 30) -> int:
    """Batches whose block sizes alternate (7 / 9 MiB), then change shape (13 MiB) and
    back, as varying sequence lengths do; returns the peak of reserved bytes."""
    for sizes in PATTERNS:
        ptrs = [pool.malloc(sizes[i % len(sizes)]) for i in range(n)]
        for p in ptrs:
            pool.free(p)
    pool.check_invariants()
    return pool.max_memory_reserved()


def test_expandable_reserves_less_for_alternating_sizes(backend: Backend) -> None:
    live_peak = max(sum(s[i % len(s)] for i in range(30)) for s in PATTERNS)  # 390 MiB
    grow = alternating_workload(backend(expandable_segments=True))
    fixed = alternating_workload(backend())
    fixed_no_reclaim = alternating_workload(backend(reclaim_before_grow=False))
    # 20 MiB segments hold 7 + 9 MiB with 4 MiB to spare, 13 MiB blocks get 14 MiB
    # segments; the expandable segment coalesces into one range that fits each batch.
    assert grow < fixed and grow < fixed_no_reclaim
    assert grow <= live_peak + 2 * MiB


# A native pool from raw Config fields: the core's own checks, with no PoolConfig in front.
def _pool(backend=None, **fields):
    c = _core.Config()
    for k, v in fields.items():
        setattr(c, k, v)
    return _core.DevicePool(c, backend or _core.HostBackend(1 << 34))


def test_null_backend_never_hands_out_an_address_twice() -> None:
    # The null backend's address counter used to wrap: with 2^49-byte reserves per
    # expandable segment, later streams' segments overlapped earlier ones.
    p = _pool(_core.make_null_backend(1 << 40), expandable_segments=True, expandable_reserve=1 << 49)
    ptrs = []
    for s in range(40):
        try:
            ptrs.append(p.malloc(32 << 20, s))
        except _core.OutOfMemoryError:
            break  # address space exhausted: refused, not reused
    assert len(ptrs) > 4
    assert len(set(ptrs)) == len(ptrs)
    p.check_invariants()
