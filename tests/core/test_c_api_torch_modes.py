"""torch's entry points of the C ABI (Note [Torch entry points] in csrc/abi/c_api.cpp) on
the host backend: caching disabled (uncached allocations straight from the backend,
their frees found after the pool says no), and the out-of-memory observers.

pypool_torch_malloc throws on failure (it is torch's), so failures are driven through
``_core.bench_c_api_torch_pairs``, which calls it from C++.
"""

from __future__ import annotations

import ctypes
from typing import Iterator, List, Tuple

import pytest

import pypool
from pypool import PoolConfig, _core

MiB = 1 << 20
GiB = 1 << 30
CAPACITY = 1 * GiB


@pytest.fixture
def tlib() -> Iterator[ctypes.CDLL]:
    lib = ctypes.CDLL(pypool.library_path())
    lib.pypool_torch_malloc.restype = ctypes.c_void_p
    lib.pypool_torch_malloc.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
    lib.pypool_torch_free.restype = None
    lib.pypool_torch_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
    lib.pypool_uncached_count.restype = ctypes.c_size_t
    lib.pypool_uncached_bytes.restype = ctypes.c_size_t
    lib.pypool_error_count.restype = ctypes.c_uint64
    lib.pypool_last_error.restype = ctypes.c_char_p
    yield lib
    lib.pypool_set_caching_enabled(1)
    lib.pypool_force_uncached(0)
    lib.pypool_clear_oom_observers()


@pytest.fixture
def pool() -> Iterator[pypool.Pool]:
    _core.registry_reset()
    _core.registry_configure("host", PoolConfig().to_core(), CAPACITY)
    yield pypool.Pool._wrap(_core.registry_pool(0))
    for d in _core.registry_devices():
        core = _core.registry_pool(d)
        core.check_invariants()
        assert core.live_blocks() == [], f"device {d}: live allocations left"
    _core.registry_reset()


def test_caching_disabled_bypasses_the_pool(tlib: ctypes.CDLL, pool: pypool.Pool) -> None:
    assert tlib.pypool_caching_enabled() == 1
    tlib.pypool_set_caching_enabled(0)
    assert tlib.pypool_caching_enabled() == 0
    before = pool.memory_stats()
    free_before = pool.mem_info()[0]
    p = tlib.pypool_torch_malloc(3 * MiB + 1, 0, None)
    assert p
    # No block, no segment, no stat: the bytes come from the backend itself.
    assert pool.memory_stats() == before
    assert pool.segments() == []
    assert tlib.pypool_uncached_count() == 1 and tlib.pypool_uncached_bytes() == 3 * MiB + 1
    assert pool.mem_info()[0] == free_before - (3 * MiB + 1)
    tlib.pypool_torch_free(p, 3 * MiB + 1, 0, None)
    assert tlib.pypool_uncached_count() == 0 and tlib.pypool_uncached_bytes() == 0
    assert pool.mem_info()[0] == free_before  # given back at once, not cached
    assert pool.memory_stats() == before


def test_pointers_keep_their_kind_across_mode_changes(tlib: ctypes.CDLL, pool: pypool.Pool) -> None:
    cached = tlib.pypool_torch_malloc(MiB, 0, None)
    tlib.pypool_set_caching_enabled(0)
    raw = tlib.pypool_torch_malloc(MiB, 0, None)
    tlib.pypool_set_caching_enabled(1)
    cached2 = tlib.pypool_torch_malloc(MiB, 0, None)
    assert pool.memory_stats()["allocation.all.current"] == 2
    errors = tlib.pypool_error_count()
    # Freed in another mode than they were allocated in: each goes back where it came from.
    tlib.pypool_torch_free(raw, MiB, 0, None)
    tlib.pypool_set_caching_enabled(0)
    tlib.pypool_torch_free(cached, MiB, 0, None)
    tlib.pypool_torch_free(cached2, MiB, 0, None)
    assert tlib.pypool_error_count() == errors
    assert tlib.pypool_uncached_count() == 0
    assert pool.memory_stats()["allocation.all.current"] == 0
    pool._pool.check_invariants()


def test_forced_uncached_wins_over_enable(tlib: ctypes.CDLL, pool: pypool.Pool) -> None:
    tlib.pypool_force_uncached(1)
    tlib.pypool_set_caching_enabled(1)
    assert tlib.pypool_uncached_forced() == 1 and tlib.pypool_caching_enabled() == 1
    p = tlib.pypool_torch_malloc(4096, 0, None)
    assert tlib.pypool_uncached_count() == 1 and pool.segments() == []
    tlib.pypool_force_uncached(0)
    tlib.pypool_torch_free(p, 4096, 0, None)
    assert tlib.pypool_uncached_count() == 0


