"""``python -m pypool bench --device sim``: the allocators on the simulated CUDA device.

The real PyTorch CUDA build runs on pypool's stand-in CUDA libraries (Note [Simulated
device] in ``csrc/simdevice/sim_state.h``; :mod:`pypool.simdevice`): device memory is host
memory with a capacity, kernels do nothing, every CUDA entry point is counted. The GPU
suite's machinery is reused as is: every allocator runs in its own child process
(:mod:`pypool._bench_gpu`, started with ``--device sim`` in the environment of
:func:`pypool.simdevice.environ`), and this module adds the scenarios that only the
simulation can answer, plus the parent-side confirmation runs and the report.

Note [Simulated bench figures]: what is measured.

* **Memory** (exact; the simulation is truthful about capacity). Each bundled workload
  (:mod:`pypool.workloads`) is replayed as real tensors (``torch.empty`` of each
  allocation's size, the reference dropped at its free): peak reserved from the
  allocator's statistics, the device's own peak (``control().peak()``) and the smallest
  device capacity that runs the workload without an out-of-memory error, bisected in
  2 MiB steps inside the child between the workload's floor (peak live requested bytes)
  and the unconstrained run's device peak. Between attempts every tensor is freed, the
  cache emptied and the device's memory in use checked back at its baseline. The parent
  then confirms each answer in fresh children: one at that capacity (must pass) and one
  2 MiB below (must fail).
* **Device calls** during a replay (``control().counters()``), from an empty cache (cold)
  and again with the cache warm, with the calls that synchronize a real device counted
  separately (``control().sync_calls()``).
* **Host overhead on a simulated device**, never GPU time (the timing children run
  ``sim_rounds`` times per allocator, in alternating order, and the batches of all rounds
  are pooled): ns per ``torch.empty`` + ``del``
  pair from 1 and 4 Python threads (the GIL serializes them), from C++ inter-op threads
  through TorchScript's ``fork`` (no GIL: torch's own C++ path into whichever allocator is
  installed), and pypool's C ABI (``pypool_malloc``/``pypool_free``) from 1, 2 and 4 C++
  threads. Every torch.empty batch alternates with the same batch on the ``meta`` device
  (torch's floor: no allocator, no CUDA), and the CPU time above it is reported beside.

Allocators: PyTorch native, native with ``expandable_segments:True``, pypool and pypool
with expandable segments. ``backend:cudaMallocAsync`` is left out: its caching pool lives
inside NVIDIA's driver, which the simulation does not model (its ``cudaMallocAsync`` takes
memory straight from the device and caches nothing), so its figures would describe the
simulation rather than the allocator. RMM is left out likewise: its pool is one upstream
allocation of a size chosen by the caller, so its peak and its smallest capacity are a
setting, not a measurement (and it is not part of this project's environments).
"""

from __future__ import annotations

import gc
import math
import os
import threading
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ["SIM_ALLOCATORS", "SIM_SCENARIOS", "STEP", "sim_settings", "sim_scenarios", "memory_scenarios",
           "timing_scenarios", "run_sim", "check_sim", "sim_tables"]

#: Allocators compared on the simulated device (see the module docstring for the others).
SIM_ALLOCATORS: Tuple[str, ...] = ("native", "native-expandable", "pypool", "pypool-expandable")
#: Why the GPU suite's other allocators are not run here (printed with the refusal).
SIM_EXCLUDED = {
    "cudaMallocAsync": "its pool lives inside NVIDIA's driver, which the simulation does not model",
    "rmm": "its pool is one upstream allocation of a chosen size: peak and smallest capacity would be a setting",
}
#: Capacity steps of the smallest-capacity search.
STEP = 2 << 20
MiB = 1 << 20


#: Workloads of the memory scenarios: the real models recorded on the simulated device (GPT
#: training, a CNN with a growing batch, GPT decoding with a KV cache) and the generated ones.
_ALL_SIM_WORKLOADS = ["recorded_gpt_train", "recorded_cnn_growing_batch", "recorded_gpt_decode",
                      "transformer", "growing_batch", "kv_cache", "random"]


def sim_settings(mode: str) -> Dict[str, Any]:
    """Work sizes of the simulated-device scenarios (the ``sim`` part of the settings).

    ``full`` is sized to finish in about ten minutes on a busy 2-core machine (the
    workloads at half length: same size mix, about the same peaks). ``sim_rounds``:
    the timing children run that many times per allocator, interleaved (see
    :func:`run_sim`).
    """
    if mode == "full":
        return dict(sim_memory="80GiB", sim_workloads=list(_ALL_SIM_WORKLOADS),
                    sim_trace_scale=0.5, sim_pair_sizes=[512, 1 << 20, 64 << 20], sim_pair_threads=[1, 4],
                    sim_pair_ops=2000, sim_pair_batches=21, sim_warmup_batches=2,
                    sim_ts_ops=4000, sim_ts_batches=15, sim_c_threads=[1, 2, 4], sim_c_iters=300_000,
                    sim_c_repeats=7, sim_rounds=3, sim_confirm=True)
    if mode == "quick":
        return dict(sim_memory="80GiB", sim_workloads=list(_ALL_SIM_WORKLOADS),
                    sim_trace_scale=0.1, sim_pair_sizes=[512, 1 << 20, 64 << 20], sim_pair_threads=[1, 4],
                    sim_pair_ops=1000, sim_pair_batches=11, sim_warmup_batches=2,
                    sim_ts_ops=2000, sim_ts_batches=7, sim_c_threads=[1, 2, 4], sim_c_iters=100_000,
                    sim_c_repeats=5, sim_rounds=2, sim_confirm=True)
    return dict(sim_memory="80GiB", sim_workloads=["kv_cache"], sim_trace_scale=0.02,
                sim_pair_sizes=[512], sim_pair_threads=[1, 2], sim_pair_ops=20, sim_pair_batches=3,
                sim_warmup_batches=1, sim_ts_ops=20, sim_ts_batches=2, sim_c_threads=[1, 2],
                sim_c_iters=200, sim_c_repeats=2, sim_rounds=1, sim_confirm=True)


def sim_scenarios(g: Dict[str, Any]) -> List[str]:
    """Scenario names of the simulated-device suite (``kind:param...``), in report order."""
    return memory_scenarios(g) + timing_scenarios(g)


def memory_scenarios(g: Dict[str, Any]) -> List[str]:
    """The workloads' memory scenarios (deterministic: run once per allocator)."""
    return [f"minmem:{w}" for w in g["sim_workloads"]]


