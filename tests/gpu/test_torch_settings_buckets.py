"""Issue 16: torch's per-interval roundup_power2_divisions and per_process_memory_fraction
under pypool, compared with native torch on the same device.

Each scenario runs the same child script natively (no pypool) and under pypool
(``pypool.install()`` first) and compares what torch reports: the block sizes in
``torch.cuda.memory_snapshot()`` and ``memory_stats``. The children of torch's own
test_allocator_memory_fraction_setting get pypool from a sitecustomize, as
tools/torch_memory_tests.py gives it; that path is run here too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from conftest import PYPOOL_PARENT

RunChild = Callable[..., str]  # the run_child fixture of conftest.py

pytestmark = pytest.mark.gpu

MiB = 1 << 20
BUCKETS = "[64:8,128:2,256:2,512:2,1024:1,>:1]"  # torch's test_allocator_settings

# Allocates each size, keeps it, and prints the sizes of the blocks the snapshot shows
# for them and what allocated_bytes grew by.
SIZES_CHILD = """
import json, sys, warnings
warnings.simplefilter("ignore")
import torch
if sys.argv[1] == "pypool":
    import pypool
    pypool.install()
torch.cuda.init()
KiB, MiB = 1 << 10, 1 << 20
SIZES = [600 * KiB + 1, MiB - 512, MiB + 1, 3 * MiB + 1, 80 * MiB + 1, 300 * MiB + 1, 400 * MiB, 1100 * MiB]
out = {}
def step(name):
    keep = [torch.empty(n, dtype=torch.uint8, device="cuda") for n in SIZES]
    ptrs = {t.data_ptr() for t in keep}
    blocks = {}
    for seg in torch.cuda.memory_snapshot():
        addr = seg["address"]
        for b in seg["blocks"]:
            if addr in ptrs and b["state"] == "active_allocated":
                blocks[addr] = b["size"]
            addr += b["size"]
    out[name] = {"blocks": [blocks[t.data_ptr()] for t in keep],
                 "allocated": torch.cuda.memory_stats()["allocated_bytes.all.current"]}
    del keep
    torch.cuda.empty_cache()
def setting(text):
    try:
        torch.cuda.memory._set_allocator_settings(text)
        return "ok"
    except Exception as e:
        return type(e).__name__
STEPS = json.loads(sys.argv[2])
for name, text in STEPS:
    if text is not None:
        out[name + ":set"] = setting(text)
    step(name)
