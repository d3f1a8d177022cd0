"""Settings changed while a pool is in use (Pool.update_config; Note [Live settings] in
csrc/include/pypool/config.h): each applies from the next decision it drives, a bad
value or a fixed field changes nothing. A generic suite (pool_backends.py; cuda in
tests/gpu/test_generic_cuda.py). The torch-facing path, _set_allocator_settings on live
pools, is in tests/gpu/test_torch_parity.py.
"""

from __future__ import annotations

from typing import Callable

import pytest

import pypool
from pool_backends import Backend
from pypool import _core

MiB = 1 << 20


def test_live_fields_are_the_documented_ones() -> None:
    assert set(_core.LIVE_CONFIG_FIELDS) == {
        "max_pool_size", "memory_fraction", "round_up_divisions", "round_up_interval_divisions", "max_split_size",
        "expandable_reserve", "growth", "growth_step", "release_threshold",
        "garbage_collection_threshold", "reclaim_before_grow", "reclaim_threshold",
    }
    names = {row[0] for row in _core.CONFIG_FIELDS}
    assert set(_core.LIVE_CONFIG_FIELDS) <= names


def test_round_up_divisions_apply_to_the_next_request(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend()
    a = pool.malloc(84 * MiB)
    assert pool.size_of(a) == 84 * MiB
    pool.update_config(round_up_divisions=4)
    assert pool.config.round_up_divisions == 4
    b = pool.malloc(84 * MiB)
    assert pool.size_of(b) == 96 * MiB  # 64 MiB + 2 of 4 steps of 16 MiB
    assert pool.size_of(a) == 84 * MiB  # a live block keeps its size
    pool.update_config(round_up_divisions=0)
    c = pool.malloc(84 * MiB)
    assert pool.size_of(c) == 84 * MiB
    st = pool.memory_stats()
    assert st["requested_bytes.all.current"] == 3 * 84 * MiB
    assert st["allocated_bytes.all.current"] == (84 + 96 + 84) * MiB
    for p in (a, b, c):
        pool.free(p)
    pool_ok(pool)


def test_max_split_size_applies_to_cached_blocks(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    # Without reclaim_before_grow, which would give the cached block back before growing.
    pool = backend(reclaim_before_grow=False)
    pool.free(pool.malloc(100 * MiB))  # one cached 100 MiB segment
    x = pool.malloc(30 * MiB)  # no limit yet: split from the cached block
    assert pool.memory_stats()["num_device_alloc"] == 1
    pool.free(x)
    pool.update_config(max_split_size=64 * MiB)
    assert pool.memory_stats()["max_split_size"] == 64 * MiB
    y = pool.malloc(30 * MiB)  # the 100 MiB block is now kept whole for large requests
    st = pool.memory_stats()
    assert st["num_device_alloc"] == 2, st["num_device_alloc"]
    z = pool.malloc(90 * MiB)  # ... such as this one
    assert pool.size_of(z) == 100 * MiB
    assert pool.memory_stats()["num_device_alloc"] == 2
    assert pool.memory_stats()["oversize_allocations.current"] == 1
    # The limit removed while z is live: z stays counted until it is freed, and the
    # counters never go below zero (Note [Oversize stats]).
    pool.update_config(max_split_size=None)
    assert pool.memory_stats()["max_split_size"] == -1
    pool.free(z)
    st = pool.memory_stats()
    assert st["oversize_allocations.current"] == 0 and st["oversize_allocations.freed"] == 1
    pool_ok(pool)
    pool.free(y)
    pool.empty_cache()
    st = pool.memory_stats()
    assert st["oversize_segments.current"] == 0  # the 100 MiB segment was made before the limit
    pool_ok(pool)


def test_garbage_collection_threshold_applies_to_the_next_growth(backend: Backend) -> None:
    def reserved_after_two_sizes(pool: pypool.Pool, change: bool) -> int:
        pool.free(pool.malloc(30 * MiB))  # a cached 30 MiB segment that cannot serve 40 MiB
        if change:
            pool.update_config(garbage_collection_threshold=0.5)
        p = pool.malloc(40 * MiB)  # 30 + 40 MiB > half the cap: collect first when on
        reserved = pool.memory_reserved()
        pool.free(p)
        return reserved

    assert reserved_after_two_sizes(backend(max_pool_size="100MiB"), change=False) == 70 * MiB
    assert reserved_after_two_sizes(backend(max_pool_size="100MiB"), change=True) == 40 * MiB


def test_release_threshold_and_cap_change_live(backend: Backend) -> None:
    pool = backend()
    pool.free(pool.malloc(30 * MiB))
    pool.update_config(release_threshold="64MiB")
    pool.empty_cache()
    assert pool.memory_reserved() == 30 * MiB  # kept: under the threshold
    pool.update_config(release_threshold=0, max_pool_size="50MiB")
    assert pool.cap == 50 * MiB
    assert pool.memory_stats()["max_pool_size"] == 50 * MiB
    with pytest.raises(pypool.OutOfMemoryError):
        pool.malloc(60 * MiB)
    pool.update_config(max_pool_size=None)
    pool.free(pool.malloc(60 * MiB))


def test_max_pool_size_may_go_below_initial_pool_size(pool_ok: Callable[[pypool.Pool], None]) -> None:
    # initial_pool_size is used only when the pool is made (Config::validate_new).
    pool = pypool.Pool("host", capacity="4GiB", initial_pool_size="1GiB")
    pool.update_config(max_pool_size="512MiB")
    assert pool.cap == 512 * MiB and pool.config.max_pool_size == 512 * MiB
    assert pool._pool.config.initial_pool_size == 1 << 30
    pool.empty_cache()  # the initial segment, cached, goes
    assert pool.memory_reserved() == 0
    with pytest.raises(pypool.OutOfMemoryError):
        pool.malloc(600 * MiB)
    pool.free(pool.malloc(100 * MiB))
    pool_ok(pool)


def test_reclaim_threshold_applies_to_the_next_growth(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    # Default 0.8 of a roomy device: a growth reclaims nothing; live 0: before every growth.
    pool = backend()
    pool.free(pool.malloc(12 * MiB))  # one cached 12 MiB segment
    a = pool.malloc(30 * MiB)
    assert pool.memory_stats()["num_device_free"] == 0
    pool.free(a)
    pool.update_config(reclaim_threshold=0.0)
    assert pool._pool.config.reclaim_threshold == 0.0
    b = pool.malloc(40 * MiB)  # 12 + 30 cached >= 40: both go before the growth
    assert pool.memory_stats()["num_device_free"] == 2
    pool.free(b)
    pool_ok(pool)


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"garbage_collection_threshold": 1.5}, "garbage_collection_threshold"),
        ({"max_split_size": 10 * MiB}, "max_split_size"),  # must exceed large_segment_size
        ({"round_up_divisions": 3}, "round_up_divisions"),  # a power of two
        ({"expandable_segments": True}, "expandable_segments"),  # fixed for the pool's life
        ({"min_block_size": 1024}, "min_block_size"),
        ({"small_size": 2 * MiB, "small_segment_size": 4 * MiB}, "small_size"),
        ({"initial_pool_size": 4 * MiB}, "initial_pool_size"),
    ],
)
def test_a_refused_change_changes_nothing(backend: Backend, fields: dict, says: str) -> None:
    pool = backend(round_up_divisions=2)
    before_cfg, before_core = pool.config, pool._pool.config
    with pytest.raises(ValueError, match=says):
        pool.update_config(**{"reclaim_before_grow": False, **fields})
    assert pool.config == before_cfg
    assert pool._pool.config == before_core
    # Nothing took effect, the valid field named with it included.
    assert pool._pool.config.reclaim_before_grow
    p = pool.malloc(84 * MiB)
    assert pool.size_of(p) == 96 * MiB  # still 2 divisions (64 + 32)
    pool.free(p)


