"""Leak detection: track_leaks scopes, LeakWatch and the exit check (pypool.leaks)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, List

import pytest

import pypool
from pypool import _context, _core, leaks
from pypool.config import PoolConfig
from pypool.leaks import (LeakError, LeakReport, LeakWarning, LeakWatch, LeakWatchReport,
                          format_stack, track_leaks)

ROOT = Path(__file__).resolve().parents[2]
PKG_PARENT = str(Path(pypool.__file__).resolve().parent.parent)  # the pypool under test
MiB = 1 << 20


def _line_of(marker: str) -> int:
    """Line number in this file of the line holding ``marker`` (outside this function)."""
    for i, text in enumerate(Path(__file__).read_text().splitlines(), 1):
        if marker in text and "_line_of" not in text:
            return i
    raise AssertionError(f"marker {marker!r} not found")


def _leak_into(pool: pypool.Pool, keep: List[int], n: int, size: int = MiB) -> None:
    for _ in range(n):
        keep.append(pool.malloc(size))  # LEAK-SITE


def _temporary(pool: pypool.Pool, size: int) -> None:
    pool.free(pool.malloc(size))


@pytest.fixture
def pool() -> Iterator[pypool.Pool]:
    p = pypool.Pool("host", capacity=1 << 30)
    yield p
    p.check_invariants()


@pytest.fixture
def host_registry() -> Iterator[pypool.Pool]:
    """The process-wide registry configured with a host backend; pool of device 0."""
    _core.registry_reset()
    _core.registry_configure("host", PoolConfig().to_core(), 1 << 30)
    reg = pypool.Pool._wrap(_core.registry_pool(0))
    yield reg
    for b in reg.live_blocks():
        reg.free(b["address"])
    _core.registry_reset()


def _free_all(pool: pypool.Pool, ptrs: List[int]) -> None:
    for p in ptrs:
        pool.free(p)
    ptrs.clear()


# ---------------------------------------------------------------------------- track_leaks

def test_real_leak_is_found_at_its_call_site(pool: pypool.Pool) -> None:
    keep: List[int] = []
    with track_leaks(pool=pool) as tracker:
        _leak_into(pool, keep, 3)
        _temporary(pool, 4096)
    report = tracker.report()
    assert isinstance(report, LeakReport)
    assert report.count == 3
    assert report.total_bytes == 3 * MiB and report.requested_bytes == 3 * MiB
    [group] = report.groups
    line = _line_of("# LEAK-SITE")
    assert (group.filename, group.line, group.function) == (__file__, line, "_leak_into")
    assert sorted(b.address for b in group.blocks) == sorted(keep)
    # the stack goes on to the caller: this test function
    frames = group.blocks[0].frames
    assert any(f["name"] == "test_real_leak_is_found_at_its_call_site" for f in frames)
    text = str(report)
    assert f"test_leaks.py:{line} _leak_into" in text
    assert "3 blocks" in text and "3.00 MiB" in text
    assert "frame in pypool" in text  # Pool.malloc is folded, not shown
    _free_all(pool, keep)


def test_freed_before_and_cached_blocks_are_not_leaks(pool: pypool.Pool) -> None:
    before = pool.malloc(MiB)          # allocated before the scope, still live
    freed_inside = pool.malloc(2 * MiB)  # allocated before, freed inside
    _temporary(pool, 8 * MiB)          # leaves a cached free block
    with track_leaks(pool=pool) as tracker:
        pool.free(freed_inside)
        _temporary(pool, 3 * MiB)      # allocated and freed inside
        x = pool.malloc(8 * MiB)       # reuses the cached block...
        pool.free(x)                   # ...and gives it back
    assert pool.memory_reserved() > pool.memory_allocated()  # cached blocks exist
    report = tracker.report()
    assert report.count == 0 and not report and report.groups == []
    assert "none" in report.to_text()
    tracker.assert_no_leaks()
    pool.free(before)


def test_report_is_fixed_when_the_scope_closes(pool: pypool.Pool) -> None:
    with track_leaks(pool=pool) as tracker:
        a = pool.malloc(MiB)
        assert tracker.active
        assert tracker.report().count == 1  # inside: live so far
        b = pool.malloc(MiB)
    after = pool.malloc(MiB)  # after the scope: never part of it
    pool.free(a)              # freed after the scope closed: still a leak of the scope
    assert not tracker.active
    report = tracker.report()
    assert sorted(x.address for x in report.blocks) == sorted([a, b])
    assert tracker.end_seq - tracker.start_seq == 2
    pool.free(b)
    pool.free(after)


def test_assert_no_leaks_raises_leak_error_with_report(pool: pypool.Pool) -> None:
    keep: List[int] = []
    with track_leaks(pool=pool) as tracker:
        _leak_into(pool, keep, 2, size=1000)
    with pytest.raises(LeakError) as info:
        tracker.assert_no_leaks()
    assert isinstance(info.value, AssertionError)
    assert info.value.report is tracker.report()
    assert "_leak_into" in str(info.value) and "2 blocks" in str(info.value)
    assert info.value.report.requested_bytes == 2000
    _free_all(pool, keep)


def test_groups_are_largest_first_and_serialise(pool: pypool.Pool) -> None:
    keep: List[int] = []
    small: List[int] = []
    with track_leaks(pool=pool) as tracker:
        _leak_into(pool, small, 4, size=4096)
        keep.append(pool.malloc(5 * MiB))  # BIG-SITE
    report = tracker.report()
    assert [g.line for g in report.groups] == [_line_of("# BIG-SITE"), _line_of("# LEAK-SITE")]
    assert [g.count for g in report.groups] == [1, 4]
    d = json.loads(json.dumps(report.to_dict()))
    assert d["count"] == 5 and d["total_bytes"] == 5 * MiB + 4 * 4096
    assert d["groups"][1]["function"] == "_leak_into"
    assert d["groups"][1]["blocks"][0]["frames"][0]["name"] == "malloc"  # innermost first
    assert d["stacks_captured"] is True
    _free_all(pool, keep)
    _free_all(pool, small)


def test_age_uses_the_monotonic_clock(pool: pypool.Pool) -> None:
    with track_leaks(pool=pool) as tracker:
        p = pool.malloc(MiB)
        time.sleep(0.05)
    [block] = tracker.report().blocks
    # steady_clock and time.monotonic share CLOCK_MONOTONIC: the age is the sleep plus a
    # little, never the distance between two unrelated clock origins.
    assert block.age_s is not None and 0.05 <= block.age_s < 60
    pool.free(p)


def test_without_stacks_groups_by_size_and_stream(pool: pypool.Pool) -> None:
    keep: List[int] = []
    with track_leaks(pool=pool, capture_stacks=False) as tracker:
        _leak_into(pool, keep, 2, size=MiB)
        keep.append(pool.malloc(4096, stream=7))
    report = tracker.report()
    assert not report.stacks_captured
    assert [(g.count, g.streams, g.filename) for g in report.groups] == [(2, [0], None), (1, [7], None)]
    assert all(b.frames == () and b.age_s is None for b in report.blocks)
    assert "stack capture was off" in str(report) and "(no stack) 1.00 MiB blocks on stream 0" in str(report)
    _free_all(pool, keep)


def test_capture_is_released_and_refcounted(pool: pypool.Pool) -> None:
    with track_leaks(pool=pool) as outer:
        with track_leaks(pool=pool) as inner:
            a = pool.malloc(4096)
        b = pool.malloc(4096)  # inner closed: outer still captures
    c = pool.malloc(4096)      # both closed: no capture
    contexts = {x["address"]: x["context"] for x in pool.live_blocks()}
    assert contexts[a] != 0 and contexts[b] != 0 and contexts[c] == 0
    assert [x.address for x in inner.report().blocks] == [a]
    assert [x.address for x in outer.report().blocks] == [a, b]
    for p in (a, b, c):
        pool.free(p)


def test_tracker_is_single_use_and_needs_entering(pool: pypool.Pool) -> None:
    tracker = track_leaks(pool=pool)
    with pytest.raises(RuntimeError, match="not been entered"):
        tracker.report()
    with tracker:
        pass
    with pytest.raises(RuntimeError, match="single-use"):
        tracker.__enter__()


def test_tracker_with_concurrent_threads(pool: pypool.Pool) -> None:
    n_threads, per_thread = 4, 150
    kept: List[List[int]] = [[] for _ in range(n_threads)]
    start = threading.Barrier(n_threads + 1)

    def work(i: int) -> None:
        start.wait()
        for j in range(per_thread):
            if j % 3 == 0:
                _leak_into(pool, kept[i], 1, size=512 * (i + 1))
            else:
                _temporary(pool, 4096 + j)

    with track_leaks(pool=pool) as tracker:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(n_threads)]
        for t in threads:
            t.start()
        start.wait()
        for t in threads:
            t.join()
    report = tracker.report()
    expected = sorted(p for ks in kept for p in ks)
    assert sorted(b.address for b in report.blocks) == expected
    assert len(expected) == n_threads * per_thread // 3
    [group] = report.groups  # every survivor comes from the one call site
    assert group.function == "_leak_into" and group.line == _line_of("# LEAK-SITE")
    assert all(any(f["name"] == "work" for f in b.frames) for b in report.blocks)
    for ks in kept:
        _free_all(pool, ks)
    pool.check_invariants()


def test_allocations_racing_with_scope_end_are_left_out(pool: pypool.Pool) -> None:
    stop = threading.Event()
    kept: List[int] = []
    lock = threading.Lock()

    def spin() -> None:
        # Bounded: never frees, so an unbounded spinner on a slow scope could fill the pool
        # (1 GiB / 4 KiB = 262k; up to 20k seen under load).
        while not stop.is_set() and len(kept) < 100_000:
            p = pool.malloc(4096)
            with lock:
                kept.append(p)

    t = threading.Thread(target=spin)
    t.start()
    try:
        with track_leaks(pool=pool, capture_stacks=False) as tracker:
            # Wait for allocations inside the scope, not for a fixed time: on a loaded
            # machine the spinner may not run at all in 10 ms (seen in CI: count 0).
            with lock:
                seen = len(kept)
            deadline = time.monotonic() + 30.0
            while time.monotonic() < deadline:
                time.sleep(0.005)
                with lock:
                    if len(kept) >= seen + 20:
                        break
    finally:
        stop.set()
        t.join()
    report = tracker.report()
    assert report.count > 0
    assert all(tracker.start_seq <= b.seq < tracker.end_seq for b in report.blocks)
    assert report.count == tracker.end_seq - tracker.start_seq  # nothing freed: all of them
    _free_all(pool, kept)


def test_format_stack_folds_library_frames() -> None:
    torch_dir = _context._torch_dir()
    assert torch_dir is not None  # torch is installed in the test environment
    frames = [
        {"filename": os.path.join(torch_dir, "nn", "modules", "linear.py"), "line": 10, "name": "__init__"},
        {"filename": os.path.join(torch_dir, "nn", "modules", "module.py"), "line": 20, "name": "_call_impl"},
        {"filename": str(ROOT / "examples" / "model.py"), "line": 30, "name": "build"},
        {"filename": os.path.join(os.path.dirname(pypool.__file__), "_pool.py"), "line": 5, "name": "malloc"},
        {"filename": str(ROOT / "examples" / "train.py"), "line": 40, "name": "main"},
        {"filename": "/usr/lib/python3/site-packages/_pytest/python.py", "line": 1, "name": "call"},
        {"filename": "/usr/lib/python3/site-packages/pluggy/_hooks.py", "line": 2, "name": "hook"},
    ]
    lines = format_stack(frames)
    assert lines == [
        "… 2 frames in torch",
        f"{os.path.relpath(str(ROOT / 'examples' / 'model.py'))}:30 build"
        if str(ROOT).startswith(os.getcwd()) else f"{ROOT / 'examples' / 'model.py'}:30 build",
        "… 1 frame in pypool",
        f"{os.path.relpath(str(ROOT / 'examples' / 'train.py'))}:40 main"
        if str(ROOT).startswith(os.getcwd()) else f"{ROOT / 'examples' / 'train.py'}:40 main",
        "… 2 frames in _pytest, pluggy",
    ]
    assert _context.call_site(frames)["name"] == "build"
    assert format_stack(frames, max_user_frames=1)[-1] == "… 3 more frames"


def test_pool_and_device_arguments(pool: pypool.Pool) -> None:
    with pytest.raises(ValueError, match="pool, device"):
        track_leaks(pool=pool, device=0)
    with pytest.raises(TypeError, match="pool: expected a pypool.Pool"):
        track_leaks(pool=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device: device index must be >= 0"):
        track_leaks(device=-1)
    with pytest.raises(ValueError, match="device: expected 'cuda'"):
        track_leaks(device="tpu")
    with pytest.raises(TypeError, match="device"):
        track_leaks(device=1.5)
    # the native pool is accepted too
    with track_leaks(pool=pool._pool) as tracker:
        p = pool.malloc(10)
    assert tracker.report().count == 1 and tracker.device == 0
    pool.free(p)


def test_registry_pool_by_default(host_registry: pypool.Pool) -> None:
    keep: List[int] = []
    with track_leaks() as tracker:  # device None -> 0 on a machine without CUDA in use
        _leak_into(host_registry, keep, 2)
    assert tracker.device == 0 and tracker.report().count == 2
    with track_leaks(device="cuda:0") as tracker2:
        _temporary(host_registry, MiB)
    assert tracker2.report().count == 0
    _free_all(host_registry, keep)


def test_unconfigured_registry_refuses_a_device_that_does_not_exist() -> None:
    # Note [Pools before install]: without a GPU the host backend stands in for device 0.
    _core.registry_reset()
    with pytest.raises(ValueError, match="no device 3: pypool sees no GPU here"):
        track_leaks(device=3)
    assert 3 not in _core.registry_devices()  # the refusal made no pool
    assert not _core.registry_configured()


# ---------------------------------------------------------------------------- LeakWatch

def _steady_step(pool: pypool.Pool, state: List[int]) -> None:
    """One iteration of a loop without a leak: temporaries, and a tensor replaced."""
    _temporary(pool, 3 * MiB)
    new = pool.malloc(2 * MiB)
    if state:
        pool.free(state.pop())
    state.append(new)


def test_leakwatch_detects_growth_and_names_the_site(pool: pypool.Pool) -> None:
    keep: List[int] = []
    state: List[int] = []
    with LeakWatch(pool=pool, warmup=2, window=6, min_growth=4 * MiB, capture_stacks=True) as watch:
        with pytest.warns(LeakWarning) as record:
            for _ in range(2 + 6):
                _steady_step(pool, state)
                _leak_into(pool, keep, 1)
                watch.step()
    assert len(record) == 1 and len(watch.reports) == 1
    report = watch.reports[0]
    assert isinstance(report, LeakWatchReport)
    assert report.growth_bytes == 5 * MiB and report.slope_bytes_per_step == pytest.approx(MiB)
    assert not report.weak
    [suspect] = report.suspects  # the replaced tensor survives from one step: not a suspect
    assert suspect.site.endswith(f"test_leaks.py:{_line_of('# LEAK-SITE')} _leak_into")
    assert suspect.steps == 5 and suspect.bytes == 5 * MiB
    assert f"test_leaks.py:{_line_of('# LEAK-SITE')} _leak_into" in str(record[0].message)
    assert record[0].filename == __file__  # warned at the caller of step()
    _free_all(pool, keep)
    _free_all(pool, state)


def test_leakwatch_quiet_on_steady_and_sawtooth_loops(pool: pypool.Pool) -> None:
    state: List[int] = []
    acc: List[int] = []
    watch = LeakWatch(pool=pool, warmup=1, window=5, min_growth=MiB)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LeakWarning)
        for i in range(60):
            _steady_step(pool, state)
            acc.append(pool.malloc(2 * MiB))  # gradient accumulation: 4 up, then all freed
            if len(acc) == 4:
                _free_all(pool, acc)
            watch.step()
    assert watch.reports == []
    jump = LeakWatch(pool=pool, warmup=1, window=6, min_growth=MiB, callback=pytest.fail)
    for i in range(30):
        _steady_step(pool, state)
        if i == 15:
            state.insert(0, pool.malloc(64 * MiB))  # a cache filled once: a jump, not a leak
        jump.step()
    assert len(watch.history) == 60 and watch.history[0][0] == 1
    assert jump.reports == [] and jump.history[15][1] - jump.history[14][1] == 64 * MiB
    _free_all(pool, state)
    _free_all(pool, acc)


@pytest.mark.parametrize("samples, min_growth, expected", [
    (list(range(10)), 1, True),                        # a clean leak
    (list(range(10)), 10, False),                      # (1) fitted growth 9 < 10
    ([0, 9, 2, 3, 1, 8, 4, 12, 10, 14], 1, False),     # (2) R² 0.52: noise, not a line
    ([0, 10, 9, 8, 7, 17, 16, 15, 14, 24], 1, False),  # (3) 2 of 9 changes upward
    ([0, 0, 0, 0, 0, 64, 64, 64, 64, 64], 1, False),   # (4) one jump: second half flat
    ([0, 2, 4, 6, 0, 2, 4, 6, 0, 2], 1, False),        # sawtooth
    ([0, 1, 2], 1, False),                             # too few samples
])
def test_steady_growth_rule(samples: List[int], min_growth: int, expected: bool) -> None:
    assert leaks.steady_growth(samples, min_growth) is expected


def _noisy_step(pool: pypool.Pool, state: List[int], rng: random.Random, width_mib: int) -> None:
    """A batch of random size kept until the next iteration: noise without a trend."""
    new = pool.malloc(rng.randrange(1, width_mib + 1) * MiB)
    if state:
        pool.free(state.pop())
    state.append(new)


def test_leakwatch_quiet_on_noise_and_finds_a_leak_under_it(pool: pypool.Pool) -> None:
    rng = random.Random(1234)
    state: List[int] = []
    quiet = LeakWatch(pool=pool, warmup=0, window=10, min_growth=MiB, callback=pytest.fail)
    for _ in range(120):
        _noisy_step(pool, state, rng, 16)
        quiet.step()
    assert quiet.reports == []

    keep: List[int] = []
    got: List[LeakWatchReport] = []
    watch = LeakWatch(pool=pool, warmup=0, window=10, min_growth=MiB, callback=got.append)
    for _ in range(40):
        _noisy_step(pool, state, rng, 4)
        _leak_into(pool, keep, 1)
        watch.step()
        if got:
            break
    assert got, "a 1 MiB/step leak under 4 MiB of noise was not reported in 40 steps"
    assert got[0].suspects[0].site == "(no stack) 1.00 MiB blocks on stream 0"
    _free_all(pool, keep)
    _free_all(pool, state)


def test_leakwatch_callback_without_stacks(pool: pypool.Pool) -> None:
    keep: List[int] = []
    got: List[LeakWatchReport] = []
    watch = LeakWatch(pool=pool, warmup=0, window=4, min_growth="2MiB", callback=got.append)
    results = []
    for _ in range(9):
        _leak_into(pool, keep, 1)
        results.append(watch.step())
    # a report at step 4, then a fresh window: the next at step 8
    assert [r is not None for r in results] == [False, False, False, True, False, False, False, True, False]
    assert got == [r for r in results if r is not None]
    assert [s.site for s in got[0].suspects] == ["(no stack) 1.00 MiB blocks on stream 0"]
    assert not got[0].stacks_captured and "stack capture is off" in str(got[0])
    assert got[1].samples[0][0] == 5
    json.dumps(got[0].to_dict())
    watch.reset()
    assert watch.history == [] and watch.steps == 0 and len(watch.reports) == 2
    _free_all(pool, keep)


def test_leakwatch_arguments(pool: pypool.Pool) -> None:
    with pytest.raises(ValueError, match="window"):
        LeakWatch(pool=pool, window=3)
    with pytest.raises(ValueError, match="warmup"):
        LeakWatch(pool=pool, warmup=-1)
    with pytest.raises(ValueError, match="min_growth"):
        LeakWatch(pool=pool, min_growth=0)
    with pytest.raises(TypeError, match="callback"):
        LeakWatch(pool=pool, callback=42)  # type: ignore[arg-type]


def test_leakwatch_close_releases_capture(pool: pypool.Pool) -> None:
    watch = LeakWatch(pool=pool, capture_stacks=True)
    a = pool.malloc(64)
    watch.close()
    watch.close()
    b = pool.malloc(64)
    ctx = {x["address"]: x["context"] for x in pool.live_blocks()}
    assert ctx[a] != 0 and ctx[b] == 0
    pool.free(a)
    pool.free(b)


# ---------------------------------------------------------------------------- exit check

_EXIT_SCRIPT = """
import pypool
from pypool import _context, _core, leaks
from pypool.config import PoolConfig