def timing_scenarios(g: Dict[str, Any]) -> List[str]:
    """The host-overhead scenarios (run ``sim_rounds`` times per allocator)."""
    names: List[str] = []
    for size in g["sim_pair_sizes"]:
        for t in g["sim_pair_threads"]:
            names.append(f"tpairs:{size}:{t}")
    for size in g["sim_pair_sizes"]:
        for t in g["sim_c_threads"]:
            names.append(f"tspairs:{size}:{t}")
    for size in g["sim_pair_sizes"]:
        for t in g["sim_c_threads"]:
            names.append(f"cthreads:{size}:{t}")
    return names


# ---------------------------------------------------------------------------- child side
def _summary(values: List[float]) -> Dict[str, Any]:
    from ._bench_gpu import _summary as s

    return s(values)


def _control() -> Any:
    from . import simdevice

    return simdevice.control()


def _counts() -> Dict[str, Any]:
    ctl = _control()
    by_name = ctl.counters()
    return {"total": ctl.calls(), "sync": ctl.sync_calls(), "by_name": by_name}


def _ints(param: str, n: int) -> List[int]:
    parts = param.split(":")
    if len(parts) != n:
        raise ValueError(f"expected {n} ':'-separated integers, got {param!r}")
    return [int(p) for p in parts]


def _timing(ctx: Any) -> str:
    """What a time measures (every row says it: these are never GPU times)."""
    if getattr(ctx, "sim", False):
        return "host overhead on a simulated device"
    return "host time on a GPU machine" if ctx.cuda else "host time, CPU tensors (test mode)"


def _timed_calls(ctx: Any, fn: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    """``fn()``'s row plus the device calls made while it ran (sim only)."""
    if not getattr(ctx, "sim", False):
        return fn()
    ctl = _control()
    ctl.reset_counters()
    row = fn()
    c = _counts()
    pairs = row.get("pairs_done") or 0
    row["device_calls"] = {"total": c["total"], "sync": c["sync"],
                           "per_pair": c["total"] / pairs if pairs else None}
    return row


def _interleaved(run: Callable[[Any], Tuple[float, float]], dev: Any, meta: Any, batches: int,
                 warm: int) -> Dict[str, Any]:
    """Batches on the device and on ``meta`` alternately (A B B A ...), so that the machine's
    speed of the moment (a shared 2-core VM drifts by 2x) hits both alike; ``run(device)``
    gives one batch's (wall, cpu) ns per pair. ``over_meta`` is each batch's CPU time above
    its neighbouring meta batch: what the allocator and the CUDA path add to torch's floor."""
    out: Dict[str, List[float]] = {"ns": [], "cpu_ns": [], "meta_ns": [], "meta_cpu_ns": [], "over_meta_cpu_ns": []}
    for b in range(warm + batches):
        order = (dev, meta) if b % 2 == 0 else (meta, dev)
        got = {id(d): run(d) for d in order}
        if b < warm:
            continue
        w, c = got[id(dev)]
        mw, mc = got[id(meta)]
        out["ns"].append(w)
        out["cpu_ns"].append(c)
        out["meta_ns"].append(mw)
        out["meta_cpu_ns"].append(mc)
        out["over_meta_cpu_ns"].append(c - mc)
    row: Dict[str, Any] = {}
    for k, v in out.items():
        row[k] = _summary(v)
        row[k + "_values"] = v
    return row


def _py_pairs(ctx: Any, param: str) -> Dict[str, Any]:
    """ns per ``torch.empty(size, uint8)`` + ``del`` from ``threads`` Python threads, on the
    device and on ``meta`` (no allocator) in alternating batches."""
    size, threads = _ints(param, 2)
    torch, g = ctx.torch, ctx.g
    dev, meta = ctx.device, torch.device("meta")
    empty, u8 = torch.empty, torch.uint8
    n, batches, warm = int(g["sim_pair_ops"]), int(g["sim_pair_batches"]), int(g["sim_warmup_batches"])
    clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns

    def loop(d: Any) -> Tuple[int, int, int]:
        c0 = cpu_clock()
        t0 = clock()
        for _ in range(n):
            x = empty(size, dtype=u8, device=d)
            del x
        t1 = clock()
        return t0, t1, cpu_clock() - c0

    lat: List[float] = []
    if threads == 1:
        def run(d: Any) -> Tuple[float, float]:
            t0, t1, c = loop(d)
            if d is dev:
                lat.append((t1 - t0) / n)
            return (t1 - t0) / n, c / n

        row = _interleaved(run, dev, meta, batches, warm)
    else:
        # Persistent workers released together per batch; a batch's wall time runs from
        # the first worker's start to the last one's end, its CPU time is the workers' sum.
        start = threading.Barrier(threads + 1)
        done = threading.Barrier(threads + 1)
        spans: List[Tuple[int, int, int]] = [(0, 0, 0)] * threads
        cur: List[Any] = [dev]
        stop = [False]
        errors: List[str] = []

        def worker(k: int) -> None:
            while True:
                start.wait()
                if stop[0]:
                    return
                try:
                    spans[k] = loop(cur[0])
                except Exception as e:  # reported, not lost in the thread
                    errors.append(f"{type(e).__name__}: {e}")
                    spans[k] = (clock(), clock(), 0)
                done.wait()

        def run(d: Any) -> Tuple[float, float]:
            cur[0] = d
            start.wait()
            done.wait()
            first = min(x[0] for x in spans)
            last = max(x[1] for x in spans)
            if d is dev:
                lat.append(sum(x[1] - x[0] for x in spans) / (n * threads))
            return (last - first) / (n * threads), sum(x[2] for x in spans) / (n * threads)

        workers = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(threads)]
        for w in workers:
            w.start()
        try:
            row = _interleaved(run, dev, meta, batches, warm)
        finally:
            stop[0] = True
            start.wait()
            for w in workers:
                w.join()
        if errors:
            raise RuntimeError(errors[0])
    lat = lat[-batches:]
    row.update({"metric": "ns_per_pair", "size": size, "threads": threads, "device": str(dev),
                "thread_ns": _summary(lat), "thread_ns_values": lat, "batch_ops": n,
                "pairs_done": (warm + batches) * n * threads, "timing": _timing(ctx)})
    return row


def sc_tpairs(ctx: Any, param: str) -> Dict[str, Any]:
    return _timed_calls(ctx, lambda: _py_pairs(ctx, param))


_TS: Dict[str, Any] = {}


