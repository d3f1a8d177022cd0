"""Out of memory and fault injection: capacity, max_pool_size, fail_allocation_at,
set_byte_budget; the OOM message; num_ooms / num_alloc_retries; release-and-retry; the
pool intact and usable afterwards."""

from __future__ import annotations

import re
from typing import Any, Callable

import pytest

import pypool
from pypool import _core

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


def assert_usable(pool: pypool.Pool, pool_ok: Callable[[pypool.Pool], None]) -> None:
    """Invariants hold and a small allocation still works (then is given back)."""
    pool_ok(pool)
    before = pool.memory_allocated()
    p = pool.malloc(512)
    assert p != 0
    assert pool.memory_allocated() == before + 512
    pool.free(p)
    pool_ok(pool)


def test_oom_type(make_pool: Callable[..., pypool.Pool]) -> None:
    pool = make_pool(capacity="64MiB")
    with pytest.raises(RuntimeError) as info:
        pool.malloc(100 * MiB)
    # torch turns the C ABI's exception into a RuntimeError; from Python the pool must
    # raise the package's own subclass so callers can catch OOM specifically.
    assert isinstance(info.value, pypool.OutOfMemoryError), f"raised {type(info.value).__name__}, not pypool.OutOfMemoryError"
    assert issubclass(pypool.OutOfMemoryError, RuntimeError)


def test_capacity_limit(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None], pool_state: Callable[..., Any]) -> None:
    pool = make_pool(capacity="64MiB")
    keep = pool.malloc(30 * MiB)
    before = pool_state(pool)
    with pytest.raises(pypool.OutOfMemoryError):
        pool.malloc(40 * MiB)
    after = pool_state(pool)
    st = after[0]
    assert st["num_ooms"] == 1
    assert st["num_alloc_retries"] == 1
    # Only the failure counters moved.
    changed = {k for k in st if st[k] != before[0][k]}
    assert changed == {"num_ooms", "num_alloc_retries"}
    assert after[1] == before[1]
    assert pool.backend.used == 30 * MiB
    assert_usable(pool, pool_ok)
    q = pool.malloc(34 * MiB)  # exactly what is left
    pool.free(q)
    pool.free(keep)


