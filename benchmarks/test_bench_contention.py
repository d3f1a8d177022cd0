"""Waits under contention (issue 13): how long a cache hit waits while another thread is
inside a blocking call of the pool. Figures only, never asserted (speed lives here, not
in tests). The C++ driver `pypool_contention bench` measures the same without the GIL.

extra_info: ``worst_hit_us`` (the slowest malloc+free pair of a cache hit on another
stream while the blocking call ran), ``hits`` (how many pairs ran meanwhile) and
``blocking_ms`` (how long the blocking call took).
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict

import pypool

EVENT_US = 300_000


def _worst_hit_during(pool: pypool.Pool, blocking: Callable[[], None]) -> Dict[str, float]:
    hit = pool.malloc(4096, stream=1)
    pool.free(hit)
    started = threading.Event()
    took = [0.0]

    def run() -> None:
        started.set()
        t0 = time.perf_counter()
        blocking()
        took[0] = time.perf_counter() - t0

    t = threading.Thread(target=run)
    t.start()
    started.wait()
    worst, n = 0.0, 0
    while t.is_alive():
        t0 = time.perf_counter()
        pool.free(pool.malloc(4096, stream=1))
        worst = max(worst, time.perf_counter() - t0)
        n += 1
        time.sleep(0.0002)  # let the blocking thread run (2 cores)
    t.join()
    return {"worst_hit_us": worst * 1e6, "hits": float(n), "blocking_ms": took[0] * 1e3}


def test_cache_hit_while_empty_cache_waits_for_an_event(benchmark: Any) -> None:
    # Another thread empties the cache against an event that completes after 300 ms.
    def case() -> Dict[str, float]:
        pool = pypool.Pool()
        be = pool.backend
        be.set_event_latency(EVENT_US)
        p = pool.malloc(4096, stream=2)
        pool.record_stream(p, 3)
        pool.free(p)
        return _worst_hit_during(pool, pool.empty_cache)

    r = benchmark.pedantic(case, rounds=1, iterations=1)
    benchmark.extra_info.update(r)


def test_cache_hit_while_check_invariants_walks_30k_free_blocks(benchmark: Any) -> None:
    def case() -> Dict[str, float]:
        pool = pypool.Pool()
        ps = [pool.malloc(4096 + 512) for _ in range(60_000)]
        for p in ps[::2]:
            pool.free(p)  # 30k free blocks in one bin, none coalesced
        r = _worst_hit_during(pool, pool.check_invariants)
        for p in ps[1::2]:
            pool.free(p)
        return r

    r = benchmark.pedantic(case, rounds=1, iterations=1)
    benchmark.extra_info.update(r)
