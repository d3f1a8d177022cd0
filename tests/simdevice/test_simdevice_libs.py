"""The simulated CUDA device's driver, NVML and audit libraries, through their C ABI.

No torch and no GPU: each scenario runs in a child Python that loads the stand-ins from
pypool/_simdevice with ctypes (a child, so that no libcuda.so.1 stays loaded in the test
process). The torch-level checks live in tests/gpu (``make test-sim``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Optional

import pytest

from pypool import simdevice
from sim_child import ok, run_audited, run_lib_child

pytestmark = pytest.mark.skipif(not simdevice.available(), reason="pypool built without the simulated device")

SYMBOLS = Path(__file__).resolve().parents[2] / "csrc" / "simdevice" / "symbols"

PRELUDE = """
import ctypes as C, sys
LIB = sys.argv[1]
cu = C.CDLL(LIB + "/libpypool_simcuda.so")
u64, sz = C.c_ulonglong, C.c_size_t

class Loc(C.Structure):
    _fields_ = [("type", C.c_int), ("id", C.c_int)]

class AllocFlags(C.Structure):
    _fields_ = [("compressionType", C.c_ubyte), ("gpuDirectRDMACapable", C.c_ubyte),
                ("usage", C.c_ushort), ("reserved", C.c_ubyte * 4)]

class Prop(C.Structure):  # CUmemAllocationProp
    _fields_ = [("type", C.c_int), ("requestedHandleTypes", C.c_int), ("location", Loc),
                ("win32HandleMetaData", C.c_void_p), ("allocFlags", AllocFlags)]

class Access(C.Structure):  # CUmemAccessDesc
    _fields_ = [("location", Loc), ("flags", C.c_int)]

def prop(dev=0, handle_types=1):
    p = Prop()
    p.type, p.location.type, p.location.id, p.requestedHandleTypes = 1, 1, dev, handle_types
    return p

def used(dev=0):
    cu.pypoolsim_device_used.restype = u64
    return cu.pypoolsim_device_used(dev)
