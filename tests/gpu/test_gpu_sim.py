"""Scenarios that need the simulated device's controls, and torch's own allocator as a
baseline on the same device.

Tests that read the simulation's call counters or resize its memory skip on a real GPU
(there is no such panel there); the rest run on both. Run with
``python -m pypool simdevice --devices 2 -- pytest tests/gpu``.
"""

from __future__ import annotations

from typing import Callable

import pytest

RunChild = Callable[..., str]

pytestmark = pytest.mark.gpu

PRELUDE = """
import sys
import pypool
from pypool import memory as pm, _core, simdevice

MiB = 1 << 20
GiB = 1 << 30

# The calls that get or give back device memory: what an allocator's fallback chain costs.
MEMORY_CALLS = ("cudaMalloc", "cudaFree", "cudaMallocAsync", "cudaFreeAsync", "cudaMemGetInfo",
                "cuMemAlloc_v2", "cuMemFree_v2", "cuMemGetInfo_v2", "cuMemCreate", "cuMemRelease",
                "cuMemMap", "cuMemUnmap", "cuMemSetAccess", "cuMemAddressReserve", "cuMemAddressFree")


def memory_calls(ctl):
    c = ctl.counters()
    return {k: c[k] for k in MEMORY_CALLS if c.get(k)}
"""


def _need_sim() -> None:
    import torch  # noqa: F401  (loads the simulated libraries when they are in use)

    from pypool import simdevice

    if not simdevice.active():
        pytest.skip("needs the simulated device's control panel (counters, memory size)")


def test_torch_native_allocator_on_this_device(run_child: RunChild) -> None:
    # The baseline every comparison uses: PyTorch's own CUDACachingAllocator works here,
    # its statistics, OOM error, empty_cache and expandable segments included.
    for conf in ("", "expandable_segments:True"):
        run_child(PRELUDE + """
import torch
assert torch.cuda.is_available() and torch.cuda.device_count() >= 1
x = torch.empty(3 * MiB, dtype=torch.uint8, device="cuda")
st = torch.cuda.memory_stats()
assert st["allocated_bytes.all.current"] == 3 * MiB, st
assert torch.cuda.memory_reserved() >= 3 * MiB
assert torch.cuda.caching_allocator_alloc(1000) != 0
del x
torch.cuda.empty_cache()
free, total = torch.cuda.mem_get_info()
assert 0 < free <= total
try:
    torch.empty(2 * total, dtype=torch.uint8, device="cuda")
except torch.OutOfMemoryError as e:
    assert "out of memory" in str(e)
else:
    raise AssertionError("no OOM for twice the device")
snap = torch.cuda.memory._snapshot()
assert "segments" in snap
print("CHILD OK")
""", env={"PYTORCH_CUDA_ALLOC_CONF": conf} if conf else None)


@pytest.mark.parametrize("mode", ["default", "expandable"])
def test_impossible_request_is_refused_within_ten_driver_calls(run_child: RunChild, mode: str) -> None:
    _need_sim()
    out = run_child(PRELUDE + """
import torch
expandable = sys.argv[1] == "expandable"
pypool.install(expandable_segments=expandable)
ctl = simdevice.control()
keep = torch.empty(8 * MiB, dtype=torch.uint8, device="cuda")
total = torch.cuda.get_device_properties(0).total_memory
ctl.reset_counters()
try:
    torch.empty(total + 120 * GiB, dtype=torch.uint8, device="cuda")
except RuntimeError as e:
    assert "out of memory" in str(e), e
else:
    raise AssertionError("a request past the device was served")
calls = memory_calls(ctl)
print("memory calls", calls)
assert sum(calls.values()) <= 10, calls
# Nothing was left mapped or allocated by the failed attempt.
assert ctl.used(0) == pm.memory_reserved(0), (ctl.used(0), pm.memory_reserved(0))
pm.get_pool(0).check_invariants()
print("CHILD OK")
""", mode)
    assert "memory calls" in out


def test_out_of_memory_when_the_device_is_the_limit(run_child: RunChild) -> None:
    # No cap: the simulated device itself (512 MiB) runs out. pypool releases its cache
    # before it gives up, and says how much the device has.
    _need_sim()
    run_child(PRELUDE + """
import torch
pypool.install()
ctl = simdevice.control()
assert ctl.total(0) == 512 * MiB
a = torch.empty(200 * MiB, dtype=torch.uint8, device="cuda")
b = torch.empty(200 * MiB, dtype=torch.uint8, device="cuda")
del b  # cached by the pool, not given back
assert ctl.used(0) >= 400 * MiB
c = torch.empty(300 * MiB, dtype=torch.uint8, device="cuda")  # fits only once the cache is released
assert ctl.used(0) <= 512 * MiB
try:
    torch.empty(100 * MiB, dtype=torch.uint8, device="cuda")
except RuntimeError as e:
    msg = str(e)
else:
    raise AssertionError("more than the device was served")
assert msg.startswith("CUDA out of memory. Tried to allocate 100.00 MiB. GPU 0 has"), msg
del a, c
torch.cuda.empty_cache()
assert ctl.used(0) == 0 and pm.memory_reserved(0) == 0
print("CHILD OK")
""", env={"PYPOOL_SIM_MEMORY": str(512 << 20)})


