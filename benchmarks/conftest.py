"""Shared fixtures of the pytest-benchmark suites.

``pytest benchmarks`` times each case (pytest-benchmark); ``pytest benchmarks
--benchmark-disable`` runs each once as a smoke test (what ``make test`` does).

Note [C++-timed figures in extra_info]: the core cases call ``_core.bench_*`` functions
that time their own loops in C++ and return ns per operation. pytest-benchmark's own
figure for them is the wall time of the whole call (loop plus setup), useful for spotting
regressions but not a per-operation cost; the per-operation figure is the one in
``extra_info`` (``ns_median`` and each round's value), written to ``--benchmark-json``.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Iterator, List

import pytest

from pypool import PoolConfig, _core
from pypool.bench import HOST_CAPACITY


@pytest.fixture
def c_api() -> Iterator[None]:
    """The process registry behind the C ABI, configured with a host backend (what
    ``_core.bench_c_api_*`` allocate from); reset afterwards so other tests start clean."""
    _core.registry_reset()
    _core.registry_configure("host", PoolConfig().to_core(), HOST_CAPACITY)
    yield
    if _core.registry_has_pool(0):
        _core.registry_pool(0).empty_cache()
    _core.registry_reset()


@pytest.fixture
def cxx_timed(benchmark: Any) -> Callable[..., float]:
    """``cxx_timed(fn, *args, rounds=5, **info)``: see :func:`run_cxx_timed`."""
    def run(fn: Callable[..., float], *args: Any, rounds: int = 5, **info: Any) -> float:
        return run_cxx_timed(benchmark, fn, *args, rounds=rounds, **info)
    return run


def run_cxx_timed(benchmark: Any, fn: Callable[..., float], *args: Any, rounds: int = 5,
                  **info: Any) -> float:
    """Benchmark ``fn(*args)`` (a C++-timed loop returning ns per op) and record every
    round's ns in ``benchmark.extra_info`` (see Note [C++-timed figures in extra_info]).
    Returns the median ns."""
    values: List[float] = []

    def once() -> float:
        ns = fn(*args)
        values.append(ns)
        return ns

    benchmark.pedantic(once, rounds=rounds, iterations=1, warmup_rounds=1)
    assert values, "the benchmark never ran"
    median = statistics.median(values)
    benchmark.extra_info.update(info)
    benchmark.extra_info["ns_median"] = median
    benchmark.extra_info["ns_rounds"] = values
    return median
