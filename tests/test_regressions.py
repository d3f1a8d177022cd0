"""Regressions found in review of the core: each failed before its fix."""

from __future__ import annotations

import pytest

from pypool import _core


def _pool(backend=None, **fields):
    c = _core.Config()
    for k, v in fields.items():
        setattr(c, k, v)
    return _core.DevicePool(c, backend or _core.HostBackend(1 << 34))


def _alternate_streams(reclaim: bool) -> dict:
    p = _pool(reclaim_before_grow=reclaim)
    for _ in range(100):
        for stream in (1, 2):  # e.g. a compute stream and a copy stream
            p.free(p.malloc(8 << 20, stream))
    p.check_invariants()
    return p.memory_stats()


def test_reclaim_before_grow_does_not_thrash_between_streams() -> None:
    # Reclaim used to give back other streams' cached segments: with two streams taking
    # turns, every allocation freed the other's segment and made a new one (on CUDA a
    # device synchronization per allocation). It now reclaims only the requesting
    # stream's segments.
    for reclaim in (False, True):
        s = _alternate_streams(reclaim)
        assert s["num_device_alloc"] == 2 and s["num_device_free"] == 0, (reclaim, s["num_device_alloc"])


def test_expandable_reserve_is_bounded() -> None:
    # An unbounded reserve used to wrap to 0 when rounded to the granularity, and every
    # large request failed with out-of-memory.
    with pytest.raises(ValueError, match="expandable_reserve"):
        _pool(expandable_segments=True, expandable_reserve=_core.UNLIMITED)
    for name in ("initial_pool_size", "growth_step", "release_threshold"):
        with pytest.raises(ValueError, match=name):
            _pool(**{name: 1 << 60})


def test_null_backend_never_hands_out_an_address_twice() -> None:
    # The null backend's address counter used to wrap: with 2^49-byte reserves per
    # expandable segment, later streams' segments overlapped earlier ones.
    p = _pool(_core.make_null_backend(1 << 40), expandable_segments=True, expandable_reserve=1 << 49)
    ptrs = []
    for s in range(40):
        try:
            ptrs.append(p.malloc(32 << 20, s))
        except _core.OutOfMemoryError:
            break  # address space exhausted: refused, not reused
    assert len(ptrs) > 4
    assert len(set(ptrs)) == len(ptrs)
    p.check_invariants()
