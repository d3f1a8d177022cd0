"""Bad input: every rejected call names its argument and leaves the pool exactly as it
was (same stats, same segments, invariants hold)."""

from __future__ import annotations

import os
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


# A native pool from raw Config fields: the core's own checks, with no PoolConfig in front.
def _pool(backend=None, **fields):
    c = _core.Config()
    for k, v in fields.items():
        setattr(c, k, v)
    return _core.DevicePool(c, backend or _core.HostBackend(1 << 34))


def test_expandable_reserve_is_bounded() -> None:
    # An unbounded reserve used to wrap to 0 when rounded to the granularity, and every
    # large request failed with out-of-memory.
    with pytest.raises(ValueError, match="expandable_reserve"):
        _pool(expandable_segments=True, expandable_reserve=_core.UNLIMITED)
    for name in ("initial_pool_size", "growth_step", "release_threshold"):
        with pytest.raises(ValueError, match=name):
            _pool(**{name: 1 << 60})


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


# ---------------------------------------------------------------------------- issue 14
# Ints out of the C++ type's range used to reach pybind11, which answers with a TypeError
# listing overloads ("incompatible function arguments ... Invoked with: ...") that names
# neither the argument nor its range (Note [Ranges before the binding] in _pool.py).


@pytest.mark.parametrize(
    ("make", "exc", "match"),
    [
        (lambda: pypool.PoolConfig(round_up_divisions=-1), ValueError,
         r"PoolConfig.round_up_divisions: must be 0, 1 or a power of two <= 64, got -1"),
        (lambda: pypool.PoolConfig(round_up_divisions=1 << 40), ValueError, "round_up_divisions"),
        (lambda: pypool.PoolConfig(max_pool_size=2**70), ValueError,
         r"PoolConfig.max_pool_size: must be <= 1 PiB .* or None for no limit; got"),
        (lambda: pypool.PoolConfig(large_segment_size=2**64), ValueError, "PoolConfig.large_segment_size: must be <= 1 PiB"),
        (lambda: pypool.PoolConfig(min_block_size=2**64 + 16), ValueError, "PoolConfig.min_block_size"),
        (lambda: pypool.PoolConfig(garbage_collection_threshold=10**400), ValueError,
         "PoolConfig.garbage_collection_threshold: out of range"),
        (lambda: pypool.PoolConfig.from_string("round_up_divisions:-4"), ValueError, "round_up_divisions"),
        (lambda: pypool.PoolConfig.from_string("max_pool_size:2000PiB"), ValueError, "max_pool_size: must be <= 1 PiB"),
        (lambda: pypool.Pool(backend="null", capacity=2**70), ValueError, r"capacity: must be <= 4096 PiB"),
        (lambda: pypool.Pool(backend="host", capacity=2**64), ValueError, "capacity"),
        (lambda: pypool.Pool(device=2**70), ValueError, r"device: must be in 0\.\.63"),
        (lambda: pypool.Pool(device=64), ValueError, r"device: must be in 0\.\.63"),
    ],
)
def test_out_of_range_settings_name_the_field(make: Callable[[], Any], exc: Any, match: str) -> None:
    with pytest.raises(exc, match=match) as e:
        make()
    assert "incompatible function arguments" not in str(e.value)


def test_out_of_range_ints_leave_the_pool_intact(busy_pool: Tuple[pypool.Pool, int, int, int], pool_state: Callable[..., Any],
                                                 pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool, small, *_ = busy_pool
    for call, match in [
        (lambda: pool.free(2**64), r"ptr: must be in 0\.\.0xffffffffffffffff \(a 64-bit address\), got 18446744073709551616"),
        (lambda: pool.malloc(1, stream=2**64), r"stream: must be in 0\.\.0xffffffffffffffff \(a cudaStream_t"),
        (lambda: pool.record_stream(small, 2**64), "stream"),
        (lambda: pool.record_stream(2**64, 1), "ptr"),
        (lambda: pool.size_of(2**64), "ptr"),
        (lambda: pool.live_blocks(-1), r"min_seq: must be in 0\.\."),
        (lambda: pool.live_blocks(2**64), "min_seq"),
    ]:
        unchanged(pool, pool_state, pool_ok, call, ValueError, match)
    # The largest legal values still reach the pool (a stream is any 64-bit handle).
    p = pool.malloc(4096, stream=2**64 - 1)
    pool.free(p)
    pool_ok(pool)


def test_size_units_up_to_pib() -> None:
    assert pypool.parse_size("1PiB") == pypool.parse_size("1P") == 1 << 50
    assert pypool.parse_size("1PB") == 10**15
    assert pypool.PoolConfig(max_pool_size="1PiB").max_pool_size == 1 << 50


def _fresh(code: str, **env: str) -> "subprocess.CompletedProcess[str]":
    import os
    import subprocess
    import sys
    import tempfile
    import textwrap
    from pathlib import Path

    e = {k: v for k, v in os.environ.items() if k not in ("PYPOOL_CONF", "PYPOOL_LEAK_CHECK")}
    e.update(env, PYTHONPATH=str(Path(pypool.__file__).resolve().parent.parent))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120, env=e, cwd=tempfile.gettempdir())


