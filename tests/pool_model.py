"""Test helpers: an independent Python model of pypool's documented size policy, and
the structural checks every core test runs on a pool.

The model is written from the documentation (PoolConfig's docstring, the README's
"Configuration" section on PyTorch's policy), not by calling ``_core``: tests compare the core
against it. The checks read a pool only through its public Python API.
"""

from __future__ import annotations

from typing import List, Tuple

import pypool

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

MIN_BLOCK = 512
SMALL_SIZE = 1 * MiB
SMALL_SEGMENT = 2 * MiB
LARGE_SEGMENT = 20 * MiB
MIN_LARGE_ALLOC = 10 * MiB
ROUND_LARGE = 2 * MiB
VMM_GRANULE = 2 * MiB  # host VMM analogue's mapping granularity


def ceil_to(n: int, m: int) -> int:
    """Smallest multiple of ``m`` that is >= ``n``."""
    return -(-n // m) * m


def round_size(size: int, divisions: int = 0, min_block: int = MIN_BLOCK, small: int = SMALL_SIZE) -> int:
    """Block size for a request of ``size`` bytes (size >= 1).

    Everything rounds up to a multiple of ``min_block``; with ``divisions`` d > 1, sizes
    above ``small`` round up instead to the next of d equal steps of their power-of-two
    interval [2^k, 2^(k+1)), unless a step would be finer than ``min_block``.
    """
    assert size >= 1
    if size <= min_block:
        return min_block
    if divisions > 1 and size > small:
        lo = 1 << (size.bit_length() - 1)
        step = lo // divisions
        if size == lo:
            return lo
        if step >= min_block:
            return ceil_to(size, step)
    return ceil_to(size, min_block)


def is_small(rounded: int, small: int = SMALL_SIZE) -> bool:
    """Whether a rounded request is served from the small pool."""
    return rounded <= small


def segment_size(rounded: int) -> int:
    """Default segment size (growth='segment') for a rounded request (default config)."""
    if is_small(rounded):
        return SMALL_SEGMENT
    if rounded < MIN_LARGE_ALLOC:
        return LARGE_SEGMENT
    return ceil_to(rounded, ROUND_LARGE)


def min_segment_size(rounded: int) -> int:
    """The smallest segment that can hold a rounded request (default config)."""
    return rounded if is_small(rounded) else ceil_to(rounded, ROUND_LARGE)


def max_block_slack(rounded: int, expandable: bool = False) -> int:
    """Most bytes a block may exceed its rounded request by (remainder not split off).

    Small-pool remainders (multiples of 512) are always split; large-pool remainders are
    split only above ``SMALL_SIZE`` (PyTorch's rule), except in expandable segments, which
    split any remainder of at least ``MIN_BLOCK``.
    """
    if is_small(rounded) or expandable:
        return 0
    return SMALL_SIZE


# ---------------------------------------------------------------------------- checks


def live_intervals(pool: pypool.Pool) -> List[Tuple[int, int, str]]:
    """(start, end, state) of every live block (allocated or pending free), by address."""
    out = []
    for seg in pool.segments():
        for b in seg["blocks"]:
            if b["state"] != "inactive":
                out.append((b["address"], b["address"] + b["size"], b["state"]))
    out.sort()
    return out


def check_pool(pool: pypool.Pool) -> None:
    """The core's own invariant walk plus identities visible from Python.

    * no two live blocks overlap, and every segment is tiled exactly by its blocks;
    * allocated / requested / active bytes equal the sums over the blocks' states;
    * reserved bytes equal the sum of segment sizes and, for a host pool, the bytes the
      backend has handed out (so nothing leaks past the pool's accounting).
    """
    pool.check_invariants()
    segs = pool.segments()
    stats = pool.memory_stats()
    allocated = requested = active = reserved = 0
    for seg in segs:
        reserved += seg["total_size"]
        at = seg["address"]
        for b in seg["blocks"]:
            assert b["address"] == at, f"blocks of segment {seg['address']:#x} do not tile it"
            at += b["size"]
            if b["state"] == "active_allocated":
                allocated += b["size"]
                requested += b["requested_size"]
                assert 0 < b["requested_size"] <= b["size"]
            if b["state"] != "inactive":
                active += b["size"]
        assert at == seg["address"] + seg["total_size"]
    spans = live_intervals(pool)
    for (s0, e0, _), (s1, _, _) in zip(spans, spans[1:]):
        assert e0 <= s1, f"live blocks overlap: [{s0:#x}, {e0:#x}) and {s1:#x}"
    assert stats["allocated_bytes.all.current"] == allocated
    assert stats["requested_bytes.all.current"] == requested
    assert stats["active_bytes.all.current"] == active
    assert stats["reserved_bytes.all.current"] == reserved
    # Each mapped run of an expandable segment is listed on its own (holes left out, as in
    # PyTorch's snapshots: Note [VMM holes]), so an expandable segment with holes is listed
    # more than once; fixed segments once each.
    fixed = sum(1 for s in segs if not s["is_expandable"])
    runs = len(segs) - fixed
    assert fixed <= stats["segment.all.current"] <= len(segs)
    assert (runs == 0) == (stats["segment.all.current"] == fixed)
    for key in ("allocated_bytes", "reserved_bytes", "requested_bytes", "segment", "allocation"):
        total = stats[f"{key}.all.current"]
        parts = stats[f"{key}.small_pool.current"] + stats[f"{key}.large_pool.current"]
        assert total == parts, f"{key}: all != small + large"
    try:
        backend = pool.backend
    except AttributeError:  # not a host pool: the backend is not ours to inspect
        return
    assert backend.used == reserved, "backend bytes in use differ from reserved bytes"
