"""The C ABI's two malloc entries with a CUDA device index the machine does not have
(issue 13 bug 9): an invalid-device error, not an out-of-memory one. Runs in a child
process (the registry is process-wide)."""

from __future__ import annotations

from typing import Callable

import pytest

RunChild = Callable[..., str]

pytestmark = pytest.mark.gpu


def test_c_api_missing_cuda_device_is_its_own_error(run_child: RunChild) -> None:
    out = run_child("""
import ctypes
import pypool
from pypool import PoolConfig, _core
n, why = _core.cuda_device_count()
assert n >= 1, why
_core.registry_configure("cuda", PoolConfig().to_core(), 1 << 30)
lib = ctypes.CDLL(pypool.library_path())
f = lib.pypool_try_malloc
f.restype = ctypes.c_void_p
f.argtypes = [ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_int)]
lib.pypool_last_error.restype = ctypes.c_char_p
lib.pypool_free.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
err = ctypes.c_int(-1)
p = f(4096, 0, None, ctypes.byref(err))
assert p and err.value == 0
lib.pypool_free(p, 4096, 0, None)
# The non-throwing entry: NULL and PYPOOL_ERROR_INVALID_DEVICE.
assert f(4096, n, None, ctypes.byref(err)) is None
assert err.value == 2, err.value
assert f"CUDA device {n} does not exist" in lib.pypool_last_error().decode()
# torch's entry (called from C++ here) throws std::invalid_argument -> ValueError.
try:
    _core.bench_c_api_pairs(4096, 1, n)
except ValueError as e:
    assert f"CUDA device {n} does not exist" in str(e)
else:
    raise AssertionError("no error for a missing device")
_core.registry_reset()
print("CHILD OK")
""")
    assert "CHILD OK" in out
