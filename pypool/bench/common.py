"""What every part of ``python -m pypool bench`` shares: the result schema and fixed
sizes, summaries of repeated measurements, the progress display and the child protocol's
tag. Imported by the parent and by the child processes alike, so it needs nothing heavy.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, TextIO, Tuple

__all__ = ["SCHEMA", "PAIR_SIZES", "RANDOM_MAX_MIB", "RMM_MAX_USAGE", "SCALING_N_FREE", "HOST_CAPACITY",
           "PROGRESS_TAG", "PKG_PARENT", "Summary", "summarize", "summary_dict", "short_size", "is_oom",
           "Progress"]


SCHEMA = "pypool-bench/1"


#: Fixed request sizes of the cache-hit pair cases (bytes).
PAIR_SIZES: Tuple[int, ...] = (512, 64 << 10, 1 << 20, 16 << 20, 256 << 20)


#: Largest request of the RMM ``random_allocations`` style mixes (MiB).
RANDOM_MAX_MIB: Tuple[int, ...] = (1, 64, 1024)


#: RMM's random_allocations keeps at most 16000 MiB live; the live-count limits of the
#: CPU mixes are derived from it (see :func:`_random_live_max`).
RMM_MAX_USAGE = 16000 << 20


#: Free-block counts of the scaling cases.
SCALING_N_FREE: Tuple[int, ...] = (100, 10_000, 100_000)


#: Capacity of the host "device" behind the C ABI during the CPU suite. The host backend
#: maps with MAP_NORESERVE and never touches the pages, so a large virtual capacity costs
#: nothing and keeps the 1 GiB mixes from running out.
HOST_CAPACITY = 1 << 40


#: Lines a child prints on stdout for the parent's progress display:
#: ``@@pypool-bench start|done|failed SCENARIO [summary]``.
PROGRESS_TAG = "@@pypool-bench"


# Note [Child import path]: a child must import the very pypool this process runs (an
# installed copy or the source tree). `python -m` would put the working directory first on
# sys.path and could pick the other one, so children are started with -c and this
# directory (the one holding the pypool package) inserted first.
PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Summary:
    """Median, p99, min and max of repeated measurements (and the measurements)."""

    median: float
    p99: float
    min: float
    max: float
    n: int
    values: Tuple[float, ...] = ()

    def to_dict(self, with_values: bool = True) -> Dict[str, Any]:
        d: Dict[str, Any] = {"median": self.median, "p99": self.p99, "min": self.min,
                             "max": self.max, "n": self.n}
        if with_values:
            d["values"] = list(self.values)
        return d


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    n = len(sorted_values)
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def summarize(values: Sequence[float], keep_values: bool = True) -> Summary:
    """:class:`Summary` of ``values`` (at least one). ``keep_values=False`` drops the raw
    list (for per-operation latencies, which can number in the tens of thousands)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("values: need at least one measurement")
    s = sorted(vals)
    return Summary(median=_quantile(s, 0.5), p99=_quantile(s, 0.99), min=s[0], max=s[-1],
                   n=len(s), values=tuple(vals) if keep_values else ())


def summary_dict(values: List[float]) -> Dict[str, Any]:
    """:func:`summarize` as a dict without the values (``None`` figures for no values)."""
    if not values:
        return {"median": None, "p99": None, "min": None, "max": None, "n": 0}
    return summarize(values, keep_values=False).to_dict(with_values=False)


def short_size(n: int) -> str:
    """``512 B``, ``64 KiB``, ``16 MiB``: exact sizes for case names."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= (1 << shift) and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


def is_oom(e: BaseException) -> bool:
    """An out-of-memory error from any allocator (torch.OutOfMemoryError is a RuntimeError)."""
    return isinstance(e, RuntimeError) and "out of memory" in str(e).lower()


# ---------------------------------------------------------------------------- progress
class Progress:
    """A progress bar on a terminal; one line per finished case otherwise (logs, CI).

    Args:
        total: number of steps.
        stream: where to draw (default ``sys.stderr``).
        enabled: False prints nothing at all.
    """

    def __init__(self, total: int, stream: Optional[TextIO] = None, enabled: bool = True) -> None:
        self.total = max(1, int(total))
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done_count = 0
        self.t0 = time.monotonic()
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False

    def add_total(self, extra: int) -> None:
        self.total += max(0, int(extra))

    def start(self, label: str) -> None:
        """A step begins (redraws the bar on a terminal)."""
        if self.enabled and self.tty:
            self._draw(label)

    def finish(self, label: str, result: str = "") -> None:
        """A step is done: advance; off a terminal, print ``[k/n] label: result``."""
        self.done_count = min(self.total, self.done_count + 1)
        if not self.enabled:
            return
        if self.tty:
            self._draw(label)
        else:
            tail = f": {result}" if result else ""
            print(f"bench [{self.done_count}/{self.total}] {label}{tail}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _draw(self, label: str) -> None:
        width = 24
        filled = int(width * self.done_count / self.total)
        elapsed = time.monotonic() - self.t0
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done_count}/{self.total} "
                f"{elapsed:5.1f}s  {label}")
        try:
            cols = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            cols = 0
        if cols < 20:  # unknown (a pseudo-terminal without a size) or absurdly narrow
            cols = 100
        self.stream.write("\r\x1b[K" + line[: cols - 1])
        self.stream.flush()