_core.registry_configure("host", PoolConfig().to_core(), 1 << 30)
{make_pool_first}
leaks.enable_exit_check()
leaks.enable_exit_check()  # idempotent: one report
pool = pypool.Pool._wrap(_core.registry_pool(0))
KEEP = []

def hold_on():
    KEEP.append(pool.malloc(3 << 20))  # EXIT-SITE

for _ in range({n}):
    hold_on()
pool.free(pool.malloc(1 << 20))
"""


def _run_script(tmp_path: Path, source: str, env_extra: dict) -> subprocess.CompletedProcess:
    script = tmp_path / "leaky_script.py"
    script.write_text(textwrap.dedent(source))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PKG_PARENT, env.get("PYTHONPATH", "")]))
    env.update(env_extra)
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=env, cwd=str(tmp_path), timeout=60)


def test_exit_check_names_the_call_site(tmp_path: Path) -> None:
    src = _EXIT_SCRIPT.format(make_pool_first="_core.registry_pool(0)", n=2)
    proc = _run_script(tmp_path, src, {"PYPOOL_LEAK_CHECK": "1"})
    assert proc.returncode == 0, proc.stderr
    line = next(i for i, t in enumerate(src.splitlines(), 1) if "# EXIT-SITE" in t)
    err = proc.stderr
    assert err.count("still live at exit") == 1, err
    assert "2 allocations, 6.00 MiB" in err
    assert f"leaky_script.py:{line} hold_on" in err
    assert proc.stdout == ""


def test_exit_check_clean_exit(tmp_path: Path) -> None:
    src = _EXIT_SCRIPT.format(make_pool_first="_core.registry_pool(0)", n=0)
    proc = _run_script(tmp_path, src, {})
    assert proc.returncode == 0, proc.stderr
    assert "still live at exit on device 0: none" in proc.stderr


def test_exit_check_from_the_environment_alone(tmp_path: Path) -> None:
    src = _EXIT_SCRIPT.format(make_pool_first="", n=1).replace("leaks.enable_exit_check()", "")
    proc = _run_script(tmp_path, src, {"PYPOOL_LEAK_CHECK": "1"})
    line = next(i for i, t in enumerate(src.splitlines(), 1) if "# EXIT-SITE" in t)
    assert f"leaky_script.py:{line} hold_on" in proc.stderr, proc.stderr


@pytest.mark.parametrize("value", ["false", 0, None])
def test_capture_stacks_must_be_a_bool(value: Any) -> None:
    pool = pypool.Pool(backend="host", capacity="64MiB")
    # bool("false") is True: the string used to switch stack capture on.
    with pytest.raises(TypeError, match="capture_stacks: expected True or False"):
        pypool.track_leaks(capture_stacks=value, pool=pool)
    with pytest.raises(TypeError, match="capture_stacks: expected True or False"):
        pypool.LeakWatch(capture_stacks=value, pool=pool)
    pool.check_invariants()
