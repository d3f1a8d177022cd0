"""pypool.memory: torch-named statistics of the process-wide pools, on the host registry.

The registry is process-global: the fixture resets it around each test (the reset
refuses, and so fails the test, if a test leaked a live allocation). Allocations go
through ``_core.registry_pool(d)`` and the C ABI, the same pools torch allocates from
after install().

Out of memory is tested through ``registry_pool(0).malloc``, not the C ABI: the C ABI
throws the C++ exception on purpose (torch turns it into a RuntimeError), and one
thrown into ctypes would terminate the process.
"""

from __future__ import annotations

import ctypes
import types
from typing import Any, Iterator

import pytest

import pypool
from pypool import PoolConfig, _core, _registry, memory

MiB = 1 << 20
GiB = 1 << 30
CAPACITY = 1 * GiB
CONFIG = PoolConfig(round_up_divisions=4)


@pytest.fixture(autouse=True)
def host_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_registry, "_installed_config", None)
    monkeypatch.setattr(_registry, "_loaded_torch", lambda: None)  # device None -> 0
    _core.registry_reset()
    _core.registry_configure("host", CONFIG.to_core(), CAPACITY)
    yield
    for d in _core.registry_devices():
        assert _core.registry_pool(d).memory_stats()["allocation.all.current"] == 0, f"device {d} leaked"
        _core.registry_pool(d).check_invariants()
    _core.registry_reset()


# ---------------------------------------------------------------------------- devices


def fake_torch(initialized: bool, current: int) -> Any:
    cuda = types.SimpleNamespace(is_initialized=lambda: initialized, current_device=lambda: current)
    return types.SimpleNamespace(cuda=cuda)


@pytest.mark.parametrize(
    "device, index",
    [
        (0, 0),
        (3, 3),
        ("cuda:2", 2),
        (" cuda:1 ", 1),
        ("cuda", 0),
        (None, 0),
        (types.SimpleNamespace(type="cuda", index=5), 5),  # torch.device, duck-typed
        (types.SimpleNamespace(type="cuda", index=None), 0),
        (types.SimpleNamespace(idx=4), 4),  # torch.cuda.device(4)
    ],
)
def test_device_forms(device: Any, index: int) -> None:
    assert _registry.device_index(device) == index


def test_none_and_bare_cuda_follow_torchs_current_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_registry, "_loaded_torch", lambda: fake_torch(True, 3))
    assert _registry.device_index(None) == 3
    assert _registry.device_index("cuda") == 3
    assert _registry.device_index(types.SimpleNamespace(type="cuda", index=None)) == 3
    assert _registry.device_index("cuda:1") == 1
    # Before torch initializes CUDA its current device is not asked (asking could init it).
    monkeypatch.setattr(_registry, "_loaded_torch", lambda: fake_torch(False, 3))
    assert _registry.device_index(None) == 0


def test_real_torch_device_objects() -> None:
    torch = pytest.importorskip("torch")
    assert _registry.device_index(torch.device("cuda:1")) == 1
    assert _registry.device_index(torch.device("cuda", 2)) == 2
    with pytest.raises(ValueError, match="device: expected a cuda device, got cpu"):
        _registry.device_index(torch.device("cpu"))
    # CPU-only torch: CUDA never initialized, so None means device 0.
    assert _registry.device_index(None) == 0 or torch.cuda.is_initialized()


