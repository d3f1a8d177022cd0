"""Parity with PyTorch's own memory API under pypool (issue 16), against the real torch.

Each scenario is a child process (conftest.py): the allocator is fixed per process. No
scenario reads tensor values (the simulated device runs no kernels). Covered here:
the out-of-memory type and text that PyTorch code and common libraries recognise,
``torch.accelerator``'s statistics, allocator settings given the PyTorch way
(``PYTORCH_CUDA_ALLOC_CONF`` and ``_set_allocator_settings``), memory history and
snapshots through torch's names read back by ``torch.cuda._memory_viz``, and
``get_per_process_memory_fraction``.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest

import pypool

RunChild = Callable[..., str]  # the run_child fixture of conftest.py

pytestmark = pytest.mark.gpu

PRELUDE = """
import sys, warnings
import pypool
from pypool import memory as pm, _core

MiB = 1 << 20
GiB = 1 << 30


def accelerate_sees_oom(e):
    # accelerate.utils.memory.should_reduce_batch_size's test for a CUDA OOM.
    return isinstance(e, RuntimeError) and len(e.args) == 1 and "CUDA out of memory." in e.args[0]


def lightning_sees_oom(e):
    # lightning.pytorch.utilities.memory.is_cuda_out_of_memory.
    return isinstance(e, RuntimeError) and len(e.args) == 1 and "CUDA" in e.args[0] and "out of memory" in e.args[0]
"""


# ---------------------------------------------------------------------------- out of memory


def test_oom_is_torch_out_of_memory_error_with_torch_text(run_child: RunChild) -> None:
    run_child(PRELUDE + """
pypool.install(max_pool_size="1GiB")
import torch

assert pypool._torch.torch_oom_enabled()
keep = torch.empty(256 * MiB, dtype=torch.uint8, device="cuda")
try:
    torch.empty(2 * GiB, dtype=torch.uint8, device="cuda")
except torch.OutOfMemoryError as e:
    err = e
else:
    raise AssertionError("2 GiB fit under a 1 GiB cap")
msg = err.args[0]
# PyTorch's own opening, sizes in c10's format, then pypool's account.
assert msg.startswith("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "), msg
assert " is free. 1024.00 MiB allowed; Of the allocated memory 256.00 MiB is allocated by PyTorch, and " in msg, msg
assert "Limit: the pool's cap (1.00 GiB" in msg and "What to try" in msg, msg
assert "expandable_reserve" not in msg
assert accelerate_sees_oom(err) and lightning_sees_oom(err)
assert pm.memory_stats(0)["num_ooms"] == 1
# Beyond any device: out of memory too (PyTorch: "Tried to allocate more than 1EB memory").
try:
    torch.empty(1 << 51, dtype=torch.uint8, device="cuda")
except torch.OutOfMemoryError as e:
    assert e.args[0].startswith("CUDA out of memory. Tried to allocate 2097152.00 GiB. GPU 0"), e
    assert "1 PiB" in e.args[0] and accelerate_sees_oom(e) and lightning_sees_oom(e)
else:
    raise AssertionError("2 PiB was served")
# The two texts PyTorch's own test_out_of_memory expects.
for size, text in ((GiB * 800000000, "Tried to allocate 800000000.00 GiB. GPU 0 has a total capacity of"),
                   (GiB * 8000000000, "Tried to allocate more than 1EB memory")):
    try:
        torch.empty(size, dtype=torch.int8, device="cuda")
    except torch.OutOfMemoryError as e:
        assert text in e.args[0], e
    else:
        raise AssertionError(size)
# The pool and torch carry on.
more = torch.empty(512 * MiB, dtype=torch.uint8, device="cuda")
assert pm.memory_allocated(0) == 768 * MiB
pm.get_pool(0).check_invariants()
# pypool's own pools keep pypool's error class.
pool = pypool.Pool(backend="host", capacity="64MiB")
try:
    pool.malloc(128 * MiB)
except pypool.OutOfMemoryError as e:
    assert not isinstance(e, torch.OutOfMemoryError)
    assert "out of memory. Tried to allocate 128.00 MiB." in str(e), e
