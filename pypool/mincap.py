"""The smallest capacity that runs a workload: one bisection for every caller.

A caching allocator's peak reserved on a roomy device says how much it hoards, not how
little it needs. The measure users care about is the smallest device (or pool cap) on which
the workload runs without out-of-memory. Three places measure it: the sizing advisor
(offline replays under ``max_pool_size``, :mod:`pypool.sizing`), the simulated-device bench
(real torch, the device's capacity, :mod:`pypool.bench.sim`) and the comparison with
PyTorch's own allocator (a child process with a CUDA build of torch,
:mod:`pypool.torch_compare`). All of them call :func:`min_capacity`.

Note [mincap is stdlib only]: the PyTorch child runs in whatever Python holds a CUDA build of
torch, possibly a separate virtual environment without pypool installed (and without
pypool's compiled core for that interpreter). It loads this file by path, so this module
imports nothing but the standard library and nothing from pypool.

Note [Capacity bisection]: candidates are multiples of ``step`` (2 MiB: the large pool's
rounding in pypool and PyTorch). Below the floor (the most requested bytes live at once)
nothing can pass, so the search starts at the first multiple of ``step`` at or above the
floor. A start point that passes is found by doubling from ``start`` (the unconstrained
run's peak). Then each round probes up to ``width`` points of the open interval at once
(``width`` > 1 when the caller can run probes in parallel) and keeps the smallest passing
point and the largest failing point below it. Allocators are not strictly monotone in
capacity (a smaller device can change which blocks get split), so a still smaller island
that passes may exist; the search does not look for one. What it guarantees: the answer
passed, and the candidate one step below it failed or lies below the floor.
"""

# No ``from __future__ import annotations``: dataclasses then look the module up in
# sys.modules, which a module loaded by path is not in.
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

__all__ = ["STEP", "MinCapacity", "min_capacity", "floor_units"]

#: Capacity step of the search: 2 MiB.
STEP = 2 << 20


@dataclass
class MinCapacity:
    """What :func:`min_capacity` found.

    Attributes:
        capacity: the smallest passing capacity in bytes (a multiple of ``step``), or None
            when not even ``top`` passed.
        floor: the workload's floor in bytes (peak live requested bytes, plus whatever the
            caller counts as unavoidable).
        step: the search's step in bytes.
        attempts: every probe in the order run: ``(capacity, passed)``.
        note: why ``capacity`` is None.
    """

    capacity: Optional[int]
    floor: int
    step: int = STEP
    attempts: List[Tuple[int, bool]] = field(default_factory=list)
    note: Optional[str] = None

    @property
    def over_floor(self) -> Optional[float]:
        """``capacity / floor`` (None without either)."""
        if self.capacity is None or not self.floor:
            return None
        return self.capacity / self.floor

    def to_dict(self) -> dict:
        return {"capacity": self.capacity, "floor": self.floor, "step": self.step,
                "over_floor": self.over_floor, "attempts": [list(a) for a in self.attempts],
                "note": self.note}


def floor_units(floor: int, step: int = STEP) -> int:
    """The first candidate (in steps) that could pass: ceil(floor / step), at least 1."""
    return max(1, -(-int(floor) // step))


def min_capacity(
    probe: Callable[[Sequence[int]], Sequence[bool]],
    floor: int,
    start: int,
    top: Optional[int] = None,
    step: int = STEP,
    width: int = 1,
    start_passes: bool = False,
) -> MinCapacity:
    """The smallest multiple of ``step`` at or above ``floor`` that passes (Note [Capacity
    bisection]).

    Args:
        probe: ``probe(capacities)`` runs the workload at each capacity (bytes) and says
            which passed (no out-of-memory), in order; it may run them in parallel.
        floor: no capacity below this can pass (bytes, >= 0).
        start: a capacity likely to pass (the unconstrained run's peak, in bytes).
        top: the largest capacity to try (bytes; None: no limit, keep doubling).
        step: the granularity in bytes (> 0).
        width: points probed per round (>= 1; ``len(capacities)`` never exceeds it).
        start_passes: the caller knows ``start`` rounded up passes (e.g. a cap at or above
            the unconstrained peak changes nothing), so it is not probed.
    """
    if isinstance(step, bool) or not isinstance(step, int) or step <= 0:
        raise ValueError(f"step: expected an int > 0, got {step!r}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width: expected an int >= 1, got {width!r}")
    if floor < 0 or start < 0 or (top is not None and top <= 0):
        raise ValueError(f"floor, start and top must not be negative (got {floor}, {start}, {top})")
    out = MinCapacity(capacity=None, floor=int(floor), step=step)

    def run(units: List[int]) -> List[bool]:
        res = [bool(x) for x in probe([u * step for u in units])]
        if len(res) != len(units):
            raise RuntimeError(f"probe answered {len(res)} results for {len(units)} capacities")
        out.attempts.extend((u * step, ok) for u, ok in zip(units, res))
        return res

    top_u = None if top is None else max(1, top // step)
    lo = floor_units(floor, step)  # the smallest candidate not known to fail
    hi = max(lo, -(-int(start) // step))
    if top_u is not None and hi > top_u:
        hi = top_u
        start_passes = False
    if not start_passes:
        while not run([hi])[0]:
            if top_u is not None and hi >= top_u:
                out.note = f"out of memory even at {hi * step} bytes"
                return out
            lo = hi + 1
            hi = 2 * hi if top_u is None else min(top_u, 2 * hi)
    # Invariant: hi passes; every candidate below lo fails (or is below the floor).
    while lo < hi:
        n = hi - lo
        k = min(width, n)
        points = sorted({lo + (n * i) // (k + 1) for i in range(1, k + 1)})
        points = [p for p in points if lo <= p < hi][:k]
        res = run(points)
        new_lo, new_hi = lo, hi
        for p, ok in zip(points, res):
            if ok:
                new_hi = p
                break
            new_lo = p + 1
        lo, hi = new_lo, new_hi
    out.capacity = hi * step
    return out
