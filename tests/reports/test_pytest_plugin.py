"""The pytest plugin (pypool.pytest_plugin): --pypool-leaks and the pypool_no_leaks fixture.

Each case runs pytest in a subprocess (the registry is process-global, and the plugin
must be loaded the way a user's run loads it). Entry-point autoloading is switched off
there and the plugin named with ``-p`` so that the result does not depend on whether
this checkout has been pip-installed with its ``pytest11`` entry point.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

import pypool

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
PKG_PARENT = str(Path(pypool.__file__).resolve().parent.parent)  # the pypool under test

# The inner tests: a host registry pool 0 made before any test (so that stacks are
# captured), a helper that stashes allocations in a module-level list (a leak), and an
# object that frees its block when dropped (a stand-in for a tensor).
INNER_HEADER = """
import pytest
import pypool
from pypool import _core
from pypool.config import PoolConfig

KEEP = []


@pytest.fixture(autouse=True, scope="module")
def host_registry():
    _core.registry_reset()
    _core.registry_configure("host", PoolConfig().to_core(), 1 << 30)
    _core.registry_pool(0)
    yield


def pool():
    return pypool.Pool._wrap(_core.registry_pool(0))


def stash(n):
    for _ in range(n):
        KEEP.append(pool().malloc(1 << 20))  # STASH-LINE


class Buf:
    def __init__(self, n):
        self.ptr = pool().malloc(n)

    def __del__(self):
        pool().free(self.ptr)
"""


def _stash_line(pytester: pytest.Pytester) -> int:
    source = (pytester.path / "test_inner.py").read_text()
    return next(i for i, t in enumerate(source.splitlines(), 1) if "# STASH-LINE" in t)


@pytest.fixture
def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    monkeypatch.delenv("PYPOOL_LEAK_CHECK", raising=False)
    # pytester runs from its own directory: point the subprocess at this checkout.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [PKG_PARENT, os.environ.get("PYTHONPATH")])))

    def go(body: str, *args: str, plugin: bool = True) -> pytest.RunResult:
        source = INNER_HEADER + body
        pytester.makepyfile(test_inner=source)
        extra = ("-p", "pypool.pytest_plugin") if plugin else ()
        return pytester.runpytest_subprocess(*extra, "-p", "no:cacheprovider", *args)

    return go


LEAKY_AND_CLEAN = """
def test_leaky():
    stash(2)


def test_clean():
    p = pool()
    p.free(p.malloc(1 << 20))
    buf = Buf(4096)  # freed when the test returns


def test_leaky_but_failing():
    stash(1)
    assert False, "the test's own failure"
"""


def test_option_fails_the_leaking_test_only(run, pytester: pytest.Pytester) -> None:  # type: ignore[no-untyped-def]
    result = run(LEAKY_AND_CLEAN, "--pypool-leaks")
    result.assert_outcomes(passed=2, failed=1, errors=1)
    line = _stash_line(pytester)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leaky*",
        "*test_inner.py::test_leaky left 2 allocations live after teardown*",
        f"*test_inner.py:{line} stash: 2 blocks, 2.00 MiB*",
        "*test_inner.py:*test_leaky*",
    ])
    out = result.stdout.str()
    assert "test_clean left" not in out
    assert "test_leaky_but_failing left" not in out  # its failure is reported, not a verdict
    assert "the test's own failure" in out


def test_without_option_or_fixture_the_plugin_is_inert(run) -> None:  # type: ignore[no-untyped-def]
    result = run(LEAKY_AND_CLEAN + """

def test_plugin_did_not_touch_capture():
    from pypool import _context
    assert _context._refs == {}
""")
    result.assert_outcomes(passed=3, failed=1)
    assert "pypool" not in result.stdout.str().replace("pypool.pytest_plugin", "")


def test_fixture_checks_one_test(run, pytester: pytest.Pytester) -> None:  # type: ignore[no-untyped-def]
    result = run("""
def test_leaky_checked(pypool_no_leaks):
    stash(1)


def test_leaky_unchecked():
    stash(1)


def test_clean_checked(pypool_no_leaks):
    buf = Buf(1 << 20)
""")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leaky_checked*",
        "*test_inner.py::test_leaky_checked left 1 allocation live after teardown*",
        f"*test_inner.py:{_stash_line(pytester)} stash: 1 block, 1.00 MiB*",
    ])
    assert "test_leaky_unchecked left" not in result.stdout.str()


def test_fixture_values_are_dropped_before_the_verdict(run) -> None:  # type: ignore[no-untyped-def]
    # A tensor the test leaves on a fixture's object (a gradient on the fixture's model)
    # lives until pytest drops the fixture value: that is not a leak.
    result = run("""
import gc


@pytest.fixture
def model():
    return {"weights": None}


@pytest.fixture(scope="module")
def module_cache():
    return []


def test_grad_on_fixture_model(model, pypool_no_leaks):
    model["grad"] = Buf(1 << 20)


def test_cycle_is_collected(pypool_no_leaks):
    a = {"buf": Buf(1 << 20)}
    a["self"] = a  # a garbage cycle: gc frees it, the check collects first


def test_module_fixture_keeps_it(module_cache, pypool_no_leaks):
    module_cache.append(Buf(1 << 20))  # outlives the test: a leak of this test


def test_later(module_cache):
    # The module fixture lives on to here (the last test of a module tears down the
    # module's fixtures in its own teardown, before the verdict).
    assert len(module_cache) == 1
""")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_module_fixture_keeps_it*"])


def test_ini_option(run, pytester: pytest.Pytester) -> None:  # type: ignore[no-untyped-def]
    pytester.makeini("[pytest]\npypool_leaks = true\n")
    result = run("""
def test_leaky():
    stash(1)
""")
    result.assert_outcomes(passed=1, errors=1)


def test_help_lists_the_option(run) -> None:  # type: ignore[no-untyped-def]
    result = run("", "--help")
    result.stdout.fnmatch_lines(["*--pypool-leaks*"])


def test_entry_point_loads_the_plugin(run, pytester: pytest.Pytester,  # type: ignore[no-untyped-def]
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The entry point pyproject.toml declares, on a distribution of its own on the path,
    # so that this runs whether or not the checkout has been pip-installed.
    dist = pytester.path / "site" / "pypool_entry_probe-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: pypool-entry-probe\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text("[pytest11]\npypool = pypool.pytest_plugin\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(dist.parent), os.environ["PYTHONPATH"]]))
    monkeypatch.delenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD")
    result = run("""
def test_leaky():
    stash(1)
""", "--pypool-leaks", plugin=False)
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*test_leaky left 1 allocation live after teardown*"])


def test_plugin_import_has_no_side_effects() -> None:
    # Loaded in every pytest run of every project with pypool installed: it must not
    # import torch, turn on stack capture or make a pool.
    code = ("import sys; import pypool.pytest_plugin as p; from pypool import _context, _core; "
            "print(_context._registry_sticky, 'torch' in sys.modules, bool(_core.registry_devices()))")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tempfile.gettempdir())
    assert out.stdout.split() == ["False", "False", "False"]