else:
    raise AssertionError("128 MiB fit in 64 MiB")
print("CHILD OK")
""")


def test_oom_without_the_torch_type_keeps_the_text(run_child: RunChild) -> None:
    # PYPOOL_TORCH_OOM=0 (or a torch whose libc10 lacks the symbols): a RuntimeError
    # that text-matching code still recognises.
    run_child(PRELUDE + """
pypool.install(max_pool_size="1GiB")
import torch

assert not pypool._torch.torch_oom_enabled()
try:
    torch.empty(2 * GiB, dtype=torch.uint8, device="cuda")
except RuntimeError as e:
    assert not isinstance(e, torch.OutOfMemoryError), type(e)
    assert accelerate_sees_oom(e) and lightning_sees_oom(e), e
else:
    raise AssertionError("2 GiB fit under a 1 GiB cap")
print("CHILD OK")
""", env={"PYPOOL_TORCH_OOM": "0"})


def test_c10_out_of_memory_error_fits_the_reserved_bytes() -> None:
    # Note [torch OutOfMemoryError]: pypool builds torch's exception object in a buffer of
    # a fixed size; the installed torch's headers say how large the object is.
    torch = pytest.importorskip("torch")
    compiler = shutil.which("c++") or shutil.which("g++")
    include = Path(torch.__file__).parent / "include"
    if compiler is None or not (include / "c10" / "util" / "Exception.h").exists():
        pytest.skip("needs a C++ compiler and torch's headers")
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"pypool_c10_sizeof_{os.getpid()}"
    src = probe.with_suffix(".cpp")
    src.write_text('#include <c10/util/Exception.h>\n#include <cstdio>\n'
                   'int main() { std::printf("%zu", sizeof(c10::OutOfMemoryError)); }\n')
    try:
        subprocess.run([compiler, "-std=c++17", "-I", str(include), str(src), "-o", str(probe)], check=True,
                       capture_output=True, timeout=300)
        size = int(subprocess.run([str(probe)], check=True, capture_output=True, text=True).stdout)
    finally:
        src.unlink(missing_ok=True)
        probe.unlink(missing_ok=True)
    lib = ctypes.CDLL(pypool.library_path())
    lib.pypool_torch_oom_capacity.restype = ctypes.c_size_t
    assert 0 < size <= lib.pypool_torch_oom_capacity(), (size, torch.__version__)


def test_expandable_oom_names_the_reserve_not_the_device(run_child: RunChild) -> None:
    run_child(PRELUDE + """
pypool.install(expandable_segments=True, expandable_reserve="256MiB")
import torch

a = torch.empty(200 * MiB, dtype=torch.uint8, device="cuda")
try:
    torch.empty(100 * MiB, dtype=torch.uint8, device="cuda")
except torch.OutOfMemoryError as e:
    msg = e.args[0]
else:
    raise AssertionError("300 MiB fit in a 256 MiB reserve")
assert msg.startswith("CUDA out of memory. Tried to allocate 100.00 MiB. GPU 0"), msg
assert "of the 256.00 MiB of address space it reserved (expandable_reserve)" in msg, msg
assert "raise expandable_reserve" in msg, msg
assert "expandable_segments:true" not in msg, msg  # already on
print("CHILD OK")
""")


# ---------------------------------------------------------------------------- statistics


def test_accelerator_stats_are_pypools(run_child: RunChild) -> None:
    run_child(PRELUDE + """
pypool.install()
import torch

acc = torch.accelerator
x = torch.empty(10 * MiB, dtype=torch.uint8, device="cuda")
y = torch.empty(3 * MiB, dtype=torch.uint8, device="cuda")
for fn in ("memory_allocated", "memory_reserved", "max_memory_allocated", "max_memory_reserved"):
    assert getattr(acc, fn)() == getattr(pm, fn)(0) > 0, fn
    assert getattr(acc, fn)(0) == getattr(acc, fn)("cuda:0") == getattr(pm, fn)(0), fn
