"""The simulated device's cuBLAS and cuBLASLt stand-ins, through their C ABI.

No torch and no GPU: each scenario runs in a child Python that loads the stand-ins from
pypool/_simdevice with ctypes (a child, so that nothing stays loaded in the test
process). What torch makes of them is checked by tools/record_sim_workloads.py, which
trains real models on the simulated device.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Optional

import pytest

from pypool import simdevice
from sim_child import ok, run_audited, run_lib_child

pytestmark = pytest.mark.skipif(not simdevice.available(), reason="pypool built without the simulated device")

SIM = Path(__file__).resolve().parents[2] / "csrc" / "simdevice"

PRELUDE = """
import ctypes as C, sys
LIB = sys.argv[1]
cu = C.CDLL(LIB + "/libpypool_simcuda.so")
blas = C.CDLL(LIB + "/libpypool_simcublas.so")
lt = C.CDLL(LIB + "/libpypool_simcublasLt.so")
u64, sz, vp = C.c_ulonglong, C.c_size_t, C.c_void_p
SUCCESS, NOT_INITIALIZED, INVALID_VALUE, MAPPING_ERROR, NOT_SUPPORTED = 0, 1, 7, 11, 15
cu.pypoolsim_calls.restype = u64
cu.pypoolsim_pending_work.argtypes = [u64]
cu.pypoolsim_hold_stream.argtypes = [u64, C.c_int]

def stream():
    s = vp()
    assert cu.cuInit(0) == 0 and cu.cuStreamCreate(C.byref(s), 0) == 0
    assert cu.pypoolsim_hold_stream(s.value, 1) == 0  # work stays pending: countable
    return s

def pending(s):
    return cu.pypoolsim_pending_work(s.value or 0)

def handle():
    h = vp()
    assert blas.cublasCreate_v2(C.byref(h)) == SUCCESS and h.value
    return h

