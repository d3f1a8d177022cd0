"""torch._C's allocator entry points under pypool (issue 16), against the real torch.

What a CUDAPluggableAllocator leaves out and pypool now gives (Note [Unsupported under
a pluggable allocator] in pypool/_torch.py, Note [Torch entry points] in
csrc/abi/c_api.cpp, Note [torch profiler bridge] in csrc/abi/torch_profiler.cpp):
statistics resets through torch._C, caching disabled (torch.cuda.caching_allocator_enable
and PYTORCH_NO_CUDA_MEMORY_CACHING), out-of-memory observers, and torch.profiler's
memory events. Each scenario is a child process (conftest.py); none reads tensor values.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest

RunChild = Callable[..., str]  # the run_child fixture of conftest.py

pytestmark = pytest.mark.gpu

PRELUDE = """
import ctypes
import pypool
from pypool import _core

MiB = 1 << 20
GiB = 1 << 30

pypool.install()
import torch

lib = ctypes.CDLL(pypool.library_path())
lib.pypool_uncached_count.restype = ctypes.c_size_t
lib.pypool_uncached_bytes.restype = ctypes.c_size_t
lib.pypool_error_count.restype = ctypes.c_uint64


def stats():
    return torch.cuda.memory_stats()


def device_free():
    return torch.cuda.mem_get_info()[0]


def cuda_alloc_events(prof):  # the CUDA allocation events a torch.profiler.profile recorded
    from torch._C._profiler import _EventType

    def count(nodes):
        return sum((n.typed[0] == _EventType.Allocation and n.typed[1].device.type == "cuda") + count(n.children)
                   for n in nodes)
    return count(prof.profiler.kineto_results.experimental_event_tree())
"""


def test_stats_resets_and_queries_through_torch_C(run_child: RunChild) -> None:
    run_child(PRELUDE + """
x = torch.empty(3 * MiB, dtype=torch.uint8, device="cuda")
y = torch.empty(5 * MiB, dtype=torch.uint8, device="cuda")
del y
assert stats()["allocation.all.allocated"] == 2 and stats()["allocation.all.freed"] == 1
torch._C._cuda_resetAccumulatedMemoryStats(0)
s = stats()
assert s["allocation.all.allocated"] == 0 and s["allocation.all.freed"] == 0, s
assert s["allocation.all.current"] == 1 and s["requested_bytes.all.current"] == 3 * MiB
assert s["allocated_bytes.all.peak"] == 8 * MiB
torch._C._cuda_resetPeakMemoryStats(0)
assert stats()["allocated_bytes.all.peak"] == 3 * MiB
nested = torch._C._cuda_memoryStats(0)
assert nested["allocated_bytes"]["all"]["current"] == 3 * MiB, nested
torch.cuda.set_per_process_memory_fraction(0.25, 0)
assert torch._C._cuda_getMemoryFraction(0) == 0.25
assert torch._C._cuda_memorySnapshot(None)["segments"], "no segment in the snapshot"
assert not torch._C._cuda_isHistoryEnabled()
torch._C._cuda_record_memory_history("all", "all", "python", 1000, False, False, False, [], False, True)
assert torch._C._cuda_isHistoryEnabled()
z = torch.empty(MiB, dtype=torch.uint8, device="cuda")
trace = torch.cuda.memory._snapshot()["device_traces"][0]
assert [e["size"] for e in trace if e["action"] == "alloc"] == [MiB], trace
torch.cuda.memory._record_memory_history(None)
assert not torch._C._cuda_isHistoryEnabled()
del z
del x
print("CHILD OK")
""")


def test_caching_disabled_and_enabled_again(run_child: RunChild) -> None:
    run_child(PRELUDE + """
