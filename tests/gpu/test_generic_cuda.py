"""The backend-generic suites of tests/core on the CUDA backend: the same test functions
as the CPU run's host and null backends (pool_backends.py), here with pools on device 0
of a real GPU, or of the simulated device under ``make test-sim``.

They run in this process, not in a child as the other GPU tests do: no torch allocator
is installed, and a pool of its own is what each test makes. The tests that cannot hold
on a GPU skip with the reason (a ``capacity`` for the device, see ``Backend``).
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator, Tuple

import pytest

# tests/core is on sys.path when pytest collects it (a run of all of tests/), not when it
# collects only tests/gpu (make test-sim).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))

import test_pool_basic  # noqa: E402
import test_stats_model  # noqa: E402
import test_live_settings  # noqa: E402
import test_threads  # noqa: E402
import test_vmm  # noqa: E402

GENERIC_SUITES = (test_pool_basic, test_stats_model, test_live_settings, test_threads, test_vmm)


def generic_tests(module: ModuleType) -> Iterator[Tuple[str, Callable[..., None]]]:
    """The tests of ``module`` that take the ``backend`` fixture."""
    for name, obj in vars(module).items():
        if name.startswith("test_") and callable(obj) and "backend" in inspect.signature(obj).parameters:
            yield name, obj


# pytest collects every test_* function of a module's namespace, imported ones too: each
# generic test is collected here once more, and gets tests/gpu/conftest.py's backend.
for _module in GENERIC_SUITES:
    _tests = list(generic_tests(_module))
    assert _tests, f"{_module.__name__} has no test taking the backend fixture"
    for _name, _test in _tests:
        assert _name not in globals(), f"{_name} is in two generic suites"
        globals()[_name] = _test

pytestmark = pytest.mark.gpu