f1 = C.c_float(1.0)
"""


def run(body: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    return run_lib_child(PRELUDE, body, env)


def test_handles_modes_and_versions() -> None:
    ok(run("""
        h, s = handle(), stream()
        assert blas.cublasSetStream_v2(h, s) == SUCCESS
        got = vp()
        assert blas.cublasGetStream_v2(h, C.byref(got)) == SUCCESS and got.value == s.value
        ws = u64()
        assert cu.cuMemAlloc_v2(C.byref(ws), sz(32 << 20)) == 0
        assert blas.cublasSetWorkspace_v2(h, vp(ws.value), sz(32 << 20)) == SUCCESS
        assert blas.cublasSetWorkspace_v2(h, None, sz(1024)) == INVALID_VALUE
        assert blas.cublasSetWorkspace_v2(h, vp(ws.value + 8), sz(1024)) == INVALID_VALUE  # 256 B aligned
        mode = C.c_int()
        assert blas.cublasSetMathMode(h, 3) == SUCCESS  # CUBLAS_TF32_TENSOR_OP_MATH
        assert blas.cublasGetMathMode(h, C.byref(mode)) == SUCCESS and mode.value == 3
        assert blas.cublasSetMathMode(h, 3 | 16) == SUCCESS  # | DISALLOW_REDUCED_PRECISION_REDUCTION
        assert blas.cublasSetMathMode(h, 64) == INVALID_VALUE
        assert blas.cublasSetPointerMode_v2(h, 1) == SUCCESS
        assert blas.cublasGetPointerMode_v2(h, C.byref(mode)) == SUCCESS and mode.value == 1
        assert blas.cublasSetPointerMode_v2(h, 2) == INVALID_VALUE
        v = C.c_int()
        assert blas.cublasGetVersion_v2(None, C.byref(v)) == SUCCESS and v.value == 130101  # as the real one
        assert [blas.cublasGetProperty(t, C.byref(v)) == 0 and v.value for t in range(3)] == [13, 1, 1]
        blas.cublasGetStatusName.restype = blas.cublasGetStatusString.restype = C.c_char_p
        assert blas.cublasGetStatusName(15) == b"CUBLAS_STATUS_NOT_SUPPORTED"
        assert blas.cublasGetStatusString(0) == b"success"
        lt.cublasLtGetVersion.restype = lt.cublasLtGetCudartVersion.restype = sz
        assert lt.cublasLtGetVersion() == 130101 and lt.cublasLtGetCudartVersion() == 13000
        assert blas.cublasDestroy_v2(h) == SUCCESS
        assert blas.cublasSetStream_v2(h, s) == NOT_INITIALIZED  # destroyed
        assert blas.cublasDestroy_v2(h) == NOT_INITIALIZED
        assert blas.cublasSetStream_v2(None, s) == NOT_INITIALIZED
        assert cu.pypoolsim_calls(b"cublasCreate_v2") == 1 and cu.pypoolsim_calls(b"cublasSetMathMode") == 3
    """))


def test_gemms_enqueue_on_the_handle_stream_after_cublas_checks() -> None:
    ok(run("""
        h, s = handle(), stream()
        assert blas.cublasSetStream_v2(h, s) == SUCCESS
        N, T = 0, 1
        # C(m x n) = A(m x k) B(k x n): lda >= m, ldb >= k, ldc >= m
        assert blas.cublasSgemm_v2(h, N, N, 8, 4, 2, C.byref(f1), None, 8, None, 2, C.byref(f1), None, 8) == 0
        assert pending(s) == 1
        assert blas.cublasSgemm_v2(h, N, N, 8, 4, 2, C.byref(f1), None, 7, None, 2, C.byref(f1), None, 8) == INVALID_VALUE
        assert blas.cublasSgemm_v2(h, T, N, 8, 4, 2, C.byref(f1), None, 2, None, 2, C.byref(f1), None, 8) == 0
        assert blas.cublasSgemm_v2(h, N, N, -1, 4, 2, C.byref(f1), None, 8, None, 2, C.byref(f1), None, 8) == INVALID_VALUE
        assert blas.cublasSgemm_v2(h, 7, N, 8, 4, 2, C.byref(f1), None, 8, None, 2, C.byref(f1), None, 8) == INVALID_VALUE
        assert pending(s) == 2  # refused calls put nothing on the stream
        # cublasGemmEx(h, ta, tb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb, beta, C, Ctype, ldc, compute, algo)
        R16BF, COMPUTE_32F, DEFAULT = 14, 68, -1
        assert blas.cublasGemmEx(h, N, T, 16, 16, 16, C.byref(f1), None, R16BF, 16, None, R16BF, 16,
                                 C.byref(f1), None, R16BF, 16, COMPUTE_32F, DEFAULT) == 0
        ll = C.c_longlong
        assert blas.cublasGemmStridedBatchedEx(h, N, N, 4, 4, 4, C.byref(f1), None, R16BF, 4, ll(16), None, R16BF,
                                               4, ll(16), C.byref(f1), None, R16BF, 4, ll(16), 3, COMPUTE_32F,
                                               DEFAULT) == 0
        assert blas.cublasSgemmStridedBatched(h, N, N, 4, 4, 4, C.byref(f1), None, 4, ll(16), None, 4, ll(16),
                                              C.byref(f1), None, 4, ll(16), -1) == INVALID_VALUE
        assert blas.cublasSgemv_v2(h, N, 4, 4, C.byref(f1), None, 4, None, 1, C.byref(f1), None, 0) == INVALID_VALUE
        assert blas.cublasSgemv_v2(h, N, 4, 4, C.byref(f1), None, 4, None, 1, C.byref(f1), None, 1) == 0
        assert pending(s) == 5
        # Any other handle-first routine: enqueued, counted under its name.
        assert blas.cublasSaxpy_v2(h, 4, C.byref(f1), None, 1, None, 1) == 0
        assert blas.cublasGemmEx_64(h) == 0 and pending(s) == 7
        assert blas.cublasSaxpy_v2(None, 4) == NOT_INITIALIZED
        assert blas.cublasSgemm_v2(None, N, N, 8, 4, 2, None, None, 8, None, 2, None, None, 8) == NOT_INITIALIZED
        # Not simulated: the legacy API without a handle, the LAPACK-like batched routines.
        assert blas.cublasSgemm(b"N", b"N", 8, 4, 2) == NOT_SUPPORTED
        assert blas.cublasSgetrfBatched(h, 4) == NOT_SUPPORTED and pending(s) == 7
        for name, n in (("cublasSgemm_v2", 6), ("cublasGemmEx", 1), ("cublasSaxpy_v2", 2), ("cublasGemmEx_64", 1)):
            assert cu.pypoolsim_calls(name.encode()) == n, name
        # The default stream of the handle's device, whichever device is current.
        h0 = handle()
        assert cu.pypoolsim_hold_stream(0, 1) == 0
        ctx = vp()
        assert cu.cuDevicePrimaryCtxRetain(C.byref(ctx), 1) == 0 and cu.cuCtxPushCurrent_v2(ctx) == 0
        assert blas.cublasSgemm_v2(h0, N, N, 1, 1, 1, C.byref(f1), None, 1, None, 1, C.byref(f1), None, 1) == 0
        assert cu.cuCtxPopCurrent_v2(C.byref(ctx)) == 0
        assert cu.pypoolsim_pending_work(0) == 1
    """))


def test_matrix_and_vector_copies_are_real() -> None:
    ok(run("""
        d = u64()
        assert cu.cuMemAlloc_v2(C.byref(d), sz(4096)) == 0
        host = (C.c_float * 12)(*range(12))  # 3 x 4, column-major, ld 3
        # to the device with ld 4, back with ld 3
        assert blas.cublasSetMatrix(3, 4, 4, host, 3, vp(d.value), 4) == 0
        back = (C.c_float * 12)()
        assert blas.cublasGetMatrix(3, 4, 4, vp(d.value), 4, back, 3) == 0
        assert list(back) == list(map(float, range(12)))
        assert blas.cublasSetMatrix(3, 4, 4, host, 2, vp(d.value), 4) == INVALID_VALUE  # lda < rows
        assert blas.cublasSetMatrix(3, 4, 4, host, 3, C.cast(back, vp), 3) == MAPPING_ERROR  # not device memory
        assert blas.cublasSetMatrix(3, 4, 4, host, 3, vp(d.value + 4096 - 16), 3) == MAPPING_ERROR  # past the end
        s = stream()
        v = (C.c_double * 4)(1, 2, 3, 4)
        assert blas.cublasSetVectorAsync(4, 8, v, 1, vp(d.value), 2, s) == 0 and pending(s) == 1
        w = (C.c_double * 2)()
        assert blas.cublasGetVector_64(C.c_longlong(2), C.c_longlong(8), vp(d.value), C.c_longlong(4), w,
                                       C.c_longlong(1)) == 0
        assert list(w) == [1.0, 3.0]
        cu.pypoolsim_sync_calls.restype = u64
        assert cu.pypoolsim_sync_calls() == 6  # the blocking copies, refused ones included (counted on entry)
    """))


def test_lt_matmul_with_the_cublas_handle_as_torch_does() -> None:
    ok(run("""
        h, s = handle(), stream()
        desc, pref = vp(), vp()
        COMPUTE_32F, R32F, R16BF = 68, 0, 14
        assert lt.cublasLtMatmulDescCreate(C.byref(desc), COMPUTE_32F, R32F) == 0
        trans = C.c_int(1)
        assert lt.cublasLtMatmulDescSetAttribute(desc, 3, C.byref(trans), sz(4)) == 0  # TRANSA
        got, written = C.c_int(), sz()
        assert lt.cublasLtMatmulDescGetAttribute(desc, 3, None, sz(0), C.byref(written)) == 0 and written.value == 4
        assert lt.cublasLtMatmulDescGetAttribute(desc, 3, C.byref(got), sz(4), C.byref(written)) == 0
        assert got.value == 1
        assert lt.cublasLtMatmulDescGetAttribute(desc, 0, C.byref(got), sz(4), None) == 0 and got.value == COMPUTE_32F
        layouts = []
        for rows, cols in ((16, 8), (8, 4), (16, 4), (16, 4)):
            l = vp()
            assert lt.cublasLtMatrixLayoutCreate(C.byref(l), R16BF, u64(rows), u64(cols), C.c_longlong(rows)) == 0
            layouts.append(l)
        assert lt.cublasLtMatmulPreferenceCreate(C.byref(pref)) == 0
        ws_limit = u64(32 << 20)
        assert lt.cublasLtMatmulPreferenceSetAttribute(pref, 1, C.byref(ws_limit), sz(8)) == 0  # MAX_WORKSPACE_BYTES

        class Result(C.Structure):  # cublasLtMatmulHeuristicResult_t
            _fields_ = [("algo", u64 * 8), ("workspaceSize", sz), ("state", C.c_int), ("wavesCount", C.c_float),
                        ("reserved", C.c_int * 4)]
        results, n = (Result * 4)(), C.c_int()
        assert lt.cublasLtMatmulAlgoGetHeuristic(h, desc, *layouts, pref, 4, results, C.byref(n)) == 0
        assert n.value == 1 and results[0].state == 0 and results[0].workspaceSize == 0
        assert lt.cublasLtMatmulAlgoGetHeuristic(h, desc, *layouts, pref, 0, results, C.byref(n)) == INVALID_VALUE
        assert lt.cublasLtMatmulAlgoGetHeuristic(None, desc, *layouts, pref, 1, results, C.byref(n)) == NOT_INITIALIZED
        alpha = C.c_float(1.0)
        args = [desc, C.byref(alpha), None, layouts[0], None, layouts[1], C.byref(alpha), None, layouts[2],
                None, layouts[3], C.byref(results[0].algo), None, sz(0), s]
        assert lt.cublasLtMatmul(h, *args) == 0 and pending(s) == 1
        assert lt.cublasLtMatmul(h, desc, *args[1:3], desc, *args[4:]) == INVALID_VALUE  # a desc as layout A
        lh = vp()
        assert lt.cublasLtCreate(C.byref(lh)) == 0
        assert lt.cublasLtMatmul(lh, *args) == 0 and pending(s) == 2
        assert lt.cublasLtDestroy(lh) == 0 and lt.cublasLtDestroy(h) == NOT_INITIALIZED  # not an Lt handle
        # The one algorithm: ids, init, check, config attributes
        ids = (C.c_int * 2)()
        assert lt.cublasLtMatmulAlgoGetIds(h, COMPUTE_32F, R32F, R16BF, R16BF, R16BF, R16BF, 2, ids, C.byref(n)) == 0
        assert n.value == 1 and ids[0] == 0
        algo = (u64 * 8)()
        assert lt.cublasLtMatmulAlgoInit(h, COMPUTE_32F, R32F, R16BF, R16BF, R16BF, R16BF, 0, algo) == 0
        tile = C.c_uint(15)
        assert lt.cublasLtMatmulAlgoConfigSetAttribute(algo, 1, C.byref(tile), sz(4)) == 0
        out = C.c_uint()
        assert lt.cublasLtMatmulAlgoConfigGetAttribute(algo, 1, C.byref(out), sz(4), C.byref(written)) == 0
        assert out.value == 15 and written.value == 4
        check = Result()
        assert lt.cublasLtMatmulAlgoCheck(h, desc, *layouts, algo, C.byref(check)) == 0 and check.state == 0
        assert lt.cublasLtMatmulAlgoCheck(h, desc, *layouts, (u64 * 8)(), C.byref(check)) == INVALID_VALUE
        for l in layouts:
            assert lt.cublasLtMatrixLayoutDestroy(l) == 0
        assert lt.cublasLtMatmulPreferenceDestroy(pref) == 0 and lt.cublasLtMatmulDescDestroy(desc) == 0
        assert lt.cublasLtMatmulDescDestroy(None) == 0
        assert cu.pypoolsim_calls(b"cublasLtMatmul") == 3  # refused calls count too
        lt.cublasLtGetStatusName.restype = C.c_char_p
        assert lt.cublasLtGetStatusName(7) == b"CUBLAS_STATUS_INVALID_VALUE"
    """))


def _symbols(inc: str) -> Dict[str, str]:
    return {n: k for k, n in re.findall(r"^([XW])\((\w+)\)$", (SIM / "symbols" / inc).read_text(), re.M)}


def test_every_real_export_is_present_under_the_real_version_node() -> None:
    names = {"simcublas": _symbols("cublas.inc"), "simcublasLt": _symbols("cublasLt.inc")}
    assert len(names["simcublas"]) > 700 and len(names["simcublasLt"]) > 150
    assert names["simcublas"]["cublasSgemm_v2"] == "W" and names["simcublas"]["cublasSgemm"] == "X"
    assert names["simcublas"]["cublasSgetrfBatched"] == "X" and names["simcublas"]["cublasXtSgemm"] == "X"
    body = "import json\nnames = json.loads(sys.argv[2])\nmissing = []\n"
    body += "for lib, ns in names.items():\n    h = C.CDLL(LIB + f'/libpypool_{lib}.so')\n"
    body += "    missing += [n for n in ns if not hasattr(h, n)]\nprint(missing)\nassert not missing\n"
    r = subprocess.run([sys.executable, "-c", PRELUDE + body, str(simdevice.lib_dir()), json.dumps(names)],
                       env=dict(os.environ, PYPOOL_SIM_QUIET="1"), capture_output=True, text=True, timeout=120)
    ok(r)
    if shutil.which("nm") is None:
        pytest.skip("no nm to read the symbol versions")
    for lib, node in (("simcublas", "libcublas.so.13"), ("simcublasLt", "libcublasLt.so.13")):
        out = subprocess.run(["nm", "-D", "--defined-only", str(simdevice.lib_dir() / f"libpypool_{lib}.so")],
                             capture_output=True, text=True, check=True).stdout
        versioned = {m.group(1): m.group(2) for m in re.finditer(r" [TW] (\w+)@@?(\S+)$", out, re.M)}
        assert set(versioned) == set(names[lib]), lib  # nothing else leaks out
        assert set(versioned.values()) == {node}, lib


def test_stubs_say_not_supported_and_name_themselves_once() -> None:
    body = """
        assert blas.cublasXtCreate(None) == NOT_SUPPORTED and blas.cublasXtCreate(None) == NOT_SUPPORTED
        assert lt.cublasLtMatrixTransform(None) == NOT_SUPPORTED
        assert cu.pypoolsim_calls(b"cublasXtCreate") == 2
    """
    r = run(body, env={"PYPOOL_SIM_QUIET": "0"})
    ok(r)
    assert r.stderr.count("cublasXtCreate is not simulated") == 1, r.stderr
    assert "cublasLtMatrixTransform is not simulated" in r.stderr


def test_audit_redirects_cublas_by_name_and_by_full_path() -> None:
    script = textwrap.dedent("""
        import ctypes
        b = ctypes.CDLL("libcublas.so.13")
        ctypes.CDLL("/nonexistent/nvidia/cu13/lib/libcublasLt.so.13")  # by path, as torch's RPATH finds it
        v = ctypes.c_int()
        print(b.cublasGetVersion_v2(None, ctypes.byref(v)), v.value)
        maps = open("/proc/self/maps").read()
        for name in ("libpypool_simcublas.so", "libpypool_simcublasLt.so", "libpypool_simcuda.so"):
            assert name in maps, name
        print("redirected")
    """)
    r = run_audited(script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "130101", "redirected"]