stats = acc.memory_stats()
assert stats == pm.memory_stats(0) and stats["allocated_bytes.all.current"] == 13 * MiB
assert stats["requested_bytes.all.current"] == 13 * MiB
del y
assert acc.memory_allocated() == 10 * MiB and acc.max_memory_allocated() == 13 * MiB
acc.reset_peak_memory_stats()
assert acc.max_memory_allocated() == 10 * MiB
acc.reset_accumulated_memory_stats()
assert acc.memory_stats()["allocation.all.allocated"] == 0
del x
before = pm.memory_reserved(0)
acc.empty_cache()  # torch's own does not reach a pluggable allocator's reset hook
assert pm.memory_reserved(0) < before, (pm.memory_reserved(0), before)
free, total = acc.get_memory_info() if hasattr(acc, "get_memory_info") else torch.cuda.mem_get_info()
assert 0 < free <= total
# The device-less torch.cuda names agree too.
assert torch.cuda.memory_allocated() == acc.memory_allocated()
print("CHILD OK")
""")


# The same allocations natively and under pypool, with max_split_size_mb set: the keys
# of memory_stats() and the oversize counters after each step (Note [Oversize stats]).
OVERSIZE_STEPS = """
import json, sys
import torch
if sys.argv[1] == "pypool":
    import pypool
    pypool.install()
MiB = 1 << 20
steps = []

def mark(name):
    st = torch.cuda.memory_stats()
    steps.append([name, {k: v for k, v in st.items() if k.startswith("oversize_") or k == "max_split_size"}])

a = torch.empty(150 * MiB, dtype=torch.uint8, device="cuda")  # its own segment: both oversize
b = torch.empty(50 * MiB, dtype=torch.uint8, device="cuda")  # neither
s = torch.empty(4096, dtype=torch.uint8, device="cuda")  # small pool
mark("allocated")
del a
mark("freed")
c = torch.empty(140 * MiB, dtype=torch.uint8, device="cuda")  # takes the cached 150 MiB whole
mark("reused")
del c
torch.cuda.empty_cache()
mark("released")
torch.cuda.reset_peak_memory_stats()
torch.cuda.reset_accumulated_memory_stats()
mark("reset")
d = torch.empty(120 * MiB, dtype=torch.uint8, device="cuda")
del b, d
torch.cuda.empty_cache()
mark("again")
print(json.dumps({"keys": sorted(torch.cuda.memory_stats()), "steps": steps}))
print("CHILD OK")
"""


def test_memory_stats_keys_and_oversize_counters_as_native(run_child: RunChild) -> None:
    env = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:100"}
    native = json.loads(run_child(OVERSIZE_STEPS, "native", env=env).splitlines()[-2])
    ours = json.loads(run_child(OVERSIZE_STEPS, "pypool", env=env, name="pypool_child.py").splitlines()[-2])
    missing = set(native["keys"]) - set(ours["keys"])
    assert not missing, f"keys torch has and pypool lacks: {sorted(missing)}"
    assert ours["steps"] == native["steps"], (ours["steps"], native["steps"])
    counts = dict(native["steps"])
    assert counts["allocated"]["max_split_size"] == 100 << 20
    assert counts["reused"]["oversize_allocations.allocated"] == 2  # the sequence did count


def test_memory_stats_keys_as_native_without_settings(run_child: RunChild) -> None:
    native = json.loads(run_child(OVERSIZE_STEPS, "native").splitlines()[-2])
    ours = json.loads(run_child(OVERSIZE_STEPS, "pypool", name="pypool_child.py").splitlines()[-2])
    assert set(native["keys"]) <= set(ours["keys"])
    assert ours["steps"] == native["steps"]  # all zero, max_split_size -1
    assert dict(native["steps"])["allocated"]["max_split_size"] == -1


def test_get_per_process_memory_fraction(run_child: RunChild) -> None:
    run_child(PRELUDE + """
pypool.install(memory_fraction=0.25)
import torch