print(json.dumps(out))
print("CHILD OK")
"""


def sizes_run(run_child: RunChild, mode: str, steps: List[List[Optional[str]]], env: Optional[Dict[str, str]] = None) -> dict:
    out = run_child(SIZES_CHILD, mode, json.dumps(steps), env=env, name=f"{mode}_sizes.py")
    return json.loads(out.splitlines()[-2])


@pytest.mark.parametrize("spec", [BUCKETS, "[>:4]", "[256:4,>:2]", "[2:8]", "4", "[1:16,>:0]"])
def test_buckets_from_pytorch_cuda_alloc_conf_as_native(run_child: RunChild, spec: str) -> None:
    env = {"PYTORCH_CUDA_ALLOC_CONF": f"roundup_power2_divisions:{spec}"}
    native = sizes_run(run_child, "native", [["env", None]], env)
    ours = sizes_run(run_child, "pypool", [["env", None]], env)
    assert ours == native, (spec, ours, native)


def test_buckets_from_env_are_not_one_number(run_child: RunChild) -> None:
    # The case torch's test_allocator_settings checks: 400 MiB under 2 divisions is
    # 512 MiB (pypool's single number, the finest of the list, gave 416 MiB).
    env = {"PYTORCH_CUDA_ALLOC_CONF": f"roundup_power2_divisions:{BUCKETS}"}
    ours = sizes_run(run_child, "pypool", [["env", None]], env)
    assert ours["env"]["blocks"][6] == 512 * MiB
    assert ours["env"]["blocks"][4] == 88 * MiB  # 80 MiB + 1 under 8 divisions


def test_buckets_through_set_allocator_settings_as_native(run_child: RunChild) -> None:
    # Before and after the first allocation, a reset by a call that does not name the key,
    # the scalar form, and strings torch refuses.
    steps: List[List[Optional[str]]] = [
        ["plain", None],
        ["buckets", f"garbage_collection_threshold:0.5,roundup_power2_divisions:{BUCKETS}"],
        ["reset", "garbage_collection_threshold:0.5"],
        ["scalar", "roundup_power2_divisions:4"],
        ["others", "roundup_power2_divisions:[>:4]"],
        ["tail", "roundup_power2_divisions:[256:4,>:2]"],
    ]
    native = sizes_run(run_child, "native", steps)
    ours = sizes_run(run_child, "pypool", steps)
    assert ours == native, (ours, native)
    assert native["buckets"]["blocks"][6] == 512 * MiB


BAD_STEPS = """
import json, sys, warnings
warnings.simplefilter("ignore")
import torch
import pypool
pypool.install()
from pypool import memory as pm
MiB = 1 << 20
torch._C._accelerator_setAllocatorSettings("roundup_power2_divisions:[256:2,>:2]")
x = torch.empty(300 * MiB + 1, dtype=torch.uint8, device="cuda")
assert pm.get_pool(0).config.round_up_interval_divisions == "[1:2,>:2]"
out = {}
for bad in ("[256:3]", "[3:4]", "[256:4", "3", "[x:4]"):
    try:
        torch._C._accelerator_setAllocatorSettings("roundup_power2_divisions:" + bad)
        out[bad] = "accepted"
    except Exception as e:
        out[bad] = type(e).__name__
    # pypool's pools keep what they had (torch's own config resets before it parses).
    assert pm.get_pool(0).config.round_up_interval_divisions == "[1:2,>:2]", bad
y = torch.empty(400 * MiB, dtype=torch.uint8, device="cuda")
assert pm.memory_allocated(0) == (384 + 512) * MiB, pm.memory_allocated(0)
s = torch.cuda.memory._snapshot()
print(json.dumps(out))
print("CHILD OK")
"""


def test_refused_bucket_strings_change_nothing(run_child: RunChild) -> None:
    out = json.loads(run_child(BAD_STEPS).splitlines()[-2])
    assert set(out.values()) <= {"ValueError", "RuntimeError"}, out


def test_snapshot_settings_show_the_buckets(run_child: RunChild) -> None:
    run_child(f"""
import torch, pypool
pypool.install()
x = torch.empty(1 << 20, dtype=torch.uint8, device="cuda")
s = torch.cuda.memory._snapshot()["allocator_settings"]
# torch's form, interval start in MiB -> divisions; 1 division shows as 0 (no rounding
# either way; torch shows the 1 it was given).
expect = {{str(1 << i): 8 if i <= 6 else 2 if i <= 9 else 0 for i in range(16)}}
assert s["roundup_power2_divisions"] == expect, s
assert s["round_up_interval_divisions"] == "[64:8,128:2,256:2,512:2,>:0]", s
print("CHILD OK")
""", env={"PYTORCH_CUDA_ALLOC_CONF": f"roundup_power2_divisions:{BUCKETS}"})


# ---------------------------------------------------------------------------- fraction

FRACTION_CHILD = """
import json, sys, warnings
import torch
if sys.argv[1] == "pypool":
    import pypool
    pypool.install()
out = {}
device = torch._C._cuda_getDevice()
out["get"] = torch.cuda.memory.get_per_process_memory_fraction(device)
try:
    torch.empty(512, dtype=torch.uint8, device="cuda")
    out["alloc"] = "ok"
except torch.OutOfMemoryError:
    out["alloc"] = "oom"
torch.cuda.set_per_process_memory_fraction(0.0)
out["get_after_set_0"] = torch.cuda.memory.get_per_process_memory_fraction(device)
try:
    torch.empty(3 << 20, dtype=torch.uint8, device="cuda")
    out["alloc_after_set_0"] = "ok"
