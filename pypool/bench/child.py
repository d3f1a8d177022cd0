"""The GPU side of ``python -m pypool bench``: one child process per allocator.

torch fixes its CUDA allocator once per process (``change_current_allocator`` must run
before CUDA initializes, and there is no way back), so every allocator under comparison
runs the same scenarios in a process of its own::

    python -m pypool.bench --child --allocator pypool --scenarios pairs:512,train:gpt \
        --settings '{...}' --out result.json

The parent (:func:`pypool.bench.run_gpu`, in :mod:`pypool.bench.gpu`) picks the allocator through the child's
environment (``PYTORCH_CUDA_ALLOC_CONF``) or, for pypool and RMM, by what the child does
before it touches CUDA. The child prints ``@@pypool-bench start|done SCENARIO [summary]``
lines on stdout for the parent's progress bar and rewrites ``--out`` after every
scenario, so a crash or a timeout keeps what was measured before it.

Scenarios (``kind[:param]``):

* ``pairs:SIZE``: ``torch.empty(SIZE, dtype=uint8)`` then ``del``, in batches timed with
  ``time.perf_counter_ns``; ns per pair, median and p99 over batches.
* ``random:MAX_MIB``: RMM's ``random_allocations`` (sizes uniform in [1, MAX_MIB MiB],
  allocate with probability 0.73, at most ``rmm_allocations`` allocations and 16000 MiB
  live, 2 x ``rmm_allocations`` steps); each operation timed on its own; the first pass
  warms the cache and is reported separately (``cold_pass_ms``).
* ``streams``: allocations and frees spread over several CUDA streams, some blocks used
  on a second stream (``Tensor.record_stream``), with a little kernel work queued.
* ``trace:NAME``: a bundled workload (:mod:`pypool.workloads`) replayed as real tensors:
  ``torch.empty`` of each allocation's size in bytes, the reference dropped at its free.
  Reports the trace's physical floor beside the peaks.
* ``train:gpt``: a small GPT-style decoder (``nn.TransformerEncoder`` with a causal
  mask) trained with AdamW for a few dozen steps at random sequence lengths; step time
  and peaks.

Memory figures of every scenario: ``peak_reserved``, ``peak_allocated``,
``utilization = peak_allocated / peak_reserved`` and
``fragmentation = peak inactive-split bytes / peak_reserved`` (the worst share of reserved
memory sitting in free pieces of split blocks; ``None`` where the allocator does not report
it, as with cudaMallocAsync).

``--device sim`` runs on the simulated CUDA device (the parent starts the child in the
environment of :func:`pypool.simdevice.environ`); the scenarios only the simulation can
answer (smallest capacity, device call counts, threads) are in :mod:`pypool.bench.sim`.

``--device cpu`` runs the scenarios on CPU tensors with torch's CPU allocator and no
memory figures: it exists so this file's code paths are tested on machines without a GPU.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import json
import os
import random
import sys
import time
from typing import Any, Callable, Dict, List, Optional

from .. import _core, simdevice
from .._torch import install
from ..workloads import WORKLOADS
from .common import PROGRESS_TAG, RMM_MAX_USAGE, is_oom, summary_dict
from .settings import SIM_ALLOCATORS, SIM_EXCLUDED, gpu_settings, sim_settings
from .sim import SIM_SCENARIOS

__all__ = ["ALLOCATORS", "child_main"]

#: name -> how the child gets that allocator. ``alloc_conf`` is set as
#: ``PYTORCH_CUDA_ALLOC_CONF`` by the parent; ``pypool`` holds the ``pypool.install``
#: keyword arguments; ``rmm`` swaps in RMM's torch allocator.
ALLOCATORS: Dict[str, Dict[str, Any]] = {
    "native": {"alloc_conf": None, "label": "PyTorch native caching allocator"},
    "native-expandable": {"alloc_conf": "expandable_segments:True",
                          "label": "native, PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"},
    "cudaMallocAsync": {"alloc_conf": "backend:cudaMallocAsync",
                        "label": "PYTORCH_CUDA_ALLOC_CONF=backend:cudaMallocAsync"},
    "pypool": {"pypool": {}, "label": "pypool.install() ($PYPOOL_CONF or the defaults)"},
    "pypool-expandable": {"pypool": {"expandable_segments": True},
                          "label": "pypool.install(expandable_segments=True)"},
    "rmm": {"rmm": True, "label": "RMM pool via rmm.allocators.torch"},
}


# ---------------------------------------------------------------------------- allocators
class _Allocator:
    """Set-up and statistics of one allocator inside the child."""

    def __init__(self, name: str, torch: Any, device: Any) -> None:
        self.name = name
        self.torch = torch
        self.device = device
        self.cuda = device.type == "cuda"

    def setup(self) -> None:
        """Install the allocator (before CUDA is initialized)."""

    def reset_peaks(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def empty_cache(self) -> None:
        if self.cuda:
            self.torch.cuda.empty_cache()

    def stats(self) -> Dict[str, Optional[int]]:
        # CPU test mode: the same keys, no figures.
        out = _pick(self.torch.cuda.memory_stats(self.device) if self.cuda else {})
        if self.name == "cudaMallocAsync":
            # It reports no split blocks (the driver's pool has its own layout): a 0 here
            # would read as "no fragmentation".
            out["peak_inactive_split"] = None
        return out


def _pick(st: Dict[str, Any]) -> Dict[str, Optional[int]]:
    def g(key: str) -> Optional[int]:
        v = st.get(key)
        return int(v) if v is not None else None
    return {"peak_reserved": g("reserved_bytes.all.peak"),
            "peak_allocated": g("allocated_bytes.all.peak"),
            "peak_inactive_split": g("inactive_split_bytes.all.peak"),
            "reserved_now": g("reserved_bytes.all.current"),
            "num_alloc_retries": g("num_alloc_retries"),
            "num_ooms": g("num_ooms")}


class _PypoolAllocator(_Allocator):
    """pypool through ``pypool.install``.

    Note [Bench reads the registry]: with a pluggable allocator torch's own
    ``memory_stats()`` raises, so the figures come from pypool: the process registry's
    pool for the device (the very pool torch's calls land in, since the C ABI and
    ``_core`` share one library), which carries torch's stat keys.
    """

    config = ""  # the configuration install() put in effect (PYPOOL_CONF syntax)

    def setup(self) -> None:
        # With no config, install() reads $PYPOOL_CONF: a user can bench their settings.
        cfg = install(**ALLOCATORS[self.name]["pypool"])
        self.config = cfg.to_string() if hasattr(cfg, "to_string") else str(cfg)

    def _pool(self) -> Any:
        return _core.registry_pool(self.device.index or 0)

    def reset_peaks(self) -> None:
        self._pool().reset_peak_memory_stats()

    def empty_cache(self) -> None:
        self._pool().empty_cache()

    def stats(self) -> Dict[str, Optional[int]]:
        return _pick(self._pool().memory_stats())


class _RmmAllocator(_Allocator):
    """RMM's pool resource as torch's allocator, with RMM's statistics adaptor."""

    def setup(self) -> None:
        import rmm  # optional: only where RMM is installed and benchmarked
        from rmm.allocators.torch import rmm_torch_allocator

        # A small initial pool: RMM's default (half the GPU) would make peak reserved
        # meaningless.
        rmm.reinitialize(pool_allocator=True, initial_pool_size=256 << 20)
        self.torch.cuda.memory.change_current_allocator(rmm_torch_allocator)
        import rmm.statistics

        rmm.statistics.enable_statistics()
        self._rmm = rmm
        self._pushed = False

    def reset_peaks(self) -> None:
        stats = self._rmm.statistics
        if self._pushed:
            stats.pop_statistics()
        stats.push_statistics()
        self._pushed = True

    def empty_cache(self) -> None:
        pass  # RMM's pool never gives memory back before it is destroyed

    def stats(self) -> Dict[str, Optional[int]]:
        out: Dict[str, Optional[int]] = {"peak_reserved": None, "peak_allocated": None,
                                         "peak_inactive_split": None, "reserved_now": None,
                                         "num_alloc_retries": None, "num_ooms": None}
        try:
            out["peak_allocated"] = int(self._rmm.statistics.get_statistics().peak_bytes)
        except Exception:
            pass
        try:
            mr = self._rmm.mr.get_current_device_resource()
            while mr is not None and not hasattr(mr, "pool_size"):
                mr = mr.get_upstream() if hasattr(mr, "get_upstream") else None
            if mr is not None:
                # The pool only grows: its size now is its peak.
                out["peak_reserved"] = out["reserved_now"] = int(mr.pool_size())
        except Exception:
            pass
        return out


