"""pytest plugin: fail tests that leave pypool allocations behind.

Loaded through the ``pytest11`` entry point ``pypool``, so it is present in every pytest
run of every project that has pypool installed. It therefore does nothing unless asked:

* ``--pypool-leaks`` (or ``pypool_leaks = true`` in the ini file) checks every test;
* the ``pypool_no_leaks`` fixture checks one test.

A checked test whose allocations in pypool's registry pools (the pools torch allocates
from) are still live after its teardown gets an error at teardown carrying the leak
report, grouped by call site.

Note [Plugin inertness]: importing this module imports pytest and pypool (as any of
pypool's modules does), which makes no pool, turns no stack capture on and does not import
torch; the leak machinery starts with the first checked test. Unchecked tests pay one
option lookup per hook.

Note [When a test is checked]: the scope opens when the test function is called (or
when ``pypool_no_leaks`` is set up), so fixture setup of wider scope is never counted,
and is judged after the test's teardown, once function-scoped fixtures are finalized
and the test's fixture values dropped: a tensor a test left on a fixture's object (a
gradient on a fixture's model) is freed by then and is not a leak. Tests whose call
failed are not judged: their traceback keeps their locals, and so their tensors, alive.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Dict, Generator, List, Optional

import pytest

from . import _core
from .leaks import LeakReport, LeakTracker, _leaked_blocks, track_leaks

_FIXTURE = "pypool_no_leaks"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pypool", "pypool GPU memory leak checks")
    group.addoption(
        "--pypool-leaks", action="store_true", default=False, dest="pypool_leaks",
        help="fail (error at teardown) every test that leaves allocations live in "
             "pypool's device pools, with a report of their call sites")
    parser.addini("pypool_leaks", type="bool", default=False,
                  help="check every test for pypool allocation leaks (as --pypool-leaks)")


class _TestCheck:
    """The leak scope of one test over every registry pool."""

    def __init__(self) -> None:
        self._core = _core
        self.trackers: Dict[int, LeakTracker] = {}
        for d in _core.registry_devices():
            t = track_leaks(capture_stacks=True, device=d)
            t.__enter__()
            self.trackers[d] = t

    def _pending(self) -> bool:
        """Whether any allocation of the scope is live (cheap: no stacks resolved)."""
        for d, t in self.trackers.items():
            if t.start_seq is not None and self._core.registry_pool(d).live_blocks(t.start_seq):
                return True
        # A pool made during the test holds only the test's allocations.
        return any(self._core.registry_pool(d).live_blocks(0)
                   for d in self._core.registry_devices() if d not in self.trackers)

    def finish(self, collect: bool) -> List[LeakReport]:
        """Close the scope; the reports of the pools with leaks."""
        try:
            if collect and self._pending():
                gc.collect()  # garbage cycles holding tensors are not leaks of the test
        finally:
            for t in self.trackers.values():
                t.close()
        reports = [t.report() for t in self.trackers.values()]
        now = time.monotonic() * 1e6
        for d in self._core.registry_devices():
            if d not in self.trackers:
                pool = self._core.registry_pool(d)
                reports.append(LeakReport(_leaked_blocks(pool, 0, None, now), d,
                                          "allocations made by the test and still live", False))
        return [r for r in reports if r.count]

    def abandon(self) -> None:
        for t in self.trackers.values():
            t.close()


_CHECK = pytest.StashKey[_TestCheck]()
_CALL_PASSED = pytest.StashKey[bool]()


def _wanted(item: pytest.Item) -> bool:
    if _FIXTURE in getattr(item, "fixturenames", ()):
        return True
    cfg = item.config
    return bool(cfg.getoption("pypool_leaks", False) or cfg.getini("pypool_leaks"))


def _start(item: pytest.Item) -> None:
    if _CHECK not in item.stash:
        item.stash[_CHECK] = _TestCheck()


@pytest.fixture
def pypool_no_leaks(request: pytest.FixtureRequest) -> Generator[None, None, None]:
    """Fail this test (an error at its teardown, with the report) if allocations it made
    in pypool's device pools are still live after its teardown."""
    _start(request.node)
    yield


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    if _CHECK not in item.stash and _wanted(item):
        _start(item)
    return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, Any]:
    report = yield
    if call.when == "call" and _CHECK in item.stash:
        item.stash[_CALL_PASSED] = bool(report.passed)
    return report


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: Optional[pytest.Item]) -> Generator[None, Any, Any]:
    check = item.stash.get(_CHECK, None)
    if check is None:
        return (yield)
    del item.stash[_CHECK]
    try:
        result = yield
    except BaseException:
        check.abandon()  # a failing teardown is reported as such; no leak verdict on top
        raise
    if not item.stash.get(_CALL_PASSED, False):
        check.abandon()
        return result
    # pytest drops the test's fixture values only after this hook (runtestprotocol sets
    # item.funcargs = None); drop them now so that what they hold is freed first.
    funcargs = getattr(item, "funcargs", None)
    if isinstance(funcargs, dict):
        funcargs.clear()
    reports = check.finish(collect=True)
    if reports:
        total = sum(r.count for r in reports)
        text = "\n".join(r.to_text() for r in reports)
        pytest.fail(f"pypool: {item.nodeid} left {total} "
                    f"{'allocation' if total == 1 else 'allocations'} live after teardown\n{text}",
                    pytrace=False)
    return result