torch.cuda.init()
errors = lib.pypool_error_count()
cached = torch.empty(4 * MiB, dtype=torch.uint8, device="cuda")
before, free_before = stats(), device_free()
assert torch._C._cuda_cudaCachingAllocator_is_enabled()
torch.cuda.caching_allocator_enable(False)
assert not torch._C._cuda_cudaCachingAllocator_is_enabled()
stream = torch._C._cuda_getCurrentRawStream(0)
raw = torch._C._cuda_cudaCachingAllocator_raw_alloc(MiB, stream)
t = torch.empty(6 * MiB, dtype=torch.uint8, device="cuda")
# Straight from the device: no stat moves, the device's free memory drops at once.
assert stats() == before
assert lib.pypool_uncached_count() == 2 and lib.pypool_uncached_bytes() == 7 * MiB
assert device_free() <= free_before - 7 * MiB
torch.cuda.caching_allocator_enable(True)
again = torch.empty(2 * MiB, dtype=torch.uint8, device="cuda")
assert stats()["allocation.all.current"] == 2
# Mixed pointers after re-enabling: each goes back where it came from.
del t
torch._C._cuda_cudaCachingAllocator_raw_delete(raw)
assert lib.pypool_uncached_count() == 0 and lib.pypool_uncached_bytes() == 0
del cached, again
s = stats()
assert s["allocation.all.current"] == 0 and s["allocation.all.allocated"] == 2, s
torch.cuda.empty_cache()
assert stats()["reserved_bytes.all.current"] == 0
# The cached segment and the uncached bytes are all back on the device.
assert device_free() == free_before + before["reserved_bytes.all.current"], (device_free(), free_before, before)
_core.registry_pool(0).check_invariants()
assert lib.pypool_error_count() == errors
with torch.cuda.caching_allocator_disabled():
    u = torch.empty(MiB, device="cuda")
    assert lib.pypool_uncached_count() == 1
del u
assert lib.pypool_uncached_count() == 0 and torch._C._cuda_cudaCachingAllocator_is_enabled()
print("CHILD OK")
""")


def test_no_cuda_memory_caching_env(run_child: RunChild) -> None:
    run_child(PRELUDE + """
torch.cuda.init()
free_before = device_free()
torch.cuda.caching_allocator_enable(True)  # does not override the variable, as in torch
x = torch.empty(8 * MiB, dtype=torch.uint8, device="cuda")
assert stats()["allocation.all.allocated"] == 0 and _core.registry_devices() in ([], [0])
assert lib.pypool_uncached_count() == 1 and device_free() <= free_before - 8 * MiB
del x
assert lib.pypool_uncached_count() == 0 and device_free() == free_before
print("CHILD OK")
""", env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})


def test_out_of_memory_observers_get_torchs_arguments(run_child: RunChild) -> None:
    run_child(PRELUDE + """
seen = []
torch._C._cuda_attach_out_of_memory_observer(lambda *args: seen.append(args))
torch._C._cuda_attach_out_of_memory_observer(lambda *args: seen.append(("second",) + args))
keep = torch.empty(64 * MiB, dtype=torch.uint8, device="cuda")
free, total = torch.cuda.mem_get_info()
try:
    torch.empty(1 << 40, dtype=torch.uint8, device="cuda")
except torch.cuda.OutOfMemoryError:
    pass
else:
    raise AssertionError("1 TiB fit")
# device, bytes the pool tried to get (1 TiB is already a whole segment), the memory it
# may use (no cap: the device's total), the device's free memory; every observer, in order.
assert seen == [(0, 1 << 40, total, free), ("second", 0, 1 << 40, total, free)], (seen, free, total)
seen.clear()
torch.cuda.set_per_process_memory_fraction(0.5)
cap = _core.registry_pool(0).cap
try:
    torch.empty(cap, dtype=torch.uint8, device="cuda")
except torch.cuda.OutOfMemoryError:
    pass
else:
    raise AssertionError("the cap did not hold")
assert seen[0][0] == 0 and seen[0][2] == cap and seen[0][3] == torch.cuda.mem_get_info()[0], (seen, cap)
del keep
print("CHILD OK")
""")


def test_profiler_memory_events_and_memory_viz(run_child: RunChild) -> None:
    run_child(PRELUDE + """
import json
from torch._C._profiler import _EventType
from torch.cuda._memory_viz import profile_plot
from torch.profiler._memory_profiler import MemoryProfile  # noqa: F401 (what profile_plot reads)