assert torch.cuda.get_per_process_memory_fraction() == 0.25  # from the config, before any pool
torch.ones(1, device="cuda")
assert torch.cuda.get_per_process_memory_fraction(0) == 0.25
assert torch.cuda.get_per_process_memory_fraction(1) == 0.25  # no pool there yet
torch.cuda.set_per_process_memory_fraction(0.5, 0)
assert torch.cuda.get_per_process_memory_fraction(0) == 0.5
assert torch.cuda.get_per_process_memory_fraction("cuda:0") == 0.5
assert pm.get_pool(0).cap == int(0.5 * torch.cuda.mem_get_info(0)[1])
# torch's 0.0 allows nothing (it used to remove pypool's cap instead).
torch.cuda.set_per_process_memory_fraction(0.0, 0)
assert torch.cuda.get_per_process_memory_fraction(0) == 0.0
assert pm.get_pool(0).cap == 0
try:
    torch.empty(64 * MiB, dtype=torch.uint8, device="cuda")
except torch.OutOfMemoryError as e:
    assert "0 bytes allowed;" in e.args[0], e
else:
    raise AssertionError("fraction 0.0 allowed an allocation")
torch.cuda.set_per_process_memory_fraction(1.0, 0)
assert torch.cuda.get_per_process_memory_fraction(0) == 1.0
torch.empty(64 * MiB, dtype=torch.uint8, device="cuda")
print("CHILD OK")
""")


def test_default_memory_fraction_is_one(run_child: RunChild) -> None:
    run_child(PRELUDE + """
pypool.install()
import torch
assert torch.cuda.get_per_process_memory_fraction() == 1.0
torch.ones(1, device="cuda")
assert torch.cuda.get_per_process_memory_fraction() == 1.0
print("CHILD OK")
""")


# ---------------------------------------------------------------------------- settings


def test_settings_from_pytorch_cuda_alloc_conf(run_child: RunChild) -> None:
    run_child(PRELUDE + """
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    cfg = pypool.install()
import torch

from pypool._torch_conf import TorchSettingWarning
said = [str(w.message) for w in caught if issubclass(w.category, TorchSettingWarning)]
assert cfg.max_split_size == 64 * MiB, cfg
assert cfg.round_up_interval_divisions == "[256:0,512:2,>:4]", cfg  # per interval, as torch
assert cfg.garbage_collection_threshold == 0.8, cfg  # PYPOOL_CONF wins over torch's variable
assert cfg.expandable_segments is False
assert any("release_lock_on_cudamalloc" in s for s in said), said
assert not any("pinned_use_cuda_host_register" in s for s in said), said  # torch's host allocator honours it
assert len(said) == 1, said
# Behaviour, not only the config: 1100 MiB rounds to 1280 MiB with 4 divisions.
x = torch.empty(1100 * MiB, dtype=torch.uint8, device="cuda")
assert pm.memory_allocated(0) == 1280 * MiB, pm.memory_allocated(0)
print("CHILD OK")
""", env={
        "PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:64,roundup_power2_divisions:[256:1,512:2,>:4],"
                                   "garbage_collection_threshold:0.6,expandable_segments:False,"
                                   "release_lock_on_cudamalloc:True,pinned_use_cuda_host_register:True",
        "PYPOOL_CONF": "garbage_collection_threshold:0.8",
    })


def test_expandable_segments_from_pytorch_cuda_alloc_conf(run_child: RunChild) -> None:
    run_child(PRELUDE + """
warnings.simplefilter("error")
cfg = pypool.install()
import torch
assert cfg.expandable_segments is True
x = torch.empty(30 * MiB, dtype=torch.uint8, device="cuda")
assert any(s["is_expandable"] for s in torch.cuda.memory_snapshot())
print("CHILD OK")
""", env={"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True"})


def test_settings_through_set_allocator_settings(run_child: RunChild) -> None:
    run_child(PRELUDE + """
pypool.install()
import torch
from pypool._torch_conf import TorchSettingWarning

# Before the first allocation every setting applies, through either torch name.
torch._C._accelerator_setAllocatorSettings("roundup_power2_divisions:4,expandable_segments:False")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # torch deprecates this spelling
    torch.cuda.memory._set_allocator_settings("max_split_size_mb:100,roundup_power2_divisions:4")