def test_the_core_names_a_fixed_field(backend: Backend) -> None:
    pool = backend()
    cfg = pool.config.replace(round_large=4 * MiB).to_core()
    with pytest.raises(ValueError, match=r"PoolConfig\.round_large: cannot change while the pool is in use"):
        pool._pool.update_config(cfg)


def test_update_config_keeps_what_others_set_on_the_core(backend: Backend) -> None:
    # Note [Config read-modify-write]: another view of the same native pool (as each
    # pypool.get_pool call makes), or torch's settings call, changed some fields; an
    # update_config of other fields keeps them, and every view reads the pool's own.
    pool = backend()
    other = pypool.Pool._wrap(pool._pool)
    other.update_config(garbage_collection_threshold=0.5, max_split_size="100MiB")
    assert (pool.config.garbage_collection_threshold, pool.config.max_split_size) == (0.5, 100 * MiB)
    pool.set_memory_fraction(0.5)
    pool.update_config(release_threshold="1GiB")
    core = pool._pool.config
    assert (core.garbage_collection_threshold, core.max_split_size, core.release_threshold) == (0.5, 100 * MiB, 1 << 30)
    assert pool._pool.memory_fraction() == 0.5
    assert other.config.release_threshold == 1 << 30 and other.config.memory_fraction == 0.5


