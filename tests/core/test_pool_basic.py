"""Block bookkeeping: split, coalesce, reuse, small vs large pool, release, and exact byte
accounting. Layouts are read from ``Pool.segments()``. A generic suite: every test runs
on each backend (pool_backends.py; cuda in tests/gpu/test_generic_cuda.py)."""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Tuple

import pypool
import pytest
from pool_backends import Backend

KiB = 1 << 10
MiB = 1 << 20

A, I = "active_allocated", "inactive"


def layout(pool: pypool.Pool) -> List[Tuple[str, List[Tuple[int, str]]]]:
    """[(segment_type, [(block size, state), ...]), ...] by segment address."""
    return [(s["segment_type"], [(b["size"], b["state"]) for b in s["blocks"]]) for s in pool.segments()]


def segment_of(pool: pypool.Pool, ptr: int) -> Dict[str, Any]:
    for s in pool.segments():
        if s["address"] <= ptr < s["address"] + s["total_size"]:
            return s
    raise AssertionError(f"{ptr:#x} is in no segment")


def test_small_split_and_coalesce(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend()
    a = pool.malloc(1000)  # -> 1024
    pool_ok(pool)
    assert layout(pool) == [("small", [(1024, A), (2 * MiB - 1024, I)])]
    b = pool.malloc(3000)  # -> 3072, carved right after a
    pool_ok(pool)
    assert b == a + 1024
    assert layout(pool) == [("small", [(1024, A), (3072, A), (2 * MiB - 4096, I)])]
    pool.free(a)
    pool_ok(pool)
    assert layout(pool) == [("small", [(1024, I), (3072, A), (2 * MiB - 4096, I)])]
    # Best fit: the 1024 B hole serves a 512 B request, split again.
    c = pool.malloc(512)
    pool_ok(pool)
    assert c == a
    assert layout(pool) == [("small", [(512, A), (512, I), (3072, A), (2 * MiB - 4096, I)])]
    pool.free(b)  # coalesces with both free neighbours
    pool_ok(pool)
    assert layout(pool) == [("small", [(512, A), (2 * MiB - 512, I)])]
    pool.free(c)
    pool_ok(pool)
    assert layout(pool) == [("small", [(2 * MiB, I)])]
    assert pool.memory_reserved() == 2 * MiB
    assert pool.memory_stats()["inactive_split_bytes.all.current"] == 0


def test_large_split_and_coalesce(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend()
    a = pool.malloc(5 * MiB)
    b = pool.malloc(3 * MiB)
    pool_ok(pool)
    assert b == a + 5 * MiB
    assert layout(pool) == [("large", [(5 * MiB, A), (3 * MiB, A), (12 * MiB, I)])]
    st = pool.memory_stats()
    assert st["inactive_split.large_pool.current"] == 1
    assert st["inactive_split_bytes.large_pool.current"] == 12 * MiB
    pool.free(a)
    pool_ok(pool)
    assert layout(pool) == [("large", [(5 * MiB, I), (3 * MiB, A), (12 * MiB, I)])]
    assert pool.memory_stats()["inactive_split_bytes.large_pool.current"] == 17 * MiB
    pool.free(b)
    pool_ok(pool)
    assert layout(pool) == [("large", [(20 * MiB, I)])]
    assert pool.memory_stats()["inactive_split.large_pool.current"] == 0


def test_large_remainder_of_one_mib_is_not_split(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend()
    # 19.5 MiB >= 10 MiB: own segment of 20 MiB; the 512 KiB rest stays attached.
    p = pool.malloc(19 * MiB + 512 * KiB)
    pool_ok(pool)
    assert layout(pool) == [("large", [(20 * MiB, A)])]
    assert pool.size_of(p) == 20 * MiB
    assert pool.memory_allocated() == 20 * MiB
    assert pool.memory_requested() == 19 * MiB + 512 * KiB
    # 10 MiB + 1: rounds to 10 MiB + 512 in a 12 MiB segment; rest 2 MiB - 512 > 1 MiB: split.
    q = pool.malloc(10 * MiB + 1)
    pool_ok(pool)
    assert pool.size_of(q) == 10 * MiB + 512
    assert segment_of(pool, q)["total_size"] == 12 * MiB
    assert [(b["size"], b["state"]) for b in segment_of(pool, q)["blocks"]] == [(10 * MiB + 512, A), (2 * MiB - 512, I)]
    pool.free(p)
    pool.free(q)
    pool_ok(pool)


def test_small_and_large_pools_are_separate(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend()
    small = pool.malloc(1 * MiB)  # the largest small request
    large = pool.malloc(1 * MiB + 1)  # the smallest large request
    pool_ok(pool)
    kinds = {s["segment_type"]: s for s in pool.segments()}
    assert set(kinds) == {"small", "large"}
    assert kinds["small"]["total_size"] == 2 * MiB
    assert kinds["large"]["total_size"] == 20 * MiB
    assert segment_of(pool, small)["segment_type"] == "small"
    assert segment_of(pool, large)["segment_type"] == "large"
    st = pool.memory_stats()
    assert st["allocated_bytes.small_pool.current"] == 1 * MiB
    assert st["allocated_bytes.large_pool.current"] == 1 * MiB + 512
    assert st["reserved_bytes.small_pool.current"] == 2 * MiB
    assert st["reserved_bytes.large_pool.current"] == 20 * MiB
    assert st["segment.small_pool.current"] == 1 and st["segment.large_pool.current"] == 1
    # A free small block is never handed to a large request and vice versa.
    pool.free(small)
    big = pool.malloc(1 * MiB + 1)
    assert segment_of(pool, big)["segment_type"] == "large"
    pool.free(large)
    tiny = pool.malloc(512)
    assert segment_of(pool, tiny)["segment_type"] == "small"
    assert len(pool.segments()) == 2
    pool.free(big)
    pool.free(tiny)
    pool_ok(pool)


def test_reuse_of_the_same_address(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend()
    for size in (512, 4096, 1 * MiB, 3 * MiB, 12 * MiB):
        p = pool.malloc(size)
        pool.free(p)
        before = pool.memory_stats()["num_device_alloc"]
        for _ in range(5):
            q = pool.malloc(size)
            assert q == p, f"size {size}: the cached block was not reused"
            pool.free(q)
        assert pool.memory_stats()["num_device_alloc"] == before
        pool_ok(pool)


def test_many_small_blocks_share_one_segment(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend()
    ptrs = [pool.malloc(4096) for _ in range(512)]  # exactly 2 MiB
    pool_ok(pool)
    assert len(pool.segments()) == 1
    assert sorted(ptrs) == [ptrs[0] + 4096 * i for i in range(512)]
    assert layout(pool) == [("small", [(4096, A)] * 512)]
    extra = pool.malloc(4096)  # the segment is full: a second one
    assert len(pool.segments()) == 2
    # Free every other block, then the rest: all coalesce back.
    for p in ptrs[::2]:
        pool.free(p)
    pool_ok(pool)
    # 256 holes in the first segment plus the free tail of the second
    assert pool.memory_stats()["inactive_split.small_pool.current"] == 257
    for p in ptrs[1::2]:
        pool.free(p)
    pool.free(extra)
    pool_ok(pool)
    assert layout(pool) == [("small", [(2 * MiB, I)]), ("small", [(2 * MiB, I)])]


def test_full_coalescing_after_random_frees(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    rng = random.Random(7)
    pool = backend()
    sizes = [rng.choice([rng.randint(1, 64 * KiB), rng.randint(1, 1 * MiB), rng.randint(1 * MiB, 9 * MiB), rng.randint(10 * MiB, 30 * MiB)]) for _ in range(300)]
    ptrs = [pool.malloc(s) for s in sizes]
    pool_ok(pool)
    rng.shuffle(ptrs)
    for i, p in enumerate(ptrs):
        pool.free(p)
        if i % 25 == 0:
            pool_ok(pool)
    pool_ok(pool)
    for seg in pool.segments():
        assert [(b["size"], b["state"]) for b in seg["blocks"]] == [(seg["total_size"], I)]
    st = pool.memory_stats()
    assert st["allocated_bytes.all.current"] == 0
    assert st["active_bytes.all.current"] == 0
    assert st["inactive_split_bytes.all.current"] == 0
    assert st["requested_bytes.all.current"] == 0


def test_malloc_zero_and_free_zero(backend: Backend, pool_state: Callable[..., Any], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend()
    keep = pool.malloc(4096)
    before = pool_state(pool)
    next_seq = pool._pool.next_seq
    assert pool.malloc(0) == 0
    assert pool.malloc(0, stream=3) == 0
    pool.free(0)
    assert pool_state(pool) == before
    assert pool._pool.next_seq == next_seq  # no sequence number spent
    assert pool.memory_stats()["allocation.all.allocated"] == 1
    pool.free(keep)
    pool_ok(pool)


def test_empty_cache_returns_segments(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend()
    # 100 B and 200 KiB share a 2 MiB small segment; 2 MiB takes a 20 MiB large one; 19 MiB
    # does not fit its 18 MiB rest and gets its own 20 MiB segment; 40 MiB its own.
    ptrs = [pool.malloc(s) for s in (100, 200 * KiB, 2 * MiB, 19 * MiB, 40 * MiB)]
    reserved = pool.memory_reserved()
    assert reserved == 2 * MiB + 20 * MiB + 20 * MiB + 40 * MiB
    backend.check_used(pool, reserved)
    pool.empty_cache()  # everything is live: nothing to give back
    assert pool.memory_reserved() == reserved
    pool.free(ptrs[3])
    pool.empty_cache()  # the 19 MiB block's segment is now free
    pool_ok(pool)
    assert pool.memory_reserved() == reserved - 20 * MiB
    assert pool.memory_stats()["num_device_free"] == 1
    for p in ptrs[:3] + ptrs[4:]:
        pool.free(p)
    assert pool.memory_reserved() == reserved - 20 * MiB  # cached, not returned
    pool.empty_cache()
    pool_ok(pool)
    st = pool.memory_stats()
    assert pool.segments() == []
    backend.check_used(pool, 0)
    if backend.name == "host":  # the one backend that counts its allocations
        assert pool.backend.live_allocations == 0
    assert st["reserved_bytes.all.current"] == 0
    assert st["segment.all.current"] == 0
    assert st["num_device_alloc"] == st["num_device_free"] == 4
    assert st["reserved_bytes.all.peak"] == reserved
    # The pool grows again from nothing.
    p = pool.malloc(1000)
    assert pool.memory_reserved() == 2 * MiB
    pool.free(p)


def test_release_threshold_keeps_cache(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend(release_threshold="20MiB")
    ptrs = [pool.malloc(12 * MiB) for _ in range(4)]  # four 12 MiB segments
    for p in ptrs:
        pool.free(p)
    pool.empty_cache()
    pool_ok(pool)
    # 48 MiB cached: empty_cache keeps at least 20 MiB, i.e. two 12 MiB segments.
    assert pool.memory_reserved() == 24 * MiB
    pool._pool.release_all_cached()
    assert pool.memory_reserved() == 0
    pool_ok(pool)


def test_exact_byte_accounting(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend()
    # Sizes whose blocks are always split off exactly (small pool, or large with a
    # remainder > 1 MiB in their segment), so allocated == sum of rounded sizes.
    requests = [1, 511, 512, 513, 1000, 4097, 65_537, 1 * MiB - 1, 1 * MiB, 1 * MiB + 1, 3 * MiB + 7, 10 * MiB + 1, 24 * MiB + 3]
    rounded = [512, 512, 512, 1024, 1024, 4608, 66_048, 1 * MiB, 1 * MiB, 1 * MiB + 512, 3 * MiB + 512, 10 * MiB + 512, 24 * MiB + 512]
    ptrs = []
    for i, (req, rnd) in enumerate(zip(requests, rounded)):
        ptrs.append(pool.malloc(req))
        assert pool.size_of(ptrs[-1]) == rnd
        st = pool.memory_stats()
        assert st["allocated_bytes.all.current"] == sum(rounded[: i + 1])
        assert st["requested_bytes.all.current"] == sum(requests[: i + 1])
        assert st["reserved_bytes.all.current"] == sum(s["total_size"] for s in pool.segments())
        assert st["allocation.all.current"] == i + 1
        pool_ok(pool)
    small = [r for r in rounded if r <= 1 * MiB]
    st = pool.memory_stats()
    assert st["allocated_bytes.small_pool.current"] == sum(small)
    assert st["allocated_bytes.large_pool.current"] == sum(rounded) - sum(small)
    assert st["requested_bytes.small_pool.current"] == sum(q for q, r in zip(requests, rounded) if r <= 1 * MiB)
    for i, p in enumerate(ptrs):
        pool.free(p)
        st = pool.memory_stats()
        assert st["allocated_bytes.all.current"] == sum(rounded[i + 1:])
        assert st["requested_bytes.all.current"] == sum(requests[i + 1:])
    st = pool.memory_stats()
    assert st["allocated_bytes.all.allocated"] == st["allocated_bytes.all.freed"] == sum(rounded)
    assert st["requested_bytes.all.allocated"] == st["requested_bytes.all.freed"] == sum(requests)
    assert st["allocation.all.allocated"] == st["allocation.all.freed"] == len(requests)
    pool_ok(pool)


def test_no_overlap_between_live_blocks(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    rng = random.Random(1234)
    pool = backend()
    live: Dict[int, int] = {}
    streams = [0, 0, backend.stream(1)]
    for step in range(1500):
        if live and rng.random() < 0.45:
            p = rng.choice(list(live))
            pool.free(p)
            del live[p]
        else:
            size = rng.choice([rng.randint(1, 8 * KiB), rng.randint(1, 2 * MiB), rng.randint(1, 24 * MiB)])
            p = pool.malloc(size, stream=rng.choice(streams))
            assert p not in live
            live[p] = pool.size_of(p)
        if step % 100 == 0:
            pool_ok(pool)
            spans = sorted((a, a + n) for a, n in live.items())
            for (_, e0), (s1, _) in zip(spans, spans[1:]):
                assert e0 <= s1
    pool_ok(pool)
    assert {b["address"] for b in pool.live_blocks()} == set(live)
    for p in live:
        pool.free(p)
    pool.empty_cache()
    pool_ok(pool)
    backend.check_used(pool, 0)


def test_live_blocks_and_seq(backend: Backend) -> None:
    pool = backend()
    a = pool.malloc(100)
    mark = pool._pool.next_seq
    b = pool.malloc(200, stream=backend.stream(5))
    c = pool.malloc(3 * MiB)
    pool.free(c)
    blocks = pool.live_blocks()
    assert [x["address"] for x in blocks] == [a, b]
    assert [x["requested_size"] for x in blocks] == [100, 200]
    assert blocks[1]["stream"] == backend.stream(5)
    assert [x["address"] for x in pool.live_blocks(min_seq=mark)] == [b]
    pool.free(a)
    pool.free(b)


def test_pool_repr_and_properties(backend: Backend) -> None:
    pool = backend(capacity="1GiB")
    assert pool.backend_name == backend.name
    assert pool.device == 0
    assert pool.mem_info() == (1 << 30, 1 << 30)
    p = pool.malloc(1)
    assert pool.mem_info() == ((1 << 30) - 2 * MiB, 1 << 30)
    assert "allocated=512" in repr(pool)
    pool.free(p)


def test_max_split_size_below_segment_size_does_not_waste(backend: Backend) -> None:
    # PyTorch splits a fresh segment for any request below max_split_size (it checks the
    # request, and requires max_split_size_mb > 20). Either the config is refused, or a
    # 2 MiB request must not consume a whole 20 MiB segment as one block.
    for max_split in ("4MiB", "2MiB"):
        try:
            pool = backend(max_split_size=max_split)
        except ValueError as e:
            assert "max_split_size" in str(e)
            continue
        p = pool.malloc(2 * MiB - 512 if max_split == "2MiB" else 2 * MiB)
        q = pool.malloc(512)
        assert pool.size_of(p) <= 2 * MiB, f"max_split_size={max_split}: {pool.size_of(p)} byte block for a 2 MiB request"
        assert pool.size_of(q) == 512, f"max_split_size={max_split}: {pool.size_of(q)} byte block for a 512 B request"
        pool.free(p)
        pool.free(q)


def test_max_split_size_oversize_blocks(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    # reclaim_before_grow off: the cached oversize segment must stay to be looked at.
    pool = backend(max_split_size="32MiB", reclaim_before_grow=False)
    big = pool.malloc(40 * MiB)  # oversize: own 40 MiB segment, never split
    pool.free(big)
    small = pool.malloc(2 * MiB)  # must not be carved out of the cached oversize block
    assert not (big <= small < big + 40 * MiB)
    assert sorted(blocks for _, blocks in layout(pool)) == [[(2 * MiB, A), (18 * MiB, I)], [(40 * MiB, I)]]
    again = pool.malloc(36 * MiB)  # oversize request: takes the 40 MiB block whole (waste 4 < 20 MiB)
    assert again == big
    assert pool.size_of(again) == 40 * MiB
    pool_ok(pool)
    pool.free(again)
    pool.free(small)
    pool_ok(pool)


def test_reclaim_before_grow(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    # reclaim_threshold 0: before every growth, however roomy the device.
    pool = backend(reclaim_threshold=0.0)
    a = pool.malloc(12 * MiB)
    b = pool.malloc(12 * MiB)
    small = pool.malloc(1000)
    pool.free(a)
    pool.free(b)
    pool.free(small)  # cached: two 12 MiB large segments, one 2 MiB small one
    c = pool.malloc(12 * MiB)  # a cached block fits: nothing is given back
    assert pool.memory_stats()["num_device_free"] == 0
    pool.free(c)
    d = pool.malloc(30 * MiB)  # 24 MiB cached cannot cover a 30 MiB growth: none go
    st = pool.memory_stats()
    assert st["num_device_free"] == 0 and pool.memory_reserved() == 24 * MiB + 2 * MiB + 30 * MiB
    pool.free(d)
    e = pool.malloc(40 * MiB)  # 30 + 12 + 12 >= 40: all of them go at once
    st = pool.memory_stats()
    assert st["num_device_free"] == 3
    assert sorted(s["total_size"] for s in pool.segments()) == [2 * MiB, 40 * MiB]
    assert st["num_alloc_retries"] == 0
    pool.free(e)
    pool_ok(pool)
    # Off: the pool only grows.
    off = backend(reclaim_before_grow=False)
    x = off.malloc(12 * MiB)
    off.free(x)
    y = off.malloc(14 * MiB)
    assert off.memory_reserved() == 26 * MiB
    off.free(y)


def _shape_changes(pool: pypool.Pool, sizes_mib: List[int], rounds: int = 1) -> List[int]:
    """Each size allocated and freed in turn (every one >= min_large_alloc: a segment of
    its own), as a step whose shapes change does; reserved MiB after each step."""
    out = []
    for _ in range(rounds):
        for n in sizes_mib:
            pool.free(pool.malloc(n * MiB))
            out.append(pool.memory_reserved() // MiB)
    pool.check_invariants()
    return out


def test_reclaim_not_on_a_roomy_device(backend: Backend) -> None:
    # Note [Reclaim under pressure]: far below the device's size (80 GiB) the pool keeps
    # its cached segments: no device free (a synchronization on CUDA) in steady state.
    pool = backend()
    reserved = _shape_changes(pool, [12, 14, 16, 18, 20, 22, 24], rounds=3)
    st = pool.memory_stats()
    assert st["num_device_free"] == 0 and st["num_device_alloc"] == 7
    assert reserved[-1] == 12 + 14 + 16 + 18 + 20 + 22 + 24
    # The old rule (threshold 0) gives back cached segments at each growth that they cover.
    always = backend(reclaim_threshold=0.0)
    _shape_changes(always, [12, 14, 16, 18, 20, 22, 24], rounds=3)
    assert always.memory_stats()["num_device_free"] > 0


@pytest.mark.parametrize("limit", ["max_pool_size", "device"])
def test_reclaim_under_pressure_all_at_once(backend: Backend, limit: str) -> None:
    # The room is 100 MiB, either as the cap or as the device (reserved + its free
    # bytes); 0.8 of it is 80 MiB. 12+14+16+18 = 60 MiB reserved; the 22 MiB growth
    # would pass 80: every stale segment (60 MiB, they cover 22) goes in one go, and the
    # 24 MiB growth after it is far from the limit again, so it reclaims nothing.
    if limit == "device" and backend.name == "cuda":
        pytest.skip("a GPU has its own size")
    pool = backend(max_pool_size="100MiB") if limit == "max_pool_size" else backend(capacity="100MiB")
    reserved = _shape_changes(pool, [12, 14, 16, 18, 22, 24])
    assert reserved == [12, 26, 42, 60, 22, 46]
    st = pool.memory_stats()
    assert st["num_device_free"] == 4 and st["num_alloc_retries"] == 0 and st["num_ooms"] == 0
    # A higher threshold waits longer: at 0.9 (90 MiB) the 22 MiB growth still fits
    # (82 MiB) and the 24 MiB one reclaims all five.
    later = (backend(max_pool_size="100MiB", reclaim_threshold=0.9) if limit == "max_pool_size"
             else backend(capacity="100MiB", reclaim_threshold=0.9))
    assert _shape_changes(later, [12, 14, 16, 18, 22, 24]) == [12, 26, 42, 60, 82, 24]
    assert later.memory_stats()["num_device_free"] == 5


def _alternate_streams(backend: Backend, reclaim: bool) -> dict:
    p = backend(reclaim_before_grow=reclaim)
    for _ in range(100):
        for stream in (backend.stream(1), backend.stream(2)):  # e.g. a compute stream and a copy stream
            p.free(p.malloc(8 << 20, stream))
    p.check_invariants()
    return p.memory_stats()


def test_reclaim_before_grow_does_not_thrash_between_streams(backend: Backend) -> None:
    # Reclaim used to give back other streams' cached segments: with two streams taking
    # turns, every allocation freed the other's segment and made a new one (on CUDA a
    # device synchronization per allocation). It now reclaims only the requesting
    # stream's segments.
    for reclaim in (False, True):
        s = _alternate_streams(backend, reclaim)
        assert s["num_device_alloc"] == 2 and s["num_device_free"] == 0, (reclaim, s["num_device_alloc"])