def test_record_stream_waits_for_an_event_the_test_holds_open(run_child: RunChild) -> None:
    # The event pypool records for Tensor.record_stream stays incomplete for as long as
    # the simulation holds the stream: the block must not be reused before, and must be
    # once the work completes, without any synchronize from the test.
    _need_sim()
    run_child(PRELUDE + """
import torch
pypool.install()
ctl = simdevice.control()
side = torch.cuda.Stream()
pool = None
x = torch.empty(6 * MiB, dtype=torch.uint8, device="cuda")
pool = pm.get_pool(0)
addr = x.data_ptr()
ctl.hold_stream(side.cuda_stream)
with torch.cuda.stream(side):
    x.add_(1)  # a kernel on the side stream: pending
x.record_stream(side)
del x
assert ctl.pending_work(side.cuda_stream) >= 1
for _ in range(3):
    y = torch.empty(6 * MiB, dtype=torch.uint8, device="cuda")
    assert y.data_ptr() != addr
    del y
st = {b["address"]: b["state"] for s in pool.segments() for b in s["blocks"]}
assert st[addr] == "active_pending_free", st[addr]
ctl.complete_stream(side.cuda_stream)  # the event completes; no synchronize anywhere
assert ctl.pending_work(side.cuda_stream) == 0
y = torch.empty(6 * MiB, dtype=torch.uint8, device="cuda")
assert y.data_ptr() == addr, (hex(y.data_ptr()), hex(addr))
del y
ctl.hold_stream(side.cuda_stream, False)
pool.check_invariants()
print("CHILD OK")
""")


def test_leak_tracking_and_snapshots_through_torch(run_child: RunChild, tmp_path: object) -> None:
    run_child(PRELUDE + """
import pickle
import torch
pypool.install()
pypool.record_history(True)
keep = []
with pypool.track_leaks() as leaks:
    tmp = torch.empty(3 * MiB, dtype=torch.uint8, device="cuda")
    keep.append(torch.empty(5 * MiB, dtype=torch.uint8, device="cuda"))  # survives the scope
    del tmp
rep = leaks.report()
assert rep.count == 1 and rep.requested_bytes == 5 * MiB, rep.to_text()
assert "test" in rep.to_text() or "child" in rep.to_text(), rep.to_text()
snap = pypool.snapshot(0)
segs = snap["segments"]
assert sum(s["allocated_size"] for s in segs) == pm.memory_allocated(0)
actions = {e["action"] for e in snap["device_traces"][0]}
assert {"alloc", "free_requested", "segment_alloc"} <= actions, actions
path = pypool.dump_snapshot("snap.pickle", 0)
with open(path, "rb") as f:
    assert pickle.load(f)["segments"]
# torch's own offline tool reads it.
from torch.cuda import _memory_viz
text = _memory_viz.segsum(pickle.load(open(path, "rb")))
assert "segment" in text.lower()
print("CHILD OK")
""")


def test_a_stream_waits_for_every_stream_it_waits_on(run_child: RunChild) -> None:
    # torch's wait_stream is cudaEventRecord + cudaStreamWaitEvent: after two of them,
    # work on the waiting stream completes only once both streams have (the simulation
    # once kept only the last wait), and the waiting stream reads as busy until then.
    _need_sim()
    run_child(PRELUDE + """
import torch
ctl = simdevice.control()
s1, s2, s3 = torch.cuda.Stream(), torch.cuda.Stream(), torch.cuda.Stream()
x = torch.empty(MiB, dtype=torch.uint8, device="cuda")
for s in (s1, s2):
    ctl.hold_stream(s.cuda_stream)
    with torch.cuda.stream(s):
        x.add_(1)
s3.wait_stream(s2)
s3.wait_stream(s1)
with torch.cuda.stream(s3):
    x.add_(1)
done = s3.record_event()
ctl.hold_stream(s1.cuda_stream, False)  # s1's work completes; s2's does not
assert s1.query() and not s2.query()
assert not done.query() and not s3.query()
ctl.hold_stream(s2.cuda_stream, False)
assert done.query() and s3.query()
# A wait alone keeps a stream busy, and synchronizing it completes what it waits for.
ctl.hold_stream(s1.cuda_stream)
with torch.cuda.stream(s1):
    x.add_(1)
s2.wait_stream(s1)
assert not s2.query()
s2.synchronize()
assert s1.query() and s2.query()
ctl.hold_stream(s1.cuda_stream, False)
print("CHILD OK")
""")