"""


def run(body: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    return run_lib_child(PRELUDE, body, env)


def test_vmm_misuse_returns_the_driver_error_codes() -> None:
    ok(run("""
        INVALID_VALUE, OOM, NOT_SUPPORTED = 1, 2, 801
        g = sz()
        assert cu.cuMemGetAllocationGranularity(C.byref(g), C.byref(prop()), 1) == 0
        G = g.value
        va = u64()
        assert cu.cuMemAddressReserve(C.byref(va), sz(G + 1), sz(0), u64(0), u64(0)) == INVALID_VALUE
        assert cu.cuMemAddressReserve(C.byref(va), sz(8 * G), sz(0), u64(0), u64(0)) == 0
        h = u64()
        assert cu.cuMemCreate(C.byref(h), sz(G + 1), C.byref(prop()), u64(0)) == INVALID_VALUE
        assert cu.cuMemCreate(C.byref(h), sz(2 << 30), C.byref(prop()), u64(0)) == OOM
        assert cu.cuMemCreate(C.byref(h), sz(G), C.byref(prop(handle_types=8)), u64(0)) == NOT_SUPPORTED
        assert used() == 0  # failed creates hold nothing
        assert cu.cuMemCreate(C.byref(h), sz(2 * G), C.byref(prop()), u64(0)) == 0
        assert used() == 2 * G
        assert cu.cuMemMap(u64(va.value + 7 * G), sz(2 * G), sz(0), h, u64(0)) == INVALID_VALUE  # past the end
        assert cu.cuMemMap(u64(va.value), sz(G), sz(1), h, u64(0)) == INVALID_VALUE  # unaligned offset
        assert cu.cuMemMap(u64(va.value), sz(2 * G), sz(0), h, u64(0)) == 0
        assert cu.cuMemMap(u64(va.value + G), sz(G), sz(0), h, u64(0)) == INVALID_VALUE  # over a mapping
        a = Access(); a.location.type, a.location.id, a.flags = 1, 0, 3
        assert cu.cuMemSetAccess(u64(va.value + 2 * G), sz(G), C.byref(a), sz(1)) == INVALID_VALUE
        assert cu.cuMemSetAccess(u64(va.value), sz(2 * G), C.byref(a), sz(1)) == 0
        C.memset(va.value, 1, 2 * G)  # accessible once access is set
        assert cu.cuMemAddressFree(u64(va.value), sz(8 * G)) == INVALID_VALUE  # still mapped
        assert cu.cuMemRelease(h) == 0
        assert used() == 2 * G  # released but mapped: still held
        assert cu.cuMemUnmap(u64(va.value + 2 * G), sz(G)) == INVALID_VALUE  # not mapped
        assert cu.cuMemUnmap(u64(va.value), sz(2 * G)) == 0
        assert used() == 0
        assert cu.cuMemRelease(h) == INVALID_VALUE  # twice
        assert cu.cuMemAddressFree(u64(va.value), sz(8 * G)) == 0
        cu.pypoolsim_calls.restype = u64
        assert cu.pypoolsim_calls(b"cuMemCreate") == 4 and cu.pypoolsim_calls(b"cuMemUnmap") == 2
        cu.pypoolsim_sync_calls.restype = u64
        assert cu.pypoolsim_sync_calls() == 2  # the unmaps
    """))


def test_plain_memory_and_info_are_truthful() -> None:
    ok(run("""
        p = u64()
        assert cu.cuMemAlloc_v2(C.byref(p), sz(3 << 20)) == 0
        free, total = sz(), sz()
        assert cu.cuMemGetInfo_v2(C.byref(free), C.byref(total)) == 0
        assert total.value == 1 << 30 and total.value - free.value == 4 << 20  # 2 MiB pages
        base, size = u64(), sz()
        assert cu.cuMemGetAddressRange_v2(C.byref(base), C.byref(size), u64(p.value + 5)) == 0
        assert (base.value, size.value) == (p.value, 3 << 20)
        assert cu.cuMemAlloc_v2(C.byref(p), sz(1 << 30)) == 2  # out of memory
        assert cu.cuMemGetAddressRange_v2(C.byref(base), C.byref(size), u64(12345)) == 500  # not found
        d = C.c_int()
        assert cu.cuCtxGetDevice(C.byref(d)) == 0 and d.value == 0
        ctx = C.c_void_p()
        assert cu.cuDevicePrimaryCtxRetain(C.byref(ctx), 1) == 0
        assert cu.cuCtxPushCurrent_v2(ctx) == 0
        assert cu.cuCtxGetDevice(C.byref(d)) == 0 and d.value == 1
        assert cu.cuCtxPopCurrent_v2(C.byref(ctx)) == 0
        assert cu.cuCtxGetDevice(C.byref(d)) == 0 and d.value == 0
    """))


def test_entry_points_bind_the_variant_of_the_requested_version() -> None:
    out = ok(run("""
        ep = cu._ZN3sim18driver_entry_pointEPKcj
        ep.restype, ep.argtypes = C.c_void_p, [C.c_char_p, C.c_uint]
        addr = lambda n: C.cast(getattr(cu, n), C.c_void_p).value
        for name, version, symbol in [
            ("cuMemGetAddressRange", 12000, "cuMemGetAddressRange_v2"),
            ("cuMemGetAddressRange", 3000, "cuMemGetAddressRange"),
            ("cuCtxPushCurrent", 12080, "cuCtxPushCurrent_v2"),
            ("cuStreamWriteValue32", 12000, "cuStreamWriteValue32_v2"),
            ("cuCtxCreate", 11000, "cuCtxCreate_v2"),
            ("cuCtxCreate", 13000, "cuCtxCreate_v4"),
            ("cuCtxGetDevice", 12080, "cuCtxGetDevice"),
            ("cuCtxGetDevice", 13000, "cuCtxGetDevice_v2"),
            ("cuGraphInstantiate", 12000, "cuGraphInstantiateWithFlags"),
            ("cuMemCreate", 12000, "cuMemCreate"),
        ]:
            assert ep(name.encode(), version) == addr(symbol), (name, version, symbol)
        assert ep(b"cuNoSuchFunction", 13000) is None
        assert ep(b"cuMemCreate", 10000) is None  # older than the function
        fn, status = C.c_void_p(), C.c_int()
        assert cu.cuGetProcAddress_v2(b"cuMemMap", C.byref(fn), 12000, u64(0), C.byref(status)) == 0
        assert fn.value == addr("cuMemMap") and status.value == 0
        assert cu.cuGetProcAddress_v2(b"cuNoSuch", C.byref(fn), 12000, u64(0), C.byref(status)) == 500
        assert status.value == 1  # CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND
        s = C.c_char_p()
        assert cu.cuGetErrorString(2, C.byref(s)) == 0 and s.value == b"out of memory"
        assert cu.cuGetErrorName(801, C.byref(s)) == 0 and s.value == b"CUDA_ERROR_NOT_SUPPORTED"
        print("done")
    """))
    assert "done" in out


def test_every_real_export_is_present() -> None:
    names = {lib: re.findall(r"^X\((\w+)\)$", (SYMBOLS / inc).read_text(), re.M)
             for lib, inc in (("simcuda", "cuda.inc"), ("simcudart", "cudart.inc"), ("simnvml", "nvml.inc"))}
    assert len(names["simcudart"]) > 400 and len(names["simcuda"]) > 600 and len(names["simnvml"]) > 300
    body = "import json\nnames = json.loads(sys.argv[2])\nmissing = []\n"
    body += "for lib, ns in names.items():\n    h = C.CDLL(LIB + f'/libpypool_{lib}.so')\n"
    body += "    missing += [n for n in ns if not hasattr(h, n)]\nprint(missing)\nassert not missing\n"
    child_env = dict(os.environ, PYPOOL_SIM_QUIET="1")
    r = subprocess.run([sys.executable, "-c", PRELUDE + body, str(simdevice.lib_dir()), json.dumps(names)],
                       env=child_env, capture_output=True, text=True, timeout=120)
    ok(r)


def test_stubs_say_not_supported_and_name_themselves_once() -> None:
    body = """
        assert cu.cuGraphCreate(None, 0) == 801
        assert cu.cuGraphCreate(None, 0) == 801
        nv = C.CDLL(LIB + "/libpypool_simnvml.so")
        assert nv.nvmlDeviceGetFanSpeed(None, None) == 3
        cu.pypoolsim_calls.restype = u64
        assert cu.pypoolsim_calls(b"cuGraphCreate") == 2
    """
    r = run(body, env={"PYPOOL_SIM_QUIET": "0"})
    ok(r)
    assert r.stderr.count("cuGraphCreate is not simulated") == 1, r.stderr
    assert "nvmlDeviceGetFanSpeed is not simulated" in r.stderr
    quiet = run(body)
    ok(quiet)
    assert "not simulated" not in quiet.stderr


def test_nvml_finds_the_device_the_runtime_describes() -> None:
    ok(run("""
        rt = C.CDLL(LIB + "/libpypool_simcudart.so")
        nv = C.CDLL(LIB + "/libpypool_simnvml.so")
        assert nv.nvmlDeviceGetCount_v2(C.byref(C.c_uint())) == 1  # before nvmlInit
        assert nv.nvmlInit_v2() == 0
        for dev in (0, 1):
            bus = C.c_int()
            assert rt.cudaDeviceGetAttribute(C.byref(bus), 33, dev) == 0  # cudaDevAttrPciBusId
            # torch formats cudaDeviceProp's ids with NVML_DEVICE_PCI_BUS_ID_FMT
            h = C.c_void_p()
            assert nv.nvmlDeviceGetHandleByPciBusId_v2(b"%08X:%02X:%02X.0" % (0, bus.value, 0), C.byref(h)) == 0
            idx = C.c_uint()
            assert nv.nvmlDeviceGetIndex(h, C.byref(idx)) == 0 and idx.value == dev
            uuid = C.create_string_buffer(96)
            assert nv.nvmlDeviceGetUUID(h, uuid, 96) == 0
            assert nv.nvmlDeviceGetHandleByUUID(uuid.value, C.byref(h)) == 0
        class Mem(C.Structure):
            _fields_ = [("total", u64), ("free", u64), ("used", u64)]
        p = u64()
        assert cu.cuMemAlloc_v2(C.byref(p), sz(1 << 20)) == 0
        m = Mem()
        assert nv.nvmlDeviceGetHandleByIndex_v2(0, C.byref(h)) == 0
        assert nv.nvmlDeviceGetMemoryInfo(h, C.byref(m)) == 0
        assert (m.total, m.used, m.free) == (1 << 30, 2 << 20, (1 << 30) - (2 << 20))
        class Fabric(C.Structure):  # nvmlGpuFabricInfo_v2_t
            _fields_ = [("version", C.c_uint), ("clusterUuid", C.c_ubyte * 16), ("status", C.c_int),
                        ("cliqueId", C.c_uint), ("state", C.c_ubyte), ("healthMask", C.c_uint)]
        f = Fabric(); f.version = C.sizeof(Fabric) | (2 << 24); f.state = 9
        assert nv.nvmlDeviceGetGpuFabricInfoV(h, C.byref(f)) == 0 and f.state == 0  # NOT_SUPPORTED
        assert nv.nvmlDeviceGetNvLinkRemoteDeviceType(h, 0, C.byref(C.c_int())) == 3
        procs = C.c_uint(8)
        assert nv.nvmlDeviceGetComputeRunningProcesses(h, C.byref(procs), None) == 0 and procs.value == 0
    """))


def test_audit_redirects_by_name_and_by_full_path() -> None:
    script = textwrap.dedent("""
        import ctypes
        ctypes.CDLL("libcudart.so.13")
        ctypes.CDLL("/nonexistent/nvidia/cu13/lib/libcuda.so.1")  # by path, as torch preloads
        nv = ctypes.CDLL("libnvidia-ml.so.1")
        print(nv.nvmlInit_v2())
        maps = open("/proc/self/maps").read()
        for name in ("libpypool_simcudart.so", "libpypool_simcuda.so", "libpypool_simnvml.so"):
            assert name in maps, name
        print("redirected")
    """)
    r = run_audited(script)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "redirected"]


def test_vmm_unmap_takes_whole_mappings_and_map_offset_must_be_zero() -> None:
    # cuda.h: cuMemMap's offset "currently must be zero"; cuMemUnmap's range "must be the
    # entire contiguous address range that was mapped to" (one mapping or several whole
    # ones), never part of one. A reservation is aligned to the granularity at least.
    ok(run("""
        INVALID_VALUE = 1
        G = 2 << 20
        va = u64()
        assert cu.cuMemAddressReserve(C.byref(va), sz(8 * G), sz(0), u64(0), u64(0)) == 0
        h1, h2 = u64(), u64()
        assert cu.cuMemCreate(C.byref(h1), sz(4 * G), C.byref(prop()), u64(0)) == 0
        assert cu.cuMemCreate(C.byref(h2), sz(2 * G), C.byref(prop()), u64(0)) == 0
        assert cu.cuMemMap(u64(va.value), sz(2 * G), sz(2 * G), h1, u64(0)) == INVALID_VALUE  # offset
        assert cu.cuMemMap(u64(va.value), sz(4 * G), sz(0), h1, u64(0)) == 0
        assert cu.cuMemMap(u64(va.value + 4 * G), sz(2 * G), sz(0), h2, u64(0)) == 0
        base, size = u64(), sz()
        assert cu.cuMemGetAddressRange_v2(C.byref(base), C.byref(size), u64(va.value + 5 * G)) == 0
        assert (base.value, size.value) == (va.value + 4 * G, 2 * G)  # the mapping of h2
        assert cu.cuMemUnmap(u64(va.value), sz(2 * G)) == INVALID_VALUE  # first half of h1's
        assert cu.cuMemUnmap(u64(va.value + 2 * G), sz(2 * G)) == INVALID_VALUE  # second half
        assert cu.cuMemUnmap(u64(va.value + 2 * G), sz(4 * G)) == INVALID_VALUE  # half + whole
        assert cu.cuMemRelease(h1) == 0 and cu.cuMemRelease(h2) == 0
        assert used() == 6 * G  # nothing was unmapped by the refused calls
        assert cu.cuMemUnmap(u64(va.value), sz(6 * G)) == 0  # two whole mappings at once
        assert used() == 0
        assert cu.cuMemAddressFree(u64(va.value), sz(8 * G)) == 0
        for align in (0, 4096, 64 << 10):
            assert cu.cuMemAddressReserve(C.byref(va), sz(2 * G), sz(align), u64(0), u64(0)) == 0
            assert va.value % G == 0, (align, hex(va.value))
            assert cu.cuMemAddressFree(u64(va.value), sz(2 * G)) == 0
    """))


def test_stream_waits_for_every_event_it_was_told_to() -> None:
    # Two cudaStreamWaitEvent calls before the next work: that work waits for both (the
    # simulation once kept only the last). A wait alone makes the stream busy, and
    # synchronizing the stream completes the awaited work.
    ok(run("""
        rt = C.CDLL(LIB + "/libpypool_simcudart.so")
        NOT_READY = 600
        vp = C.c_void_p
        def stream():
            s = vp(); assert rt.cudaStreamCreate(C.byref(s)) == 0; return s
        def event():
            e = vp(); assert rt.cudaEventCreate(C.byref(e)) == 0; return e
        s1, s2, s3, s4 = stream(), stream(), stream(), stream()
        e1, e2, e3 = event(), event(), event()
        for s in (s1, s2):
            assert cu.pypoolsim_hold_stream(u64(s.value), 1) == 0
        assert rt.cudaEventRecord(e1, s1) == 0 and rt.cudaEventRecord(e2, s2) == 0
        for first, second in ((e2, e1), (e1, e2)):
            assert rt.cudaStreamWaitEvent(s3, first, 0) == 0 and rt.cudaStreamWaitEvent(s3, second, 0) == 0
        assert rt.cudaEventRecord(e3, s3) == 0
        assert cu.pypoolsim_hold_stream(u64(s1.value), 0) == 0  # e1 completes, e2 does not
        assert rt.cudaEventQuery(e1) == 0 and rt.cudaEventQuery(e2) == NOT_READY
        assert rt.cudaEventQuery(e3) == NOT_READY  # s3 still waits for e2
        assert rt.cudaStreamWaitEvent(s4, e2, 0) == 0
        assert rt.cudaStreamQuery(s4) == NOT_READY  # busy with the wait alone
        assert rt.cudaStreamSynchronize(s4) == 0
        assert rt.cudaEventQuery(e2) == 0 and rt.cudaEventQuery(e3) == 0
        assert rt.cudaStreamQuery(s3) == 0 and rt.cudaStreamQuery(s4) == 0
    """))


def test_control_api_refuses_what_it_cannot_use() -> None:
    # A stream the simulation does not know is refused (-1), not dereferenced: these
    # crashed the process. So are a device of 0 bytes and a delay whose nanoseconds
    # overflow.
    ok(run("""
        rt = C.CDLL(LIB + "/libpypool_simcudart.so")
        for bad in (0x1234, 2**64 - 1, 12345 << 20):
            assert cu.pypoolsim_pending_work(u64(bad)) == -1
            assert cu.pypoolsim_hold_stream(u64(bad), 1) == -1
            assert cu.pypoolsim_complete_stream(u64(bad)) == -1
        s = C.c_void_p()
        assert rt.cudaStreamCreate(C.byref(s)) == 0
        assert cu.pypoolsim_pending_work(u64(s.value)) == 0 and cu.pypoolsim_pending_work(u64(0)) == 0
        assert rt.cudaStreamDestroy(s) == 0
        assert cu.pypoolsim_pending_work(u64(s.value)) == -1  # destroyed
        assert cu.pypoolsim_set_memory(0, u64(0)) == -1
        assert cu.pypoolsim_set_memory(0, u64(2 << 30)) == 0
        cu.pypoolsim_set_event_delay_us.argtypes = [C.c_longlong]
        assert cu.pypoolsim_set_event_delay_us(2**62) == -1
        assert cu.pypoolsim_set_event_delay_us(-1) == -1
        assert cu.pypoolsim_set_event_delay_us(0) == 0
    """))


@pytest.mark.parametrize("memory, total", [
    ("40GB", 40 * 1000**3), ("40G", 40 << 30), ("40GiB", 40 << 30), ("512 MiB", 512 << 20), ("3000", 3000),
    ("nan", 80 << 30), ("inf", 80 << 30), (str(2**70), 80 << 30), ("1Ki", 80 << 30), ("-1", 80 << 30),
])
def test_memory_sizes_are_read_as_pypool_reads_them(memory: str, total: int) -> None:
    # PYPOOL_SIM_MEMORY takes pypool's units (GB = 1000**3, as `--memory 40GB`); what is
    # not a size (NaN, past 2**64, ...) falls back to 80 GiB and says so, never wraps.
    r = run("""
        cu.pypoolsim_device_total.restype = u64
        print(cu.pypoolsim_device_total(0))
    """, env={"PYPOOL_SIM_MEMORY": memory})
    assert int(ok(r)) == total
    assert ("is not a size" in r.stderr) == (total == 80 << 30), r.stderr


@pytest.mark.parametrize("devices, count", [("2", 2), ("16", 16), ("2abc", 1), ("0", 1), ("17", 1), ("", 1)])
def test_device_count_is_read_strictly(devices: str, count: int) -> None:
    r = run("print(cu.pypoolsim_device_count())", env={"PYPOOL_SIM_DEVICES": devices})
    assert int(ok(r)) == count
    assert ("is not 1..16" in r.stderr) == (devices not in ("2", "16")), r.stderr


def test_counters_are_exact_across_threads_reads_and_resets() -> None:
    # Threads claim counter slots while another thread reads every table, and a reset
    # sets every thread's count to 0, those of threads that exited included.
    ok(run("""
        import threading
        rt = C.CDLL(LIB + "/libpypool_simcudart.so")
        cu.pypoolsim_calls.restype = cu.pypoolsim_sync_calls.restype = u64
        cu.pypoolsim_counters_text.restype = u64
        stop = threading.Event()
        def read():
            buf = C.create_string_buffer(1 << 16)
            while not stop.is_set():
                cu.pypoolsim_counters_text(buf, u64(len(buf)))
                cu.pypoolsim_sync_calls()
        def work():
            d, p = C.c_int(), C.c_void_p()
            for _ in range(500):
                rt.cudaGetDevice(C.byref(d))
                assert rt.cudaMalloc(C.byref(p), sz(1 << 20)) == 0 and rt.cudaFree(p) == 0
        reader = threading.Thread(target=read)
        reader.start()
        workers = [threading.Thread(target=work) for _ in range(8)]
        for t in workers: t.start()
        for t in workers: t.join()
        stop.set(); reader.join()
        assert cu.pypoolsim_calls(b"cudaGetDevice") == 8 * 500
        assert cu.pypoolsim_calls(b"cudaFree") == 8 * 500 and cu.pypoolsim_sync_calls() == 8 * 500
        cu.pypoolsim_reset_counters()
        assert cu.pypoolsim_calls(None) == 0 and cu.pypoolsim_sync_calls() == 0
        d = C.c_int()
        rt.cudaGetDevice(C.byref(d))
        t = threading.Thread(target=lambda: rt.cudaGetDevice(C.byref(C.c_int())))
        t.start(); t.join()
        assert cu.pypoolsim_calls(b"cudaGetDevice") == 2 and cu.pypoolsim_calls(None) == 2
    """))


def test_freeing_pinned_memory_counts_as_synchronizing_in_both_apis() -> None:
    # cudaFreeHost and cuMemFreeHost (and the unregisters) synchronize on a GPU; freeing
    # null does nothing and is counted apart, in both APIs.
    ok(run("""
        rt = C.CDLL(LIB + "/libpypool_simcudart.so")
        cu.pypoolsim_sync_calls.restype = u64
        p = C.c_void_p()
        assert cu.cuMemHostAlloc(C.byref(p), sz(4096), 0) == 0
        assert cu.cuMemFreeHost(p) == 0
        assert cu.pypoolsim_sync_calls() == 1
        assert cu.cuMemFree_v2(u64(0)) == 0 and cu.cuMemFreeHost(None) == 0 and rt.cudaFree(None) == 0
        assert cu.pypoolsim_sync_calls() == 1
        buf = C.create_string_buffer(8192)
        assert cu.cuMemHostRegister_v2(buf, sz(8192), 0) == 0 and cu.cuMemHostUnregister(buf) == 0
        assert cu.pypoolsim_sync_calls() == 2
        # Counted as synchronizing, and they do: held work on the device completes.
        s, d = C.c_void_p(), C.c_void_p()
        assert rt.cudaStreamCreate(C.byref(s)) == 0 and cu.pypoolsim_hold_stream(u64(s.value), 1) == 0
        assert rt.cudaMalloc(C.byref(d), sz(4096)) == 0
        for free in (lambda: cu.cuMemFreeHost(p), lambda: cu.cuMemHostUnregister(buf)):
            assert cu.cuMemHostAlloc(C.byref(p), sz(4096), 0) == 0 and cu.cuMemHostRegister_v2(buf, sz(8192), 0) == 0
            assert rt.cudaMemsetAsync(d, 0, sz(16), s) == 0
            assert cu.pypoolsim_pending_work(u64(s.value)) == 1
            assert free() == 0
            assert cu.pypoolsim_pending_work(u64(s.value)) == 0
            cu.cuMemFreeHost(p)
            cu.cuMemHostUnregister(buf)
    """))


def test_runtime_features_it_lacks_name_themselves_once() -> None:
    # Graph capture, graphs and IPC return cudaErrorNotSupported like the generated stubs,
    # and name themselves as the stubs do (they were silent: `--verbose` never said which
    # call torch's "operation not supported" came from).
    body = """
        rt = C.CDLL(LIB + "/libpypool_simcudart.so")
        for _ in range(2):
            assert rt.cudaStreamBeginCapture(None, 0) == 801
            assert rt.cudaGraphLaunch(None, None) == 801
        assert rt.cudaGetLastError() == 801
    """
    r = run(body, env={"PYPOOL_SIM_QUIET": "0"})
    ok(r)
    for fn in ("cudaStreamBeginCapture", "cudaGraphLaunch"):
        assert r.stderr.count(f"{fn} is not simulated") == 1, r.stderr
    quiet = run(body)
    ok(quiet)
    assert "not simulated" not in quiet.stderr


def test_threads_that_come_and_go_do_not_pile_up_counter_tables() -> None:
    # Each thread that counts a call gets a table of counters (32 KiB); a table once
    # stayed for good after its thread ended, so a program that starts threads all the
    # time grew by 32 KiB per thread. An ended thread's table now goes to the next new
    # thread; its counts still count.
    ok(run("""
        import threading
        rt = C.CDLL(LIB + "/libpypool_simcudart.so")
        cu.pypoolsim_calls.restype = u64
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096
        def one():
            rt.cudaGetDevice(C.byref(C.c_int()))
        def burst(n):
            for _ in range(n):
                t = threading.Thread(target=one)
                t.start(); t.join()
        burst(50)
        before = rss()
        burst(3000)
        grown = rss() - before
        assert grown < 24 << 20, grown  # 3000 tables would be 94 MiB
        assert cu.pypoolsim_calls(b"cudaGetDevice") == 3050
    """))