assert pm.get_pool(0).config.round_up_interval_divisions == "[1:4,>:4]"
assert pm.get_pool(0).config.max_split_size == 100 * MiB
x = torch.empty(1100 * MiB, dtype=torch.uint8, device="cuda")
assert pm.memory_allocated(0) == 1280 * MiB, pm.memory_allocated(0)
# Once the pool exists, the settings a live pool takes change it at once. As in torch, a
# call resets max_split_size_mb, roundup_power2_divisions and
# garbage_collection_threshold when it does not name them.
with warnings.catch_warnings():
    warnings.simplefilter("error")
    torch._C._accelerator_setAllocatorSettings("garbage_collection_threshold:0.5")
cfg = pm.get_pool(0).config
assert (cfg.garbage_collection_threshold, cfg.round_up_interval_divisions, cfg.max_split_size) == (0.5, None, None), cfg
assert torch.cuda.memory_stats()["max_split_size"] == -1
y = torch.empty(1100 * MiB, dtype=torch.uint8, device="cuda")
assert pm.memory_allocated(0) == (1280 + 1100) * MiB, pm.memory_allocated(0)
torch._C._accelerator_setAllocatorSettings("max_split_size_mb:40,roundup_power2_divisions:2")
assert torch.cuda.memory_stats()["max_split_size"] == 40 * MiB
assert pm.get_pool(0).config.round_up_interval_divisions == "[1:2,>:2]"
# A bad value: torch's own parse refuses it first, and nothing changes.
try:
    torch._C._accelerator_setAllocatorSettings("garbage_collection_threshold:1.2")
except (ValueError, RuntimeError):
    pass
else:
    raise AssertionError("garbage_collection_threshold:1.2 accepted")
assert pm.get_pool(0).config.max_split_size == 40 * MiB
# expandable_segments is fixed for a pool's life: named in a warning, never dropped silently ...
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    torch._C._accelerator_setAllocatorSettings("expandable_segments:True,max_split_size_mb:40,roundup_power2_divisions:2")
said = [str(w.message) for w in caught if issubclass(w.category, TorchSettingWarning)]
assert len(said) == 1 and "expandable_segments=True" in said[0] and "fixed" in said[0], said
assert pm.get_pool(0).config.expandable_segments is False
# ... and the same values again are no change.
with warnings.catch_warnings():
    warnings.simplefilter("error")
    torch._C._accelerator_setAllocatorSettings("max_split_size_mb:40,roundup_power2_divisions:2")
print("CHILD OK")
""")


def test_pool_update_config_and_torch_settings_keep_each_others_fields(run_child: RunChild) -> None:
    # Note [Config read-modify-write]: neither layer replays a whole config of its own.
    run_child(PRELUDE + """
pypool.install()
import torch
x = torch.empty(30 * MiB, dtype=torch.uint8, device="cuda")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    torch.cuda.memory._set_allocator_settings("garbage_collection_threshold:0.5,max_split_size_mb:100")
core = pm.get_pool(0)._pool
pm.get_pool(0).update_config(release_threshold="1GiB")
c = core.config
assert (c.garbage_collection_threshold, c.max_split_size, c.release_threshold) == (0.5, 100 * MiB, 1 << 30), c
assert torch.cuda.memory_stats()["max_split_size"] == 100 * MiB
# The other way: a settings call keeps the pool's own fields it does not name (torch's
# per-call resets excepted), and the pools made later take only the settings.
pm.get_pool(0).update_config(max_pool_size="4GiB")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    torch.cuda.memory._set_allocator_settings("garbage_collection_threshold:0.6")
cfg = pm.get_pool(0).config
assert (cfg.max_pool_size, cfg.release_threshold, cfg.garbage_collection_threshold, cfg.max_split_size) == (
    4 << 30, 1 << 30, 0.6, None), cfg
assert pm.get_pool(0).cap == 4 << 30
later = _core.registry_config()
assert (later.garbage_collection_threshold, later.max_pool_size, later.release_threshold) == (
    0.6, _core.UNLIMITED, 0), later
