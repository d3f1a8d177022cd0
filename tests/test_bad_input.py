"""Bad input: every rejected call names its argument and leaves the pool exactly as it
was (same stats, same segments, invariants hold)."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Tuple

import pytest

import pypool
from pypool import _core

KiB = 1 << 10
MiB = 1 << 20
PiB = 1 << 50


@pytest.fixture
def busy_pool(make_pool: Callable[..., pypool.Pool]) -> Iterator[Tuple[pypool.Pool, int, int, int]]:
    """A pool with a live small block, a live large block, and a freed block beside them."""
    pool = make_pool(capacity="1GiB")
    small = pool.malloc(4096)
    gone = pool.malloc(4096)
    large = pool.malloc(5 * MiB)
    pool.free(gone)
    yield pool, small, large, gone
    pool.free(small)
    pool.free(large)


def unchanged(pool: pypool.Pool, pool_state: Callable[..., Any], pool_ok: Callable[[pypool.Pool], None], call: Callable[[], Any],
              exc: Any, match: str) -> None:
    before = pool_state(pool)
    with pytest.raises(exc, match=match):
        call()
    assert pool_state(pool) == before
    pool_ok(pool)


def test_double_free(busy_pool: Tuple[pypool.Pool, int, int, int], pool_state: Callable[..., Any], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool, small, large, gone = busy_pool
    unchanged(pool, pool_state, pool_ok, lambda: pool.free(gone), pypool.InvalidPointerError, "double free")
    assert issubclass(pypool.InvalidPointerError, ValueError)
    p = pool.malloc(100)
    pool.free(p)
    unchanged(pool, pool_state, pool_ok, lambda: pool.free(p), ValueError, "double free")


def test_foreign_pointer(busy_pool: Tuple[pypool.Pool, int, int, int], pool_state: Callable[..., Any], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool, small, large, gone = busy_pool
    for ptr in (0x1000, 0xDEADBEEF000, (1 << 64) - 512):
        unchanged(pool, pool_state, pool_ok, lambda: pool.free(ptr), pypool.InvalidPointerError, "foreign pointer")
    other = pypool.Pool(capacity="1GiB")
    q = other.malloc(4096)
    unchanged(pool, pool_state, pool_ok, lambda: pool.free(q), pypool.InvalidPointerError, "not allocated by this pool")
    other.free(q)


def test_pointer_into_the_middle_of_a_block(busy_pool: Tuple[pypool.Pool, int, int, int], pool_state: Callable[..., Any], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool, small, large, gone = busy_pool
    for ptr in (small + 1, small + 512, small + 4095, large + 1 * MiB, gone + 8):
        unchanged(pool, pool_state, pool_ok, lambda: pool.free(ptr), pypool.InvalidPointerError, r"0x[0-9a-f]+")
    unchanged(pool, pool_state, pool_ok, lambda: pool.free(small + 512), pypool.InvalidPointerError, "inside a block")
    unchanged(pool, pool_state, pool_ok, lambda: pool.size_of(large + 512), pypool.InvalidPointerError, "size_of")


def test_size_zero(busy_pool: Tuple[pypool.Pool, int, int, int], pool_state: Callable[..., Any], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool, *_ = busy_pool
    before = pool_state(pool)
    assert pool.malloc(0) == 0
    pool.free(0)
    assert pool_state(pool) == before
    pool_ok(pool)


@pytest.mark.parametrize(
    ("size", "exc"),
    [
        (-1, ValueError),
        (-(1 << 40), ValueError),
        (1.0, TypeError),
        (4096.0, TypeError),
        ("4096", TypeError),
        (None, TypeError),
        (True, TypeError),
        ([1], TypeError),
    ],
)
def test_bad_size(busy_pool: Tuple[pypool.Pool, int, int, int], pool_state: Callable[..., Any], pool_ok: Callable[[pypool.Pool], None], size: Any, exc: Any) -> None:
    pool, *_ = busy_pool
    unchanged(pool, pool_state, pool_ok, lambda: pool.malloc(size), exc, "size")


@pytest.mark.parametrize(("stream", "exc"), [(-1, ValueError), (1.5, TypeError), ("s", TypeError), (None, TypeError)])
def test_bad_stream(busy_pool: Tuple[pypool.Pool, int, int, int], pool_state: Callable[..., Any], pool_ok: Callable[[pypool.Pool], None], stream: Any, exc: Any) -> None:
    pool, small, *_ = busy_pool
    unchanged(pool, pool_state, pool_ok, lambda: pool.malloc(4096, stream=stream), exc, "stream")
    unchanged(pool, pool_state, pool_ok, lambda: pool.record_stream(small, stream), exc, "stream")


@pytest.mark.parametrize(("ptr", "exc"), [(-1, ValueError), (1.5, TypeError), ("0x10", TypeError), (None, TypeError)])
def test_bad_pointer_type(busy_pool: Tuple[pypool.Pool, int, int, int], pool_state: Callable[..., Any], pool_ok: Callable[[pypool.Pool], None], ptr: Any, exc: Any) -> None:
    pool, *_ = busy_pool
    unchanged(pool, pool_state, pool_ok, lambda: pool.free(ptr), exc, "ptr")
    unchanged(pool, pool_state, pool_ok, lambda: pool.record_stream(ptr, 1), exc, "ptr")


def test_absurd_sizes(busy_pool: Tuple[pypool.Pool, int, int, int], pool_state: Callable[..., Any], pool_ok: Callable[[pypool.Pool], None]) -> None:
    # Beyond any device is out of memory (as in PyTorch), so OOM handlers see it.
    pool, *_ = busy_pool
    for size in (PiB + 1, 1 << 63, 1 << 64, 1 << 100):
        unchanged(pool, pool_state, pool_ok, lambda: pool.malloc(size), pypool.OutOfMemoryError, "1 PiB")


def test_absurd_size_in_the_native_pool(busy_pool: Tuple[pypool.Pool, int, int, int], pool_state: Callable[..., Any], pool_ok: Callable[[pypool.Pool], None]) -> None:
    # The same limit holds below the Python checks (the C ABI path has no Python).
    pool, *_ = busy_pool
    unchanged(pool, pool_state, pool_ok, lambda: pool._pool.malloc(PiB + 1, 0), pypool.OutOfMemoryError, "1 PiB")
    unchanged(pool, pool_state, pool_ok, lambda: pool._pool.malloc((1 << 64) - 1, 0), pypool.OutOfMemoryError, "1 PiB")


def test_beyond_capacity_is_oom(busy_pool: Tuple[pypool.Pool, int, int, int], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool, *_ = busy_pool
    before_segments = pool.segments()
    with pytest.raises(pypool.OutOfMemoryError):
        pool.malloc(2 * (1 << 30))  # 2 GiB on a 1 GiB device
    with pytest.raises(pypool.OutOfMemoryError):
        pool.malloc(PiB)
    # Only the OOM counters move (the cached free block of `gone` stays: it is in a
    # segment with live blocks).
    assert pool.segments() == before_segments
    pool_ok(pool)


def test_bad_config(make_pool: Callable[..., pypool.Pool]) -> None:
    with pytest.raises(ValueError, match="round_up_divisions"):
        make_pool(round_up_divisions=3)
    with pytest.raises(TypeError, match="bogus"):
        make_pool(bogus=1)
    with pytest.raises(ValueError, match="max_pool_size"):
        make_pool(config="max_pool_size:lots")
    with pytest.raises(TypeError, match="config"):
        make_pool(config=42)
    with pytest.raises(ValueError, match="min_block_size"):
        make_pool(config={"min_block_size": 1000})


def test_bad_backend_and_arguments(busy_pool: Tuple[pypool.Pool, int, int, int], pool_state: Callable[..., Any], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool, *_ = busy_pool
    before = pool_state(pool)
    with pytest.raises(ValueError, match="backend"):
        pypool.Pool(backend="gpu")
    with pytest.raises(ValueError, match="backend"):
        pypool.Pool(backend=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device"):
        pypool.Pool(device=-1)
    with pytest.raises(TypeError, match="device"):
        pypool.Pool(device="0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="capacity"):
        pypool.Pool(capacity=0)
    with pytest.raises(ValueError, match="capacity"):
        pypool.Pool(capacity="lots")
    with pytest.raises(ValueError, match="capacity"):
        pypool.Pool(backend="cuda", capacity="1GiB")
    with pytest.raises(ValueError):
        _core.HostBackend(0)
    with pytest.raises(ValueError):
        _core.make_null_backend(0)
    with pytest.raises(ValueError, match="backend"):
        _core.registry_configure("gpu", _core.Config(), 1 << 30)
    # Another pool's bad construction leaves this one alone.
    assert pool_state(pool) == before
    pool_ok(pool)


def test_expandable_reserve_too_small() -> None:
    with pytest.raises(ValueError, match="expandable_reserve"):
        pypool.Pool(expandable_segments=True, expandable_reserve="4MiB")
    # The null backend (bookkeeping only) has the VMM analogue too.
    pool = pypool.Pool(backend="null", expandable_segments=True)
    p = pool.malloc(30 * MiB)
    assert pool.segments()[0]["is_expandable"] is True
    pool.free(p)
    pool.check_invariants()


def test_set_memory_fraction_bad_values(busy_pool: Tuple[pypool.Pool, int, int, int], pool_state: Callable[..., Any], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool, *_ = busy_pool
    for bad, exc in ((-0.5, ValueError), (1.01, ValueError), (float("nan"), ValueError), (None, TypeError), (True, TypeError)):
        unchanged(pool, pool_state, pool_ok, lambda: pool.set_memory_fraction(bad), exc, "fraction")
    assert pool.cap is None


def test_history_bad_arguments(busy_pool: Tuple[pypool.Pool, int, int, int], pool_state: Callable[..., Any], pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool, *_ = busy_pool
    unchanged(pool, pool_state, pool_ok, lambda: pool._pool.set_history(True, 0), ValueError, "max_entries")


def test_registry_reset_refuses_with_live_allocations() -> None:
    _core.registry_reset()
    _core.registry_configure("host", _core.Config(), 1 << 30)
    core = _core.registry_pool(0)
    p = core.malloc(4096, 0)
    try:
        with pytest.raises(RuntimeError, match="live allocations"):
            _core.registry_reset()
        core.check_invariants()
        assert core.memory_stats()["allocation.all.current"] == 1
    finally:
        core.free(p)
        _core.registry_reset()
