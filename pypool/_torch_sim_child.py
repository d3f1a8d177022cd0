"""Child process of :mod:`pypool.torch_compare`: PyTorch's own allocator on the simulated device.

Run as a script (``python _torch_sim_child.py JOB.json``) by a Python that holds a CUDA
build of torch, in the environment of :func:`pypool.simdevice.environ` with
``PYTORCH_CUDA_ALLOC_CONF`` set by the parent. It imports torch and the standard library
only, never pypool (Note [mincap is stdlib only] in ``mincap.py``, which it loads by path):
that Python may live in a separate virtual environment without pypool.

It replays the trace as ``torch.empty`` tensors (dropped at their free), once on the whole
device (peak reserved, device peak, device calls from an empty cache), then bisects the
device's capacity (``pypoolsim_set_memory``) for the smallest one without out-of-memory.
The last line of stdout is one JSON object.
"""

import array
import ctypes
import gc
import importlib.util
import json
import os
import sys
import time


def _load_mincap(path):
    spec = importlib.util.spec_from_file_location("_pypool_mincap", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _read_trace(path, n):
    cols = []
    with open(path, "rb") as f:
        for _ in range(4):
            a = array.array("q")
            a.frombytes(f.read(8 * n))
            if sys.byteorder != "little":
                a.byteswap()
            cols.append(a.tolist())
    return cols


class _Sim:
    def __init__(self):
        maps = open("/proc/self/maps").read()
        name = "libpypool_simcuda.so"
        if name not in maps:
            raise RuntimeError("this process does not run on pypool's simulated device (no " + name + " loaded)")
        lib = ctypes.CDLL(os.path.join(os.environ["PYPOOL_SIM_LIBDIR"], name))
        u64, i32 = ctypes.c_ulonglong, ctypes.c_int
        for fn, res, args in (("pypoolsim_set_memory", i32, [i32, u64]), ("pypoolsim_device_total", u64, [i32]),
                              ("pypoolsim_device_used", u64, [i32]), ("pypoolsim_device_peak", u64, [i32]),
                              ("pypoolsim_reset_peak", i32, [i32]), ("pypoolsim_calls", u64, [ctypes.c_char_p]),
                              ("pypoolsim_sync_calls", u64, []), ("pypoolsim_reset_counters", None, []),
                              ("pypoolsim_counters_text", u64, [ctypes.c_char_p, u64])):
            f = getattr(lib, fn)
            f.restype, f.argtypes = res, args
        self.lib = lib

    def counts(self):
        lib = self.lib
        n = int(lib.pypoolsim_counters_text(None, 0))
        buf = ctypes.create_string_buffer(n + 4096)
        lib.pypoolsim_counters_text(buf, len(buf))
        by_name = {}
        for line in buf.value.decode().splitlines():
            parts = line.split()
            if len(parts) >= 2:
                by_name[parts[0]] = int(parts[1])
        memory = {k: v for k, v in by_name.items()
                  if any(w in k for w in ("Malloc", "Free", "cuMem", "MemGetInfo", "Synchronize"))}
        return {"total": int(lib.pypoolsim_calls(None)), "sync": int(lib.pypoolsim_sync_calls()),
                "memory_calls": memory}


def main():
    job = json.load(open(sys.argv[1]))
    import torch  # here: the module ships in pypool, which must import without torch

    out = {"conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""), "torch": torch.__version__,
           "cuda": torch.version.cuda}
    if not torch.cuda.is_available():
        raise RuntimeError("torch.cuda.is_available() is False in the child (torch %s, CUDA %s)"
                           % (torch.__version__, torch.version.cuda))
    torch.cuda.init()
    sim = _Sim()
    lib = sim.lib
    backend = torch.cuda.get_allocator_backend()
    out["backend"] = backend
    if backend != "native":
        raise RuntimeError("PyTorch's allocator backend in the child is %r, not 'native'" % backend)
    mincap = _load_mincap(job["mincap"])
    n = int(job["events"])
    acts, ids, sizes, strs = _read_trace(job["trace"], n)
    num_ids = int(job["num_ids"])
    floor = int(job["floor"])
    step = int(job["step"])
    fraction = bool(job.get("memory_fraction"))
    dev = torch.device("cuda", 0)
    streams = {s: torch.cuda.Stream(dev) for s in set(strs) if s}
    empty, u8 = torch.empty, torch.uint8
    oom_types = (torch.OutOfMemoryError,) if hasattr(torch, "OutOfMemoryError") else (torch.cuda.OutOfMemoryError,)

    def teardown():
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.synchronize()

    def replay(counts=None):
        """One pass; the device calls are read before the closing synchronize (which is
        the measurement's, not the allocator's)."""
        live = [None] * num_ids
        oom_at = None
        try:
            for i in range(n):
                if acts[i] == 0:
                    try:
                        s = strs[i]
                        if s:
                            with torch.cuda.stream(streams[s]):
                                live[ids[i]] = empty(sizes[i], dtype=u8, device=dev)
                        else:
                            live[ids[i]] = empty(sizes[i], dtype=u8, device=dev)
                    except oom_types:
                        oom_at = i
                        break
                else:
                    live[ids[i]] = None
            if counts is not None:
                counts.update(sim.counts())
        finally:
            del live
        torch.cuda.synchronize()
        return oom_at

    def set_capacity(cap):
        lib.pypoolsim_set_memory(0, cap)
        if fraction:
            # garbage_collection_threshold acts only under a memory fraction; its limit is
            # read from the device's size when the fraction is set.
            torch.cuda.set_per_process_memory_fraction(1.0, dev)

    teardown()
    total0 = int(lib.pypoolsim_device_total(0))
    base = int(lib.pypoolsim_device_used(0))
    if fraction:
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
    torch.cuda.reset_peak_memory_stats(dev)
    lib.pypoolsim_reset_peak(0)
    lib.pypoolsim_reset_counters()
    t0 = time.perf_counter()
    cold = {}
    oom = replay(cold)
    out["calls_cold"] = cold
    out["replay_s"] = time.perf_counter() - t0
    out["peak_reserved"] = int(torch.cuda.max_memory_reserved(dev))
    out["device_peak"] = int(lib.pypoolsim_device_peak(0)) - base
    out["base_used"] = base
    out["allocations"] = sum(1 for a in acts if a == 0)
    out["floor"] = floor
    out["capacity"] = total0
    if oom is not None:
        out["min_capacity"] = None
        out["note"] = "out of memory at event %d on the whole device (%d bytes)" % (oom, total0)
        print(json.dumps(out))
        return
    if not job.get("search", True):
        print(json.dumps(out))
        return
    at_cap = {}

    def attempt(cap):
        teardown()
        used = int(lib.pypoolsim_device_used(0))
        if used != base:
            raise RuntimeError("device memory in use is %d bytes between attempts, not the baseline %d"
                               % (used, base))
        set_capacity(cap)
        try:
            lib.pypoolsim_reset_counters()
            calls = {}
            r = replay(calls)
        finally:
            teardown()
            set_capacity(total0)
        if r is None:
            at_cap[cap] = calls
        return r is None

    t1 = time.perf_counter()
    # The device's base use (its context, if the simulation charges one) counts toward the
    # capacity, as in the simulated-device bench.
    found = mincap.min_capacity(lambda caps: [attempt(c) for c in caps], floor=floor + base,
                                start=out["device_peak"] + base, top=(total0 // step) * step, step=step)
    out["min_capacity"] = found.capacity
    out["attempts"] = [list(a) for a in found.attempts]
    out["note"] = found.note
    out["calls_at_min"] = at_cap.get(found.capacity) if found.capacity else None
    out["search_s"] = time.perf_counter() - t1
    print(json.dumps(out))


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # one line for the parent, the traceback on stderr
        import traceback

        traceback.print_exc()
        print(json.dumps({"error": "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")}))
        sys.exit(1)