def test_max_pool_size_cap(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool(max_pool_size="40MiB")
    assert pool.cap == 40 * MiB
    a = pool.malloc(15 * MiB)  # 16 MiB segment
    b = pool.malloc(15 * MiB)  # 32 MiB reserved
    with pytest.raises(pypool.OutOfMemoryError, match="cap 40.00 MiB"):
        pool.malloc(15 * MiB)  # 48 MiB > cap, though the device has 80 GiB
    assert pool.memory_reserved() == 32 * MiB
    assert pool.max_memory_reserved() == 32 * MiB
    st = pool.memory_stats()
    assert st["num_ooms"] == 1 and st["max_pool_size"] == 40 * MiB
    assert_usable(pool, pool_ok)
    assert pool.memory_reserved() == 34 * MiB  # assert_usable left a 2 MiB small segment
    # A request that fits the cap's remainder with its minimal segment still works: the
    # preferred 20 MiB segment does not fit, the minimal 6 MiB one does (exactly the cap).
    c = pool.malloc(5 * MiB)
    assert pool.memory_reserved() == 40 * MiB
    for p in (a, b, c):
        pool.free(p)
    pool_ok(pool)


def test_memory_fraction_cap(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool(capacity="100MiB")
    pool.set_memory_fraction(0.25)
    assert pool.cap == 25 * MiB
    assert pool.memory_stats()["max_pool_size"] == 25 * MiB
    with pytest.raises(pypool.OutOfMemoryError):
        pool.malloc(26 * MiB)
    p = pool.malloc(24 * MiB)
    pool.free(p)
    pool.set_memory_fraction(0)  # clears
    assert pool.cap is None
    assert pool.memory_stats()["max_pool_size"] == -1
    q = pool.malloc(60 * MiB)
    pool.free(q)
    with pytest.raises(ValueError, match="fraction"):
        pool.set_memory_fraction(1.5)
    with pytest.raises(TypeError, match="fraction"):
        pool.set_memory_fraction("half")  # type: ignore[arg-type]
    pool_ok(pool)


def test_oom_message(make_pool: Callable[..., pypool.Pool]) -> None:
    # One 20 MiB segment in a 20 MiB device, with 4 MiB holes: fragmented.
    pool = make_pool(capacity="20MiB")
    x = [pool.malloc(4 * MiB) for _ in range(4)]  # [4][4][4][4][4 free]
    pool.free(x[0])
    pool.free(x[2])  # free: 4 + 4 + 4 MiB in three blocks
    with pytest.raises(pypool.OutOfMemoryError) as info:
        pool.malloc(8 * MiB + 100)
    msg = str(info.value)
    assert "8.00 MiB" in msg  # the request (8 MiB + 100 B)
    assert re.search(r"rounded to 8\.00 MiB", msg)
    assert "20.00 MiB reserved" in msg
    assert "8.00 MiB allocated" in msg
    assert "12.00 MiB free in pool" in msg
    assert "largest free block 4.00 MiB" in msg
    assert "external fragmentation 67%" in msg  # 1 - 4/12
    assert "large pool" in msg
    assert "Device 0 has a total capacity of 20.00 MiB of which 0 bytes is free." in msg
    assert "Limit: the device (0 B free of 20.00 MiB)" in msg
    assert "What to try" in msg and "empty_cache" in msg
    assert "max_pool_size" not in msg  # no cap: raising it would not help
    assert "expandable_segments" in msg
    for p in (x[1], x[3]):
        pool.free(p)


def test_oom_message_names_the_stream_and_small_pool(make_pool: Callable[..., pypool.Pool]) -> None:
    pool = make_pool(capacity=512)  # not even the minimal 1 KiB segment fits
    with pytest.raises(pypool.OutOfMemoryError) as info:
        pool.malloc(1000, stream=0xABC)
    msg = str(info.value)
    assert "Tried to allocate 1000 bytes." in msg and "rounded to 1.00 KiB" in msg
    assert "small pool" in msg and "0xabc" in msg
    assert "0 B reserved" in msg and "0 B allocated" in msg


def test_fail_allocation_at_falls_back_to_minimal_segment(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool()
    pool.backend.fail_allocation_at(1)
    # The preferred 20 MiB segment fails; the minimal 6 MiB one is tried next.
    p = pool.malloc(5 * MiB)
    st = pool.memory_stats()
    assert pool.memory_reserved() == 6 * MiB
    assert st["num_alloc_retries"] == 0 and st["num_ooms"] == 0
    assert pool.backend.num_failures == 1
    pool.free(p)
    pool_ok(pool)


def test_fail_allocation_at_retry_path(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool()
    cached = pool.malloc(1000)
    pool.free(cached)  # one cached small segment
    pool.backend.fail_allocation_at(1)
    # 12 MiB: preferred == minimal segment, so the failure leads to release-and-retry:
    # the cached segment goes back and the second attempt succeeds.
    p = pool.malloc(12 * MiB)
    st = pool.memory_stats()
    assert st["num_alloc_retries"] == 1
    assert st["num_ooms"] == 0
    assert st["num_device_free"] == 1
    assert [s["segment_type"] for s in pool.segments()] == ["large"]
    pool.free(p)
    pool_ok(pool)


def test_fail_allocation_at_counts_calls(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool()
    be = pool.backend
    be.fail_allocation_at(3)
    a = pool.malloc(12 * MiB)  # call 1
    b = pool.malloc(12 * MiB)  # call 2
    c = pool.malloc(12 * MiB)  # call 3 fails, retry (call 4) succeeds
    st = pool.memory_stats()
    assert st["num_alloc_retries"] == 1 and st["num_ooms"] == 0
    assert be.num_failures == 1
    assert be.num_allocations == 3
    be.fail_allocation_at(1)
    be.fail_allocation_at(0)  # cleared
    d = pool.malloc(12 * MiB)
    assert pool.memory_stats()["num_alloc_retries"] == 1
    for p in (a, b, c, d):
        pool.free(p)
    pool_ok(pool)


def test_fault_injection_while_mapping(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool(expandable_segments=True)
    pool.backend.fail_allocation_at(2)  # the second granule of the first growth fails
    a = pool.malloc(5 * MiB)  # retry maps all three granules again
    st = pool.memory_stats()
    assert st["num_alloc_retries"] == 1 and st["num_ooms"] == 0
    assert pool.backend.used == 6 * MiB
    assert pool.memory_reserved() == 6 * MiB
    pool_ok(pool)
    pool.free(a)


def test_byte_budget(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None], pool_state: Callable[..., Any]) -> None:
    pool = make_pool()
    be = pool.backend
    be.set_byte_budget(24 * MiB)
    a = pool.malloc(12 * MiB)
    before = pool_state(pool)
    with pytest.raises(pypool.OutOfMemoryError, match="14.00 MiB"):
        pool.malloc(14 * MiB)  # 12 + 14 > 24
    st = pool.memory_stats()
    assert st["num_ooms"] == 1 and st["num_alloc_retries"] == 1
    assert pool.segments() == before[1]
    assert_usable(pool, pool_ok)
    # Release-and-retry: free a, then the same request succeeds by returning a's
    # cached segment first.
    pool.free(a)
    b = pool.malloc(14 * MiB)
    st = pool.memory_stats()
    assert st["num_alloc_retries"] == 2 and st["num_ooms"] == 1
    assert pool.memory_reserved() == 14 * MiB
    assert be.used == 14 * MiB
    be.set_byte_budget(_core.UNLIMITED)
    c = pool.malloc(30 * MiB)
    pool.free(b)
    pool.free(c)
    pool_ok(pool)


def test_release_and_retry_frees_cached_segments(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool(capacity="40MiB")
    # 8 MiB cached in four small segments on two streams (reclaim_before_grow only
    # looks at large segments: these go in the retry).
    smalls = [pool.malloc(1 * MiB, stream=s) for s in (0, 7) for _ in range(4)]
    for p in smalls:
        pool.free(p)
    assert pool.memory_reserved() == 8 * MiB
    p = pool.malloc(34 * MiB)  # 8 + 34 > 40: release the cache, retry
    st = pool.memory_stats()
    assert st["num_alloc_retries"] == 1
    assert st["num_ooms"] == 0
    assert st["num_device_free"] == 4
    assert pool.memory_reserved() == 34 * MiB
    assert pool.backend.used == 34 * MiB
    pool.free(p)
    pool_ok(pool)


def test_release_and_retry_without_reclaim(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool(capacity="40MiB", reclaim_before_grow=False)
    a = pool.malloc(15 * MiB)
    b = pool.malloc(15 * MiB, stream=7)
    pool.free(a)
    pool.free(b)  # 32 MiB cached in two large segments on two streams
    p = pool.malloc(30 * MiB)  # needs both released
    st = pool.memory_stats()
    assert st["num_alloc_retries"] == 1
    assert st["num_ooms"] == 0
    assert st["num_device_free"] == 2
    assert pool.memory_reserved() == 30 * MiB
    pool.free(p)
    pool_ok(pool)


def test_oom_when_cached_blocks_are_not_enough(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool(capacity="40MiB")
    keep = pool.malloc(15 * MiB)
    spare = pool.malloc(15 * MiB)
    pool.free(spare)
    with pytest.raises(pypool.OutOfMemoryError):
        pool.malloc(30 * MiB)
    # The failed attempt released the cached segment; the live one is untouched.
    assert pool.memory_reserved() == 16 * MiB
    assert pool.memory_allocated() == 16 * MiB  # 15 MiB in a 16 MiB segment: 1 MiB rest not split
    assert_usable(pool, pool_ok)
    pool.free(keep)


def test_no_false_oom_when_a_fitting_block_is_free(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    # One full 2 MiB small segment on a 2 MiB device, with nine free holes of the same
    # free-index bin: a 16.5 KiB one freed first, then eight of 16 KiB. A 16.5 KiB request
    # fits the first hole exactly and must get it, however deep it sits in its bin.
    pool = make_pool(capacity="2MiB")
    x = pool.malloc(16896)
    seps = [pool.malloc(512)]
    ys = []
    for _ in range(8):
        ys.append(pool.malloc(16 * KiB))
        seps.append(pool.malloc(512))
    fill = [pool.malloc(1 * MiB), pool.malloc(896000)]
    assert pool.memory_reserved() == 2 * MiB and len(pool.segments()) == 1
    assert pool.segments()[0]["blocks"][-1]["state"] == "active_allocated"  # no free tail
    pool.free(x)
    for y in ys:
        pool.free(y)
    pool_ok(pool)
    p = pool.malloc(16896)
    assert p == x
    pool.free(p)
    for q in seps + fill:
        pool.free(q)
    pool_ok(pool)


def test_huge_request_is_oom_not_crash(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool(capacity="1GiB")
    with pytest.raises(pypool.OutOfMemoryError):
        pool.malloc(512 * GiB)
    with pytest.raises(pypool.OutOfMemoryError):
        pool.malloc(_core.MAX_REQUEST)  # the largest accepted request
    assert pool.memory_stats()["num_ooms"] == 2
    assert_usable(pool, pool_ok)


def test_set_capacity(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool(capacity="1GiB")
    a = pool.malloc(12 * MiB)
    pool.backend.set_capacity(16 * MiB)
    with pytest.raises(pypool.OutOfMemoryError):
        pool.malloc(12 * MiB)
    pool.backend.set_capacity(1 * GiB)
    b = pool.malloc(12 * MiB)
    pool.free(a)
    pool.free(b)
    pool_ok(pool)


def test_many_ooms_leave_no_trace(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = make_pool(capacity="32MiB")
    live = [pool.malloc(3 * MiB) for _ in range(5)]  # one 20 MiB segment, 15 MiB used
    for i in range(50):
        with pytest.raises(pypool.OutOfMemoryError):
            pool.malloc(20 * MiB + i * 512)
    st = pool.memory_stats()
    assert st["num_ooms"] == 50 and st["num_alloc_retries"] == 50
    assert pool.memory_reserved() == 20 * MiB
    assert pool.backend.used == 20 * MiB
    assert pool.backend.live_allocations == 1
    assert_usable(pool, pool_ok)
    for p in live:
        pool.free(p)
    pool_ok(pool)


def test_oom_path_waits_for_pending_frees(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    # PyTorch's last resort before OOM (release_cached_blocks) synchronizes the events of
    # blocks freed after record_stream, frees them and retries. Memory that only waits for
    # a stream is not "out of memory": the host backend's synchronize_event stands for
    # that wait.
    pool = make_pool(capacity="20MiB")
    be = pool.backend
    p = pool.malloc(12 * MiB, stream=1)
    pool.record_stream(p, 2)
    be.hold_stream(2)
    pool.free(p)  # pending on stream 2
    q = pool.malloc(12 * MiB, stream=1)
    st = pool.memory_stats()
    assert st["num_ooms"] == 0
    assert st["num_alloc_retries"] == 1
    assert st["num_sync_all_streams"] == 1
    assert be.pending_events == 0
    pool_ok(pool)
    pool.free(q)
    be.release_stream(2)


# ---------------------------------------------------------------- Note [Device pre-check]
# A request the device cannot hold is refused from the backend's mem_info, without
# allocating (or, with expandable segments, mapping granule by granule) until the device
# runs dry. Before the pre-check, 200 GiB on an 80 GiB device made 81,922 vmm_map and
# 81,920 vmm_unmap calls with expandable segments.

MODES = pytest.mark.parametrize("expandable", [False, True], ids=["default", "expandable"])
GROWTH_CALLS = ("allocate", "vmm_map", "vmm_reserve")


def test_backend_call_counters(make_pool: Callable[..., pypool.Pool]) -> None:
    pool = make_pool(expandable_segments=True)
    be = pool.backend
    assert set(be.calls) == {"allocate", "deallocate", "record_event", "query_event", "synchronize_event",
                             "release_event", "mem_info", "vmm_reserve", "vmm_release_range", "vmm_map",
                             "vmm_unmap"}
    be.reset_calls()
    assert sum(be.calls.values()) == 0
    p = pool.malloc(5 * MiB)  # one reserve, three 2 MiB granules
    q = pool.malloc(1000)  # a small segment
    calls = be.calls
    assert calls["vmm_reserve"] == 1 and calls["vmm_map"] == 3 and calls["allocate"] == 1
    pool.free(p)
    pool.free(q)
    be.reset_calls()
    pool.empty_cache()
    calls = be.calls
    assert calls["deallocate"] == 1 and calls["vmm_unmap"] == 3 and calls["vmm_release_range"] == 1
    assert calls["record_event"] == calls["synchronize_event"] == calls["release_event"] == 1
    be.mem_info()
    assert be.calls["mem_info"] == calls["mem_info"] + 1


@MODES
def test_request_beyond_the_device_is_refused_at_once(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None], pool_state: Callable[..., Any], expandable: bool) -> None:
    pool = make_pool(capacity="80GiB", expandable_segments=expandable)
    be = pool.backend
    keep = pool.malloc(30 * MiB)
    cached = pool.malloc(12 * MiB, stream=7)
    pool.free(cached)
    before = pool_state(pool)
    be.reset_calls()
    with pytest.raises(pypool.OutOfMemoryError) as info:
        pool.malloc(200 * GiB)
    calls = {k: v for k, v in be.calls.items() if v}
    assert sum(calls.values()) <= 10, calls
    assert not any(calls.get(k) for k in GROWTH_CALLS), calls
    # No release either: nothing the pool caches could make room for it.
    assert calls == {"mem_info": 1}, calls
    st = pool.memory_stats()
    assert st["num_ooms"] == 1 and st["num_alloc_retries"] == 0
    assert pool.segments() == before[1]
    assert be.used == pool.memory_reserved() == 42 * MiB
    msg = str(info.value)
    assert "Tried to allocate 200.00 GiB." in msg and "rounded to 200.00 GiB (large pool, stream 0x0)" in msg
    assert "42.00 MiB reserved, 30.00 MiB allocated, 12.00 MiB free in pool" in msg
    assert "total capacity of 80.00 GiB of which 79.96 GiB is free" in msg  # 80 GiB - 42 MiB
    assert "larger than the whole device" in msg
    assert "What to try" in msg and "empty_cache" in msg
    assert_usable(pool, pool_ok)
    pool.free(keep)


@MODES
def test_request_beyond_what_is_free_is_refused_fast(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None], pool_state: Callable[..., Any], expandable: bool) -> None:
    # 1 GiB device, 768 MiB held by live blocks: 640 MiB fits the device, not what is free.
    pool = make_pool(capacity="1GiB", expandable_segments=expandable)
    be = pool.backend
    live = [pool.malloc(256 * MiB, stream=s) for s in (0, 7, 9)]
    before = pool_state(pool)
    be.reset_calls()
    with pytest.raises(pypool.OutOfMemoryError) as info:
        pool.malloc(640 * MiB)
    calls = {k: v for k, v in be.calls.items() if v}
    assert sum(calls.values()) <= 10, calls
    assert not any(calls.get(k) for k in GROWTH_CALLS), calls
    assert be.num_failures == 0  # no backend allocation was even tried
    st = pool.memory_stats()
    # The release-and-retry ran (it found nothing to release) and asked the device again.
    assert st["num_ooms"] == 1 and st["num_alloc_retries"] == 1
    assert calls["mem_info"] == 2
    assert pool.segments() == before[1]
    assert be.used == 768 * MiB
    msg = str(info.value)
    assert "Tried to allocate 640.00 MiB." in msg and "768.00 MiB reserved" in msg
    assert "total capacity of 1024.00 MiB of which 256.00 MiB is free" in msg
    assert "Limit: the device (256.00 MiB free of 1.00 GiB)" in msg
    assert "larger than the whole device" not in msg
    assert "What to try" in msg
    assert_usable(pool, pool_ok)
    for p in live:
        pool.free(p)
    pool_ok(pool)


@MODES
def test_request_beyond_what_is_free_succeeds_once_the_cache_is_released(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None], expandable: bool) -> None:
    # 256 MiB live, 512 MiB cached on another stream: 640 MiB does not fit what the device
    # has free (256 MiB) until the cache goes back. The pre-check must not refuse it.
    pool = make_pool(capacity="1GiB", expandable_segments=expandable)
    be = pool.backend
    keep = pool.malloc(256 * MiB)
    cached = pool.malloc(512 * MiB, stream=7)
    pool.free(cached)
    assert pool.memory_reserved() == be.used == 768 * MiB
    be.reset_calls()
    p = pool.malloc(640 * MiB)
    st = pool.memory_stats()
    assert st["num_ooms"] == 0 and st["num_alloc_retries"] == 1
    assert be.num_failures == 0  # the doomed first attempt was skipped, not tried
    calls = be.calls
    if expandable:
        assert calls["vmm_unmap"] == 256 and calls["vmm_map"] == 320  # 2 MiB granules
    else:
        assert calls["deallocate"] == 1 and calls["allocate"] == 1
    assert pool.memory_reserved() == be.used == 896 * MiB
    pool_ok(pool)
    pool.free(p)
    pool.free(keep)
    pool_ok(pool)


@MODES
def test_oom_trace_entry_has_the_device_free_bytes(make_pool: Callable[..., pypool.Pool], expandable: bool) -> None:
    pool = make_pool(capacity="1GiB", expandable_segments=expandable)
    pool._pool.set_history(True, 16)
    keep = pool.malloc(256 * MiB)
    be = pool.backend
    be.reset_calls()
    for size in (2 * GiB, 900 * MiB):  # beyond the device; beyond what it has free
        with pytest.raises(pypool.OutOfMemoryError):
            pool.malloc(size)
    assert be.calls["mem_info"] == 3  # the OOM path reuses the pre-check's answer
    ooms = [e for e in pool._pool.history() if e["action"] == "oom"]
    assert [(e["addr"], e["size"]) for e in ooms] == [(768 * MiB, 2 * GiB), (768 * MiB, 900 * MiB)]
    pool.free(keep)


def _run_isolated(code: str) -> "subprocess.CompletedProcess[str]":
    """Runs code in a fresh interpreter: a crash there fails the test, not the session."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=300)


def test_failed_record_history_leaves_the_pool_usable() -> None:
    # Regression: set_history turned history on before making its ring; when making it
    # failed, the next allocation wrote into the missing ring (SIGSEGV).
    r = _run_isolated(
        "import pypool\n"
        "p = pypool.Pool(backend='host')\n"
        "try:\n"
        "    pypool.record_history(max_entries=1 << 58, stacks='none', pool=p)\n"
        "except (ValueError, MemoryError) as e:\n"
        "    print('refused:', type(e).__name__, e)\n"
        "else:\n"
        "    raise SystemExit('record_history(max_entries=1 << 58) was accepted')\n"
        "q = p.malloc(4096)\n"
        "p.free(q)\n"
        "p.check_invariants()\n"
        "assert pypool.snapshot(pool=p)['device_traces'][0] == []\n"
        "print('usable')\n"
    )
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "refused: ValueError" in r.stdout and "max_entries" in r.stdout
    assert "usable" in r.stdout


def test_pending_events_count_does_not_wrap(make_pool: Callable[..., pypool.Pool], pool_ok: Callable[[pypool.Pool], None]) -> None:
    # Regression: the count of a block's record_stream events was 16 bits; with 65,536
    # streams it wrapped to 0 and free() handed the block back while still in use.
    pool = make_pool()
    p = pool.malloc(4096)
    for s in range(1, 65537):
        pool.record_stream(p, s)
    pool.free(p)
    states = [b["state"] for seg in pool.segments() for b in seg["blocks"] if b["address"] == p]
    assert states == ["active_pending_free"]
    pool.empty_cache()  # the host's events are complete: the block is free now
    assert pool.memory_stats()["active_bytes.all.current"] == 0
    assert_usable(pool, pool_ok)