def _check_combination(name: str, device_type: str) -> None:
    """Refuse what cannot work, before paying for importing torch. ``device_type`` is the
    child's ``--device`` (``cuda``, ``sim`` or ``cpu``)."""
    if name not in ALLOCATORS:
        raise ValueError(f"--allocator: unknown {name!r} (known: {', '.join(ALLOCATORS)})")
    if device_type == "sim":
        if name not in SIM_ALLOCATORS:
            raise ValueError(f"--device sim does not run {name}: {SIM_EXCLUDED.get(name, '')}")
        return
    if device_type != "cuda" and name != "native":
        raise ValueError("--device cpu runs only --allocator native (it tests the scenario code)")


def _make_allocator(name: str, torch: Any, device: Any) -> _Allocator:
    _check_combination(name, device.type)
    spec = ALLOCATORS[name]
    if device.type != "cuda":
        return _Allocator(name, torch, device)
    if "pypool" in spec:
        return _PypoolAllocator(name, torch, device)
    if spec.get("rmm"):
        return _RmmAllocator(name, torch, device)
    want = spec.get("alloc_conf") or ""
    have = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    if want != have:
        raise RuntimeError(f"allocator {name!r} needs PYTORCH_CUDA_ALLOC_CONF={want!r} set before "
                           f"the child starts; it is {have!r}")
    return _Allocator(name, torch, device)