assert pypool._torch.torch_profiler_enabled()
gate = pypool._torch._cdll().pypool_torch_profiler_active
torch.cuda.init()
# Note [Profiler gate]: torch is asked only while a profiler runs.
assert not gate()
before = torch.empty(2 * MiB, dtype=torch.uint8, device="cuda")
with torch.profiler.profile(profile_memory=True, record_shapes=True, with_stack=True) as prof:
    assert gate()
    x = torch.empty(3 * MiB + 100, dtype=torch.uint8, device="cuda")
    y = torch.empty(1000, dtype=torch.uint8, device="cuda")
    del x
    z = torch.empty(7 * MiB, dtype=torch.uint8, device="cuda")
    w = z + z  # tensors an op uses: the profiler ties their allocations to them

events = []
def walk(nodes):
    for n in nodes:
        if n.typed[0] == _EventType.Allocation and n.typed[1].device.type == "cuda":
            f = n.typed[1]
            events.append((f.alloc_size, f.total_allocated, f.total_reserved, f.ptr))
        walk(n.children)
walk(prof.profiler.kineto_results.experimental_event_tree())
assert not gate()
del before  # after the profiler: not reported (its list is already taken)
sizes = [e[0] for e in events]
# Block sizes, as torch reports them: 3 MiB + 100 rounds to 3 MiB + 512 (large pool,
# 512 B rounding), 1000 to 1024; frees are negative; totals are after the change.
assert sizes == [3 * MiB + 512, 1024, -(3 * MiB + 512), 7 * MiB, 7 * MiB], events
allocated = [e[1] for e in events]
base = 2 * MiB  # `before`, live through the profile
assert allocated == [base + 3 * MiB + 512, base + 3 * MiB + 1536, base + 1024, base + 7 * MiB + 1024,
                     base + 14 * MiB + 1024], events
assert all(e[2] >= e[1] for e in events), events
assert events[-1][2] == stats()["reserved_bytes.all.current"], (events, stats())
assert events[0][3] == events[2][3]  # the free names the allocation's pointer
plot = profile_plot(prof)
# The page embeds the snapshot it draws, pickled and base64-encoded.
import base64, pickle
start = plot.index('[{"name": "snapshot.pickle"')
embedded = json.loads(plot[start:plot.index("}]", start) + 2])
drawn = pickle.loads(base64.b64decode(embedded[0]["base64"]))  # pickle stops at its end: the padding stays unread
drawn_sizes = [e["size"] for trace in drawn["device_traces"] for e in trace if e["action"] == "alloc"]
assert 7 * MiB in drawn_sizes, drawn_sizes
snap = json.dumps(torch.cuda._memory_viz._profile_to_snapshot(prof))
assert "category" in snap and str(7 * MiB) in snap, snap[:2000]
del y, z, w
print("CHILD OK")
""")


def test_profiler_bridge_can_be_turned_off(run_child: RunChild) -> None:
    run_child(PRELUDE + """
assert not pypool._torch.torch_profiler_enabled()
with torch.profiler.profile(profile_memory=True) as prof:
    x = torch.empty(MiB, dtype=torch.uint8, device="cuda")
