"""Pools on each backend for the backend-generic suites, one run of the same suite per
backend (as RMM runs one generic suite per memory resource).

The generic suites are tests/core/test_pool_basic.py, test_stats_model.py,
test_threads.py and test_vmm.py: their tests take the ``backend`` fixture, a
:class:`Backend`, and make their pools with it. tests/conftest.py gives them the host
and null backends (the CPU run); tests/gpu/conftest.py overrides the fixture with the
CUDA backend, and tests/gpu/test_generic_cuda.py runs the same test functions there (on
the simulated device under ``make test-sim``, and on a real GPU).

What a test may not assume on every backend is said here once: the null backend never
backs its addresses (nothing may write to a pool's memory), and a GPU has its own size
(``capacity`` is refused for cuda) and its own users (the driver's free figure is not
the pool's alone), and its streams are real ones (``Backend.stream``).
"""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

import pypool
from pool_model import check_pool

# The backends the CPU run covers; tests/gpu adds "cuda".
CPU_BACKENDS = ("host", "null")


class Backend:
    """``backend(**kwargs)`` is ``pypool.Pool(backend=backend.name, **kwargs)``; every pool
    made is checked again (:func:`check_pool`) when the test ends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._made: List[pypool.Pool] = []
        self._streams: Dict[int, Any] = {}  # k -> torch.cuda.Stream (cuda only)

    def __call__(self, capacity: Any = None, **kwargs: Any) -> pypool.Pool:
        if capacity is not None and self.name == "cuda":
            # Not translated to max_pool_size: a device's size and a cap on the pool fail
            # differently (backend refusal and release-and-retry against a refusal up front).
            pytest.skip(f"capacity={capacity!r}: a GPU has its own size "
                        "(Pool(capacity=) is for the host and null backends)")
        pool = pypool.Pool(backend=self.name, capacity=capacity, **kwargs)
        self._made.append(pool)
        return pool

    def stream(self, k: int) -> int:
        """The test's stream number ``k`` as this backend takes it: ``k`` itself on host and
        null (any integer names a stream there); on cuda a stream of device 0 made for this
        test, the same one for the same ``k`` (0 stays the default stream). The pool records
        events on a segment's stream (before unmapping a grown expandable segment, say),
        and the driver takes only real handles."""
        if self.name != "cuda" or k == 0:
            return k
        if k not in self._streams:
            import torch  # tests/gpu has it (tests/conftest.py's GPU check imports it)

            self._streams[k] = torch.cuda.Stream(device=0)
        return int(self._streams[k].cuda_stream)

    def with_limit(self, limit: Any, **kwargs: Any) -> pypool.Pool:
        """A pool that can hold no more than ``limit`` bytes, for tests where the bound only
        has to exist (some allocations fail): the device's capacity on host and null,
        ``max_pool_size`` on cuda (a GPU has its own size)."""
        if self.name == "cuda":
            return self(max_pool_size=limit, **kwargs)
        return self(capacity=limit, **kwargs)

    def check_used(self, pool: pypool.Pool, nbytes: int) -> None:
        """The pool holds ``nbytes`` from its device: its reserved bytes on every backend,
        and, where the backend's count is the pool's alone (host and null: mem_info's total
        minus free), the backend's own count too. On cuda the driver's free figure also
        counts the CUDA context and every other user of the GPU."""
        assert pool.memory_reserved() == nbytes
        if self.name != "cuda":
            free, total = pool.mem_info()
            assert total - free == nbytes, f"{self.name} backend holds {total - free} bytes, expected {nbytes}"

    def close(self) -> None:
        for pool in self._made:
            check_pool(pool)
        self._made.clear()  # the pools go first: destroying one may wait for its streams
        self._streams.clear()

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"