# ---------------------------------------------------------------------------- context
class _Ctx:
    def __init__(self, torch: Any, device: Any, alloc: _Allocator, g: Dict[str, Any], sim: bool = False) -> None:
        self.torch = torch
        self.device = device
        self.alloc = alloc
        self.g = g
        self.cuda = device.type == "cuda"
        self.sim = sim  # on the simulated device (pypool.simdevice.control() works)

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def stream_ctx(self, stream: Any) -> Any:
        return self.torch.cuda.stream(stream) if (self.cuda and stream is not None) else contextlib.nullcontext()

    def new_stream(self) -> Any:
        return self.torch.cuda.Stream(device=self.device) if self.cuda else None

    def total_memory(self) -> Optional[int]:
        if not self.cuda:
            return None
        return int(self.torch.cuda.get_device_properties(self.device).total_memory)


# ---------------------------------------------------------------------------- scenarios
def sc_pairs(ctx: _Ctx, param: str) -> Dict[str, Any]:
    size = int(param)
    torch, dev, g = ctx.torch, ctx.device, ctx.g
    empty, u8 = torch.empty, torch.uint8
    n = int(g["pair_batch_ops"])
    clock = time.perf_counter_ns

    def batch() -> float:
        t0 = clock()
        for _ in range(n):
            x = empty(size, dtype=u8, device=dev)
            del x
        return (clock() - t0) / n

    for _ in range(int(g["warmup_batches"])):
        batch()
    per = [batch() for _ in range(int(g["pair_batches"]))]
    return {"metric": "ns_per_pair", "size": size, "ns": summary_dict(per), "batch_ops": n}


