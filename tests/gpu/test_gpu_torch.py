"""pypool as PyTorch's CUDA allocator, end to end on a GPU or the simulated device.

Each scenario is a child process (see conftest.py): the allocator is fixed per process.
On the simulated device (``python -m pypool simdevice -- pytest tests/gpu``) kernels do
nothing, so a child reads tensor values only when ``KERNELS`` is true (a real GPU), and a
stream is kept busy by holding it in the simulation instead of with a sleep kernel.
What torch calls, and how (torch 2.8 - 2.14, torch/csrc/cuda/CUDAPluggableAllocator.cpp):
every tensor storage comes from ``pypool_malloc(nbytes, device, current stream)``, its
release goes to ``pypool_free``; ``torch.cuda.empty_cache()`` calls the reset hook,
``set_per_process_memory_fraction`` the memory-fraction hook and
``Tensor.record_stream`` the record-stream hook; torch's own statistics raise
("CUDAPluggableAllocator does not yet support getDeviceStats") and pypool's stand in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

RunChild = Callable[..., str]  # the run_child fixture of conftest.py

pytestmark = pytest.mark.gpu

# Imported by every child first.
PRELUDE = """
import sys
import pypool
from pypool import memory as pm, _core, simdevice

MiB = 1 << 20
GiB = 1 << 30


def blocks(pool):
    return {b["address"]: b for seg in pool.segments() for b in seg["blocks"]}


def kernels():
    # True on a real GPU; on the simulated device kernels do nothing (values are junk).
    return not simdevice.active()


def keep_busy(stream):
    # Work queued on `stream` stays pending until release(stream).
    import torch
    if simdevice.active():
        simdevice.control().hold_stream(stream.cuda_stream)
        with torch.cuda.stream(stream):
            torch.cuda._sleep(1)  # enqueued, and pending while held
    else:
        with torch.cuda.stream(stream):
            torch.cuda._sleep(2_000_000_000)  # about a second of GPU time


def release(stream):
    if simdevice.active():
        simdevice.control().hold_stream(stream.cuda_stream, False)
    stream.synchronize()
"""


def test_tensors_of_many_sizes_and_dtypes(run_child: RunChild) -> None:
    run_child(PRELUDE + """
pypool.install()
import random
import torch

assert pypool.is_installed()
assert torch.cuda.memory.memory_stats is pm.memory_stats and torch.cuda.memory_allocated is pm.memory_allocated

sizes = [0, 1, 7, 511, 512, 513, 4095, 65536, MiB - 1, MiB, MiB + 1, 3 * MiB, 10 * MiB, 10 * MiB + 3, 33 * MiB]
dtypes = [torch.bool, torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.int64,
          torch.float64, torch.complex64]
live = []
for n in sizes:
    for dt in dtypes:
        live.append(torch.full((n,), 1, dtype=dt, device="cuda"))
torch.cuda.synchronize()
pool = pm.get_pool(0)
assert pool.backend_name == "cuda"
assert _core.registry_devices() == [0]

def expect(tensors):
    stats = pm.memory_stats(0)
    assert stats["requested_bytes.all.current"] == sum(t.untyped_storage().nbytes() for t in tensors), stats
    assert stats["allocation.all.current"] == sum(1 for t in tensors if t.untyped_storage().nbytes() > 0)
    addresses = {a for a, b in blocks(pool).items() if b["state"] == "active_allocated"}
    assert {t.data_ptr() for t in tensors if t.numel() > 0} <= addresses
    pool.check_invariants()

expect(live)
if kernels():
    for t in live:
        assert bool((t == 1).all()), t.dtype