assert pypool._registry.installed_pool_config().garbage_collection_threshold == 0.6
print("CHILD OK")
""")


# The same steps natively and under pypool: what each allocation took, the values torch
# reports, and whether a bad value was refused. Values torch reads differently are left
# out: its max_split_size statistic keeps the value of when the device's allocator was
# made (-1 here), pypool's follows the setting.
LIVE_SETTINGS_STEPS = """
import json, sys, warnings
warnings.simplefilter("ignore")
import torch
if sys.argv[1] == "pypool":
    import pypool
    pypool.install()
torch.cuda.init()
MiB = 1 << 20
setting = torch._C._accelerator_setAllocatorSettings
out = {}
keep = []

def take(name, nbytes):
    before = torch.cuda.memory_stats()["active_bytes.all.allocated"]
    keep.append(torch.empty(nbytes, dtype=torch.uint8, device="cuda"))
    out[name] = torch.cuda.memory_stats()["active_bytes.all.allocated"] - before

take("plain", 84 * MiB)
setting("roundup_power2_divisions:4")
take("div4", 84 * MiB)
setting("garbage_collection_threshold:0.5")  # the divisions go back to none
take("reset", 84 * MiB)
setting("garbage_collection_threshold:0.5,max_split_size_mb:40,roundup_power2_divisions:8")
torch.cuda.empty_cache()
take("div8", 84 * MiB)
setting("roundup_power2_divisions:2")
take("div2_big", 400 * MiB)
for bad in ("garbage_collection_threshold:1.2", "max_split_size_mb:2", "roundup_power2_divisions:3"):
    try:
        setting(bad)
        out[bad] = "accepted"
    except Exception as e:
        out[bad] = type(e).__name__
take("after_bad", 84 * MiB)  # divisions 2 still in effect
print(json.dumps(out))
print("CHILD OK")
"""


def test_live_settings_as_native(run_child: RunChild) -> None:
    native = json.loads(run_child(LIVE_SETTINGS_STEPS, "native").splitlines()[-2])
    ours = json.loads(run_child(LIVE_SETTINGS_STEPS, "pypool", name="pypool_child.py").splitlines()[-2])
    # A refused string changes nothing under pypool. torch resets its three per-call
    # settings before it parses, and keeps the reset when the parse then fails (its
    # divisions are off after the bad strings; pypool's are still 2).
    assert ours.pop("after_bad") == 96 << 20
    native.pop("after_bad")
    assert ours == native, (ours, native)
    assert (native["plain"], native["div4"], native["reset"]) == (84 << 20, 96 << 20, 84 << 20), native


def test_max_split_size_mb_20_is_accepted_as_torch_accepts_it(run_child: RunChild) -> None:
    # torch's minimum, 20, made install() and _set_allocator_settings raise
    # "PoolConfig.max_split_size: must be larger than large_segment_size".
    run_child(PRELUDE + """
from pypool._torch_conf import TorchSettingWarning
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    cfg = pypool.install()
assert cfg.max_split_size == 22 * MiB, cfg
assert any("max_split_size_mb:20" in str(w.message) for w in caught if issubclass(w.category, TorchSettingWarning))
import torch
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch._C._accelerator_setAllocatorSettings("max_split_size_mb:20")
    torch._C._accelerator_setAllocatorSettings("max_split_size_mb:40")
assert pm.get_pool(0).config.max_split_size == 40 * MiB
x = torch.empty(3 * MiB, dtype=torch.uint8, device="cuda")
print("CHILD OK")
""", env={"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:20"})


# ---------------------------------------------------------------------------- history


def test_history_and_snapshots_through_torch_names(run_child: RunChild, tmp_path: Path) -> None:
    out = run_child(PRELUDE + """
import pickle
pypool.install()
import torch
from torch.cuda import _memory_viz

torch.cuda.memory._record_memory_history(max_entries=10000)
a = torch.empty(3 * MiB, dtype=torch.uint8, device="cuda")
b = torch.empty(100, dtype=torch.uint8, device="cuda")
del a
snap = torch.cuda.memory._snapshot()
assert set(snap) >= {"segments", "device_traces", "allocator_settings"}
assert len(snap["device_traces"]) == torch.cuda.device_count()
actions = [e["action"] for e in snap["device_traces"][0]]
assert actions.count("alloc") == 2 and "free_requested" in actions and "segment_alloc" in actions, actions
assert any(f["filename"].endswith("child.py") for e in snap["device_traces"][0] if e["action"] == "alloc"
           for f in e["frames"]), "no Python frames"
