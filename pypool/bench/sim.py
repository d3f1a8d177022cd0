"""``python -m pypool bench --device sim``: the allocators on the simulated CUDA device.

The real PyTorch CUDA build runs on pypool's stand-in CUDA libraries (Note [Simulated
device] in ``csrc/simdevice/sim_state.h``; :mod:`pypool.simdevice`): device memory is host
memory with a capacity, kernels do nothing, every CUDA entry point is counted. The GPU
suite's machinery is reused as is: every allocator runs in its own child process
(:mod:`pypool.bench.child`, started with ``--device sim`` in the environment of
:func:`pypool.simdevice.environ`), and this module adds the scenarios that only the
simulation can answer. The parent side (the runs, the confirmations) is in
:mod:`pypool.bench.gpu`, the tables in :mod:`pypool.bench.report`, the settings and the
allocators compared in :mod:`pypool.bench.settings`.

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
import threading
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import _core, simdevice
from ..mincap import min_capacity
from ..workloads import ALL_WORKLOADS, RECORDED_WORKLOADS
from .common import is_oom, summary_dict
from .settings import STEP

__all__ = ["SIM_SCENARIOS"]

MiB = 1 << 20


# ---------------------------------------------------------------------------- child side
def _control() -> Any:
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
        row[k] = summary_dict(v)
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
                "thread_ns": summary_dict(lat), "thread_ns_values": lat, "batch_ops": n,
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
        return {"metric": "ns_per_pair", "size": size, "threads": threads, "ns": summary_dict(walls),
                "thread_ns": summary_dict(per), "cpu_ns": summary_dict(cpus), "ns_values": walls, "thread_ns_values": per,
                "cpu_ns_values": cpus, "iters": iters,
                "pairs_done": reps * (iters + 1) * threads, "timing": _timing(ctx)}

    return _timed_calls(ctx, run)


# ---- workloads: memory, device calls and the smallest capacity ----
class _Replayer:
    """One bundled workload replayed as real tensors, stopping at the first OOM."""

    def __init__(self, ctx: Any, name: str) -> None:
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
                        if not is_oom(e):
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
    row["ns"] = summary_dict([cold["ms"] * 1e6 / max(1, rep.events), warm["ms"] * 1e6 / max(1, rep.events)])
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