except torch.OutOfMemoryError:
    out["alloc_after_set_0"] = "oom"
print(json.dumps(out))
print("CHILD OK")
"""


@pytest.mark.parametrize("fraction", ["0.0", "0.5", "1.0"])
def test_fraction_from_env_as_native(run_child: RunChild, fraction: str) -> None:
    env = {"PYTORCH_CUDA_ALLOC_CONF": f"per_process_memory_fraction:{fraction}"}
    native = json.loads(run_child(FRACTION_CHILD, "native", env=env, name="native_fraction.py").splitlines()[-2])
    ours = json.loads(run_child(FRACTION_CHILD, "pypool", env=env, name="pypool_fraction.py").splitlines()[-2])
    assert ours == native, (ours, native)
    assert native["get"] == float(fraction) and native["alloc"] == ("oom" if fraction == "0.0" else "ok")
    assert (native["get_after_set_0"], native["alloc_after_set_0"]) == (0.0, "oom")


def _child_with_site(tmp_path: Path, code: str, env: Dict[str, str], site: str) -> "subprocess.CompletedProcess[str]":
    """Run ``code`` with ``python -c``, pypool installed by a sitecustomize (as
    tools/torch_memory_tests.py installs it in the children of torch's tests)."""
    (tmp_path / "site").mkdir(exist_ok=True)
    (tmp_path / "site" / "sitecustomize.py").write_text(site)
    child_env = dict(os.environ)
    child_env.pop("PYPOOL_CONF", None)
    child_env["PYTHONPATH"] = os.pathsep.join([str(tmp_path / "site"), PYPOOL_PARENT])
    child_env.update(env)
    return subprocess.run([sys.executable, "-c", code], env=child_env, text=True, capture_output=True, timeout=300)


TORCH_TEST_CHILD = """\
import os
import torch
device = torch._C._cuda_getDevice()
value = torch.cuda.memory.get_per_process_memory_fraction(device)
print(value, end="")
import sys
print(" pypool" if "pypool" in sys.modules and sys.modules["pypool"].is_installed() else " native", end="")
"""


@pytest.mark.parametrize("fraction", ["0.0", "0.5", "1.0"])
def test_torch_tests_child_prints_the_fraction(tmp_path: Path, fraction: str) -> None:
    proc = _child_with_site(tmp_path, TORCH_TEST_CHILD, {"PYTORCH_CUDA_ALLOC_CONF": f"per_process_memory_fraction:{fraction}"},
                            "import pypool\npypool.install()\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{fraction} pypool", (proc.stdout, proc.stderr)


@pytest.mark.parametrize("fraction", ["-0.1", "1.1"])
def test_invalid_fraction_says_torchs_words(run_child: RunChild, tmp_path: Path, fraction: str) -> None:
    env = {"PYTORCH_CUDA_ALLOC_CONF": f"per_process_memory_fraction:{fraction}"}
    # install() itself refuses it, in torch's words and naming the variable ...
    run_child("""
import pypool
try:
    pypool.install()
except ValueError as e:
    assert "per_process_memory_fraction is invalid, set it in [0.0, 1.0]" in str(e), e
    assert "PYTORCH_CUDA_ALLOC_CONF" in str(e), e
else:
    raise AssertionError("accepted")
print("CHILD OK")
""", env=env)
    # ... and in torch's test, where a sitecustomize installs pypool, the child fails
    # with that phrase. Python reports an exception in sitecustomize and carries on, so
    # the child then runs on torch's own allocator, whose initialization refuses the value
    # too: both say it.
    proc = _child_with_site(tmp_path, TORCH_TEST_CHILD, env, "import pypool\npypool.install()\n")
    assert proc.returncode != 0, (proc.stdout, proc.stderr)
    assert "Error in sitecustomize" in proc.stderr, proc.stderr
    assert proc.stderr.count("per_process_memory_fraction is invalid") == 2, proc.stderr