frames = torch.cuda.memory._allocation_traceback(b.untyped_storage().data_ptr())
assert frames and any(f["filename"].endswith("child.py") for f in frames), frames
assert torch._C._cuda_allocationTraceback(b.untyped_storage().data_ptr()) == frames  # the torch._C name too
assert torch.cuda.memory._allocation_traceback(b.data_ptr() + 512) is None  # not a block's start
segs = torch.cuda.memory_snapshot()
assert segs == snap["segments"] and sum(s["allocated_size"] for s in segs) == pm.memory_allocated(0)
assert torch.accelerator.memory._snapshot()["segments"] == segs if hasattr(torch.accelerator, "memory") else True
# torch's own readers take it.
assert "total_allocated" in _memory_viz.segsum(snap)
assert "<html" in _memory_viz.trace_plot(snap).lower()
assert "<html" in _memory_viz.segment_plot(snap).lower()
torch.cuda.memory._dump_snapshot(sys.argv[1])
with open(sys.argv[1], "rb") as f:
    assert pickle.load(f)["segments"] == segs
# Off: nothing more is recorded.
torch.cuda.memory._record_memory_history(enabled=None)
c = torch.empty(5 * MiB, dtype=torch.uint8, device="cuda")
assert torch.cuda.memory._snapshot()["device_traces"][0] == []
print("CHILD OK")
""", str(tmp_path / "dump.pickle"))
    assert "CHILD OK" in out
    import sys

    # (Its "segments" and "memory" commands download a flame-graph script: not offline.)
    for cmd in ("stats", "trace"):
        proc = subprocess.run([sys.executable, "-m", "torch.cuda._memory_viz", cmd, str(tmp_path / "dump.pickle")],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (cmd, proc.stderr)


def test_history_records_free_and_empty_cache_stacks_with_context_all(run_child: RunChild) -> None:
    # torch's context="all" records the stack of each free (on free_requested /
    # free_completed) and of empty_cache (on the segment_free it makes); "alloc" and
    # "state" do not (Note [Free stacks]).
    run_child(PRELUDE + """
import json
pypool.install()
import torch
from torch.cuda._memory_viz import trace_plot, segment_plot

def make_block():
    return torch.empty(3 * MiB, dtype=torch.uint8, device="cuda")

def drop_block(holder):
    holder.pop()

def release_cache():
    torch.cuda.empty_cache()

for context in ("all", "alloc", "state"):
    torch.cuda.empty_cache()
    torch.cuda.memory._record_memory_history(context=context, stacks="python")
    holder = [make_block()]
    drop_block(holder)
    release_cache()
    snap = torch.cuda.memory._snapshot()
    trace = snap["device_traces"][0]
    by_action = {}
    for e in trace:
        by_action.setdefault(e["action"], []).append([f["name"] for f in e["frames"]])
    assert {"alloc", "free_requested", "free_completed", "segment_alloc", "segment_free"} <= set(by_action), by_action
    if context == "all":
        assert all("drop_block" in names for names in by_action["free_requested"]), by_action
        assert all("drop_block" in names for names in by_action["free_completed"]), by_action
        assert all("release_cache" in names and "empty_cache" in names for names in by_action["segment_free"]), by_action
        assert all("make_block" in names for names in by_action["alloc"]), by_action
    elif context == "alloc":
        # a free carries the allocation's stack; a release carries none
        assert all("make_block" in names and "drop_block" not in names for names in by_action["free_requested"])
        assert all(names == [] for names in by_action["segment_free"]), by_action
    else:
        assert all(names == [] for v in by_action.values() for names in v), by_action
    trace_plot(snap)
    segment_plot(snap)
    torch.cuda.memory._record_memory_history(None)