# Patched torch functions answer, with pypool's numbers, for every device form.
assert torch.cuda.memory_allocated() == torch.cuda.memory.memory_allocated(0) == pm.memory_allocated("cuda:0") > 0
assert torch.cuda.memory_reserved(torch.device("cuda:0")) == pm.memory_reserved(0) >= pm.memory_allocated(0)
assert torch.cuda.max_memory_allocated() >= torch.cuda.memory_allocated()
assert torch.cuda.memory_stats()["allocated_bytes.all.current"] == pm.memory_allocated(0)
assert "Allocated memory" in torch.cuda.memory_summary()
# What the README says: torch's own statistics do not work under a pluggable allocator,
# and install() patches torch._C's name too.
assert torch._C._cuda_memoryStats(0)["allocated_bytes"]["all"]["current"] == pm.memory_allocated(0)
try:
    pypool._torch.torch_originals()["torch._C._cuda_memoryStats"](0)
except RuntimeError as e:
    assert "does not yet support" in str(e), e
else:
    raise AssertionError("torch's own memory stats unexpectedly work under a pluggable allocator")

random.seed(0)
random.shuffle(live)
half = len(live) // 2
del live[half:]
torch.cuda.synchronize()
expect(live)
live.clear()
torch.cuda.synchronize()
expect(live)
assert pm.memory_allocated(0) == 0 and pm.memory_reserved(0) > 0
torch.cuda.empty_cache()
assert pm.memory_reserved(0) == 0, pm.memory_summary(0)
print(pm.memory_summary(0, abbreviated=True))
print("CHILD OK")
""")


def test_streams_and_record_stream(run_child: RunChild) -> None:
    run_child(PRELUDE + """
pypool.install()
import torch

s1, s2, s3 = torch.cuda.Stream(), torch.cuda.Stream(), torch.cuda.Stream()
torch.ones(1, device="cuda")  # CUDA is up
pool = pm.get_pool(0)
with torch.cuda.stream(s1):
    x = torch.full((4 * MiB,), 1, dtype=torch.uint8, device="cuda")
addr = x.data_ptr()
assert blocks(pool)[addr]["stream"] == s1.cuda_stream  # torch passed the current stream
s2.wait_stream(s1)
s3.wait_stream(s1)
keep_busy(s2)
keep_busy(s3)
with torch.cuda.stream(s2):
    x.add_(1)
with torch.cuda.stream(s3):
    x.mul_(1)
x.record_stream(s2)
x.record_stream(s3)
del x
# Freed on the host while s2 still uses it: kept out of reach until s2's work is done.
assert blocks(pool)[addr]["state"] == "active_pending_free", blocks(pool)[addr]
with torch.cuda.stream(s1):
    y = torch.empty(4 * MiB, dtype=torch.uint8, device="cuda")
assert y.data_ptr() != addr
release(s2)
if simdevice.active():
    # One stream done is not enough: the block waits for s3 too.
    with torch.cuda.stream(s1):
        y2 = torch.empty(4 * MiB, dtype=torch.uint8, device="cuda")
    assert blocks(pool)[addr]["state"] == "active_pending_free", blocks(pool)[addr]
    assert y2.data_ptr() != addr
    del y2
release(s3)
with torch.cuda.stream(s1):
    z = torch.empty(4 * MiB, dtype=torch.uint8, device="cuda")  # the pool looks at events again
states = {b["state"] for b in blocks(pool).values()}
assert "active_pending_free" not in states, states
assert blocks(pool)[addr]["state"] in ("inactive", "active_allocated")
# A tensor used only on its own stream is free at once, nothing pending.
with torch.cuda.stream(s1):
    w = torch.empty(2 * MiB, dtype=torch.uint8, device="cuda")
    del w
    assert "active_pending_free" not in {b["state"] for b in blocks(pool).values()}
del y, z
torch.cuda.synchronize()
assert pm.memory_allocated(0) == 0
assert _core.c_api_error_count() == 0
pool.check_invariants()
print("CHILD OK")
""")


def test_empty_cache_and_memory_fraction_through_torch(run_child: RunChild) -> None:
    run_child(PRELUDE + """
pypool.install()
import torch

