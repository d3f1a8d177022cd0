"""One allocator state behind both the pybind11 module and the C ABI torch loads.

``ctypes.CDLL(pypool.library_path())`` returns the handle of the already loaded ``_core``
library, so what the C functions do shows in ``_core.registry_pool(0)`` and the reverse.
The registry is process-global: the fixture resets it around each test (which fails
loudly if a test leaked a live allocation).
"""

from __future__ import annotations

import ctypes
from typing import Iterator

import pytest

import pypool
from pypool import PoolConfig, _core

MiB = 1 << 20
GiB = 1 << 30
CAPACITY = 1 * GiB


@pytest.fixture
def registry() -> Iterator[pypool.Pool]:
    """A fresh host registry (1 GiB per device); yields a Pool view of device 0's pool."""
    _core.registry_reset()
    config = PoolConfig()
    _core.registry_configure("host", config.to_core(), CAPACITY)
    yield pypool.Pool._wrap(_core.registry_pool(0))
    leaked = []
    for d in _core.registry_devices():
        core = _core.registry_pool(d)
        core.check_invariants()
        for b in core.live_blocks():  # free leftovers so one failure does not cascade
            leaked.append((d, b["address"]))
            core.free(b["address"])
    _core.registry_reset()
    assert _core.registry_devices() == []
    assert not leaked, f"test left live allocations: {leaked}"


def block_state(pool: pypool.Pool, ptr: int) -> str:
    for seg in pool.segments():
        for b in seg["blocks"]:
            if b["address"] == ptr:
                return b["state"]
    raise AssertionError(f"no block at {ptr:#x}")


def test_same_library_same_symbols(lib: ctypes.CDLL) -> None:
    symbols = _core.c_api_symbols()
    for name, address in symbols.items():
        fn = getattr(lib, name)
        assert ctypes.cast(fn, ctypes.c_void_p).value == address, name


def test_registry_configuration(registry: pypool.Pool) -> None:
    assert _core.registry_configured()
    assert _core.registry_backend() == "host"
    assert _core.registry_devices() == [0]
    assert registry.backend_name == "host"
    assert registry.mem_info() == (CAPACITY, CAPACITY)
    # Configuring again with the same settings is a no-op, different ones are refused
    # once memory is in use.
    p = registry.malloc(4096)
    _core.registry_configure("host", PoolConfig().to_core(), CAPACITY)
    with pytest.raises(RuntimeError, match="already in use"):
        _core.registry_configure("host", PoolConfig(round_up_divisions=4).to_core(), CAPACITY)
    registry.free(p)


def test_c_malloc_shows_in_python(lib: ctypes.CDLL, registry: pypool.Pool) -> None:
    p = lib.pypool_malloc(1000, 0, None)
    assert p
    st = registry.memory_stats()
    assert st["allocated_bytes.all.current"] == 1024
    assert st["requested_bytes.all.current"] == 1000
    assert [b["address"] for b in registry.live_blocks()] == [p]
    assert registry.size_of(p) == 1024
    lib.pypool_free(p, 1000, 0, None)
    assert registry.memory_allocated() == 0
    assert registry.memory_reserved() == 2 * MiB
    lib.pypool_empty_cache()
    assert registry.memory_reserved() == 0
    registry.check_invariants()


def test_python_malloc_freed_through_c(lib: ctypes.CDLL, registry: pypool.Pool) -> None:
    p = registry.malloc(5 * MiB, stream=0)
    q = lib.pypool_malloc(5 * MiB, 0, None)
    assert q == p + 5 * MiB  # split from the same segment: one pool
    lib.pypool_free(p, 5 * MiB, 0, None)
    registry.free(q)
    st = registry.memory_stats()
    assert st["allocated_bytes.all.current"] == 0
    assert st["allocation.all.allocated"] == 2 and st["allocation.all.freed"] == 2
    lib.pypool_empty_cache()
    assert registry.segments() == []
    assert registry.backend_name == "host" and registry.mem_info() == (CAPACITY, CAPACITY)


def test_c_streams(lib: ctypes.CDLL, registry: pypool.Pool) -> None:
    p = lib.pypool_malloc(4096, 0, ctypes.c_void_p(0x77))
    (blk,) = registry.live_blocks()
    assert blk["stream"] == 0x77
    lib.pypool_free(p, 4096, 0, ctypes.c_void_p(0x77))
    q = lib.pypool_malloc(4096, 0, ctypes.c_void_p(0x88))
    assert q != p  # another stream's cached block is not reused
    lib.pypool_free(q, 4096, 0, ctypes.c_void_p(0x88))


def test_c_record_stream(lib: ctypes.CDLL, registry: pypool.Pool) -> None:
    p = lib.pypool_malloc(4096, 0, None)
    keep = lib.pypool_malloc(4096, 0, None)
    lib.pypool_record_stream(p, ctypes.c_void_p(0x99))
    lib.pypool_free(p, 4096, 0, None)
    # The event on stream 0x99 is recorded at free; the block waits for the pool to
    # see it complete.
    assert block_state(registry, p) == "active_pending_free"
    assert registry.memory_stats()["active_bytes.all.current"] == 8192
    lib.pypool_empty_cache()  # processes completed events (the host's are complete)
    assert block_state(registry, p) == "inactive"
    assert registry.memory_stats()["active_bytes.all.current"] == 4096
    lib.pypool_free(keep, 4096, 0, None)
    lib.pypool_empty_cache()
    assert registry.segments() == []