def test_update_config_from_two_threads_loses_no_update(backend: Backend) -> None:
    # Each thread owns one field and reads it back after each write: an update the other
    # thread's read-modify-write lost shows as a value below the one just written. (A
    # short switch interval interleaves the threads; without the lock this fails.)
    import sys
    import threading
    pool = backend()
    views = [pool, pypool.Pool._wrap(pool._pool)]
    n, lost = 500, []

    def run(view: pypool.Pool, field: str) -> None:
        for i in range(1, n + 1):
            view.update_config(**{field: i * MiB})
            if getattr(view.config, field) < i * MiB:
                lost.append((field, i))

    threads = [threading.Thread(target=run, args=(views[0], "release_threshold")),
               threading.Thread(target=run, args=(views[1], "growth_step"))]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not lost
    assert (pool.config.release_threshold, pool.config.growth_step) == (n * MiB, n * MiB)


def test_update_config_names_an_unknown_field(backend: Backend) -> None:
    pool = backend()
    before = pool._pool.config
    with pytest.raises(ValueError, match=r"unknown field\(s\) relase_threshold; .*garbage_collection_threshold.*release_threshold"):
        pool.update_config(relase_threshold="1GiB", max_pool_size="1GiB")
    assert pool._pool.config == before
    with pytest.raises(TypeError, match="PoolConfig.reclaim_before_grow: expected a bool"):
        pool.update_config(reclaim_before_grow=1)
    assert pool._pool.config == before


def test_a_named_memory_fraction_applies_after_set_memory_fraction() -> None:
    # Review finding: update_config(memory_fraction=0.5) on a pool made with 0.5 whose
    # fraction set_memory_fraction had lowered to 0.25 left the cap at 256 MiB.
    MiB = 1 << 20
    p = pypool.Pool("host", capacity="1GiB", memory_fraction=0.5)
    x = p.malloc(MiB)
    p.set_memory_fraction(0.25)
    assert p._pool.cap == 256 * MiB
    p.update_config(memory_fraction=0.5)
    assert p._pool.cap == 512 * MiB and p.config.memory_fraction == 0.5
    y = p.malloc(400 * MiB)  # fits under 512 MiB, not under 256
    p.update_config(memory_fraction=None)  # no fraction: the capacity is the limit
    assert p._pool.cap == (1 << 64) - 1  # unlimited: the host device's 1 GiB is the limit
    p.free(y)
    p.free(x)
    p.check_invariants()