@pytest.mark.parametrize("case", ["double free of an uncached pointer", "foreign pointer"])
def test_bad_frees_are_reported_not_crashes(tlib: ctypes.CDLL, pool: pypool.Pool, case: str) -> None:
    tlib.pypool_set_caching_enabled(0)
    keep = tlib.pypool_torch_malloc(MiB, 0, None)  # the pool exists and holds nothing
    if case == "foreign pointer":
        buf = ctypes.create_string_buffer(64)
        bad = ctypes.addressof(buf)
    else:
        bad = tlib.pypool_torch_malloc(MiB, 0, None)
        tlib.pypool_torch_free(bad, MiB, 0, None)
    errors = tlib.pypool_error_count()
    tlib.pypool_torch_free(bad, MiB, 0, None)
    assert tlib.pypool_error_count() == errors + 1
    message = tlib.pypool_last_error().decode()
    assert message.startswith("pypool: free:") and f"{bad:#x}" in message, message
    # Nothing changed: the live uncached allocation is still there and frees cleanly.
    assert tlib.pypool_uncached_count() == 1
    tlib.pypool_torch_free(keep, MiB, 0, None)
    assert tlib.pypool_uncached_count() == 0 and tlib.pypool_error_count() == errors + 1


def test_free_on_a_device_without_a_pool_is_reported(tlib: ctypes.CDLL, pool: pypool.Pool) -> None:
    errors = tlib.pypool_error_count()
    tlib.pypool_torch_free(0x1000, 4096, 5, None)
    assert tlib.pypool_error_count() == errors + 1
    assert "no pypool pool" in tlib.pypool_last_error().decode()
    assert 5 not in _core.registry_devices()


def test_uncached_out_of_memory_raises(tlib: ctypes.CDLL, pool: pypool.Pool) -> None:
    tlib.pypool_set_caching_enabled(0)
    with pytest.raises(pypool.OutOfMemoryError, match="caching is disabled"):
        _core.bench_c_api_torch_pairs(2 * CAPACITY, 1, 0)
    assert tlib.pypool_uncached_count() == 0


def test_torch_pairs_match_plain_pairs_when_no_mode_is_on(tlib: ctypes.CDLL, pool: pypool.Pool) -> None:
    _core.bench_c_api_pairs(4096, 100, 0)
    plain = pool.memory_stats()["allocation.all.allocated"]
    _core.bench_c_api_torch_pairs(4096, 100, 0)
    st = pool.memory_stats()
    assert st["allocation.all.allocated"] == 2 * plain and st["allocation.all.current"] == 0
    assert tlib.pypool_uncached_count() == 0
    with pytest.raises(ValueError, match="device index 64 out of range"):
        _core.bench_c_api_torch_pairs(4096, 1, 64)


OBSERVER = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t)


@pytest.mark.parametrize("cached", [True, False])
def test_oom_observers_get_torchs_arguments(tlib: ctypes.CDLL, pool: pypool.Pool, cached: bool) -> None:
    calls: List[Tuple[int, int, int, int]] = []
    thunk = OBSERVER(lambda *args: calls.append(tuple(args)))  # type: ignore[arg-type]
    assert tlib.pypool_add_oom_observer(thunk) == 0
    held = pool.malloc(100 * MiB)
    tlib.pypool_set_caching_enabled(1 if cached else 0)
    try:
        with pytest.raises(pypool.OutOfMemoryError):
            _core.bench_c_api_torch_pairs(CAPACITY - 50 * MiB, 1, 0)
        if cached:  # an uncached allocation is not the pool's, so its cap does not apply
            pool.set_memory_fraction(0.5)
            with pytest.raises(pypool.OutOfMemoryError):
                _core.bench_c_api_torch_pairs(600 * MiB, 1, 0)
    finally:
        tlib.pypool_set_caching_enabled(1)
        pool.free(held)
    # device, bytes asked of the device (a large request's segment: rounded to 2 MiB),
    # memory allowed (the device's total, then the cap), device free.
    expected = [(0, CAPACITY - 50 * MiB, CAPACITY, CAPACITY - 100 * MiB)]
    if cached:
        expected.append((0, 600 * MiB, CAPACITY // 2, CAPACITY - 100 * MiB))
    assert calls == expected
    # Plain pypool_malloc (not torch's entry) has no observers.
    with pytest.raises(pypool.OutOfMemoryError):
        _core.bench_c_api_pairs(2 * CAPACITY, 1, 0)
    assert len(calls) == len(expected)
    tlib.pypool_clear_oom_observers()
    with pytest.raises(pypool.OutOfMemoryError):
        _core.bench_c_api_torch_pairs(2 * CAPACITY, 1, 0)
    assert len(calls) == len(expected)
