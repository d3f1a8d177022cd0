"""Overhead of leak tracking on a host Pool, from Python.

Measures the median time of one ``malloc`` + ``free`` pair through :class:`pypool.Pool`
with no tracker, inside ``track_leaks(capture_stacks=False)`` and inside
``track_leaks(capture_stacks=True)``, and the cost of one stack capture (a native
``DevicePool`` malloc+free pair with capture on, minus the same pair with it off) at
several stack depths.

Run as a pytest-benchmark suite::

    python -m pytest benchmarks/test_bench_leaks.py --benchmark-only

or as a script printing median nanoseconds (what the README's figures come from)::

    python benchmarks/test_bench_leaks.py [--repeat 15] [--number 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from typing import Any, Callable, Dict, List

import pytest

import pypool
from pypool import _context
from pypool.leaks import track_leaks

SIZE = 4096
PAIRS_PER_CALL = 1000  # pairs per benchmarked call: keeps timer overhead out of the figure


def _pairs(pool: pypool.Pool, n: int) -> None:
    malloc, free = pool.malloc, pool.free
    for _ in range(n):
        free(malloc(SIZE))


def _at_depth(depth: int, fn: Callable[[], Any]) -> Any:
    """Call ``fn`` with ``depth`` extra Python frames below the caller."""
    if depth <= 0:
        return fn()
    return _at_depth(depth - 1, fn)


_CAPTURE_POOL = None


def _capture_loop(n: int, capture: bool = True) -> None:
    """n native malloc+free pairs on a pool with stack capture on (or off)."""
    global _CAPTURE_POOL
    if _CAPTURE_POOL is None:
        _CAPTURE_POOL = _new_pool()._pool
    core = _CAPTURE_POOL
    if capture:
        _context.acquire(core)
    try:
        malloc, free = core.malloc, core.free
        for _ in range(n):
            free(malloc(SIZE))
    finally:
        if capture:
            _context.release(core)


def _new_pool() -> pypool.Pool:
    pool = pypool.Pool("host", capacity=1 << 30)
    pool.free(pool.malloc(SIZE))  # every timed pair is a cache hit
    return pool


# ---------------------------------------------------------------------------- pytest-benchmark

def _per_op(benchmark: Any) -> None:
    """Record the median per operation (the benchmarked call runs PAIRS_PER_CALL)."""
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["ns_median"] = stats.stats.median * 1e9 / PAIRS_PER_CALL


@pytest.mark.parametrize("mode", ["no_tracker", "tracker_no_stacks", "tracker_stacks"])
def test_malloc_free_pair(benchmark: Any, mode: str) -> None:
    pool = _new_pool()
    benchmark.extra_info["pairs_per_call"] = PAIRS_PER_CALL
    if mode == "no_tracker":
        benchmark(_pairs, pool, PAIRS_PER_CALL)
    else:
        with track_leaks(pool=pool, capture_stacks=(mode == "tracker_stacks")) as tracker:
            benchmark(_pairs, pool, PAIRS_PER_CALL)
        assert tracker.report().count == 0
    _per_op(benchmark)


@pytest.mark.parametrize("depth", [5, 20, 60])
def test_stack_capture(benchmark: Any, depth: int) -> None:
    benchmark.extra_info["captures_per_call"] = PAIRS_PER_CALL
    benchmark(_at_depth, depth, lambda: _capture_loop(PAIRS_PER_CALL))
    _per_op(benchmark)


# ---------------------------------------------------------------------------- script

def _median_ns(fn: Callable[[], Any], number: int, repeat: int) -> float:
    # The garbage collector stays on (timeit switches it off by default): a stack capture
    # allocates a tuple per call, and the collections that triggers are part of its cost.
    times = timeit.Timer(fn, setup="gc.enable()").repeat(number=1, repeat=repeat)
    return statistics.median(times) * 1e9 / number


def measure(number: int = 20000, repeat: int = 15, depth: int = 20) -> Dict[str, float]:
    """Median ns per pair (or per capture), run at a stack ``depth`` frames deep."""
    out: Dict[str, float] = {}
    pool = _new_pool()

    def run(label: str, fn: Callable[[], Any]) -> None:
        out[label] = _at_depth(depth, lambda: _median_ns(fn, number, repeat))

    run("pair, no tracker", lambda: _pairs(pool, number))
    with track_leaks(pool=pool, capture_stacks=False):
        run("pair, tracker without stacks", lambda: _pairs(pool, number))
    with track_leaks(pool=pool, capture_stacks=True):
        run("pair, tracker with stacks", lambda: _pairs(pool, number))
    core = pool._pool
    out["pair, native DevicePool, no tracker"] = _at_depth(
        depth, lambda: _median_ns(lambda: [core.free(core.malloc(SIZE)) for _ in range(number)],
                                  number, repeat))
    for d in (5, 20, 60):
        on = _at_depth(d, lambda: _median_ns(lambda: _capture_loop(number), number, repeat))
        off = _at_depth(d, lambda: _median_ns(lambda: _capture_loop(number, False), number, repeat))
        out[f"stack capture, {d} frames below"] = on - off
    return out


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=20000, help="pairs per timing")
    parser.add_argument("--repeat", type=int, default=15, help="timings; the median is kept")
    parser.add_argument("--depth", type=int, default=20,
                        help="Python frames below the allocating code (a training loop's depth)")
    args = parser.parse_args(argv)
    res = measure(args.number, args.repeat, args.depth)
    print(f"python {sys.version.split()[0]}, pypool {pypool.__version__}, "
          f"{args.number} ops x {args.repeat} repeats, median")
    width = max(len(k) for k in res)
    for k, v in res.items():
        print(f"  {k:<{width}}  {v:8.0f} ns")
    base = res["pair, no tracker"]
    print(f"  stack capture adds {res['pair, tracker with stacks'] - base:.0f} ns per allocation "
          f"at depth {args.depth}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