def test_python_record_stream_then_c_free(lib: ctypes.CDLL, registry: pypool.Pool) -> None:
    p = lib.pypool_malloc(4096, 0, None)
    registry.record_stream(p, 0x55)
    lib.pypool_free(p, 4096, 0, None)
    assert block_state(registry, p) == "active_pending_free"
    with pytest.raises(pypool.InvalidPointerError, match="double free"):
        registry.free(p)
    registry.empty_cache()
    assert registry.segments() == []


def test_c_set_memory_fraction(lib: ctypes.CDLL, registry: pypool.Pool) -> None:
    lib.pypool_set_memory_fraction(0.5, 0)
    assert registry.cap == CAPACITY // 2
    assert registry._pool.cap == CAPACITY // 2
    with pytest.raises(pypool.OutOfMemoryError):
        registry.malloc(600 * MiB)
    p = registry.malloc(500 * MiB)
    registry.free(p)
    # Note [Fraction zero]: torch's fraction 0.0 allows nothing (it used to clear the cap).
    lib.pypool_set_memory_fraction(0.0, 0)
    assert registry.cap == 0
    with pytest.raises(pypool.OutOfMemoryError):
        registry.malloc(MiB)
    lib.pypool_set_memory_fraction(1.0, 0)
    assert registry.cap == CAPACITY
    q = registry.malloc(600 * MiB)
    registry.free(q)
    # And the reverse: Python sets, C ABI allocations obey.
    registry.set_memory_fraction(0.25)
    assert _core.registry_pool(0).cap == CAPACITY // 4


def test_c_malloc_zero(lib: ctypes.CDLL, registry: pypool.Pool) -> None:
    before = registry.memory_stats()
    assert lib.pypool_malloc(0, 0, None) is None
    lib.pypool_free(None, 0, 0, None)
    assert registry.memory_stats() == before


def test_c_free_of_bad_pointer_is_reported_not_raised(lib: ctypes.CDLL, registry: pypool.Pool, capfd: pytest.CaptureFixture[str]) -> None:
    p = lib.pypool_malloc(4096, 0, None)
    before = registry.memory_stats()
    segs = registry.segments()
    errors = _core.c_api_error_count()
    lib.pypool_free(p + 512, 4096, 0, None)  # inside a block
    lib.pypool_free(0x1234000, 4096, 0, None)  # foreign
    assert _core.c_api_error_count() == errors + 2
    err = capfd.readouterr().err
    assert "pypool: free" in err and "foreign pointer" in err
    assert registry.memory_stats() == before
    assert registry.segments() == segs
    lib.pypool_free(p, 4096, 0, None)
    lib.pypool_free(p, 4096, 0, None)  # double free: reported
    assert _core.c_api_error_count() == errors + 3
    assert "double free" in capfd.readouterr().err
    registry.check_invariants()


def test_c_record_stream_of_unknown_pointer_is_reported(lib: ctypes.CDLL, registry: pypool.Pool, capfd: pytest.CaptureFixture[str]) -> None:
    errors = _core.c_api_error_count()
    lib.pypool_record_stream(0x1234000, ctypes.c_void_p(1))
    assert _core.c_api_error_count() == errors + 1
    assert "record_stream" in capfd.readouterr().err


def test_c_second_device(lib: ctypes.CDLL, registry: pypool.Pool) -> None:
    lib.pypool_init(2)
    p = lib.pypool_malloc(4096, 1, None)
    assert _core.registry_devices() == [0, 1]
    dev1 = pypool.Pool._wrap(_core.registry_pool(1))
    assert dev1.device == 1
    assert dev1.memory_allocated() == 4096
    assert registry.memory_allocated() == 0
    # record_stream finds the owning device by itself (torch does not pass it).
    lib.pypool_record_stream(p, ctypes.c_void_p(0x42))
    lib.pypool_free(p, 4096, 1, None)
    assert block_state(dev1, p) == "active_pending_free"
    lib.pypool_empty_cache()  # every device
    assert dev1.segments() == []
    with pytest.raises(ValueError, match="device"):
        _core.registry_pool(64)


def test_c_abi_bench_helpers_share_the_state(registry: pypool.Pool) -> None:
    # The C++-timed loop calls pypool_malloc/pypool_free directly: its pairs must leave
    # device 0's pool with one cached block and nothing live.
    _core.bench_c_api_pairs(4096, 1000, 0)
    st = registry.memory_stats()
    assert st["allocated_bytes.all.current"] == 0
    assert st["allocation.all.allocated"] == 1001
    assert st["num_device_alloc"] == 1


