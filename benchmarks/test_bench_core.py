"""The allocator core through its C ABI against glibc malloc/free (CPU).

Groups pair pypool with glibc on the same request sequence, so
``pytest benchmarks --benchmark-group-by=group`` shows them side by side. The figures
to compare are the C++-timed ``ns_median`` in extra_info (Note [C++-timed figures in
extra_info] in conftest.py).
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from pypool import _core
from pypool.bench import PAIR_SIZES, RANDOM_MAX_MIB, SCALING_N_FREE, _random_live_max, _short_size

PAIR_ITERS = 20_000
RANDOM_OPS = 10_000
CHURN_OPS = 20_000
CHURN_LIVE = 4096


def _pair_iters(size: int, glibc: bool) -> int:
    # glibc serves >= 32 MiB with mmap/munmap (tens of microseconds): fewer pairs.
    return 1000 if glibc and size > (32 << 20) else PAIR_ITERS


@pytest.mark.parametrize("size", PAIR_SIZES, ids=_short_size)
def test_pair_pypool(benchmark: Any, cxx_timed: Callable[..., float], c_api: None, size: int) -> None:
    benchmark.group = f"pair {_short_size(size)}"
    iters = _pair_iters(size, glibc=False)
    ns = cxx_timed(_core.bench_c_api_pairs, size, iters, 0, size=size, iters=iters)
    # A cache hit never reaches the backend: after the warm-up the pool holds exactly one
    # segment for this size class and nothing is live.
    pool = _core.registry_pool(0)
    assert pool.memory_stats()["allocated_bytes.all.current"] == 0
    assert pool.memory_stats()["num_device_alloc"] == 1
    assert ns > 0


@pytest.mark.parametrize("size", PAIR_SIZES, ids=_short_size)
def test_pair_glibc(benchmark: Any, cxx_timed: Callable[..., float], size: int) -> None:
    benchmark.group = f"pair {_short_size(size)}"
    iters = _pair_iters(size, glibc=True)
    assert cxx_timed(_core.bench_glibc_pairs, size, iters, size=size, iters=iters) > 0


@pytest.mark.parametrize("max_mib", RANDOM_MAX_MIB)
def test_random_pypool(benchmark: Any, cxx_timed: Callable[..., float], c_api: None, max_mib: int) -> None:
    benchmark.group = f"random <= {max_mib} MiB"
    max_size = max_mib << 20
    live = _random_live_max(max_size, 1000)
    ns = cxx_timed(_core.bench_c_api_random, max_size, RANDOM_OPS, live, 1, 0,
                       max_size=max_size, ops=RANDOM_OPS, live_max=live)
    st = _core.registry_pool(0).memory_stats()
    benchmark.extra_info["peak_reserved"] = st["reserved_bytes.all.peak"]
    benchmark.extra_info["peak_allocated"] = st["allocated_bytes.all.peak"]
    assert st["allocated_bytes.all.current"] == 0  # every block came back
    assert st["num_ooms"] == 0
    assert ns > 0


@pytest.mark.parametrize("max_mib", RANDOM_MAX_MIB)
def test_random_glibc(benchmark: Any, cxx_timed: Callable[..., float], max_mib: int) -> None:
    benchmark.group = f"random <= {max_mib} MiB"
    max_size = max_mib << 20
    live = _random_live_max(max_size, 1000)
    assert cxx_timed(_core.bench_glibc_random, max_size, RANDOM_OPS, live, 1,
                         max_size=max_size, ops=RANDOM_OPS, live_max=live) > 0


def test_churn_pypool(benchmark: Any, cxx_timed: Callable[..., float], c_api: None) -> None:
    benchmark.group = "churn 4096 live <= 1 MiB"
    ns = cxx_timed(_core.bench_c_api_random, 1 << 20, CHURN_OPS, CHURN_LIVE, 7, 0,
                       ops=CHURN_OPS, live_max=CHURN_LIVE)
    assert _core.registry_pool(0).memory_stats()["allocated_bytes.all.current"] == 0
    assert ns > 0


def test_churn_glibc(benchmark: Any, cxx_timed: Callable[..., float]) -> None:
    benchmark.group = "churn 4096 live <= 1 MiB"
    assert cxx_timed(_core.bench_glibc_random, 1 << 20, CHURN_OPS, CHURN_LIVE, 7,
                         ops=CHURN_OPS, live_max=CHURN_LIVE) > 0


@pytest.mark.parametrize("n_free", SCALING_N_FREE)
def test_free_list_scaling(benchmark: Any, cxx_timed: Callable[..., float], n_free: int) -> None:
    """A 4 KiB pair with n_free free blocks of random sizes in the pool: the free index
    should keep this flat from 100 to 100k free blocks (RMM's list grows linearly)."""
    benchmark.group = "free-list scaling"
    assert cxx_timed(_core.bench_free_scaling, n_free, 10_000, 4096, 1,
                         rounds=3, n_free=n_free) > 0