def sc_random(ctx: _Ctx, param: str) -> Dict[str, Any]:
    """RMM random_allocations, one operation at a time through torch."""
    mib = int(param)
    torch, dev, g = ctx.torch, ctx.device, ctx.g
    empty, u8 = torch.empty, torch.uint8
    clock = time.perf_counter_ns
    n_alloc = int(g["rmm_allocations"])
    max_size = mib << 20
    total = ctx.total_memory()
    max_usage = RMM_MAX_USAGE if total is None else min(RMM_MAX_USAGE, int(total * 0.5))
    if not ctx.cuda:
        max_usage = min(max_usage, 256 << 20)  # CPU test mode: stay small
    lat_alloc: List[float] = []
    lat_free: List[float] = []
    pass_ms: List[float] = []
    ooms = 0
    for p in range(1 + int(g["rmm_passes"])):
        rng = random.Random(1)  # the same sequence every pass and for every allocator
        live: List[Any] = []
        usage = count = 0
        timed = p > 0
        t_pass = clock()
        for _ in range(2 * n_alloc):
            size = rng.randint(1, max_size)
            do_alloc = True
            if live:
                do_alloc = rng.randrange(100) < 73 and count < n_alloc and usage + size < max_usage
            if do_alloc:
                try:
                    t0 = clock()
                    x = empty(size, dtype=u8, device=dev)
                    t1 = clock()
                except RuntimeError as e:
                    if not is_oom(e):
                        raise
                    ooms += 1
                    do_alloc = False
                else:
                    live.append((x, size))
                    del x
                    usage += size
                    count += 1
                    if timed:
                        lat_alloc.append(t1 - t0)
            if not do_alloc and live:
                j = rng.randrange(n_alloc) % len(live)
                entry = live[j]
                live[j] = live[-1]
                live.pop()
                usage -= entry[1]
                t0 = clock()
                del entry  # the last reference: the tensor's memory goes back here
                t1 = clock()
                if timed:
                    lat_free.append(t1 - t0)
        live.clear()
        ctx.sync()
        pass_ms.append((clock() - t_pass) / 1e6)
    return {"metric": "ns_per_op", "max_size": max_size, "allocations": n_alloc, "max_usage": max_usage,
            "ns": summary_dict(lat_alloc + lat_free), "ns_alloc": summary_dict(lat_alloc),
            "ns_free": summary_dict(lat_free), "cold_pass_ms": pass_ms[0], "warm_pass_ms": pass_ms[1:],
            "ooms": ooms}


def sc_streams(ctx: _Ctx, param: str) -> Dict[str, Any]:
    torch, dev, g = ctx.torch, ctx.device, ctx.g
    empty, u8 = torch.empty, torch.uint8
    clock = time.perf_counter_ns
    k_streams = int(g["streams"])
    ops = int(g["stream_ops"])
    window = int(g["stream_window"])
    streams = [ctx.new_stream() for _ in range(k_streams)]
    sizes = [512, 4096, 64 << 10, 256 << 10, 1 << 20, 3 << 20, 8 << 20]
    rng = random.Random(3)
    live: List[collections.deque] = [collections.deque() for _ in range(k_streams)]
    lat_alloc: List[float] = []
    lat_free: List[float] = []
    cross = 0
    t_all = clock()
    for i in range(ops):
        k = i % k_streams
        with ctx.stream_ctx(streams[k]):
            size = rng.choice(sizes)
            t0 = clock()
            x = empty(size, dtype=u8, device=dev)
            t1 = clock()
            lat_alloc.append(t1 - t0)
            if i % 16 == 0:
                x.zero_()  # some queued work, so stream-ordered reuse has something to wait for
            live[k].append(x)
            del x
            if len(live[k]) > window:
                y = live[k].popleft()
                if ctx.cuda and i % 8 == 0:
                    y.record_stream(streams[(k + 1) % k_streams])
                    cross += 1
                t0 = clock()
                del y
                t1 = clock()
                lat_free.append(t1 - t0)
    for d in live:
        d.clear()
    ctx.sync()
    wall_ms = (clock() - t_all) / 1e6
    return {"metric": "ns_per_op", "streams": k_streams, "ops": ops, "cross_stream_frees": cross,
            "ns": summary_dict(lat_alloc + lat_free), "ns_alloc": summary_dict(lat_alloc),
            "ns_free": summary_dict(lat_free), "wall_ms": wall_ms}


