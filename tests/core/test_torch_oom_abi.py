"""The c10::OutOfMemoryError bridge (Note [torch OutOfMemoryError] in csrc/abi/torch_oom.cpp)
against a stand-in libc10 built here, on CPU: torch's own type is thrown when the object
fits the bytes pypool allows, and a larger layout (a torch that was never tested) turns
the bridge off instead of writing past the buffer."""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import pypool

FAKE_C10 = r"""
#include <cstring>
#include <exception>
#include <string>
namespace c10 {
struct SourceLocation { const char* function; const char* file; unsigned line; };
class OutOfMemoryError : public std::exception {
 public:
  OutOfMemoryError(SourceLocation where, std::string msg);
  ~OutOfMemoryError() override;
  const char* what() const noexcept override { return msg_.c_str(); }
 private:
  std::string msg_;
  unsigned char pad_[PAD];
};
OutOfMemoryError::OutOfMemoryError(SourceLocation, std::string msg) : msg_(std::move(msg)) {
  std::memset(pad_, 1, sizeof pad_);
}
OutOfMemoryError::~OutOfMemoryError() = default;
}  // namespace c10
"""

CHILD = r"""
import ctypes, sys
fake = ctypes.CDLL(sys.argv[1], mode=ctypes.RTLD_GLOBAL)
import pypool
from pypool import _torch
lib = ctypes.CDLL(pypool.library_path())
lib.pypool_use_torch_oom.argtypes = [ctypes.c_char_p]
assert lib.pypool_use_torch_oom(sys.argv[1].encode()) == 1
assert not hasattr(lib, "pypool_torch_oom_active") or lib.pypool_torch_oom_active() == 1
lib.pypool_malloc.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
lib.pypool_malloc.restype = ctypes.c_void_p
print("throwing", flush=True)
lib.pypool_malloc(1 << 60, 0, None)  # ctypes cannot catch it: std::terminate names the type
"""


def _fake_c10(tmp_path: Path, pad: int) -> Path:
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("needs a C++ compiler")
    src = tmp_path / f"fake_c10_{pad}.cpp"
    src.write_text(FAKE_C10)
    out = tmp_path / f"libfakec10_{pad}.so"
    subprocess.run([compiler, "-std=c++17", "-shared", "-fPIC", f"-DPAD={pad}", str(src), "-o", str(out)],
                   check=True, capture_output=True, timeout=300)
    return out


def _throw(fake: Path) -> str:
    env = dict(os.environ, PYPOOL_CONF="")
    proc = subprocess.run([sys.executable, "-P", "-c", CHILD, str(fake)], capture_output=True, text=True,
                          timeout=120, env=env, cwd=str(fake.parent))
    assert "throwing" in proc.stdout, proc.stderr
    assert proc.returncode != 0
    return proc.stderr


def test_bridge_throws_the_libraries_own_type_when_it_fits(tmp_path: Path) -> None:
    if not hasattr(ctypes.CDLL(pypool.library_path()), "pypool_use_torch_oom") or sys.platform != "linux":
        pytest.skip("Linux builds only")
    err = _throw(_fake_c10(tmp_path, 64))
    assert "instance of 'c10::OutOfMemoryError'" in err, err
    assert "1 PiB" in err


def test_a_larger_layout_turns_the_bridge_off_instead_of_overflowing(tmp_path: Path) -> None:
    # 2,000 bytes: over the 1,024 pypool allows; the bridge built it in a 1,024-byte buffer
    # (a heap overflow) and threw it. Now it is detected and pypool's own type is thrown.
    if sys.platform != "linux":
        pytest.skip("Linux builds only")
    err = _throw(_fake_c10(tmp_path, 2000))
    assert "c10::OutOfMemoryError is larger than 1024 bytes" in err, err
    assert "instance of 'pypool::OutOfMemoryError'" in err, err