def _ts_functions(torch: Any) -> Any:
    """TorchScript functions that allocate from ``k`` inter-op threads (compiled once).

    Note [torch.empty from C++ threads]: torch's caching allocator has no C entry point
    (libc10_cuda.so exports only the ``CUDACachingAllocator::allocator`` pointer; its
    ``raw_alloc`` is an inline virtual call that needs torch's headers, i.e. an
    extension). TorchScript's ``fork`` runs a scripted function on torch's inter-op
    thread pool, in C++ without the GIL, and a scripted ``torch.empty`` takes the same
    dispatcher path into whichever allocator is installed (the native one or pypool
    through the pluggable allocator), so the interpreter's overhead is the same in every
    column and the ``meta`` column shows it.
    """
    if "par" in _TS:
        return _TS["par"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")

        def loop(n: int, size: int, dev: torch.device) -> int:  # type: ignore[name-defined]
            acc = 0
            for _ in range(n):
                x = torch.empty([size], dtype=torch.uint8, device=dev)
                acc += x.numel()  # keeps the allocation from being optimized away
            return acc

        sloop = torch.jit.script(loop)
        _TS["loop"] = sloop

        def par(k: int, n: int, size: int, dev: torch.device) -> int:  # type: ignore[name-defined]
            futs = [torch.jit.fork(sloop, n, size, dev) for _ in range(k)]
            acc = 0
            for f in futs:
                acc += torch.jit.wait(f)
            return acc

        _TS["par"] = torch.jit.script(par)
    return _TS["par"]


def _ts_pairs(ctx: Any, param: str) -> Dict[str, Any]:
    size, threads = _ints(param, 2)
    torch, g = ctx.torch, ctx.g
    dev, meta = ctx.device, torch.device("meta")
    n, batches = int(g["sim_ts_ops"]), int(g["sim_ts_batches"])
    clock = time.perf_counter_ns
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        par = _ts_functions(torch)

        def run(d: Any) -> Tuple[float, float]:
            c0 = time.process_time_ns()  # every thread of the process: the inter-op ones work
            t0 = clock()
            got = par(threads, n, size, d)
            w = (clock() - t0) / (n * threads)
            c = (time.process_time_ns() - c0) / (n * threads)
            if got != n * threads * size:
                raise RuntimeError(f"TorchScript loop returned {got}, expected {n * threads * size}")
            return w, c

        # The profiling executor records shapes on the first calls and optimizes after:
        # three warm-up batches per device at full length.
        row = _interleaved(run, dev, meta, batches, 3)
    row.update({"metric": "ns_per_pair", "size": size, "threads": threads, "device": str(dev), "batch_ops": n,
                "pairs_done": (3 + batches) * n * threads,
                "interop_threads": int(torch.get_num_interop_threads()), "timing": _timing(ctx)})
    return row


def sc_tspairs(ctx: Any, param: str) -> Dict[str, Any]:
    return _timed_calls(ctx, lambda: _ts_pairs(ctx, param))


def sc_cthreads(ctx: Any, param: str) -> Dict[str, Any]:
    """pypool's C ABI from C++ threads (``_core.bench_c_api_threads``)."""
    size, threads = _ints(param, 2)
    if not ctx.alloc.name.startswith("pypool"):
        return {"metric": "ns_per_pair", "size": size, "threads": threads,
                "skipped": "torch's caching allocator has no C entry point to call from C++ threads "
                           "without a torch extension (see the TorchScript rows)"}
    from . import _core

    g = ctx.g
    dev = (ctx.device.index or 0) if ctx.cuda else 0

    def run() -> Dict[str, Any]:
        walls: List[float] = []
        per: List[float] = []
        cpus: List[float] = []
        for _ in range(int(g["sim_c_repeats"])):
            c0 = time.process_time_ns()
            r = _core.bench_c_api_threads(size, int(g["sim_c_iters"]), threads, dev)
            cpus.append((time.process_time_ns() - c0) / (int(g["sim_c_iters"]) * threads))
            walls.append(float(r["ns_per_pair"]))
            per.append(sum(r["thread_ns_per_pair"]) / len(r["thread_ns_per_pair"]))
        reps, iters = int(g["sim_c_repeats"]), int(g["sim_c_iters"])
        return {"metric": "ns_per_pair", "size": size, "threads": threads, "ns": _summary(walls),
                "thread_ns": _summary(per), "cpu_ns": _summary(cpus), "ns_values": walls, "thread_ns_values": per,
                "cpu_ns_values": cpus, "iters": iters,
                "pairs_done": reps * (iters + 1) * threads, "timing": _timing(ctx)}

    return _timed_calls(ctx, run)


# ---- workloads: memory, device calls and the smallest capacity ----
class _Replayer:
    """One bundled workload replayed as real tensors, stopping at the first OOM."""

    def __init__(self, ctx: Any, name: str) -> None:
        from .workloads import ALL_WORKLOADS, RECORDED_WORKLOADS

        if name not in ALL_WORKLOADS:
            raise ValueError(f"unknown workload {name!r} (known: {', '.join(ALL_WORKLOADS)})")
        self.ctx = ctx
        # A recorded workload is one run of a real model: always whole (a scale would cut
        # a prefix of it); the generated ones are shortened by sim_trace_scale.
        self.scale = 1.0 if name in RECORDED_WORKLOADS else float(ctx.g["sim_trace_scale"])
        trace = ALL_WORKLOADS[name](seed=0, scale=self.scale)
        self.floor = int(trace.peak_live())
        self.acts = trace.actions.tolist()
        self.ids = trace.ids.tolist()
        self.sizes = trace.sizes.tolist() if ctx.cuda else [max(1, s >> 20) for s in trace.sizes.tolist()]
        if not ctx.cuda:
            self.floor = max(1, self.floor >> 20)  # CPU test mode (see sc_trace)
        self.strs = trace.streams.tolist()
        self.num_ids = int(trace.num_ids)
        self.stream_of = {s: ctx.new_stream() for s in set(self.strs) if s != 0}

    @property
    def events(self) -> int:
        return len(self.acts)

    def run(self, before_sync: Optional[Callable[[], None]] = None) -> Dict[str, Any]:
        """One pass; ``before_sync`` runs after the last event, before the device sync."""
        from ._bench_gpu import _is_oom

        ctx = self.ctx
        empty, u8, dev = ctx.torch.empty, ctx.torch.uint8, ctx.device
        acts, ids, sizes, strs, stream_of = self.acts, self.ids, self.sizes, self.strs, self.stream_of
        live: List[Any] = [None] * self.num_ids
        oom_at: Optional[int] = None
        oom_msg = ""
        t0 = time.perf_counter_ns()
        try:
            for i in range(len(acts)):
                if acts[i] == 0:
                    try:
                        s = strs[i]
                        if s:
                            with ctx.stream_ctx(stream_of[s]):
                                live[ids[i]] = empty(sizes[i], dtype=u8, device=dev)
                        else:
                            live[ids[i]] = empty(sizes[i], dtype=u8, device=dev)
                    except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError
                        if not _is_oom(e):
                            raise
                        oom_at, oom_msg = i, str(e).splitlines()[0][:200]
                        break
                else:
                    live[ids[i]] = None
            ms = (time.perf_counter_ns() - t0) / 1e6
            if before_sync is not None:
                before_sync()
        finally:
            live.clear()
            del live
        ctx.sync()
        return {"ok": oom_at is None, "oom_at_event": oom_at, "oom": oom_msg or None, "ms": ms}


def _teardown(ctx: Any) -> None:
    """Every tensor freed and the cache emptied (torch's and pypool's: install hooks it)."""
    gc.collect()
    ctx.sync()
    if ctx.cuda:
        ctx.torch.cuda.empty_cache()
    ctx.alloc.empty_cache()
    ctx.sync()


def _used(ctx: Any) -> int:
    return _control().used(0) if getattr(ctx, "sim", False) else 0


def sc_minmem(ctx: Any, param: str) -> Dict[str, Any]:
    rep = _Replayer(ctx, param)
    sim = bool(getattr(ctx, "sim", False))
    ctl = _control() if sim else None
    total0 = ctl.total(0) if ctl is not None else 0
    row: Dict[str, Any] = {"metric": "min_capacity", "workload": param, "events": rep.events,
                           "allocations": rep.acts.count(0), "floor": rep.floor, "scale": rep.scale}
    _teardown(ctx)
    base = _used(ctx)
    row["base_used"] = base
    # 1. Unconstrained (the whole device): peaks and the device calls from an empty cache.
    ctx.alloc.reset_peaks()
    cold_calls: Dict[str, Any] = {}
    if ctl is not None:
        ctl.reset_peak(0)
        ctl.reset_counters()
    cold = rep.run(before_sync=(lambda: cold_calls.update(_counts())) if ctl is not None else None)
    mem = ctx.alloc.stats()
    row["memory_override"] = mem
    row["sim_peak"] = ctl.peak(0) if ctl is not None else None
    row["cold"] = cold
    row["calls_cold"] = cold_calls or None
    # 2. Again with the cache as the first pass left it.
    warm_calls: Dict[str, Any] = {}
    if ctl is not None:
        ctl.reset_counters()
    warm = rep.run(before_sync=(lambda: warm_calls.update(_counts())) if ctl is not None else None)
    row["warm"] = warm
    row["calls_warm"] = warm_calls or None
    row["ns"] = _summary([cold["ms"] * 1e6 / max(1, rep.events), warm["ms"] * 1e6 / max(1, rep.events)])
    if not cold["ok"]:
        row["min_capacity"] = None
        row["min_capacity_note"] = f"out of memory on the whole device ({total0} bytes)"
        return row
    if ctl is None:
        row["min_capacity"] = None
        row["min_capacity_note"] = "not on the simulated device"
        return row
    # 3. Bisection on the device's capacity, in STEP units: fail(lo - 1) holds because
    # less than floor + base cannot hold the live bytes; pass(hi) is checked.
    # attempts: [capacity, passed, first OOM event, device calls, of which sync]
    attempts: List[List[Any]] = []
    passed_calls: Dict[int, Dict[str, Any]] = {}
    t_search = time.perf_counter()

    def attempt(units: int) -> bool:
        _teardown(ctx)
        used = ctl.used(0)
        if used != base:
            raise RuntimeError(f"device memory in use is {used} bytes between attempts, not the "
                               f"baseline {base}: something outlived the replay")
        cap = units * STEP
        calls: Dict[str, Any] = {}
        ctl.set_memory(0, cap)
        try:
            ctl.reset_counters()
            r = rep.run(before_sync=lambda: calls.update(_counts()))
        finally:
            _teardown(ctx)
            ctl.set_memory(0, total0)
        attempts.append([cap, r["ok"], r["oom_at_event"], calls.get("total"), calls.get("sync")])
        if r["ok"]:
            passed_calls[cap] = calls
        return bool(r["ok"])

    # The floor counts what the device holds before the replay (Note [Capacity bisection]
    # in pypool.mincap: one search for the advisor, this bench and the PyTorch child).
    from .mincap import min_capacity

    found = min_capacity(lambda caps: [attempt(c // STEP) for c in caps], floor=rep.floor + base,
                         start=int(row["sim_peak"]), top=(total0 // STEP) * STEP, step=STEP)
    if found.capacity is None:
        row["min_capacity"] = None
        row["min_capacity_note"] = "no capacity below the whole device passed"
        row["attempts"] = attempts
        return row
    hi = found.capacity // STEP
    cap = hi * STEP
    row["min_capacity"] = cap
    # The device calls of the passing replay at that capacity: what memory pressure costs.
    row["calls_at_min"] = passed_calls.get(cap)
    row["min_capacity_over_floor"] = cap / rep.floor if rep.floor else None
    row["attempts"] = attempts
    row["search_s"] = time.perf_counter() - t_search
    return row


def sc_confirm(ctx: Any, param: str) -> Dict[str, Any]:
    """One replay on a fresh device of the capacity this child was started with."""
    rep = _Replayer(ctx, param)
    _teardown(ctx)
    sim = bool(getattr(ctx, "sim", False))
    row: Dict[str, Any] = {"metric": "confirm", "workload": param, "floor": rep.floor,
                           "capacity": _control().total(0) if sim else None, "base_used": _used(ctx)}
    row.update(rep.run())
    _teardown(ctx)
    return row


SIM_SCENARIOS: Dict[str, Callable[[Any, str], Dict[str, Any]]] = {
    "tpairs": sc_tpairs,
    "tspairs": sc_tspairs,
    "cthreads": sc_cthreads,
    "minmem": sc_minmem,
    "confirm": sc_confirm,
}


# ---------------------------------------------------------------------------- parent side
def _torch_has_cuda_libs() -> Optional[str]:
    """None when the installed torch is a CUDA build (judged by its files, without
    importing it), else why not."""
    import importlib.util

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return "torch is not installed"
    for loc in spec.submodule_search_locations:
        if os.path.exists(os.path.join(loc, "lib", "libc10_cuda.so")):
            return None
    return "the installed torch is a CPU-only build (no torch/lib/libc10_cuda.so); it needs the CUDA build"


def check_sim(memory: str) -> Dict[str, Any]:
    """Raise ``RuntimeError`` (one line) unless the simulated device can run the bench
    here; return what a probe child saw on it."""
    import json
    import subprocess
    import sys

    from . import simdevice

    if not simdevice.available():
        raise RuntimeError(f"--device sim: the simulated device is not built into this pypool "
                           f"(no {simdevice.AUDIT_LIB} in {simdevice.lib_dir()})")
    why = _torch_has_cuda_libs()
    if why:
        raise RuntimeError(f"--device sim: {why}")
    try:
        env = simdevice.environ(memory=memory)
    except (ValueError, simdevice.SimDeviceError) as e:
        raise RuntimeError(f"--device sim: {e}") from e
    code = ("import json, torch, pypool.simdevice as s; "
            "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, "
            "'available': torch.cuda.is_available(), 'count': torch.cuda.device_count(), "
            "'active': s.active(), 'name': torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "
            "'version': s.control().version() if s.active() else None}))")
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_parent, env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                              timeout=180)
    except subprocess.TimeoutExpired:
        raise RuntimeError("--device sim: the probe of the simulated device timed out") from None
    info: Dict[str, Any] = {}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        try:
            info = json.loads(lines[-1])
        except ValueError:
            info = {}
    if not info.get("available") or not info.get("active"):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]
        raise RuntimeError(f"--device sim: torch does not see the simulated device "
                           f"(probe exit status {proc.returncode}: {tail})")
    return info


def _confirm(name: str, workload: str, cap: int, g: Dict[str, Any], timeout_s: float) -> Dict[str, Any]:
    from . import simdevice
    from .bench import _run_child

    env = simdevice.environ(memory=cap)
    res = _run_child(name, [f"confirm:{workload}"], g, None, timeout_s, "sim", base_env=env)
    rows = res.get("scenarios") or []
    if rows and not rows[0].get("error"):
        ran_at = rows[0].get("capacity")
        if ran_at is not None and int(ran_at) != cap:
            # The verdict would be about another device: neither a pass nor an OOM.
            return {"capacity": cap, "ok": None, "base_used": rows[0].get("base_used"),
                    "error": f"the fresh child's device has {int(ran_at)} bytes, not {cap}"}
        return {"capacity": cap, "ok": bool(rows[0].get("ok")), "oom_at_event": rows[0].get("oom_at_event"),
                "base_used": rows[0].get("base_used")}
    err = rows[0].get("error") if rows else res.get("error")
    return {"capacity": cap, "ok": None, "error": str(err)[:500]}


def _merge_rounds(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One row from a scenario's rows of several timing rounds: the batches of every round
    pooled (median and p99 over all of them), each round's median kept."""
    from .bench import summarize

    good = [r for r in rows if not r.get("error") and not r.get("skipped")]
    if not good:
        return dict(rows[0], rounds=len(rows))
    out = dict(good[0])
    for key in ("ns", "thread_ns", "cpu_ns", "meta_ns", "meta_cpu_ns", "over_meta_cpu_ns"):
        vals = [v for r in good for v in (r.get(key + "_values") or [])]
        if vals:
            out[key] = summarize(vals, keep_values=False).to_dict(with_values=False)
            out[key + "_values"] = vals
    out["round_medians"] = [(r.get("ns") or {}).get("median") for r in good]
    out["rounds"] = len(rows)
    if len(good) < len(rows):
        out["round_errors"] = [r.get("error") for r in rows if r.get("error")]
    calls = [r.get("device_calls") for r in good if r.get("device_calls")]
    if calls:
        out["device_calls"] = calls[0]
    return out


def run_sim(s: Any, progress: Any = None, allocators: Optional[Sequence[str]] = None,
            memory: Optional[str] = None) -> Dict[str, Any]:
    """The simulated-device suite: one child per allocator, then the confirmations."""
    from concurrent.futures import ThreadPoolExecutor

    from . import simdevice
    from .bench import _run_child

    g = dict(s.gpu)
    g.update(s.sim)
    if memory is not None:
        g["sim_memory"] = memory
    names = list(allocators) if allocators is not None else list(SIM_ALLOCATORS)
    for n in names:
        if n not in SIM_ALLOCATORS:
            why = SIM_EXCLUDED.get(n, "unknown allocator")
            raise ValueError(f"--allocators: {n} is not run on the simulated device ({why}); "
                             f"choose from {', '.join(SIM_ALLOCATORS)}")
    mem_sc, time_sc = memory_scenarios(g), timing_scenarios(g)
    scenarios = mem_sc + time_sc
    rounds = max(1, int(g.get("sim_rounds", 1)))
    timeout = {"full": 1800.0, "quick": 900.0}.get(s.mode, 300.0)
    env = simdevice.environ(memory=g["sim_memory"])
    children: Dict[str, Any] = {}
    rows: List[Dict[str, Any]] = []
    timing_rows: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    if progress is not None:
        progress.add_total(len(names) * len(time_sc) * (rounds - 1))
    t0 = time.perf_counter()

    def child(name: str, sc: List[str], key: str) -> List[Dict[str, Any]]:
        res = _run_child(name, sc, g, progress, timeout, "sim", base_env=env, tag="sim")
        children[key] = {k: v for k, v in res.items() if k != "scenarios"}
        if progress is not None:
            reached = sum(1 for r in res["scenarios"] if r.get("allocator") == name)
            for x in sc[reached:]:
                progress.finish(f"sim {name} {x}", "skipped: " + str(res.get("error", ""))[:80])
        got: List[Dict[str, Any]] = res["scenarios"]
        return got

    # Memory first (deterministic, one child per allocator), then the timing children
    # round by round, the allocators in alternating order (Note [Medians over repeats]
    # in pypool.bench: a burst of outside load then hits every allocator alike).
    for name in names:
        if mem_sc:
            rows.extend(child(name, mem_sc, name))
    for k in range(rounds):
        for name in (names if k % 2 == 0 else names[::-1]):
            key = name if not mem_sc and k == 0 else f"{name} timing round {k + 1}"
            for r in child(name, time_sc, key):
                timing_rows.setdefault((r["scenario"], r["allocator"]), []).append(r)
    for sc in time_sc:
        for name in names:
            if (sc, name) in timing_rows:
                rows.append(_merge_rounds(timing_rows[(sc, name)]))
    timed_s = time.perf_counter() - t0
    # Confirmations: fresh children at the capacity found (must pass) and one step below
    # (must fail). Nothing is timed here, so two run at once.
    jobs: List[Tuple[Dict[str, Any], str, int, str]] = []
    if g.get("sim_confirm", True):
        for r in rows:
            if r["scenario"].startswith("minmem:") and r.get("min_capacity"):
                cap = int(r["min_capacity"])
                jobs.append((r, "at", cap, r["allocator"]))
                if cap - STEP > 0:
                    jobs.append((r, "below", cap - STEP, r["allocator"]))
    t1 = time.perf_counter()
    if jobs:
        if progress is not None:
            progress.add_total(len(jobs))

        def one(job: Tuple[Dict[str, Any], str, int, str]) -> Tuple[Dict[str, Any], str, Dict[str, Any]]:
            r, which, cap, alloc = job
            out = _confirm(alloc, r["workload"], cap, g, 600.0)
            if progress is not None:
                verdict = {True: "passed", False: "out of memory", None: "error"}[out["ok"]]
                progress.finish(f"sim {alloc} confirm {r['workload']} at {cap >> 20} MiB", verdict)
            return r, which, out

        with ThreadPoolExecutor(max_workers=2) as ex:
            for r, which, out in ex.map(one, jobs):
                r.setdefault("confirm", {})[which] = out
        for r in rows:
            c = r.get("confirm")
            if c is None:
                continue
            at, below = c.get("at", {}), c.get("below")
            # A fresh child that starts with more (or less) of the device in use than the
            # bisection did tests another capacity: its pass or OOM confirms nothing.
            base = r.get("base_used")
            moved = [x for x in (at, below) if x is not None and base is not None
                     and x.get("base_used") is not None and x["base_used"] != base]
            agree = at.get("ok") is True and (below is None or below.get("ok") is False) and not moved
            c["agrees"] = agree
            if not agree:
                bits = [f"fresh child at {x.get('capacity', 0) >> 20} MiB started with {x['base_used']} "
                        f"bytes in use, the bisection with {base}" for x in moved]
                if at.get("ok") is not True:
                    bits.append(f"fresh child at {at.get('capacity', 0) >> 20} MiB: "
                                + ("out of memory" if at.get("ok") is False else f"error {at.get('error')}"))
                if below is not None and below.get("ok") is not False:
                    bits.append(f"fresh child at {below.get('capacity', 0) >> 20} MiB: "
                                + ("passed" if below.get("ok") else f"error {below.get('error')}"))
                c["disagreement"] = "; ".join(bits)
    return {"allocators": names, "scenarios_run": scenarios, "children": children, "scenarios": rows,
            "memory": g["sim_memory"], "rounds": rounds, "timed_seconds": timed_s,
            "confirm_seconds": time.perf_counter() - t1, "confirm_runs": len(jobs)}


# ---------------------------------------------------------------------------- report
def _mib(v: Optional[int]) -> str:
    return "-" if v is None else f"{v / MiB:,.0f}"


def _ns(r: Optional[Dict[str, Any]], key: str = "ns") -> Optional[float]:
    if r is None or r.get("error") or r.get("skipped"):
        return None
    s = r.get(key) or {}
    v = s.get("median")
    return float(v) if v is not None else None


def _cell_ns(r: Optional[Dict[str, Any]], key: str = "ns") -> str:
    if r is None:
        return "-"
    if r.get("error"):
        return "error"
    if r.get("skipped"):
        return "n/a"
    v = _ns(r, key)
    if v is None:
        return "-"
    p99 = (r.get(key) or {}).get("p99")
    return f"{v:,.0f}" + (f" ({p99:,.0f})" if p99 is not None else "")


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return f"{a / b:.2f}" if (a is not None and b) else "-"


def _cell_wc(r: Optional[Dict[str, Any]]) -> str:
    """``wall / cpu`` medians of a timing row."""
    if r is None or r.get("error") or r.get("skipped"):
        return _cell_ns(r)
    w, c = _ns(r, "ns"), _ns(r, "cpu_ns")
    return ("-" if w is None else f"{w:,.0f}") + " / " + ("-" if c is None else f"{c:,.0f}")


def _ratio_wc(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]]) -> str:
    return f"{_ratio(_ns(a, 'ns'), _ns(b, 'ns'))} / {_ratio(_ns(a, 'cpu_ns'), _ns(b, 'cpu_ns'))}"


def _index(sim: Dict[str, Any]) -> Tuple[List[str], Dict[Tuple[str, str], Dict[str, Any]]]:
    cell: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for r in sim.get("scenarios", []):
        cell[(r["scenario"], r["allocator"])] = r
    return list(sim.get("allocators", [])), cell


def _short_size(n: int) -> str:
    from .bench import _short_size as s

    return s(n)


def _top_calls(c: Optional[Dict[str, Any]], k: int = 3) -> str:
    if not c or not c.get("by_name"):
        return "-"
    interesting = {n: v for n, v in c["by_name"].items()
                   if any(w in n for w in ("Malloc", "Free", "cuMem", "MemGetInfo", "Synchronize"))}
    top = sorted(interesting.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return ", ".join(f"{n} {v:,}" for n, v in top) or "-"


def memory_table(sim: Dict[str, Any]) -> str:
    from ._bench_report import text_table

    allocs, cell = _index(sim)
    rows = []
    for sc in [s for s in sim.get("scenarios_run", []) if s.startswith("minmem:")]:
        for a in allocs:
            r = cell.get((sc, a))
            if r is None:
                continue
            if r.get("error"):
                rows.append([sc[7:], _mib(r.get("floor")), a, "error", "", "", "", "", ""])
                continue
            cap = r.get("min_capacity")
            c = r.get("confirm") or {}
            conf = "-" if not c else ("yes" if c.get("agrees") else "NO")
            rows.append([sc[7:], _mib(r.get("floor")), a, _mib(r.get("peak_reserved")),
                         _mib(r.get("sim_peak")), _mib(cap),
                         "-" if cap is None else f"{r.get('min_capacity_over_floor', 0):.3f}",
                         str(len(r.get("attempts") or [])), conf])
    return text_table(["workload", "floor MiB", "allocator", "peak reserved MiB", "device peak MiB",
                       "min capacity MiB", "x floor", "tries", "confirmed"], rows,
                      right=[False, True, False, True, True, True, True, True, False])


def side_by_side_table(sim: Dict[str, Any]) -> str:
    """The headline: smallest capacity (x floor) of every allocator per workload, side by
    side, and the synchronizing device calls per 1,000 allocations (whole device, cold /
    at the smallest capacity)."""
    from ._bench_report import text_table

    allocs, cell = _index(sim)
    rows = []
    for sc in [s for s in sim.get("scenarios_run", []) if s.startswith("minmem:")]:
        got = [cell.get((sc, a)) for a in allocs]
        floor = next((r.get("floor") for r in got if r and r.get("floor")), None)
        line = [sc[7:], _mib(floor)]
        for r in got:
            if r is None or r.get("error") or r.get("min_capacity") is None:
                line.append("error" if r is not None and r.get("error") else "-")
            else:
                line.append(f"{_mib(r['min_capacity'])} ({r.get('min_capacity_over_floor', 0):.3f})")
        for r in got:
            if r is None or r.get("error"):
                line.append("-")
                continue
            cc, cm = r.get("calls_cold") or {}, r.get("calls_at_min") or {}
            line.append(f"{_per_k(cc.get('sync') if cc else None, r.get('allocations'))} / "
                        f"{_per_k(cm.get('sync') if cm else None, r.get('allocations'))}")
        rows.append(line)
    return text_table(["workload", "floor MiB"] + [f"{a} MiB (x floor)" for a in allocs]
                      + [f"{a} sync/1k" for a in allocs], rows,
                      right=[False] + [True] * (1 + 2 * len(allocs)))


def calls_table(sim: Dict[str, Any]) -> str:
    from ._bench_report import text_table

    allocs, cell = _index(sim)
    rows = []
    for sc in [s for s in sim.get("scenarios_run", []) if s.startswith("minmem:")]:
        for a in allocs:
            r = cell.get((sc, a))
            if r is None or r.get("error"):
                continue
            cc, cw, cm = r.get("calls_cold") or {}, r.get("calls_warm") or {}, r.get("calls_at_min") or {}
            rows.append([sc[7:], a, f"{cc.get('total', 0):,}", f"{cc.get('sync', 0):,}",
                         f"{cw.get('total', 0):,}", f"{cw.get('sync', 0):,}",
                         f"{cm['total']:,}" if cm else "-", f"{cm['sync']:,}" if cm else "-",
                         _per_k(cc.get("sync") if cc else None, r.get("allocations")),
                         _per_k(cm.get("sync") if cm else None, r.get("allocations")),
                         _top_calls(cc), _top_calls(cm)])
    return text_table(["workload", "allocator", "cold", "sync", "warm", "sync", "at min cap", "sync",
                       "sync/1k allocs cold", "at min cap",
                       "memory calls, cold pass", "memory calls at min capacity"], rows,
                      right=[False, False, True, True, True, True, True, True, True, True, False, False])


def _per_k(sync: Optional[int], allocations: Optional[int]) -> str:
    """Synchronizing device calls per 1,000 allocations of the trace (the issue's measure:
    at most PyTorch native's + 1)."""
    if sync is None or not allocations:
        return "-"
    return f"{1000 * sync / allocations:.2f}"


def _pairs_table(sim: Dict[str, Any], kind: str) -> str:
    from ._bench_report import text_table

    allocs, cell = _index(sim)
    scen = [s for s in sim.get("scenarios_run", []) if s.split(":")[0] == kind]
    headers = ["size", "threads", "meta (no allocator)"] + allocs
    ratios = [("pypool/native", "pypool", "native"),
              ("pypool-exp/native-exp", "pypool-expandable", "native-expandable")]
    ratios = [x for x in ratios if x[1] in allocs and x[2] in allocs]
    headers += [x[0] for x in ratios]
    rows = []
    for sc in scen:
        _, size, t = sc.split(":")
        line = [_short_size(int(size)), t]
        metas = sorted(v for a in allocs for v in [_ns(cell.get((sc, a)), "meta_cpu_ns")] if v is not None)
        line.append(f"{metas[len(metas) // 2]:,.0f}" if metas else "-")
        for a in allocs:
            r = cell.get((sc, a))
            over = _ns(r, "over_meta_cpu_ns")
            line.append(_cell_wc(r) + ("" if over is None else f" / {over:+,.0f}"))
        for _, a, b in ratios:
            ra, rb = cell.get((sc, a)), cell.get((sc, b))
            line.append(f"{_ratio(_ns(ra, 'cpu_ns'), _ns(rb, 'cpu_ns'))} / "
                        f"{_ratio(_ns(ra, 'over_meta_cpu_ns'), _ns(rb, 'over_meta_cpu_ns'))}")
        rows.append(line)
    return text_table(headers, rows, right=[False] + [True] * (len(headers) - 1))


def calls_per_pair_table(sim: Dict[str, Any]) -> str:
    """Device calls per allocation + free pair in steady state (one thread)."""
    from ._bench_report import text_table

    allocs, cell = _index(sim)
    rows = []
    for kind, label in (("tpairs", "torch.empty from Python"), ("tspairs", "torch.empty from TorchScript"),
                        ("cthreads", "pypool C ABI")):
        for sc in [x for x in sim.get("scenarios_run", []) if x.split(":")[0] == kind and x.endswith(":1")]:
            line = [label, _short_size(int(sc.split(":")[1]))]
            for a in allocs:
                r = cell.get((sc, a))
                dc = (r or {}).get("device_calls") or {}
                pp = dc.get("per_pair")
                line.append("-" if pp is None else f"{pp:.2f}" + (f" ({dc['sync']} sync)" if dc.get("sync") else ""))
            rows.append(line)
    return text_table(["path", "size"] + allocs, rows, right=[False, True] + [True] * len(allocs))


def cthreads_table(sim: Dict[str, Any]) -> str:
    from ._bench_report import text_table

    allocs, cell = _index(sim)
    pa = [a for a in allocs if a.startswith("pypool")]
    scen = [s for s in sim.get("scenarios_run", []) if s.startswith("cthreads:")]
    rows = []
    for sc in scen:
        _, size, t = sc.split(":")
        line = [_short_size(int(size)), t]
        for a in pa:
            r = cell.get((sc, a))
            line += [_cell_wc(r), "-" if _ns(r, "thread_ns") is None else f"{_ns(r, 'thread_ns'):,.0f}"]
        rows.append(line)
    headers = ["size", "threads"]
    for a in pa:
        headers += [f"{a} wall / cpu", "per thread"]
    return text_table(headers, rows, right=[False] + [True] * (len(headers) - 1))


SIM_BANNER = ("SIMULATED CUDA DEVICE: no GPU was used. Device memory is host memory with a capacity, "
              "kernels do nothing, every CUDA call is counted. Memory figures and call counts are "
              "exact for this simulation; every time is HOST OVERHEAD ON A SIMULATED DEVICE "
              "(CPU time of the allocator paths, without driver latencies), never GPU time.")


def sim_tables(sim: Dict[str, Any]) -> str:
    """The simulated-device part of the text report."""
    import textwrap

    parts = ["\n".join(textwrap.wrap(SIM_BANNER, 100))]
    info = next((c.get("device_info") for c in sim.get("children", {}).values() if c.get("device_info")), None)
    if info:
        parts.append(f"device: {info.get('name')} ({info.get('sim_version', '?')}), "
                     f"{_mib(info.get('total_memory'))} MiB; torch {info.get('torch')} "
                     f"(CUDA runtime {info.get('cuda_runtime')})")
    floor_note = (f"Workloads (pypool.workloads, replayed as torch.empty tensors; recorded_* = real "
                  f"models recorded on the simulated device, whole; the generated ones at scale "
                  f"{_scale(sim)} of their length): floor = peak live requested bytes; min capacity = smallest "
                  f"simulated device capacity (2 MiB steps) with no out-of-memory error, bisected in "
                  f"the child; confirmed = a fresh child passes at that capacity and runs out of "
                  f"memory 2 MiB below")
    parts.append("\n".join(textwrap.wrap(
        "Smallest simulated device capacity without out-of-memory, side by side (2 MiB steps; x floor = "
        "over peak live requested bytes); sync/1k = device calls that synchronize a real GPU per 1,000 "
        "allocations of the workload, cold on the whole device / in the passing replay at the smallest "
        "capacity", 100)) + "\n" + side_by_side_table(sim))
    parts.append("\n".join(textwrap.wrap(floor_note, 100)) + "\n" + memory_table(sim))
    calls_note = ("Device calls during one replay (every CUDA runtime and driver entry point, counted by "
                  "the simulation; most are torch's cudaGetDevice and context queries): cold = from an "
                  "empty cache on the whole device, warm = the second pass, at min cap = the passing "
                  "replay at the smallest capacity (from an empty cache); sync = calls that synchronize "
                  "a real device (cudaFree, cuMemUnmap, ...); sync/1k allocs = those per 1,000 allocations of the "
                  "workload")
    parts.append("\n".join(textwrap.wrap(calls_note, 100)) + "\n" + calls_table(sim))
    def wrap(text: str) -> str:
        return "\n".join(textwrap.wrap(text, 100))

    parts.append(wrap("Host overhead on a simulated device: ns per torch.empty(n, uint8, 'cuda') + del "
                      "from Python threads (the GIL serializes them), in batches alternating with the "
                      "same loop on torch's meta device (no allocator, no CUDA). Each cell: wall / CPU / "
                      "CPU above meta, medians over batches (p99 in the JSON). wall = batch wall time / "
                      "all pairs of all threads; CPU = the threads' CPU time / all pairs (other load on "
                      "the machine shows less); above meta = each batch's CPU time minus its "
                      "neighbouring meta batch's: what the allocator and torch's CUDA path add. Ratios: "
                      "CPU / above meta") + "\n" + _pairs_table(sim, "tpairs"))
    parts.append(wrap("Host overhead on a simulated device: the same pairs from C++ inter-op threads "
                      "(TorchScript fork, no GIL: torch's allocator has no C entry point to drive without "
                      "a torch extension); CPU = the whole process's CPU time / all pairs; cells and "
                      "ratios as above") + "\n" + _pairs_table(sim, "tspairs"))
    parts.append(wrap("Host overhead on a simulated device: pypool's C ABI (pypool_malloc + pypool_free) "
                      "from C++ threads released together. wall / CPU per pair over all threads' pairs "
                      "(medians over repeats); per thread = each thread's own wall time per pair")
                 + "\n" + cthreads_table(sim))
    parts.append("Device calls per allocation + free pair, one thread, cache warm (CUDA entry points "
                 "counted by the simulation; part of the host overhead above)\n" + calls_per_pair_table(sim))
    notes = []
    allocs, cell = _index(sim)
    for name, child in sim.get("children", {}).items():
        if child.get("error"):
            notes.append(f"  {name}: {str(child['error']).splitlines()[0][:200]}")
    for (sc, a), r in cell.items():
        if r.get("error"):
            notes.append(f"  {a} {sc}: {str(r['error']).splitlines()[0][:200]}")
        c = r.get("confirm") or {}
        if c and not c.get("agrees"):
            notes.append(f"  {a} {sc}: confirmation disagrees: {c.get('disagreement')}")
        if r.get("min_capacity_note"):
            notes.append(f"  {a} {sc}: {r['min_capacity_note']}")
    if notes:
        parts.append("Simulated-device errors and disagreements:\n" + "\n".join(notes))
    t = sim.get("timed_seconds")
    if t is not None:
        parts.append(f"simulated-device suite: timing in {sim.get('rounds', 1)} interleaved round(s) of one "
                     f"child per allocator (batches of all rounds pooled); {t:.0f} s in the allocator children, "
                     f"{sim.get('confirm_seconds', 0):.0f} s for {sim.get('confirm_runs', 0)} confirmation runs")
    return "\n\n".join(parts)


def _scale(sim: Dict[str, Any]) -> str:
    for r in sim.get("scenarios", []):
        if r.get("scale") is not None and not str(r.get("workload", "")).startswith("recorded_"):
            return f"{r['scale']:g}"
    return "?"


def html_figures(sim: Dict[str, Any]) -> List[str]:
    """Bar charts of the simulated-device results for the HTML page."""
    from ._bench_report import _svg_bars

    allocs, cell = _index(sim)
    figs = []
    groups = []
    for sc in [s for s in sim.get("scenarios_run", []) if s.startswith("minmem:")]:
        bars: List[Tuple[str, Optional[float], str]] = []
        for a in allocs:
            r = cell.get((sc, a))
            if r and r.get("min_capacity") and r.get("min_capacity_over_floor"):
                bars.append((a, float(r["min_capacity_over_floor"]),
                             f"{_mib(r['min_capacity'])} MiB = {r['min_capacity_over_floor']:.3f}x floor"))
        if bars:
            groups.append((sc[7:], bars))
    if groups:
        figs.append(_svg_bars("Simulated device: smallest capacity without OOM, x floor (smaller is better)",
                              groups, allocs, "each row scaled to its own maximum"))
    tg = []
    for sc in [s for s in sim.get("scenarios_run", []) if s.startswith("tpairs:")]:
        _, size, t = sc.split(":")
        bars = []
        for a in allocs:
            v = _ns(cell.get((sc, a)), "cpu_ns")
            if v is not None:
                bars.append((a, v, f"{v:,.0f} ns CPU"))
        if bars:
            tg.append((f"{_short_size(int(size))}, {t} thread(s)", bars))
    if tg:
        figs.append(_svg_bars("Host overhead on a simulated device: CPU ns per torch.empty+del (not GPU time)",
                              tg, allocs, "each row scaled to its own maximum"))
    return figs
