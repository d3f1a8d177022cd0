"""History through torch's names records torch's own frames (issue 16, Note [Torch
tracebacks] in csrc/bindings/stack_capture.cpp): C++ frames with ``stacks="all"``,
TorchScript frames in both modes, none with ``context=None``; pypool's own
``record_history`` keeps its native walker. Each scenario is a child process
(conftest.py): the allocator is fixed per process. Symbolising torch's tracebacks takes
seconds the first time in a process, so each child symbolises once or twice.
"""

from __future__ import annotations

from typing import Callable

import pytest

RunChild = Callable[..., str]  # the run_child fixture of conftest.py

pytestmark = pytest.mark.gpu

PRELUDE = """
import json, warnings
import pypool
from pypool import _context, _core

warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated
pypool.install()
import torch
from torch.cuda._memory_viz import segment_plot, trace_plot

SIZE = 311 * 411 * 4


def block_frames(snap, size=SIZE):
    found = [b["frames"] for s in snap["segments"] for b in s["blocks"] if b["requested_size"] == size]
    assert len(found) == 1, [b["requested_size"] for s in snap["segments"] for b in s["blocks"]]
    return found[0]


def alloc_here():
    return torch.rand(311, 411, device="cuda")
"""


def test_cpp_frames_only_with_stacks_all(run_child: RunChild) -> None:
    run_child(PRELUDE + """
torch.cuda.memory._record_memory_history("state", stacks="all")
x = alloc_here()
y = torch.empty(1000, device="cuda")
torch.cuda.memory._record_memory_history("state", stacks="python")
w = torch.empty(2000, device="cuda")
snap = torch.cuda.memory._snapshot()
frames = block_frames(snap)
names = [f["name"] for f in frames]
# C++ frames, from pypool's entry point outwards (the unwinder and hook are cut off), then
# the Python caller.
assert names[0] == "pypool_torch_malloc", names[:5]  # what install() gives torch
assert any("::rand" in n for n in names), names
assert "alloc_here" in names and all(set(f) == {"filename", "line", "name"} for f in frames)
python_only = [b["frames"] for s in snap["segments"] for b in s["blocks"] if b["requested_size"] == 2000 * 4]
assert python_only and python_only[0] and not any("::" in f["name"] for f in python_only[0]), python_only
assert python_only[0][0]["name"] == "<module>", python_only[0]
torch.cuda.memory._record_memory_history(None)
print("CHILD OK")
""")


def test_script_frame_first_for_a_scripted_allocation(run_child: RunChild) -> None:
    run_child(PRELUDE + """
torch.cuda.memory._record_memory_history("state", stacks="python")

@torch.jit.script
def scripted():
    return torch.rand(311, 411, device="cuda")

def caller():
    return scripted()

x = caller()
frames = block_frames(torch.cuda.memory._snapshot())
assert [f["name"] for f in frames[:3]] == ["scripted", "caller", "<module>"], frames
torch.cuda.memory._record_memory_history(None)
print("CHILD OK")
""")


def test_memory_plots_for_each_context_and_stacks(run_child: RunChild) -> None:
    # torch's test_memory_plots: the function's name is in the snapshot exactly when
    # context is set, a C++ frame exactly when stacks="all"; torch's plots read it.
    run_child(PRELUDE + """
import copy
for context, stacks in (("all", "all"), ("all", "python"), (None, "python"), (None, "all")):
    torch.cuda.empty_cache()
    torch.cuda.memory._record_memory_history("all", context=context, stacks=stacks)

    def run_plot_case():
        x = torch.rand(128, 128, device="cuda")
        del x

    run_plot_case()
    snap = torch.cuda.memory._snapshot()
    trace = copy.deepcopy(snap["device_traces"][0])  # trace_plot(filter_freed=True) edits it
    assert "<html" in trace_plot(snap).lower() and "<html" in trace_plot(snap, filter_freed=True).lower()
    assert "<html" in segment_plot(snap).lower()
    text = json.dumps(snap)
    assert ("run_plot_case" in text) == (context is not None), (context, stacks)
    assert ("::rand" in text) == (stacks == "all" and context is not None), (context, stacks)
    alloc = [e for e in trace if e["action"] == "alloc" and e["size"] == 128 * 128 * 4]
    assert alloc, trace
    assert (alloc[0]["frames"] == []) == (context is None)
    if context == "all":  # the free carries the stack of the free, torch's frames too
        free = [e for e in trace if e["action"] == "free_requested" and e["size"] == 128 * 128 * 4]
        assert free and "run_plot_case" in [f["name"] for f in free[0]["frames"]], free
    torch.cuda.memory._record_memory_history(None)
print("CHILD OK")
""")