x = torch.empty(100 * MiB, dtype=torch.uint8, device="cuda")
pool = pm.get_pool(0)
reserved = pm.memory_reserved(0)
assert reserved >= 100 * MiB
del x
assert pm.memory_reserved(0) == reserved  # cached, not returned
frees = pm.memory_stats(0)["num_device_free"]
torch.cuda.empty_cache()  # -> the reset hook -> pypool_empty_cache
assert pm.memory_reserved(0) <= reserved - 100 * MiB
assert pm.memory_stats(0)["num_device_free"] > frees

free, total = torch.cuda.mem_get_info(0)
assert pm.mem_get_info(0)[1] == total
torch.cuda.set_per_process_memory_fraction(0.25, 0)  # -> the memory fraction hook
assert pool.cap == int(0.25 * total), (pool.cap, total)
try:
    torch.empty(int(0.3 * total), dtype=torch.uint8, device="cuda")
except RuntimeError as e:
    assert str(e).startswith("CUDA out of memory.") and "cap" in str(e), e
else:
    raise AssertionError("the memory fraction did not cap the pool")
torch.cuda.set_per_process_memory_fraction(0.5, 0)
y = torch.empty(int(0.3 * total), dtype=torch.uint8, device="cuda")
del y
assert _core.c_api_error_count() == 0
print("CHILD OK")
""")


def test_memory_fraction_in_the_config_caps_from_the_first_allocation(run_child: RunChild) -> None:
    run_child(PRELUDE + """
import warnings
warnings.simplefilter("error", RuntimeWarning)
pypool.install(memory_fraction=0.25)
import torch

torch.ones(1, device="cuda")
totals = [torch.cuda.get_device_properties(d).total_memory for d in range(torch.cuda.device_count())]
assert pm.get_pool(0).cap == int(0.25 * min(totals)), (pm.get_pool(0).cap, totals)
try:
    torch.empty(int(0.3 * totals[0]), dtype=torch.uint8, device="cuda")
except RuntimeError as e:
    assert str(e).startswith("CUDA out of memory."), e
else:
    raise AssertionError("memory_fraction from the config did not cap the pool")
print("CHILD OK")
""")


def test_out_of_memory_message_through_torch(run_child: RunChild) -> None:
    run_child(PRELUDE + """
pypool.install(max_pool_size="1GiB")
import torch

keep = torch.empty(256 * MiB, dtype=torch.uint8, device="cuda")
try:
    torch.empty(2 * GiB, dtype=torch.uint8, device="cuda")
except RuntimeError as e:
    msg = str(e)
else:
    raise AssertionError("2 GiB fit under a 1 GiB cap")
for part in ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of ", "cap 1.00 GiB",
             "256.00 MiB allocated", "largest free block", "What to try"):
    assert part in msg, (part, msg)
assert pm.memory_stats(0)["num_ooms"] == 1
# The pool and torch carry on.
more = torch.ones(512 * MiB, dtype=torch.uint8, device="cuda")
assert pm.memory_allocated(0) >= 768 * MiB
if kernels():
    # Not more.sum(): summing uint8 into int64 makes an int64 copy of the whole input
    # first (torch's make_reduction casts), 4 GiB here, which the 1 GiB cap refuses.
    assert int(more[-4096:].sum()) == 4096
pm.get_pool(0).check_invariants()
print("CHILD OK")
""")


TRANSFORMER = PRELUDE + """
import os
os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
use_pypool, out_path = sys.argv[1] == "pypool", sys.argv[2]
if use_pypool:
    pypool.install()
import torch

torch.manual_seed(1234)
torch.use_deterministic_algorithms(True)
torch.backends.cudnn.deterministic = True
torch.backends.cudnn.benchmark = False
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
# The math attention kernel: the fused ones' backward passes need not be deterministic.
torch.backends.cuda.enable_flash_sdp(False)
torch.backends.cuda.enable_mem_efficient_sdp(False)
torch.backends.cuda.enable_math_sdp(True)
if hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
    torch.backends.cuda.enable_cudnn_sdp(False)

