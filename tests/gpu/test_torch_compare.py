"""PyTorch's own allocator on the user's trace (pypool.torch_compare), on the simulated
device: a small synthetic trace, 2 MiB steps, seconds per child (make test-sim)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import pypool
from pypool import simdevice
from pypool.simdevice import torch_has_cuda_libs as _torch_has_cuda_libs
from pypool.mincap import STEP
from pypool.trace import Trace

MiB = 1 << 20

pytestmark = pytest.mark.skipif(not simdevice.available() or _torch_has_cuda_libs() is not None,
                                reason="needs the simulated device built into pypool and torch's CUDA build")


def _trace() -> Trace:
    # Growing then shrinking large blocks with short-lived small ones between: the cache
    # must split or release to fit a tight device.
    acts, ids, sizes = [], [], []
    nid = 0
    live = []
    for k, mb in enumerate([6, 10, 14, 18, 22, 26, 12, 8, 30, 4]):
        acts.append(0); ids.append(nid); sizes.append(mb * MiB + 4096 * k); live.append(nid); nid += 1
        acts.append(0); ids.append(nid); sizes.append(512 * (k + 1)); nid += 1
        acts.append(1); ids.append(nid - 1); sizes.append(512 * (k + 1))
        if len(live) > 2:
            i = live.pop(0)
            acts.append(1); ids.append(i); sizes.append(sizes[ids.index(i)])
    for i in live:
        acts.append(1); ids.append(i); sizes.append(sizes[ids.index(i)])
    return Trace(acts, ids, sizes, name="synthetic")


def test_replay_compare_rows(tmp_path: Path) -> None:
    """``pypool replay TRACE --compare --json``: pypool's and PyTorch's rows (one run: each
    PyTorch child imports torch, seconds on a busy machine)."""
    t = _trace()
    path = tmp_path / "t.trace"
    t.save(str(path))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(pypool.__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "pypool", "replay", str(path), "--compare", "--capacity", "4GiB",
                           "--json"], env=env, capture_output=True, text=True, timeout=300, cwd=tempfile.gettempdir())
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    rows = {r["label"]: r for r in d["min_capacity"]}
    assert list(rows) == ["pypool", "pypool expandable", "PyTorch native", "PyTorch expandable"], d
    assert d["torch_note"] is None
    floor = t.peak_live()
    for label, r in rows.items():
        assert r["error"] is None, (label, r["error"])
        cap = r["min_capacity"]
        assert cap % STEP == 0 and cap >= floor and r["over_floor"] == pytest.approx(cap / floor)
        assert r["peak_reserved"] >= floor and r["device_allocs"] > 0
        assert r["sync_per_1k_allocs"] is not None and r["sync_at_min_per_1k_allocs"] is not None
    for label in ("PyTorch native", "PyTorch expandable"):
        att = rows[label]["attempts"]
        cap = rows[label]["min_capacity"]
        # The bisection's guarantee: passed there, failed one step below (or below the floor).
        assert [cap, True] in att and ([cap - STEP, False] in att or cap - STEP < floor), att
