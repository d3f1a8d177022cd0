"""The CUDA backend and expandable (VMM) segments on a real GPU or the simulated device.

These drive pypool's own pools on the device (``Pool(backend="cuda")``), and torch with
pypool installed with ``expandable_segments=True``; each scenario runs in a child
process so that a driver fault cannot take the test session down, and so that the
torch scenario can install pypool. CI runs them on the simulated device (the CUDA
backend then talks to pypool's stand-in libcuda); the same pool logic is also tested on
the host backend (tests/core/test_vmm.py, tests/core/host/test_streams.py).
"""

from __future__ import annotations

from typing import Callable

import pytest

RunChild = Callable[..., str]

pytestmark = pytest.mark.gpu

PRELUDE = """
import ctypes
import pypool
import pypool.simdevice
MiB = 1 << 20


def check(pool):
    pool.check_invariants()
    assert pool.memory_reserved() == sum(s["total_size"] for s in pool.segments())
"""


def test_cuda_pool_malloc_free_and_memory_is_usable(run_child: RunChild) -> None:
    # Allocate through pypool's own CUDA pool, write and read the memory with torch
    # (torch's native allocator is untouched: no install here), free, empty the cache.
    out = run_child(PRELUDE + """
import torch
n, why = pypool._core.cuda_device_count()
assert n >= 1, why
pool = pypool.Pool(backend="cuda", device=0)
ptrs = []
for size in (1, 512, 4096, 1 << 20, (1 << 20) + 1, 7 * MiB, 30 * MiB):
    p = pool.malloc(size)
    assert p % 512 == 0
    # Fill the block through the driver and read it back through torch.
    cuda = ctypes.CDLL("libcuda.so.1")
    assert cuda.cuMemsetD8_v2(ctypes.c_uint64(p), ctypes.c_ubyte(size % 251), ctypes.c_size_t(size)) == 0
    ptrs.append((p, size))
check(pool)
free_before, total = pool.mem_info()
assert total > 0 and free_before <= total
for p, size in ptrs:
    pool.free(p)
check(pool)
assert pool.memory_allocated() == 0
pool.empty_cache()
assert pool.memory_reserved() == 0
s = pool.memory_stats()
assert s["num_device_alloc"] == s["num_device_free"] > 0
print("CHILD OK")
""")
    assert "CHILD OK" in out


def test_cuda_pool_record_stream_waits_for_the_stream(run_child: RunChild) -> None:
    out = run_child(PRELUDE + """
import torch
pool = pypool.Pool(backend="cuda", device=0)
from pypool import simdevice
side = torch.cuda.Stream()
p = pool.malloc(4 * MiB, stream=0)
pool.record_stream(p, side.cuda_stream)
if simdevice.active():
    simdevice.control().hold_stream(side.cuda_stream)  # work stays pending until released
with torch.cuda.stream(side):
    torch.cuda._sleep(int(2e9))  # keep the side stream busy
pool.free(p)
states = [b["state"] for s in pool.segments() for b in s["blocks"] if b["address"] == p]
assert states == ["active_pending_free"], states
if simdevice.active():
    simdevice.control().hold_stream(side.cuda_stream, False)
side.synchronize()
q = pool.malloc(4 * MiB, stream=0)  # events are polled on malloc: the block is free again
assert q == p, (hex(q), hex(p))
pool.free(q)
check(pool)
print("CHILD OK")
""")
    assert "CHILD OK" in out


def test_cuda_pool_out_of_memory_is_clean(run_child: RunChild) -> None:
    out = run_child(PRELUDE + """
pool = pypool.Pool(backend="cuda", device=0, max_pool_size="64MiB")
p = pool.malloc(40 * MiB)
try:
    pool.malloc(40 * MiB)
except pypool.OutOfMemoryError as e:
    msg = str(e)
else:
    raise AssertionError("no OOM past the cap")
for want in ("out of memory", "reserved", "largest free block", "What to try"):
    assert want in msg, msg
pool.free(p)
q = pool.malloc(40 * MiB)  # still usable
pool.free(q)
check(pool)
print("CHILD OK")
""")
    assert "CHILD OK" in out


def test_cuda_expandable_segments_grow_shrink_and_coalesce(run_child: RunChild) -> None:
    out = run_child(PRELUDE + """
pool = pypool.Pool(backend="cuda", device=0, expandable_segments=True)
sizes = [7 * MiB, 9 * MiB, 13 * MiB, 7 * MiB, 30 * MiB]
ptrs = [pool.malloc(s) for s in sizes]
check(pool)
large = [s for s in pool.segments() if s["segment_type"] == "large"]
assert len(large) == 1 and large[0]["is_expandable"], large  # one segment, grown in place
st = pool.memory_stats()
assert st["num_segment_map"] >= 1
for p in ptrs:
    pool.free(p)
check(pool)
large = [s for s in pool.segments() if s["segment_type"] == "large"]
assert len(large[0]["blocks"]) == 1  # coalesced across every mapped chunk
pool.empty_cache()
check(pool)
st = pool.memory_stats()
assert st["num_segment_unmap"] >= 1 and st["reserved_bytes.large_pool.current"] == 0, st
print("CHILD OK")
""")
    assert "CHILD OK" in out


def test_torch_with_expandable_segments(run_child: RunChild) -> None:
    # pypool installed with expandable segments: tensors of changing shapes reserve
    # little more than their live peak, and the values are right.
    out = run_child(PRELUDE + """
pypool.install(expandable_segments=True)
import torch
peak_live = 0
for step, n in enumerate([3, 5, 2, 7, 4, 6, 1, 8]):
    xs = [torch.full((n * (1 << 18),), float(i), device="cuda") for i in range(4)]  # n MiB each
    if not pypool.simdevice.active():  # kernels run only on a real GPU
        assert all(float(x[-1]) == float(i) for i, x in enumerate(xs))
    peak_live = max(peak_live, sum(x.numel() * 4 for x in xs))
    del xs
reserved = pypool.max_memory_reserved()
assert reserved <= 1.25 * peak_live + 4 * MiB, (reserved, peak_live)
assert pypool.memory_stats()["num_segment_map"] >= 1
torch.cuda.empty_cache()
assert pypool.memory_stats()["num_segment_unmap"] >= 1
print("reserved", reserved, "peak live", peak_live)
print("CHILD OK")
""")
    assert "CHILD OK" in out