layer = torch.nn.TransformerEncoderLayer(d_model=128, nhead=4, dim_feedforward=512, dropout=0.1, batch_first=True)
model = torch.nn.TransformerEncoder(layer, num_layers=3, enable_nested_tensor=False).cuda()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randn(16, 64, 128, device="cuda")
pad = torch.zeros(16, 64, dtype=torch.bool, device="cuda")
pad[:, 48:] = True
for step in range(3):
    opt.zero_grad(set_to_none=True)
    out = model(x, src_key_padding_mask=pad)
    loss = out.float().pow(2).mean()
    loss.backward()
    opt.step()
torch.cuda.synchronize()
result = {"out": out.detach().cpu(), "loss": loss.detach().cpu()}
for name, p in model.named_parameters():
    result["param." + name] = p.detach().cpu()
    result["grad." + name] = p.grad.detach().cpu()
torch.save(result, out_path)
if use_pypool:
    assert pm.memory_stats(0)["allocation.all.peak"] > 0
    assert torch.cuda.max_memory_allocated() == pm.max_memory_allocated(0)
print("CHILD OK")
"""


@pytest.mark.kernel
def test_transformer_training_is_bit_identical_with_and_without_pypool(run_child: RunChild, tmp_path: Path) -> None:
    import torch

    native, pooled = tmp_path / "native.pt", tmp_path / "pypool.pt"
    run_child(TRANSFORMER, "native", str(native), name="native.py")
    run_child(TRANSFORMER, "pypool", str(pooled), name="pooled.py")
    a = torch.load(native, weights_only=True)
    b = torch.load(pooled, weights_only=True)
    assert a.keys() == b.keys() and len(a) > 10
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == [], f"tensors differ with pypool: {different}"


def test_several_gpus(run_child: RunChild) -> None:
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    run_child(PRELUDE + """
pypool.install()
import torch

a = torch.ones(3 * MiB, dtype=torch.uint8, device="cuda:0")
b = torch.ones(5 * MiB, dtype=torch.uint8, device="cuda:1")
torch.cuda.synchronize(0)
torch.cuda.synchronize(1)
assert _core.registry_devices() == [0, 1]
assert pm.memory_stats(0)["requested_bytes.all.current"] == 3 * MiB
assert pm.memory_stats(1)["requested_bytes.all.current"] == 5 * MiB
assert b.data_ptr() in blocks(pm.get_pool(1)) and b.data_ptr() not in blocks(pm.get_pool(0))
with torch.cuda.device(1):
    assert pm.memory_allocated() == pm.memory_allocated(1) == torch.cuda.memory_allocated()
assert torch.cuda.memory_allocated(torch.device("cuda:1")) == pm.memory_allocated("cuda:1")
c = b.to("cuda:0")  # a cross-device copy; freed below on the other device's pool
assert pm.memory_stats(0)["requested_bytes.all.current"] == 8 * MiB
if kernels():
    assert int(c.sum()) == 5 * MiB
del a, b, c
torch.cuda.synchronize(0)
torch.cuda.synchronize(1)
assert pm.memory_allocated(0) == pm.memory_allocated(1) == 0
torch.cuda.empty_cache()
assert pm.memory_reserved(0) == pm.memory_reserved(1) == 0
print("CHILD OK")
""")


def test_install_after_cuda_init_is_refused_with_advice(run_child: RunChild) -> None:
    run_child(PRELUDE + """
import torch

x = torch.zeros(1, device="cuda")  # CUDA is initialized, and x stays live
try:
    pypool.install()
except pypool.InstallError as e:
    assert "call pypool.install() first thing, before any CUDA call" in str(e), e
else:
    raise AssertionError("install after CUDA init was accepted")
assert not pypool.is_installed()
assert torch.cuda.memory_stats()["allocated_bytes.all.current"] > 0  # torch's allocator still in place
print("CHILD OK")
""")