assert cuda_alloc_events(prof) == 0
del x
print("CHILD OK")
""", env={"PYPOOL_TORCH_PROFILER": "0"})


def test_c10_device_layout_is_what_the_bridge_passes() -> None:
    # Note [torch profiler bridge]: pypool passes {int8 type, int8 index} by value where
    # libc10 takes a c10::Device; the installed torch's headers must agree.
    torch = pytest.importorskip("torch")
    compiler = shutil.which("c++") or shutil.which("g++")
    include = Path(torch.__file__).parent / "include"
    if compiler is None or not (include / "c10" / "core" / "Device.h").exists():
        pytest.skip("needs a C++ compiler and torch's headers")
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"pypool_c10_device_{os.getpid()}"
    src = probe.with_suffix(".cpp")
    src.write_text(
        "#include <c10/core/Device.h>\n#include <cstdio>\n#include <cstring>\n#include <type_traits>\n"
        "static_assert(std::is_trivially_copyable<c10::Device>::value, \"not trivially copyable\");\n"
        "int main() {\n"
        "  c10::Device d(c10::DeviceType::CUDA, 5);\n"
        "  unsigned char b[sizeof d];\n  std::memcpy(b, &d, sizeof d);\n"
        "  std::printf(\"%zu %d %d\", sizeof d, b[0], b[1]);\n}\n")
    lib = Path(torch.__file__).parent / "lib"
    try:
        subprocess.run([compiler, "-std=c++17", "-I", str(include), str(src), "-o", str(probe), f"-L{lib}",
                        f"-Wl,-rpath,{lib}", "-lc10"], check=True, capture_output=True, timeout=300)
        out = subprocess.run([str(probe)], check=True, capture_output=True, text=True).stdout
    finally:
        src.unlink(missing_ok=True)
        probe.unlink(missing_ok=True)
    assert out == "2 1 5", (out, torch.__version__)


def test_profiler_gate_always_open_on_request(run_child: RunChild) -> None:
    # PYPOOL_TORCH_PROFILER=always: torch is asked on every allocation, for profilers
    # started outside torch.autograd.profiler (Note [Profiler gate]).
    run_child(PRELUDE + """
gate = pypool._torch._cdll().pypool_torch_profiler_active
assert gate()
with torch.profiler.profile(profile_memory=True) as prof:
    x = torch.empty(MiB, dtype=torch.uint8, device="cuda")
assert gate()
del x
print("CHILD OK")
""", env={"PYPOOL_TORCH_PROFILER": "always"})


def test_profiler_gate_counts_nested_profilers(run_child: RunChild) -> None:
    run_child(PRELUDE + """
gate = pypool._torch._cdll().pypool_torch_profiler_active
torch.cuda.init()
with torch.profiler.profile(profile_memory=True):
    assert gate()
    try:  # torch may refuse a second profiler on this thread: the count must stay right
        with torch.autograd.profiler.profile(profile_memory=True):
            assert gate()
    except RuntimeError:
        pass
    assert gate(), "the outer profiler still runs"
assert not gate()
with torch.profiler.profile(profile_memory=True):
    assert gate()
assert not gate()
print("CHILD OK")
""")


def test_profiler_gate_without_patch_torch(run_child: RunChild) -> None:
    # install(patch_torch=False) leaves torch's memory API alone but must still report to
    # the profiler (review finding: the gate never opened).
    run_child(PRELUDE.replace("pypool.install()", "pypool.install(patch_torch=False)") + """
assert torch.cuda.memory_stats is not pypool.memory.memory_stats
gate = pypool._torch._cdll().pypool_torch_profiler_active
torch.cuda.init()
assert not gate()
with torch.profiler.profile(profile_memory=True) as prof:
    assert gate()
    x = torch.empty(MiB, dtype=torch.uint8, device="cuda")
assert not gate()
assert cuda_alloc_events(prof) == 1
del x
print("CHILD OK")
""")


def test_history_off_releases_tracebacks(run_child: RunChild) -> None:
    # Note [Torch tracebacks]: once history stops gathering torch's tracebacks, those that
    # nothing names are dropped (review finding: they stayed for the life of the process).
    run_child(PRELUDE + """
torch.cuda.memory._record_memory_history(max_entries=100)
keep = torch.empty(1000, device="cuda")
for _ in range(3000):
    t = torch.empty(1000, device="cuda")
    del t
assert _core.torch_traceback_count() > 100
torch.cuda.memory._record_memory_history(None)
# Still named: the live block `keep` and the 100 kept trace entries.
assert _core.torch_traceback_count() <= 101, _core.torch_traceback_count()
torch.cuda.memory._record_memory_history(None, clear_history=True)
assert _core.torch_traceback_count() <= 1, _core.torch_traceback_count()
del keep
print("CHILD OK")
""")


def test_history_bad_device_changes_nothing(run_child: RunChild) -> None:
    run_child(PRELUDE + """
try:
    torch.cuda.memory._record_memory_history(device=99)
except (ValueError, RuntimeError):
    pass
else:
    raise AssertionError("device 99 accepted")
assert not torch._C._cuda_isHistoryEnabled()
print("CHILD OK")
""")
