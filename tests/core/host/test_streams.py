"""Streams: per-stream reuse and record_stream with the host backend's controllable
events (hold_stream keeps events pending, release_stream completes them)."""

from __future__ import annotations

from typing import Any, Callable, Dict

import pytest

import pypool

MiB = 1 << 20

S1, S2, S3 = 0x1000, 0x2000, 0x3000


def block_at(pool: pypool.Pool, ptr: int) -> Dict[str, Any]:
    for seg in pool.segments():
        for b in seg["blocks"]:
            if b["address"] == ptr:
                return b
    raise AssertionError(f"no block at {ptr:#x}")


def segment_of(pool: pypool.Pool, ptr: int) -> Dict[str, Any]:
    for seg in pool.segments():
        if seg["address"] <= ptr < seg["address"] + seg["total_size"]:
            return seg
    raise AssertionError(f"{ptr:#x} is in no segment")


@pytest.mark.parametrize("size", [4096, 3 * MiB], ids=["small", "large"])
def test_free_block_is_not_given_to_another_stream(size: int, make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool()
    a = pool.malloc(size, stream=S1)
    anchor = pool.malloc(size, stream=S1)  # keeps S1's segment in the pool
    pool.free(a)
    seg_a = segment_of(pool, a)
    b = pool.malloc(size, stream=S2)
    seg_b = segment_of(pool, b)
    assert seg_b["stream"] == S2
    assert seg_b["address"] != seg_a["address"], "S1's cached block was handed to S2"
    assert segment_of(pool, a)["stream"] == S1
    c = pool.malloc(size, stream=S1)
    assert c == a  # the same stream reuses its cached block
    for p in (anchor, b, c):
        pool.free(p)
    pool_ok(pool)


def test_fully_free_segment_of_another_stream_is_returned_not_shared(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    # With reclaim_before_grow (default) a wholly free cached segment of S1 may go back
    # to the device so that S2 can grow; S2 then gets a new segment of its own (the OS
    # may hand out the same addresses), never S1's block.
    pool = make_pool()
    a = pool.malloc(12 * MiB, stream=S1)
    pool.free(a)
    b = pool.malloc(12 * MiB, stream=S2)
    segs = pool.segments()
    assert segment_of(pool, b)["stream"] == S2
    st = pool.memory_stats()
    if any(s["stream"] == S1 for s in segs):
        assert b != a and st["num_device_free"] == 0
    else:
        assert st["num_device_free"] == 1  # S1's segment went back before S2 grew
    assert st["num_device_alloc"] == 2
    pool.free(b)
    pool_ok(pool)
    off = make_pool(reclaim_before_grow=False)
    a = off.malloc(12 * MiB, stream=S1)
    off.free(a)
    b = off.malloc(12 * MiB, stream=S2)
    assert b != a and len(off.segments()) == 2
    off.free(b)


def test_blocks_carry_their_stream(make_pool: Callable[..., pypool.Pool]) -> None:
    pool = make_pool()
    p = pool.malloc(100, stream=S3)
    assert block_at(pool, p)["stream"] == S3
    assert pool.live_blocks()[0]["stream"] == S3
    seg = pool.segments()[0]
    assert seg["stream"] == S3
    assert all(b["stream"] == S3 for b in seg["blocks"])
    pool.free(p)


def test_empty_cache_releases_every_stream(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool()
    ptrs = [pool.malloc(1000, stream=s) for s in (0, S1, S2, S3)]
    assert len(pool.segments()) == 4
    for p in ptrs:
        pool.free(p)
    pool.empty_cache()
    pool_ok(pool)
    assert pool.segments() == []


def test_record_stream_pending_until_event_completes(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool()
    be = pool.backend
    p = pool.malloc(4096, stream=S1)
    pool.record_stream(p, S2)
    be.hold_stream(S2)  # "kernels" queued on S2 keep running
    pool.free(p)
    pool_ok(pool)
    assert block_at(pool, p)["state"] == "active_pending_free"
    assert be.pending_events == 1
    st = pool.memory_stats()
    # torch semantics: freed from "allocated" at once, still "active" until the event.
    assert st["allocated_bytes.all.current"] == 0
    assert st["requested_bytes.all.current"] == 0
    assert st["active_bytes.all.current"] == 4096
    # While pending, the block is not reused, not even on its own stream.
    q = pool.malloc(4096, stream=S1)
    assert q != p
    assert block_at(pool, p)["state"] == "active_pending_free"
    pool_ok(pool)
    # The event completes: the next malloc on the stream gets the block back.
    be.release_stream(S2)
    assert be.pending_events == 0
    pool.free(q)
    r = pool.malloc(4096, stream=S1)
    assert r in (p, q)
    assert block_at(pool, p)["state"] in ("active_allocated", "inactive")
    assert block_at(pool, p)["state"] != "active_pending_free"
    pool_ok(pool)
    assert pool.memory_stats()["active_bytes.all.current"] == 4096
    pool.free(r)
    pool_ok(pool)
    assert pool.memory_stats()["active_bytes.all.current"] == 0


def test_pending_block_becomes_reusable_at_the_same_address(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool()
    be = pool.backend
    p = pool.malloc(5 * MiB, stream=S1)
    pool.record_stream(p, S2)
    be.hold_stream(S2)
    pool.free(p)
    q = pool.malloc(5 * MiB, stream=S1)  # carved after p in the same segment
    assert q != p
    be.release_stream(S2)
    r = pool.malloc(5 * MiB, stream=S1)
    assert r == p  # completed: back in S1's free list, and the exact fit is the best fit
    pool_ok(pool)
    for x in (q, r):
        pool.free(x)
    pool_ok(pool)


def test_record_stream_event_already_complete(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool()
    p = pool.malloc(4096, stream=S1)
    pool.record_stream(p, S2)  # S2 not held: its event completes at once
    pool.free(p)
    # Pending until the pool looks at its events (next malloc / empty_cache).
    assert block_at(pool, p)["state"] == "active_pending_free"
    pool.empty_cache()
    pool_ok(pool)
    assert pool.segments() == []  # processed, coalesced and released


def test_record_stream_on_own_stream_is_a_noop(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool()
    be = pool.backend
    be.hold_stream(S1)
    p = pool.malloc(4096, stream=S1)
    pool.record_stream(p, S1)
    pool.free(p)
    assert block_at(pool, p)["state"] == "inactive"
    assert be.pending_events == 0
    be.release_stream(S1)
    pool_ok(pool)


def test_several_streams_all_must_complete(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool()
    be = pool.backend
    p = pool.malloc(4096, stream=S1)
    pool.record_stream(p, S2)
    pool.record_stream(p, S3)
    pool.record_stream(p, S3)  # twice: one use
    be.hold_stream(S2)
    be.hold_stream(S3)
    pool.free(p)
    assert be.pending_events == 2
    be.release_stream(S2)
    assert pool.malloc(0) == 0  # records nothing, looks at nothing
    q = pool.malloc(4096, stream=S1)  # the pool looks at its events here
    assert q != p
    assert block_at(pool, p)["state"] == "active_pending_free"  # S3 still running
    be.release_stream(S3)
    pool.free(q)
    pool.empty_cache()
    pool_ok(pool)
    assert pool.segments() == []


def test_double_free_of_pending_block_raises(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None], pool_state: Callable[..., Any]) -> None:
    pool = make_pool()
    be = pool.backend
    p = pool.malloc(4096, stream=S1)
    anchor = pool.malloc(4096, stream=S1)  # keeps the segment cached after p is freed
    pool.record_stream(p, S2)
    be.hold_stream(S2)
    pool.free(p)
    before = pool_state(pool)
    with pytest.raises(pypool.InvalidPointerError, match="double free"):
        pool.free(p)
    with pytest.raises(pypool.InvalidPointerError):
        pool.record_stream(p, S3)
    with pytest.raises(pypool.InvalidPointerError):
        pool.size_of(p)
    assert pool_state(pool) == before
    pool_ok(pool)
    be.release_stream(S2)
    pool.empty_cache()
    assert block_at(pool, p)["state"] == "inactive"
    with pytest.raises(pypool.InvalidPointerError, match="double free"):
        pool.free(p)
    pool_ok(pool)
    pool.free(anchor)


def test_pending_block_keeps_its_segment(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool()
    be = pool.backend
    p = pool.malloc(12 * MiB, stream=S1)
    pool.record_stream(p, S2)
    be.hold_stream(S2)
    pool.free(p)
    q = pool.malloc(12 * MiB, stream=S1)  # cannot have p's segment: a second one
    assert pool.memory_reserved() == 24 * MiB
    pool.free(q)
    be.release_stream(S2)
    pool.empty_cache()
    assert pool.memory_reserved() == 0
    assert be.used == 0
    pool_ok(pool)


def test_record_stream_rejects_bad_pointers(make_pool: Callable[..., pypool.Pool], pool_state: Callable[..., Any]) -> None:
    pool = make_pool()
    p = pool.malloc(4096)
    before = pool_state(pool)
    with pytest.raises(pypool.InvalidPointerError, match="record_stream"):
        pool.record_stream(p + 512, S1)
    with pytest.raises(pypool.InvalidPointerError):
        pool.record_stream(0xDEAD000, S1)
    with pytest.raises(ValueError, match="stream"):
        pool.record_stream(p, -1)
    assert pool_state(pool) == before
    pool.free(p)