def sc_trace(ctx: _Ctx, param: str) -> Dict[str, Any]:
    if param not in WORKLOADS:
        raise ValueError(f"trace: unknown workload {param!r} (known: {', '.join(WORKLOADS)})")
    torch, dev, g = ctx.torch, ctx.device, ctx.g
    empty, u8 = torch.empty, torch.uint8
    clock = time.perf_counter_ns
    trace = WORKLOADS[param](seed=0, scale=float(g["trace_scale"]))
    floor = trace.peak_live()
    total = ctx.total_memory()
    if total is not None and floor > 0.75 * total:
        return {"metric": "ns_per_event", "skipped": f"the trace needs {floor} bytes live, "
                f"more than 75% of this device's {total}", "floor": floor}
    acts = trace.actions.tolist()
    ids = trace.ids.tolist()
    if not ctx.cuda:
        # CPU test mode: the workloads ask for gigabytes; a byte per MiB keeps the code
        # path and the event order.
        sizes = [max(1, s >> 20) for s in trace.sizes.tolist()]
    else:
        sizes = trace.sizes.tolist()
    strs = trace.streams.tolist()
    stream_of = {s: ctx.new_stream() for s in set(strs) if s != 0}
    n = len(acts)
    pass_ms: List[float] = []
    ooms = 0
    for _ in range(int(g["trace_passes"])):
        live: List[Any] = [None] * trace.num_ids
        t0 = clock()
        for i in range(n):
            if acts[i] == 0:
                s = strs[i]
                try:
                    if s:
                        with ctx.stream_ctx(stream_of[s]):
                            live[ids[i]] = empty(sizes[i], dtype=u8, device=dev)
                    else:
                        live[ids[i]] = empty(sizes[i], dtype=u8, device=dev)
                except RuntimeError as e:
                    if not is_oom(e):
                        raise
                    ooms += 1
            else:
                live[ids[i]] = None
        ctx.sync()
        pass_ms.append((clock() - t0) / 1e6)
        del live
    per_event = [ms * 1e6 / max(1, n) for ms in pass_ms]
    return {"metric": "ns_per_event", "workload": param, "events": n, "floor": floor,
            "ns": summary_dict(per_event), "pass_ms": pass_ms, "ooms": ooms,
            "scale": float(g["trace_scale"])}