@pytest.mark.parametrize("where", ["env", "cli"])
def test_bad_pypool_conf_names_the_variable(where: str) -> None:
    import subprocess
    import sys

    if where == "env":
        out = _fresh("""
            import pypool
            for f in (pypool.get_pool, pypool.memory_stats, pypool.record_history, pypool.track_leaks,
                      pypool.PoolConfig.from_env):
                try:
                    f()
                except ValueError as e:
                    print(e)
                else:
                    raise SystemExit(f"{f.__name__} accepted a bad PYPOOL_CONF")
            from pypool import _core
            assert not _core.registry_configured() and _core.registry_devices() == []
        """, PYPOOL_CONF="round_up_divisions:-4")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert len(lines) == 5 and all(line == lines[0] for line in lines)
        assert lines[0] == ("PYPOOL_CONF='round_up_divisions:-4': PoolConfig.round_up_divisions: must be 0, 1 "
                            "or a power of two <= 64, got -4")
    else:
        out = subprocess.run([sys.executable, "-P", "-m", "pypool", "replay", "--workload", "random", "--scale",
                              "0.01", "--config", "round_up_divisions:-4"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and out.stdout == ""
        assert out.stderr == ("pypool replay: error: --config: PoolConfig.round_up_divisions: must be 0, 1 or a "
                              "power of two <= 64, got -4\n")


# ---------------------------------------------------------------------------- the no-GPU rule


def test_get_pool_honours_pypool_conf_and_snapshot_agrees() -> None:
    # Note [Pools before install]: the first call that needs a pool configures the
    # registry from $PYPOOL_CONF; the snapshot shows the settings in effect.
    out = _fresh("""
        import pypool
        from pypool import _core
        if _core.cuda_device_count()[0]:
            raise SystemExit(0)  # a GPU machine: not this test's case
        stats = pypool.memory_stats()           # a read: no pool, but the cap it will have
        assert stats["max_pool_size"] == 1 << 30, stats["max_pool_size"]
        assert not _core.registry_configured()
        pool = pypool.get_pool()
        assert pool.cap == 1 << 30 and pool.config.max_pool_size == 1 << 30, (pool.cap, pool.config)
        assert pool.config.round_up_divisions == 4 and pool.backend_name == "host"
        s = pypool.snapshot()["allocator_settings"]
        assert s["max_pool_size"] == 1 << 30 and s["PYPOOL_CONF"] == "max_pool_size:1073741824,round_up_divisions:4", s
        print("ok")
    """, PYPOOL_CONF="max_pool_size:1GiB,round_up_divisions:4")
    assert out.returncode == 0, out.stderr


def test_no_gpu_devices_are_the_host_backend_and_say_so() -> None:
    out = _fresh("""
        import os
        import pypool
        from pypool import _core
        if _core.cuda_device_count()[0]:
            raise SystemExit(0)  # a GPU machine: not this test's case
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        # Every module-level function agrees on which devices exist: only device 0.
        calls = [pypool.get_pool, pypool.mem_get_info, pypool.memory_stats, pypool.memory_allocated,
                 pypool.memory_summary, pypool.reset_peak_memory_stats, pypool.fragmentation,
                 lambda d: pypool.snapshot(device=d), lambda d: pypool.dump_snapshot("x.pickle", device=d),
                 lambda d: pypool.record_history(device=d), lambda d: pypool.track_leaks(device=d),
                 lambda d: pypool.LeakWatch(device=d)]
        for call in calls:
            for d in (1, 5, 63, 64, 1000):
                try:
                    call(d)
                except ValueError as e:
                    assert f"no device {d}: pypool sees no GPU here" in str(e), e
                else:
                    raise SystemExit(f"{call} accepted device {d}")
        assert not _core.registry_configured() and _core.registry_devices() == []
        free, total = pypool.mem_get_info(0)
        assert total == min(ram, _core.MAX_REQUEST) and free == total, (free, total, ram)
        assert "host backend: no GPU, capacity" in pypool.memory_summary(0)
        assert _core.registry_devices() == [0]
        print("ok")
    """)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in ("ok", "")


def test_record_history_and_track_leaks_follow_the_same_rule() -> None:
    # Before the rule, these raised "pypool is not installed yet" while get_pool() made
    # a host pool.
    out = _fresh("""
        import pypool
        from pypool import _core
        if _core.cuda_device_count()[0]:
            raise SystemExit(0)
        with pypool.track_leaks() as leaks:
            p = pypool.get_pool().malloc(4096)
        assert leaks.report().count == 1
        pypool.get_pool().free(p)
        pypool.record_history()
        assert _core.registry_backend() == "host" and _core.registry_pool(0).cap == 1 << 30
        print("ok")
    """, PYPOOL_CONF="max_pool_size:1GiB")
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(("value", "on", "warns"), [
    ("1", True, False), ("true", True, False), ("YES", True, False), (" on ", True, False),
    ("", False, False), ("0", False, False), ("False", False, False), ("no", False, False), ("off", False, False),
    ("garbage", False, True), ("2", False, True), ("enabled", False, True),
])
def test_pypool_leak_check_values(value: str, on: bool, warns: bool) -> None:
    import warnings

    from pypool import leaks

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert leaks.exit_check_requested({"PYPOOL_LEAK_CHECK": value}) is on
    assert bool(seen) is warns
    if warns:
        assert "PYPOOL_LEAK_CHECK=" in str(seen[0].message) and "stays off" in str(seen[0].message)


def test_record_history_size_is_bounded() -> None:
    # 2**70 reached pybind11 ("incompatible function arguments"); 2**40 allocated the
    # ring up front until std::bad_alloc.
    from pypool.snapshot import MAX_HISTORY

    pool = pypool.Pool(capacity="64MiB")
    for n in (2**70, 2**40, MAX_HISTORY + 1):
        with pytest.raises(ValueError, match=rf"max_entries: expected an int in 1\.\.{MAX_HISTORY}"):
            pypool.record_history(max_entries=n, pool=pool)


@pytest.mark.parametrize(("events", "match"), [
    ([("a", 1, "x")], r"events\[0\]: allocation of 1: size must be an int"),
    ([("a", 1, 5.5)], r"events\[0\]: allocation of 1: size must be an int"),
    ([("a", [1], 5)], r"events\[0\]: id must be hashable"),
    ([("a", 1, 5, 2**64)], r"events\[0\]: stream must be an int in 0\.\."),
    ([(["a"], 1, 5)], r"events\[0\]: unknown action"),
    ([("a", 1, 5, 0, float("inf"))], r"events\[0\]: time_us must be finite"),
])
def test_trace_from_events_names_the_event(events: Any, match: str) -> None:
    from pypool.trace import Trace

    with pytest.raises(ValueError, match=match):
        Trace.from_events(events)


def test_trace_paths_are_never_file_descriptors() -> None:
    # A pickled int in a snapshot file used to reach open(7): pypool read and closed
    # whatever file descriptor 7 was (pytest's capture, in the test that found it).
    from pypool.snapshot import load_snapshot
    from pypool.trace import Trace, load_torch_snapshot, torch_reserved_profile

    r, w = os.pipe()
    try:
        for call in (lambda: Trace.load(r), lambda: load_torch_snapshot(r),  # type: ignore[arg-type]
                     lambda: Trace.from_torch_snapshot(r), lambda: torch_reserved_profile(r),  # type: ignore[arg-type]
                     lambda: load_snapshot(r), lambda: pypool.dump_snapshot(w, pool=pypool.Pool(capacity="64MiB"))):
            with pytest.raises(TypeError, match="expected a"):
                call()
        os.fstat(r)  # both still open
        os.fstat(w)
    finally:
        os.close(r)
        os.close(w)