def test_off_stops_capture_and_legacy_form_follows_torch(run_child: RunChild) -> None:
    run_child(PRELUDE + """
dev = torch.cuda.current_device()
core = _core.registry_pool(dev)

def contexts():
    return [b["context"] for s in core.segments() for b in s["blocks"] if b["state"] == "active_allocated"]

torch.cuda.memory._record_memory_history("all", stacks="all")
assert _context.torch_stacks(core) == "all"
a = torch.empty(1000, device="cuda")
assert all(c & _context.TORCH_BIT for c in contexts())
torch.cuda.memory._record_memory_history(None)
assert _context.torch_stacks(core) is None
made = _core.torch_traceback_count()
b = torch.empty(2000, device="cuda")
assert _core.torch_traceback_count() == made  # nothing gathered once off
assert torch.cuda.memory._snapshot()["device_traces"][0] == []
# a block recorded before still has its frames
assert any("::" in f["name"] for f in block_frames(torch.cuda.memory._snapshot(), 1000 * 4))
assert block_frames(torch.cuda.memory._snapshot(), 2000 * 4) == []

# torch's legacy form: record_context_cpp=True gives C++ frames; enabled=False stops.
torch.cuda.memory._record_memory_history(True, True, 10000, True, None, True)
assert _context.torch_stacks(core) == "all"
torch.cuda.memory._record_memory_history(True, True, 10000, True, None, False)
assert _context.torch_stacks(core) == "python"
torch.cuda.memory._record_memory_history(False)
assert _context.torch_stacks(core) is None
# context=None records no stacks, so no tracebacks either.
torch.cuda.memory._record_memory_history("all", context=None, stacks="all")
assert _context.torch_stacks(core) is None
made = _core.torch_traceback_count()
c = torch.empty(3000, device="cuda")
assert _core.torch_traceback_count() == made
torch.cuda.memory._record_memory_history(None)
print("CHILD OK")
""")


def test_pypool_record_history_keeps_the_native_walker(run_child: RunChild) -> None:
    run_child(PRELUDE + """
dev = torch.cuda.current_device()
core = _core.registry_pool(dev)

def native_here():
    return torch.empty(4000, device="cuda")

pypool.record_history(device=dev)
x = native_here()
ctx = [b["context"] for s in core.segments() for b in s["blocks"] if b["requested_size"] == 4000 * 4]
assert ctx and 0 < ctx[0] < _context.TORCH_BIT and _core.torch_traceback_count() == 0
assert [f["name"] for f in _context.frames(ctx[0])][:2] == ["native_here", "<module>"]
# torch's names take over while on, and hand the pool back to the native walker after.
torch.cuda.memory._record_memory_history("state", stacks="python")
y = torch.empty(5000, device="cuda")
torch.cuda.memory._record_memory_history(None)
pypool.record_history(device=dev)
z = native_here()
ctx = [b["context"] for s in core.segments() for b in s["blocks"] if b["requested_size"] in (4000 * 4, 5000 * 4)]
assert len(ctx) == 3 and sum(1 for c in ctx if c & _context.TORCH_BIT) == 1, ctx
pypool.record_history(False, device=dev)
print("CHILD OK")
""")


def test_tracebacks_are_collected_while_recording(run_child: RunChild) -> None:
    # Note [Torch tracebacks]: tracebacks no block or kept trace entry names are dropped,
    # so a long run with a small ring keeps a bounded table; the frames of live blocks
    # and of kept entries survive collection.
    run_child(PRELUDE + """
torch.cuda.memory._record_memory_history("all", context="alloc", stacks="python", max_entries=100)
keep = alloc_here()
for _ in range(30000):
    t = torch.empty(256, device="cuda")
    del t
assert _core.torch_traceback_collections() > 0
n = _core.torch_traceback_count()
# the named ids (ring of 100 entries, live blocks) plus twice the threshold (kMinCollect)
assert n <= 200 + 2 * 4096, n
snap = torch.cuda.memory._snapshot()
assert "alloc_here" in [f["name"] for f in block_frames(snap)]
trace = snap["device_traces"][0]
assert len(trace) == 100 and all(e["frames"] for e in trace if e["action"] == "alloc"), trace[:3]
# Off, twice collected: only the live block's traceback is left.
torch.cuda.memory._record_memory_history(None)
_core.torch_traceback_collect()
_core.torch_traceback_collect()
assert _core.torch_traceback_count() == 1, _core.torch_traceback_count()
assert "alloc_here" in [f["name"] for f in block_frames(torch.cuda.memory._snapshot())]
print("CHILD OK")
""")


def test_threads_record_their_own_frames(run_child: RunChild) -> None:
    run_child(PRELUDE + """
import threading
torch.cuda.memory._record_memory_history("all", context="all", stacks="python", max_entries=10000)  # keeps all 3,600 entries: which thread ran last is up to the scheduler
errors = []

def worker(name):
    try:
        for _ in range(300):
            t = torch.empty(64, device="cuda")
            del t
    except BaseException as e:
        errors.append(e)

def thread_a(): worker("a")
def thread_b(): worker("b")
threads = [threading.Thread(target=f) for f in (thread_a, thread_b, thread_a, thread_b)]
for t in threads: t.start()
for t in threads: t.join()
assert not errors, errors
trace = torch.cuda.memory._snapshot()["device_traces"][0]
named = {f["name"] for e in trace if e["action"] == "alloc" for f in e["frames"]}
assert {"thread_a", "thread_b"} <= named, named
torch.cuda.memory._record_memory_history(None)
print("CHILD OK")
""")