# Off again: frees no longer take a stack (a new history records none for them).
torch.cuda.memory._record_memory_history(context="alloc", stacks="python")
holder = [make_block()]
drop_block(holder)
assert "drop_block" not in json.dumps(torch.cuda.memory._snapshot()["device_traces"])
torch.cuda.memory._record_memory_history(None)
print("CHILD OK")
""")


def test_memory_metadata_labels_the_entries_of_its_thread(run_child: RunChild) -> None:
    # torch.cuda.memory._set_memory_metadata: every trace entry the calling thread makes
    # while a label is set carries it as user_metadata; other threads' entries do not
    # (Note [Trace metadata]).
    run_child(PRELUDE + """
import threading
pypool.install()
import torch

assert torch.cuda.memory._memory_metadata_supported()
torch.cuda.empty_cache()
torch.cuda.memory._record_memory_history(context="alloc", stacks="python")
a = torch.empty(MiB, dtype=torch.uint8, device="cuda")
torch.cuda.memory._set_memory_metadata("phase 1")
assert torch.cuda.memory._get_memory_metadata() == "phase 1"
b = torch.empty(3 * MiB, dtype=torch.uint8, device="cuda")
other = []
t = threading.Thread(target=lambda: other.append(torch.empty(5 * MiB, dtype=torch.uint8, device="cuda")))
t.start()
t.join()
other.clear()
del b
torch.cuda.empty_cache()
torch.cuda.memory._set_memory_metadata("")
c = torch.empty(7 * MiB, dtype=torch.uint8, device="cuda")
trace = torch.cuda.memory._snapshot()["device_traces"][0]
labels = [(e["action"], e["size"], e["user_metadata"]) for e in trace]
assert ("alloc", MiB, "") in labels, labels
assert ("alloc", 3 * MiB, "phase 1") in labels and ("free_requested", 3 * MiB, "phase 1") in labels, labels
assert ("alloc", 5 * MiB, "") in labels, labels  # another thread's allocation
assert any(a == "segment_free" and m == "phase 1" for a, _, m in labels), labels
assert ("alloc", 7 * MiB, "") in labels, labels
torch.cuda.memory._record_memory_history(None)
print("CHILD OK")
""")


def test_history_options_follow_torch(run_child: RunChild) -> None:
    # torch records the event trace for enabled="state" too; context=None keeps events
    # without stacks; skip_actions leaves those actions out.
    run_child(PRELUDE + """
import json
pypool.install()
import torch

def alloc_here():
    return torch.empty(4 * MiB, dtype=torch.uint8, device="cuda")

torch.cuda.memory._record_memory_history("state", context="state", stacks="python")
x = alloc_here()
snap = torch.cuda.memory._snapshot()
assert [e["action"] for e in snap["device_traces"][0]].count("alloc") == 1
assert all(e["frames"] == [] for e in snap["device_traces"][0])  # context "state": stacks on live blocks only
assert "alloc_here" in json.dumps(snap["segments"])
torch.cuda.memory._record_memory_history(context=None)
y = alloc_here()
assert "alloc_here" not in json.dumps(torch.cuda.memory._snapshot()["device_traces"])
torch.cuda.memory._record_memory_history(None)

torch.cuda.memory._record_memory_history(context="all", stacks="python", skip_actions=["free_requested"])
z = alloc_here()
del z
actions = {e["action"] for e in torch.cuda.memory._snapshot()["device_traces"][0]}
assert "alloc" in actions and "free_requested" not in actions, actions
torch.cuda.memory._record_memory_history(None)

# A segment's growth carries the stack of the allocation that caused it, so torch's
# timeline (which drops freed alloc/free pairs, in place) still names the code.
torch.cuda.memory._record_memory_history(context="all", stacks="python")
def grow_here():
    return torch.empty(64 * MiB, dtype=torch.uint8, device="cuda")
g = grow_here()
del g
snap = torch.cuda.memory._snapshot()
seg = [e for e in snap["device_traces"][0] if e["action"] == "segment_alloc"]
assert seg and any(f["name"] == "grow_here" for f in seg[-1]["frames"]), seg
from torch.cuda._memory_viz import trace_plot
trace_plot(snap, filter_freed=True)
assert "grow_here" in json.dumps(snap)
torch.cuda.memory._record_memory_history(None)
print("CHILD OK")
""")
