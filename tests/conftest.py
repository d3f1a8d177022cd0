"""Shared fixtures for the pypool test suite.

GPU tests are marked ``@pytest.mark.gpu`` and skipped when ``torch.cuda.is_available()`` is
false (torch is imported only when such a test was collected, so a CPU run stays quick).

Fixtures that hand back functions (``pool_ok``, ``pool_state``) are the shared checks the
core tests run after every step: they read the pool only through its public Python API.

``backend`` makes pools on each backend for the backend-generic suites (pool_backends.py):
host and null here, cuda under tests/gpu (its conftest overrides the fixture).
"""

from __future__ import annotations

import ctypes
import os

from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

import pypool
from pool_backends import CPU_BACKENDS, Backend
from pool_model import check_pool

# Note [GPU skip]: deciding once per session keeps ``import torch`` (seconds on a slow
# machine) out of runs that collected no GPU test. On the simulated CUDA device
# (``python -m pypool simdevice -- pytest tests/gpu``) torch's CUDA paths run for real but
# kernels do nothing, so tests that read tensor values carry ``@pytest.mark.kernel`` and
# skip there; everything else runs.
_GPU_REASON = "needs a CUDA GPU or the simulated device (torch.cuda.is_available() is false)"
_KERNEL_REASON = "needs real CUDA kernels (tensor values); the simulated device does not run kernels"


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu_items:
        return
    try:
        import torch

        available = bool(torch.cuda.is_available())
    except Exception:  # torch missing or broken: no GPU for us either way
        available = False
    if not available and os.environ.get("PYPOOL_REQUIRE_GPU") == "1":
        # make test-sim: a silent skip would turn a broken simulation into a green run.
        raise pytest.UsageError("PYPOOL_REQUIRE_GPU=1 but torch.cuda.is_available() is false")
    if not available:
        skip = pytest.mark.skip(reason=_GPU_REASON)
        for item in gpu_items:
            item.add_marker(skip)
        return
    from pypool import simdevice

    if simdevice.active():
        skip = pytest.mark.skip(reason=_KERNEL_REASON)
        for item in gpu_items:
            if item.get_closest_marker("kernel") is not None:
                item.add_marker(skip)


# ---------------------------------------------------------------------------- checks


def pool_state(pool: pypool.Pool) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """Everything observable about a pool's contents: stats and the segment layout."""
    return pool.memory_stats(), pool.segments()


@pytest.fixture(name="pool_ok")
def _pool_ok() -> Callable[[pypool.Pool], None]:
    """``pool_ok(pool)``: run :func:`check_pool`."""
    return check_pool


@pytest.fixture(name="pool_state")
def _pool_state() -> Callable[[pypool.Pool], Tuple[Dict[str, Any], List[Dict[str, Any]]]]:
    """``pool_state(pool)``: stats and segments, to compare before/after a failing call."""
    return pool_state


@pytest.fixture
def make_pool() -> Iterator[Callable[..., pypool.Pool]]:
    """Factory for host pools; every pool made is checked again at teardown."""
    made: List[pypool.Pool] = []

    def make(**kwargs: Any) -> pypool.Pool:
        kwargs.setdefault("backend", "host")
        pool = pypool.Pool(**kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        check_pool(pool)


@pytest.fixture(params=CPU_BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """Factory for pools on one backend; a test taking it runs once per backend."""
    made = Backend(request.param)
    yield made
    made.close()


@pytest.fixture(scope="session")
def lib() -> ctypes.CDLL:
    """The C ABI torch loads, through ctypes, with torch's signatures."""
    lib = ctypes.CDLL(pypool.library_path())
    lib.pypool_malloc.restype = ctypes.c_void_p
    lib.pypool_malloc.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
    lib.pypool_free.restype = None
    lib.pypool_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
    lib.pypool_init.restype = None
    lib.pypool_init.argtypes = [ctypes.c_int]
    lib.pypool_empty_cache.restype = None
    lib.pypool_empty_cache.argtypes = []
    lib.pypool_set_memory_fraction.restype = None
    lib.pypool_set_memory_fraction.argtypes = [ctypes.c_double, ctypes.c_int]
    lib.pypool_record_stream.restype = None
    lib.pypool_record_stream.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    return lib