def sc_train(ctx: _Ctx, param: str) -> Dict[str, Any]:
    if param != "gpt":
        raise ValueError(f"train: unknown model {param!r} (known: gpt)")
    torch, dev, g = ctx.torch, ctx.device, ctx.g
    nn = torch.nn
    F = torch.nn.functional
    vocab, dim, layers, heads = int(g["train_vocab"]), int(g["train_dim"]), int(g["train_layers"]), int(g["train_heads"])
    batch, lo, hi = int(g["train_batch"]), int(g["train_min_len"]), int(g["train_max_len"])
    steps, warmup = int(g["train_steps"]), int(g["train_warmup"])
    torch.manual_seed(0)

    class TinyGPT(nn.Module):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, dim)
            self.pos = nn.Embedding(hi, dim)
            layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True,
                                               norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, vocab, bias=False)

        def forward(self, idx: Any) -> Any:
            t = idx.shape[1]
            h = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
            mask = nn.Transformer.generate_square_subsequent_mask(t, device=idx.device)
            h = self.blocks(h, mask=mask, is_causal=True)
            return self.head(self.norm(h))

    model = TinyGPT().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    rng = random.Random(5)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if ctx.cuda else contextlib.nullcontext())
    step_ms: List[float] = []
    tokens = 0
    loss_value = float("nan")
    for step in range(steps):
        t = rng.randint(lo, hi)  # a new sequence length every step: the fragmentation driver
        x = torch.randint(0, vocab, (batch, t + 1), device=dev)
        ctx.sync()
        t0 = time.perf_counter_ns()
        with autocast:
            logits = model(x[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, vocab).float(), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ctx.sync()
        t1 = time.perf_counter_ns()
        if step >= warmup:
            step_ms.append((t1 - t0) / 1e6)
            tokens += batch * t
        loss_value = float(loss.detach())
        del x, logits, loss
    secs = sum(step_ms) / 1e3
    del model, opt
    return {"metric": "step_ms", "step_ms": summary_dict(step_ms), "steps": steps, "warmup": warmup,
            "tokens_per_second": tokens / secs if secs > 0 else None, "final_loss": loss_value,
            "model": {"vocab": vocab, "dim": dim, "layers": layers, "heads": heads, "batch": batch,
                      "seq_range": [lo, hi]}}


SCENARIOS: Dict[str, Callable[[_Ctx, str], Dict[str, Any]]] = {
    "pairs": sc_pairs,
    "random": sc_random,
    "streams": sc_streams,
    "trace": sc_trace,
    "train": sc_train,
}


def _with_memory(row: Dict[str, Any], mem: Dict[str, Optional[int]]) -> Dict[str, Any]:
    row.update(mem)
    pr, pa, ps = mem.get("peak_reserved"), mem.get("peak_allocated"), mem.get("peak_inactive_split")
    row["utilization"] = (pa / pr) if (pr and pa is not None) else None
    row["fragmentation"] = (ps / pr) if (pr and ps is not None) else None
    floor = row.get("floor")
    row["reserved_over_floor"] = (pr / floor) if (pr and floor) else None
    return row


def _short(row: Dict[str, Any]) -> str:
    if row.get("error"):
        return "error: " + str(row["error"]).splitlines()[0][:80]
    if row.get("skipped"):
        return "skipped"
    if row.get("metric") == "min_capacity":
        cap = row.get("min_capacity")
        return "no capacity found" if not cap else \
            f"min capacity {cap >> 20} MiB ({row.get('min_capacity_over_floor') or 0:.3f}x floor)"
    if row.get("metric") == "confirm":
        return "passed" if row.get("ok") else "out of memory"
    key = "step_ms" if row.get("metric") == "step_ms" else "ns"
    med = (row.get(key) or {}).get("median")
    unit = "ms/step" if key == "step_ms" else row.get("metric", "").replace("_per_", "/")
    return f"{med:.1f} {unit}" if med is not None else ""


def _scenarios() -> Dict[str, Callable[[_Ctx, str], Dict[str, Any]]]:
    """Every scenario kind: the GPU ones and the simulated device's (pypool.bench.sim)."""
    return {**SCENARIOS, **SIM_SCENARIOS}


def run_scenario(ctx: _Ctx, name: str) -> Dict[str, Any]:
    """One scenario with clean memory before it and the allocator's peaks after it (or the
    figures the scenario chose itself: ``memory_override``)."""
    kind, _, param = name.partition(":")
    scenarios = _scenarios()
    if kind not in scenarios:
        raise ValueError(f"scenario: unknown kind {kind!r} in {name!r} (known: {', '.join(scenarios)})")
    row: Dict[str, Any] = {"scenario": name, "allocator": ctx.alloc.name}
    t0 = time.perf_counter()
    mem: Dict[str, Optional[int]] = _pick({})
    # One failing scenario (an OOM, a statistics call an allocator lacks) must not lose
    # the others: every step is inside the try.
    try:
        gc.collect()
        ctx.sync()
        ctx.alloc.empty_cache()
        ctx.alloc.reset_peaks()
        t0 = time.perf_counter()
        row.update(scenarios[kind](ctx, param))
        gc.collect()
        ctx.sync()
        override = row.pop("memory_override", None)
        mem = override if override is not None else ctx.alloc.stats()
    except Exception as e:
        row["error"] = f"{type(e).__name__}: {e}"
        gc.collect()
    row["wall_s"] = time.perf_counter() - t0
    return _with_memory(row, mem)


def _device_info(torch: Any, device: Any, alloc: _Allocator) -> Dict[str, Any]:
    info: Dict[str, Any] = {"torch": torch.__version__, "device_type": device.type,
                            "allocator": alloc.name, "label": ALLOCATORS[alloc.name]["label"],
                            "alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF")}
    if isinstance(alloc, _PypoolAllocator):
        info["pypool_config"] = alloc.config or "(defaults)"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(name=torch.cuda.get_device_name(device), total_memory=int(props.total_memory),
                    capability=f"{props.major}.{props.minor}", cuda_runtime=torch.version.cuda)
        try:
            info["allocator_backend"] = torch.cuda.get_allocator_backend()
        except Exception as e:
            info["allocator_backend"] = f"unknown ({type(e).__name__})"
    return info


