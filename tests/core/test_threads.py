"""Threads malloc and free through one shared Pool at once (the binding releases the GIL
around malloc / free / empty_cache), then the pool must be intact with nothing live.
A generic suite: every test runs on each backend (pool_backends.py; cuda in
tests/gpu/test_generic_cuda.py)."""

from __future__ import annotations

import random
import threading
from typing import Callable, Dict, List, Tuple

import pytest

import pypool
from pool_backends import Backend

KiB = 1 << 10
MiB = 1 << 20

N_THREADS = 4
OPS = 6000


def worker(pool: pypool.Pool, seed: int, stream: int, errors: List[BaseException],
           start: threading.Barrier, owned: Dict[int, int]) -> None:
    rng = random.Random(seed)
    live: List[Tuple[int, int]] = []
    try:
        start.wait()
        for i in range(OPS):
            if live and (rng.random() < 0.48 or len(live) > 64):
                ptr, size = live.pop(rng.randrange(len(live)))
                del owned[ptr]
                pool.free(ptr)
            else:
                size = rng.choice([rng.randint(1, 4 * KiB), rng.randint(1, 1 * MiB), rng.randint(1 * MiB, 12 * MiB)])
                ptr = pool.malloc(size, stream=stream)
                # Another thread must never be handed an address that is live here.
                assert ptr not in owned, f"{ptr:#x} handed out twice"
                owned[ptr] = seed
                live.append((ptr, size))
            if i % 500 == 250:
                pool.empty_cache()
        for ptr, _ in live:
            del owned[ptr]
            pool.free(ptr)
    except BaseException as e:  # reported by the main thread
        errors.append(e)


def run_threads(pool: pypool.Pool, shared_stream: bool, backend: Backend) -> None:
    errors: List[BaseException] = []
    owned: Dict[int, int] = {}  # ptr -> owner; dict ops are atomic under the GIL
    start = threading.Barrier(N_THREADS)
    threads = [
        threading.Thread(target=worker, args=(pool, 100 + t, 0 if shared_stream else backend.stream(t + 1), errors, start, owned))
        for t in range(N_THREADS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a worker thread hung (deadlock?)"
    if errors:
        raise errors[0]
    assert owned == {}


@pytest.mark.parametrize("shared_stream", [True, False], ids=["one-stream", "stream-per-thread"])
def test_threads_fixed_segments(shared_stream: bool, backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend()
    run_threads(pool, shared_stream, backend)
    pool_ok(pool)
    st = pool.memory_stats()
    assert st["allocated_bytes.all.current"] == 0
    assert st["requested_bytes.all.current"] == 0
    assert st["active_bytes.all.current"] == 0
    assert st["allocation.all.allocated"] == st["allocation.all.freed"]
    assert pool.live_blocks() == []
    pool.empty_cache()
    pool_ok(pool)
    backend.check_used(pool, 0)


def test_threads_expandable(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend(expandable_segments=True)
    run_threads(pool, shared_stream=True, backend=backend)
    pool_ok(pool)
    assert pool.memory_allocated() == 0
    pool.empty_cache()
    pool_ok(pool)
    backend.check_used(pool, 0)
    assert pool.segments() == []


def test_threads_under_memory_pressure(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    # A tight device: threads hit release-and-retry and OOM while others grow, release
    # and free; whatever happens, the accounting must close.
    pool = backend.with_limit("96MiB")
    errors: List[BaseException] = []
    ooms = [0] * N_THREADS
    streams = [0, backend.stream(1)]

    def pressure(t: int) -> None:
        rng = random.Random(7 + t)
        live: List[int] = []
        try:
            for _ in range(1500):
                if live and rng.random() < 0.5:
                    pool.free(live.pop(rng.randrange(len(live))))
                else:
                    try:
                        live.append(pool.malloc(rng.choice([rng.randint(1, 256 * KiB), rng.randint(1 * MiB, 16 * MiB)]), stream=streams[t % 2]))
                    except pypool.OutOfMemoryError:
                        ooms[t] += 1
            for p in live:
                pool.free(p)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=pressure, args=(t,)) for t in range(N_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive()
    if errors:
        raise errors[0]
    pool_ok(pool)
    st = pool.memory_stats()
    assert st["allocated_bytes.all.current"] == 0
    assert st["num_ooms"] == sum(ooms)
    assert st["reserved_bytes.all.peak"] <= 96 * MiB
    pool.empty_cache()
    backend.check_used(pool, 0)


def test_concurrent_readers(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    # Stats, segments and the invariant walk run while other threads allocate.
    pool = backend()
    stop = threading.Event()
    errors: List[BaseException] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                pool.check_invariants()
                st = pool.memory_stats()
                assert st["allocated_bytes.all.current"] <= st["reserved_bytes.all.current"]
                pool.segments()
        except BaseException as e:
            errors.append(e)

    r = threading.Thread(target=reader)
    r.start()
    try:
        run_threads(pool, shared_stream=False, backend=backend)
    finally:
        stop.set()
        r.join(timeout=60)
    if errors:
        raise errors[0]
    pool_ok(pool)


def test_concurrent_update_config_leaves_cap_and_config_agreeing(backend: Backend) -> None:
    # update_config applies a changed fraction under the locks it changes the config
    # under: two updates at once cannot leave the cap of one with the config of another.
    pool = backend()
    total = pool.mem_info()[1]
    configs = [
        pool.config.replace(memory_fraction=0.25, max_pool_size=None).to_core(),
        pool.config.replace(memory_fraction=0.5, max_pool_size="64MiB").to_core(),
        pool.config.replace(memory_fraction=None, max_pool_size="96MiB").to_core(),
    ]
    errors: List[BaseException] = []
    start = threading.Barrier(N_THREADS)

    def run(seed: int) -> None:
        rng = random.Random(seed)
        try:
            start.wait()
            for _ in range(300):
                pool._pool.update_config(rng.choice(configs))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(N_THREADS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors
    cfg = pool._pool.config
    assert pool._pool.memory_fraction() == cfg.memory_fraction
    want = cfg.max_pool_size
    if cfg.memory_fraction > 0:
        want = min(want, int(cfg.memory_fraction * total))
    assert pool._pool.cap == want
