"""Torch tracebacks as history stacks (Note [Torch tracebacks] in
csrc/bindings/stack_capture.cpp), the parts that need no GPU: the choice of hook, the
look-up of torch ids, the trimming of C++ frames, and (with CPU torch) capture and
collection on a registry pool of the host backend, in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import pypool
from pypool import _context, _core


def _frame(name: str) -> dict:
    return {"filename": "??", "line": 0, "name": name}


def test_cpp_frames_start_at_pypools_entry_point() -> None:
    inner = [_frame("torch::unwind::unwind()"), _frame("torch::CapturedTraceback::gather(bool, bool, bool)"),
             _frame("std::once_flag::misnamed")]
    outer = [_frame("pypool_malloc"), _frame("at::native::rand(...)"),
             {"filename": "x.py", "line": 3, "name": "f"}]
    assert _context._from_entry_point(inner + outer) == outer
    free = [_frame("pypool_free"), _frame("c10::StorageImpl::~StorageImpl()")]
    assert _context._from_entry_point(inner + free) == free
    python_only = [{"filename": "x.py", "line": 3, "name": "f"}, {"filename": "x.py", "line": 9, "name": "<module>"}]
    assert _context._from_entry_point(python_only) == python_only
    assert _context._from_entry_point(inner) == inner  # no entry point: nothing cut


def test_unknown_torch_ids_have_no_frames() -> None:
    # An id whose traceback was collected (or never made) reads as no stack, never raises;
    # ids of both kinds are looked up together.
    gone = _context.TORCH_BIT | (1 << 40)
    assert _core.TORCH_CONTEXT_BIT == 1 << 63 == _context.TORCH_BIT
    assert _core.torch_tracebacks([gone]) == [None]
    assert _context.frames(gone) == []
    assert _context.frames_of([gone, 0, gone]) == {gone: [], 0: []}


def test_hook_names_and_pools_checked() -> None:
    p = pypool.Pool(backend="host", capacity=1 << 26)
    with pytest.raises(ValueError, match="hook: expected 'native', 'torch_python' or 'torch_all'"):
        p._pool.set_capture_context(True, "torch")
    a = p._pool.malloc(4096, 0)
    assert [b["context"] for s in p.segments() for b in s["blocks"] if b["address"] == a] == [0]  # still off
    p._pool.free(a)
    with pytest.raises(ValueError, match="stacks: expected None, 'python' or 'all'"):
        _context.use_torch_stacks(p._pool, "cpp")
    with pytest.raises(ValueError, match="only registry pools"):
        _context.use_torch_stacks(p._pool, "python")
    assert _context.torch_stacks(p._pool) is None
    _context.use_torch_stacks(p._pool, None)  # the native walker: always allowed


def test_torch_stacks_need_torch_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    core = _core.registry_pool(0)
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    with pytest.raises(RuntimeError, match=r"use_torch_stacks\('python'\): import torch first"):
        _context.use_torch_stacks(core, "python")
    assert _context.torch_stacks(core) is None  # nothing changed


def test_capture_and_collection_with_cpu_torch(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    code = textwrap.dedent("""
        import torch
        import pypool
        from pypool import _context, _core
        from pypool.snapshot import record_history, snapshot
        if _core.cuda_device_count()[0] != 0:
            print("OK")  # a GPU machine: tests/gpu/test_torch_stacks.py covers it
            raise SystemExit
        record_history(max_entries=50)
        core = _core.registry_pool(0)
        _context.use_torch_stacks(core, "python")

        def torch_site():
            return core.malloc(1000, 0)

        kept = torch_site()
        ctx = [b["context"] for s in core.segments() for b in s["blocks"] if b["address"] == kept]
        assert ctx[0] & _context.TORCH_BIT, ctx
        for _ in range(20000):  # more than two collections' worth (kMinCollect 4096)
            core.free(core.malloc(512, 0))
        assert _core.torch_traceback_collections() >= 2
        n = _core.torch_traceback_count()
        assert n <= 100 + 2 * 4096, n  # named ids (ring of 50, one block) plus two thresholds
        snap = snapshot(device=0)
        names = [f["name"] for s in snap["segments"] for b in s["blocks"] if b["address"] == kept
                 for f in b["frames"]]
        assert names[:2] == ["torch_site", "<module>"], names
        assert all(e["frames"] for e in snap["device_traces"][0] if e["action"] == "alloc")
        # Back to the native walker while capture stays on; history off drops the ring,
        # and two collections leave only the live block's traceback.
        _context.use_torch_stacks(core, None)
        b = torch_site()
        ctx = [b2["context"] for s in core.segments() for b2 in s["blocks"] if b2["address"] == b]
        assert 0 < ctx[0] < _context.TORCH_BIT, ctx
        record_history(False)
        _core.torch_traceback_collect()
        _core.torch_traceback_collect()
        assert _core.torch_traceback_count() == 1, _core.torch_traceback_count()
        core.free(b)
        core.free(kept)
        print("OK")
    """)
    env = dict(os.environ, PYTHONPATH=str(Path(pypool.__file__).resolve().parent.parent))
    env.pop("PYPOOL_CONF", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env,
                         cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK"