def _write(path: str, result: Dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, allow_nan=True)
    os.replace(tmp, path)


def child_main(argv: Optional[List[str]] = None) -> int:
    """Entry point of a child: set up one allocator, run the scenarios, write JSON."""
    p = argparse.ArgumentParser(prog="python -m pypool.bench --child")
    p.add_argument("--child", action="store_true", required=True, help="run as a GPU benchmark child")
    p.add_argument("--allocator", required=True, choices=list(ALLOCATORS))
    p.add_argument("--scenarios", required=True, help="comma-separated kind[:param] list")
    p.add_argument("--settings", default="{}", help="JSON work sizes (pypool.bench._gpu_settings)")
    p.add_argument("--out", required=True, help="where to write the JSON result")
    p.add_argument("--device", default="cuda", choices=["cuda", "sim", "cpu"],
                   help="sim: the simulated CUDA device (the parent sets its environment)")
    args = p.parse_args(argv)

    g = dict(gpu_settings("quick"))
    g.update(sim_settings("quick"))
    g.update(json.loads(args.settings))
    result: Dict[str, Any] = {"allocator": args.allocator, "scenarios": []}
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    kinds = _scenarios()
    unknown = [n for n in names if n.partition(":")[0] not in kinds]
    if unknown:
        result["error"] = (f"--scenarios: unknown {', '.join(unknown)} "
                           f"(kinds: {', '.join(kinds)}, as kind or kind:param)")
        _write(args.out, result)
        print(result["error"], file=sys.stderr)
        return 2
    sim = args.device == "sim"
    try:
        _check_combination(args.allocator, args.device)
        import torch  # seconds to import: only once the combination is known to work

        interop = [int(n.split(":")[2]) for n in names
                   if n.split(":")[0] == "tspairs" and n.count(":") == 2]
        if interop:
            # Before any inter-op work: TorchScript forks run on this pool (Note [torch.empty
            # from C++ threads] in pypool.bench.sim).
            torch.set_num_interop_threads(max(interop))
        device = torch.device("cuda", 0) if args.device in ("cuda", "sim") else torch.device("cpu")
        alloc = _make_allocator(args.allocator, torch, device)
        alloc.setup()  # before anything initializes CUDA
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.empty(1, device=device)  # create the context and the allocator's pool
        result["device_info"] = _device_info(torch, device, alloc)
        if sim:
            # The simulated driver is loaded once CUDA is initialized (above).
            if not simdevice.active():
                raise RuntimeError("--device sim: this child does not run on the simulated device "
                                   "(start it with pypool.simdevice.environ())")
            ctl = simdevice.control()
            result["device_info"].update(simulated=True, sim_version=ctl.version(),
                                         sim_devices=ctl.device_count())
    except Exception as e:
        result["error"] = f"set-up failed: {type(e).__name__}: {e}"
        _write(args.out, result)
        print(f"{PROGRESS_TAG} failed {args.allocator} {result['error']}", flush=True)
        return 3
    ctx = _Ctx(torch, device, alloc, g, sim=sim)
    for name in names:
        print(f"{PROGRESS_TAG} start {name}", flush=True)
        row = run_scenario(ctx, name)
        result["scenarios"].append(row)
        _write(args.out, result)
        print(f"{PROGRESS_TAG} done {name} {_short(row)}", flush=True)
    return 0