def test_c_abi_threads_bench(registry: pypool.Pool) -> None:
    # C++ threads through the C ABI (no GIL): every pair lands in device 0's pool and
    # nothing stays live; the figures are consistent with each other.
    r = _core.bench_c_api_threads(4096, 500, 3, 0)
    assert r["threads"] == 3 and len(r["thread_ns_per_pair"]) == 3
    assert r["wall_ns"] > 0 and r["ns_per_pair"] == pytest.approx(r["wall_ns"] / 1500)
    assert max(r["thread_ns_per_pair"]) * 500 <= r["wall_ns"] * 1.0001
    st = registry.memory_stats()
    assert st["allocated_bytes.all.current"] == 0
    assert st["allocation.all.allocated"] == 3 * 501  # one warm-up pair per thread
    with pytest.raises(ValueError, match="threads"):
        _core.bench_c_api_threads(4096, 10, 0, 0)
    with pytest.raises(RuntimeError, match="bench_c_api_threads"):
        _core.bench_c_api_threads(2 * CAPACITY, 10, 2, 0)  # out of memory in the threads


# ---------------------------------------------------------------- the non-throwing entry

PYPOOL_OK = 0
PYPOOL_ERROR_OUT_OF_MEMORY = 1
PYPOOL_ERROR_INVALID_DEVICE = 2
PYPOOL_ERROR_INVALID_ARGUMENT = 3


def try_malloc(lib: ctypes.CDLL, size: int, device: int = 0, stream: int = 0) -> "tuple[int | None, int, str]":
    """pypool_try_malloc through ctypes: (pointer or None, error code, last error)."""
    lib.pypool_try_malloc.restype = ctypes.c_void_p
    lib.pypool_try_malloc.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
    lib.pypool_last_error.restype = ctypes.c_char_p
    lib.pypool_last_error.argtypes = []
    err = ctypes.c_int(-1)
    p = lib.pypool_try_malloc(size, device, ctypes.c_void_p(stream), ctypes.byref(err))
    return p, err.value, lib.pypool_last_error().decode()


def test_try_malloc_serves_like_malloc(lib: ctypes.CDLL, registry: pypool.Pool) -> None:
    p, err, _ = try_malloc(lib, 1000)
    assert p and err == PYPOOL_OK
    assert registry.size_of(p) == 1024
    lib.pypool_free(p, 1000, 0, None)
    assert try_malloc(lib, 0)[:2] == (None, PYPOOL_OK)
    # error may be NULL
    assert lib.pypool_try_malloc(4096, 64, None, None) is None


def test_try_malloc_failures_return_null_with_a_code(lib: ctypes.CDLL, registry: pypool.Pool) -> None:
    # Regression: the only malloc entry threw C++ exceptions, which through ctypes end the
    # process (std::terminate, exit 134).
    p, err, msg = try_malloc(lib, 2 * CAPACITY)
    assert p is None and err == PYPOOL_ERROR_OUT_OF_MEMORY
    assert "out of memory. Tried to allocate" in msg and "Device 0" in msg
    # Beyond any device: out of memory, as PyTorch calls it (not an invalid argument).
    p, err, msg = try_malloc(lib, 1 << 60)
    assert p is None and err == PYPOOL_ERROR_OUT_OF_MEMORY and "more than 1EB" in msg
    for device in (64, -1):
        p, err, msg = try_malloc(lib, 4096, device)
        assert p is None and err == PYPOOL_ERROR_INVALID_DEVICE, msg
        assert f"device index {device} out of range" in msg
    registry.check_invariants()
    q, err, _ = try_malloc(lib, 4096)
    assert q and err == PYPOOL_OK
    lib.pypool_free(q, 4096, 0, None)


def test_try_malloc_never_aborts_a_ctypes_process() -> None:
    # The same failures in a fresh interpreter that loads the library with ctypes only,
    # as a C caller would: it must exit normally.
    import subprocess
    import sys

    code = (
        "import ctypes, pypool\n"
        "from pypool import PoolConfig, _core\n"
        "_core.registry_configure('host', PoolConfig().to_core(), 1 << 30)\n"
        "lib = ctypes.CDLL(pypool.library_path())\n"
        "f = lib.pypool_try_malloc\n"
        "f.restype = ctypes.c_void_p\n"
        "f.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]\n"
        "e = ctypes.c_int()\n"
        "for size, dev in ((1 << 60, 0), (1 << 40, 0), (4096, 99)):\n"
        "    assert f(size, dev, None, ctypes.byref(e)) is None\n"
        "    print(e.value)\n"
    )
    r = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert r.stdout.split() == ["1", "1", "2"]


def test_torch_entry_reports_a_bad_device_as_such(registry: pypool.Pool) -> None:
    # pypool_malloc (torch's entry, called here from C++) throws; a device index out of
    # range is an invalid argument, not an out-of-memory error.
    with pytest.raises(ValueError, match="device index 64 out of range"):
        _core.bench_c_api_pairs(4096, 1, 64)
    with pytest.raises(pypool.OutOfMemoryError):
        _core.bench_c_api_pairs(2 * CAPACITY, 1, 0)