@pytest.mark.parametrize(
    "device, error, match",
    [
        (-1, ValueError, "must be >= 0"),
        ("cpu", ValueError, "expected 'cuda' or 'cuda:N', got 'cpu'"),
        ("cuda:x", ValueError, "expected 'cuda' or 'cuda:N'"),
        ("cuda:-1", ValueError, "expected 'cuda' or 'cuda:N'"),
        (True, TypeError, "got bool"),
        (1.0, TypeError, "got float"),
        (types.SimpleNamespace(type="cpu", index=None), ValueError, "expected a cuda device"),
    ],
)
def test_bad_devices(device: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        memory.memory_stats(device)


def test_device_beyond_the_registry_is_rejected() -> None:
    # Note [Pools before install]: the host backend stands in for device 0 only; reads
    # and get_pool agree on which devices exist (issue 14).
    for call in (memory.get_pool, memory.memory_stats, memory.mem_get_info, memory.memory_summary,
                 memory.reset_peak_memory_stats, pypool.fragmentation):
        for d in (1, 5, 64, 1000):
            with pytest.raises(ValueError, match=f"no device {d}: pypool sees no GPU here"):
                call(d)
    assert _core.registry_devices() == []


# ---------------------------------------------------------------------------- statistics


def test_a_device_without_a_pool_reads_zero_and_gets_no_pool() -> None:
    stats = memory.memory_stats(0)
    probe = pypool.Pool(backend="null", capacity=GiB).memory_stats()
    assert set(stats) == set(probe)
    assert all(v == 0 for k, v in stats.items() if k not in ("max_pool_size", "max_split_size", "stats_version"))
    assert stats["max_split_size"] == -1  # CONFIG has no limit
    assert stats["max_pool_size"] == -1 and stats["stats_version"] == probe["stats_version"]
    assert memory.memory_allocated(0) == memory.max_memory_reserved(0) == 0
    memory.reset_peak_memory_stats(0)
    memory.reset_accumulated_memory_stats(0)
    assert "No memory allocated on this device yet" in memory.memory_summary(0)
    assert not _core.registry_has_pool(0)


def test_zero_stats_show_the_configured_cap() -> None:
    _core.registry_reset()
    _core.registry_configure("host", PoolConfig(max_pool_size="512MiB").to_core(), CAPACITY)
    assert memory.memory_stats(0)["max_pool_size"] == 512 * MiB


def test_stats_follow_allocations_through_the_c_abi(lib: ctypes.CDLL) -> None:
    p = lib.pypool_malloc(3 * MiB + 5, 1, None)
    q = lib.pypool_malloc(1000, 1, None)
    pool = pypool.Pool._wrap(_core.registry_pool(1))
    stats = memory.memory_stats(1)
    assert stats == pool.memory_stats()
    assert list(stats) == sorted(stats)  # torch returns its keys sorted
    assert stats["requested_bytes.all.current"] == 3 * MiB + 5 + 1000
    assert memory.memory_allocated("cuda:1") == stats["allocated_bytes.all.current"] == pool.memory_allocated()
    assert memory.memory_reserved(1) == pool.memory_reserved() >= memory.memory_allocated(1)
    assert memory.memory_allocated(0) == 0  # devices are separate pools
    lib.pypool_free(p, 0, 1, None)
    assert memory.memory_allocated(1) < memory.max_memory_allocated(1)
    assert memory.max_memory_reserved(1) == memory.memory_reserved(1)
    lib.pypool_free(q, 0, 1, None)


def test_nested_dict_matches_flat_stats() -> None:
    pool = _core.registry_pool(0)
    p = pool.malloc(12 * MiB, 0)
    nested = memory.memory_stats_as_nested_dict()
    flat = memory.memory_stats()
    assert nested["allocated_bytes"]["large_pool"]["current"] == flat["allocated_bytes.large_pool.current"] > 0
    assert nested["num_ooms"] == 0
    count = 0
    for key, value in flat.items():
        node: Any = nested
        for part in key.split("."):
            node = node[part]
        assert node == value
        count += 1
    assert count == len(flat)
    pool.free(p)


def test_reset_peak_and_accumulated() -> None:
    pool = _core.registry_pool(0)
    a = pool.malloc(4 * MiB, 0)
    b = pool.malloc(4 * MiB, 0)
    pool.free(a)
    assert memory.max_memory_allocated() > memory.memory_allocated()
    memory.reset_peak_memory_stats()
    assert memory.max_memory_allocated() == memory.memory_allocated()
    assert memory.max_memory_reserved() == memory.memory_reserved()
    stats = memory.memory_stats()
    assert stats["allocated_bytes.all.freed"] > 0 and stats["allocation.all.allocated"] == 2
    memory.reset_accumulated_memory_stats("cuda:0")
    stats = memory.memory_stats()
    assert stats["allocated_bytes.all.freed"] == 0 and stats["allocation.all.allocated"] == 0
    assert stats["allocated_bytes.all.current"] == pool.size_of(b)  # current untouched
    pool.free(b)


def test_empty_cache_releases_every_device() -> None:
    for d in (0, 2):
        pool = _core.registry_pool(d)
        pool.free(pool.malloc(30 * MiB, 0))
        assert memory.memory_reserved(d) > 0
    memory.empty_cache()
    assert memory.memory_reserved(0) == memory.memory_reserved(2) == 0
    assert memory.memory_stats(2)["num_device_free"] >= 1


def test_empty_cache_keeps_live_blocks() -> None:
    pool = _core.registry_pool(0)
    p = pool.malloc(30 * MiB, 0)
    memory.empty_cache()
    assert memory.memory_reserved() >= 30 * MiB
    pool.free(p)


def test_mem_get_info_is_the_backends_view() -> None:
    assert memory.mem_get_info() == (CAPACITY, CAPACITY)  # makes device 0's pool
    pool = _core.registry_pool(0)
    p = pool.malloc(10 * MiB, 0)
    free, total = memory.mem_get_info(0)
    assert total == CAPACITY and free == CAPACITY - memory.memory_reserved(0)
    pool.free(p)


def test_get_pool_is_a_view_of_the_registry_pool(lib: ctypes.CDLL) -> None:
    view = memory.get_pool("cuda:0")
    p = lib.pypool_malloc(1 << 16, 0, None)
    assert view.memory_stats() == memory.memory_stats(0)
    assert view.backend_name == "host" and view.device == 0
    assert view.config == CONFIG  # read back from the native config
    assert [b["address"] for b in view.live_blocks()] == [p]
    view.check_invariants()
    lib.pypool_free(p, 0, 0, None)
    assert view.memory_allocated() == 0


def test_get_pool_reports_unlimited_and_named_growth() -> None:
    _core.registry_reset()
    cfg = PoolConfig(max_split_size="64MiB", growth="double")
    _core.registry_configure("host", cfg.to_core(), CAPACITY)
    assert memory.get_pool(0).config == cfg


def test_the_settings_view_follows_the_memory_fraction_set_later(lib: ctypes.CDLL) -> None:
    """Every Python view of a pool's settings says the fraction the pool applies: set in
    the configuration, or later (torch.cuda.set_per_process_memory_fraction reaches the
    pool through pypool_set_memory_fraction). The view used to keep the creation-time
    None while the pool capped at 0.5."""
    memory.get_pool(0).set_memory_fraction(0.5)
    assert memory.get_pool(0).config.memory_fraction == 0.5
    lib.pypool_set_memory_fraction(ctypes.c_double(0.25), 0)
    assert memory.get_pool(0).config.memory_fraction == 0.25
    assert memory.get_per_process_memory_fraction(0) == 0.25
    memory.get_pool(0).set_memory_fraction(0)  # cleared: no fraction in the view either
    assert memory.get_pool(0).config.memory_fraction is None
    assert memory.get_pool(0).config == CONFIG
    _core.registry_reset()
    cfg = CONFIG.replace(memory_fraction=0.5)
    _core.registry_configure("host", cfg.to_core(), CAPACITY)
    assert memory.get_pool(0).config.memory_fraction == 0.5
    assert memory.get_per_process_memory_fraction(0) == 0.5


# ---------------------------------------------------------------------------- summary


def test_memory_summary_is_a_readable_table() -> None:
    pool = _core.registry_pool(0)
    ptrs = [pool.malloc(2 * MiB, 0) for _ in range(4)]
    pool.free(ptrs[0])
    pool.free(ptrs[2])
    text = memory.memory_summary(0)
    lines = text.splitlines()
    # The host backend says so, and where its figures come from (issue 14).
    assert "device 0 (host backend: no GPU, capacity 1.00 GiB), cap unlimited" in lines[1]
    header = next(line for line in lines if "Current" in line)
    assert header.split() == ["Current", "Peak", "Tot.", "alloc", "Tot.", "freed"]
    allocated = next(line for line in lines if line.startswith("Allocated memory"))
    assert allocated.split()[2:6] == ["4.00", "MiB", "8.00", "MiB"]  # current, peak
    allocations = next(line for line in lines if line.startswith("Allocations"))
    assert allocations.split()[1:] == ["2", "4", "4", "2"]
    assert "  from large pool" in text and "  from small pool" in text
    # Free: blocks 0 and 2 (2 MiB each) and the 12 MiB tail of the 20 MiB segment.
    assert "Free in pool: 16.00 MiB in 3 block(s), largest 12.00 MiB, external fragmentation 25%" in text
    assert "OOMs: 0" in text
    short = memory.memory_summary(0, abbreviated=True)
    assert "from large pool" not in short and "Allocated memory" in short
    # pool=: the same table of a pool of your own, as every report takes it.
    assert memory.memory_summary(pool=memory.get_pool(0)) == text
    own = pypool.Pool("host", capacity="64MiB")
    p = own.malloc(3 * MiB)
    mine = memory.memory_summary(pool=own)
    assert "capacity 64.00 MiB" in mine.splitlines()[1] and "3.00 MiB" in mine
    own.free(p)
    pool.free(ptrs[1])
    pool.free(ptrs[3])


# ---------------------------------------------------------------------------- out of memory


@pytest.fixture
def capped() -> "_core.DevicePool":
    """Device 0 of a registry capped at 64 MiB on a 256 MiB host device."""
    _core.registry_reset()
    _core.registry_configure("host", PoolConfig(max_pool_size="64MiB").to_core(), 256 * MiB)
    return _core.registry_pool(0)


def fragment(pool: "_core.DevicePool") -> list:
    """60 MiB reserved, 48 MiB allocated, 12 MiB free in five blocks (largest 4 MiB)."""
    small = [pool.malloc(2 * MiB, 0) for _ in range(8)]  # one 20 MiB segment
    for p in small[::2]:
        pool.free(p)
    return small[1::2] + [pool.malloc(40 * MiB, 0)]


def test_oom_message_says_what_happened_and_what_to_try(capped: "_core.DevicePool") -> None:
    live = fragment(capped)
    with pytest.raises(RuntimeError) as err:
        capped.malloc(30 * MiB, 0)
    msg = str(err.value)
    # Worded like PyTorch's OOM (Note [OOM message]); the host backend says it is not CUDA.
    assert msg.startswith(
        "pypool (host backend): out of memory. Tried to allocate 30.00 MiB. Device 0 has a total "
        "capacity of 256.00 MiB of which 196.00 MiB is free. 64.00 MiB allowed; Of the allocated "
        "memory 48.00 MiB is allocated by pypool, and 12.00 MiB is reserved by pypool but unallocated. "
    ), msg
    for part in (
        "60.00 MiB reserved",
        "48.00 MiB allocated",
        "12.00 MiB free in pool",
        "largest free block 4.00 MiB",
        "external fragmentation 67%",
        "cap 64.00 MiB",
        "Limit: the pool's cap (64.00 MiB",
        "What to try",
        "empty_cache()",
        "max_pool_size",
        "expandable_segments",
    ):
        assert part in msg, part
    # The pool is unharmed and keeps serving what fits.
    assert memory.memory_stats()["num_ooms"] == 1
    capped.check_invariants()
    p = capped.malloc(4 * MiB, 0)
    capped.free(p)
    for p in live:
        capped.free(p)
    memory.empty_cache()
    p = capped.malloc(30 * MiB, 0)  # fits once the cache is given back
    capped.free(p)


def test_oom_is_pypools_exception_type(capped: "_core.DevicePool") -> None:
    """pypool.OutOfMemoryError (a RuntimeError) is what Python code should catch."""
    with pytest.raises(pypool.OutOfMemoryError):
        capped.malloc(100 * MiB, 0)
    with pytest.raises(pypool.OutOfMemoryError):
        memory.get_pool(0).malloc(100 * MiB)


def test_names_importable_before_the_package_split_still_are() -> None:
    # Review of issue 17: these imports worked before the modules moved.
    from pypool.bench import PoolConfig as BenchPoolConfig
    from pypool.bench import format_size
    from pypool.memory import PoolConfig as MemoryPoolConfig

    assert BenchPoolConfig is MemoryPoolConfig is pypool.PoolConfig
    assert format_size(3 << 20) == pypool.format_size(3 << 20)


# ---------------------------------------------------------------------------- live settings


def test_registry_update_config_changes_every_pool_and_later_ones() -> None:
    for d in (0, 1):
        _core.registry_pool(d)
    new = CONFIG.replace(round_up_divisions=0, max_split_size=64 * MiB)
    _core.registry_update_config(new.to_core())
    for d in (0, 1):
        assert PoolConfig.from_core(_core.registry_pool(d).config) == new
        assert memory.memory_stats(d)["max_split_size"] == 64 * MiB
    assert PoolConfig.from_core(_core.registry_config()) == new
    assert PoolConfig.from_core(_core.registry_pool(2).config) == new  # made after the change
    p = _core.registry_pool(1).malloc(84 * MiB)
    assert _core.registry_pool(1).size_of(p) == 84 * MiB  # divisions off now
    _core.registry_pool(1).free(p)


def test_registry_update_config_refuses_a_fixed_field_for_every_pool() -> None:
    _core.registry_pool(0)
    _core.registry_pool(1)
    before = _core.registry_config()
    with pytest.raises(ValueError, match="expandable_segments"):
        _core.registry_update_config(CONFIG.replace(expandable_segments=True, max_split_size=64 * MiB).to_core())
    assert _core.registry_config() == before
    for d in (0, 1):
        assert _core.registry_pool(d).config == before


def test_stats_of_a_device_without_a_pool_name_its_max_split_size() -> None:
    _core.registry_reset()
    _core.registry_configure("host", CONFIG.replace(max_split_size=64 * MiB).to_core(), CAPACITY)
    st = memory.memory_stats(0)
    assert st["max_split_size"] == 64 * MiB and st["oversize_allocations.current"] == 0
    assert set(st) == set(_core.registry_pool(0).memory_stats())
