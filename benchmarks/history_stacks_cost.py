"""Per-allocation cost of history stacks (Note [Torch tracebacks] in
csrc/bindings/stack_capture.cpp): no capture, pypool's native walker
(``pypool.record_history``), and torch's CapturedTraceback through torch's names
(``_record_memory_history(stacks="python")`` and ``stacks="all"``), plus the time
``_snapshot()`` takes to symbolise them (the first call in a process, then warm).

Run on the simulated device (or a GPU), in the CUDA build's environment:

    python -m pypool simdevice -- python benchmarks/history_stacks_cost.py

A measurement to read, not a test: nothing is asserted.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, List

import pypool

N = 20_000  # allocations per timed run
REPEATS = 5


def per_alloc_us(torch: object, size: int = 256) -> float:
    empty: Callable[..., object] = torch.empty  # type: ignore[attr-defined]
    runs: List[float] = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(N):
            t = empty(size, device="cuda")
            del t
        runs.append((time.perf_counter() - t0) / N * 1e6)
    return statistics.median(runs)


def main() -> None:
    pypool.install()
    import torch

    torch.empty(1, device="cuda")  # CUDA up, the pool made
    per_alloc_us(torch)  # warm-up
    base = per_alloc_us(torch)
    print(f"no capture:                      {base:7.2f} us per alloc+free")
    pypool.record_history(max_entries=100_000)
    native = per_alloc_us(torch)
    pypool.record_history(False)
    print(f"pypool.record_history (native):  {native:7.2f} us  (+{native - base:.2f})")
    gather = torch._C._profiler.gather_traceback
    for cpp in (False, True):
        t0 = time.perf_counter()
        for _ in range(N):
            gather(True, True, cpp)
        print(f"gather_traceback(cpp={cpp}) alone: {(time.perf_counter() - t0) / N * 1e6:7.2f} us")
    for stacks in ("python", "all"):
        torch.cuda.memory._record_memory_history("all", context="alloc", stacks=stacks, max_entries=100_000)
        cost = per_alloc_us(torch)
        print(f"torch names, stacks={stacks!r:9}  {cost:7.2f} us  (+{cost - base:.2f})")
        keep = [torch.empty(256, device="cuda") for _ in range(100)]
        for label in ("first", "warm"):
            t0 = time.perf_counter()
            snap = torch.cuda.memory._snapshot()
            trace = snap["device_traces"][torch.cuda.current_device()]
            frames = sum(len(e["frames"]) > 0 for e in trace)
            cpp = sum(any("::" in f["name"] for f in e["frames"]) for e in trace)
            print(f"    _snapshot() ({label}): {time.perf_counter() - t0:6.2f} s for {frames} entries with frames"
                  f" ({cpp} with C++ frames)")
        del keep
        torch.cuda.memory._record_memory_history(None)


if __name__ == "__main__":
    main()
