"""The CPU suite of ``python -m pypool bench`` (any machine): pypool's C ABI against
glibc ``malloc``/``free`` on the same request sequences, both timed inside C++ loops, and
the bundled workloads replayed through pypool against their physical floor. Note [Medians
over repeats] in :mod:`pypool.bench`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import _core
from ..config import PoolConfig, format_size
from ..replay import replay
from ..workloads import WORKLOADS
from .common import HOST_CAPACITY, PAIR_SIZES, RANDOM_MAX_MIB, RMM_MAX_USAGE, Progress, Summary, short_size, summarize
from .settings import BenchSettings

__all__ = ["run_cpu", "run_cpu_timings", "run_cpu_replays"]


@dataclass
class _TimingCase:
    group: str
    name: str
    unit: str
    params: Dict[str, Any]
    pypool: Callable[[], float]
    glibc: Optional[Callable[[], float]]
    extra: Optional[Callable[[], Dict[str, Any]]] = None
    before: Optional[Callable[[], None]] = None


def _random_live_max(max_size: int, cap: int) -> int:
    """Live blocks of a random mix: RMM keeps at most 16000 MiB live; with sizes uniform
    in [1, max_size] (mean max_size/2) that is 16000 MiB / (max_size/2) blocks, capped."""
    return max(1, min(cap, RMM_MAX_USAGE // max(1, max_size // 2)))


def _calibrated(fn: Callable[[int], float], target_s: float, min_iters: int) -> Tuple[Callable[[], float], Dict[str, int]]:
    """A zero-argument timer running ``fn(iters)`` with iters chosen so one call lasts
    about ``target_s`` (calibrated on first use, recorded in the returned dict)."""
    info: Dict[str, int] = {}

    def run() -> float:
        if "iters" not in info:
            pilot = max(10, min_iters // 4)
            fn(pilot)  # warm: first touches, lazy pool creation
            ns = max(1.0, fn(pilot))
            info["iters"] = int(min(5_000_000, max(min_iters, target_s * 1e9 / ns)))
        return fn(info["iters"])

    return run, info


def _registry_pool_stats() -> Dict[str, int]:
    return _core.registry_pool(0).memory_stats()


def _cpu_cases(s: BenchSettings) -> List[_TimingCase]:
    cases: List[_TimingCase] = []

    def reset_pool() -> None:
        # Each case starts from an empty cache so cases do not feed each other's segments.
        pool = _core.registry_pool(0)
        pool.empty_cache()
        pool.reset_peak_memory_stats()

    def pool_peaks() -> Dict[str, Any]:
        st = _registry_pool_stats()
        return {"pypool_peak_reserved": st["reserved_bytes.all.peak"],
                "pypool_peak_allocated": st["allocated_bytes.all.peak"]}

    for size in PAIR_SIZES:
        a, ia = _calibrated(lambda n, size=size: _core.bench_c_api_pairs(size, n, 0), s.pair_target_s, s.pair_min_iters)  # type: ignore[misc]  # mypy cannot type default-arg lambdas
        b, ib = _calibrated(lambda n, size=size: _core.bench_glibc_pairs(size, n), s.pair_target_s, s.pair_min_iters)  # type: ignore[misc]  # mypy cannot type default-arg lambdas
        cases.append(_TimingCase("pairs", f"pair {short_size(size)}", "ns/pair",
                                 {"size": size, "pypool_iters": ia, "glibc_iters": ib}, a, b,
                                 before=reset_pool))

    for mib in RANDOM_MAX_MIB:
        max_size = mib << 20
        live = _random_live_max(max_size, s.random_live_cap)
        ops = s.random_ops
        cases.append(_TimingCase(
            "random", f"random <= {mib} MiB", "ns/op",
            {"max_size": max_size, "ops": ops, "live_max": live, "alloc_probability": 0.73, "seed": 1},
            lambda m=max_size, l=live, o=ops: _core.bench_c_api_random(m, o, l, 1, 0),  # type: ignore[misc]  # mypy cannot type default-arg lambdas
            lambda m=max_size, l=live, o=ops: _core.bench_glibc_random(m, o, l, 1),  # type: ignore[misc]  # mypy cannot type default-arg lambdas
            extra=pool_peaks, before=reset_pool))

    cases.append(_TimingCase(
        "churn", f"churn {s.churn_live} live <= {short_size(s.churn_max)}", "ns/op",
        {"max_size": s.churn_max, "ops": s.churn_ops, "live_max": s.churn_live, "seed": 7},
        lambda: _core.bench_c_api_random(s.churn_max, s.churn_ops, s.churn_live, 7, 0),
        lambda: _core.bench_glibc_random(s.churn_max, s.churn_ops, s.churn_live, 7),
        extra=pool_peaks, before=reset_pool))

    for n_free in s.scaling_n_free:
        cases.append(_TimingCase(
            "scaling", f"4 KiB pair, {n_free} free blocks", "ns/pair",
            {"n_free": n_free, "iters": s.scaling_iters, "size": 4096},
            lambda n=n_free: _core.bench_free_scaling(n, s.scaling_iters, 4096, 1), None))  # type: ignore[misc]  # mypy cannot type default-arg lambdas
    return cases


def _configure_registry() -> None:
    try:
        _core.registry_reset()
    except Exception as e:
        raise RuntimeError(
            "bench: the CPU suite drives pypool's process-wide allocator (the C ABI registry) "
            "and cannot reset it while it holds live allocations; run it in a fresh process "
            f"(python -m pypool bench --device cpu): {e}") from e
    _core.registry_configure("host", PoolConfig().to_core(), HOST_CAPACITY)


def _timing_row(case: _TimingCase, a: Summary, b: Optional[Summary], extra: Dict[str, Any]) -> Dict[str, Any]:
    # Calibrated iteration counts are {"iters": n} holders filled on first use.
    params = {k: (v.get("iters") if isinstance(v, dict) else v) for k, v in case.params.items()}
    return {
        "group": case.group,
        "case": case.name,
        "unit": case.unit,
        "params": params,
        "pypool": a.to_dict(),
        "baseline": "glibc" if b is not None else None,
        "glibc": b.to_dict() if b is not None else None,
        # pypool time / glibc time: < 1 means pypool is faster (what the tables show).
        "pypool_over_glibc": (a.median / b.median) if (b is not None and b.median > 0) else None,
        # The inverse, glibc time / pypool time (> 1: pypool faster); kept for older readers.
        "speedup": (b.median / a.median) if (b is not None and a.median > 0) else None,
        **extra,
    }


def run_cpu_timings(s: BenchSettings, progress: Optional[Progress] = None) -> List[Dict[str, Any]]:
    """The C-ABI-vs-glibc cases (pairs, random mixes, churn, free-list scaling)."""
    cases = _cpu_cases(s)
    _configure_registry()
    rows = []
    try:
        for case in cases:
            label = f"cpu {case.name}"
            if progress is not None:
                progress.start(label)
            if case.before is not None:
                case.before()
            t0 = time.perf_counter()
            va: List[float] = []
            vb: List[float] = []
            for _ in range(s.repeats):
                va.append(case.pypool())
                if case.glibc is not None:
                    vb.append(case.glibc())
            a = summarize(va)
            b = summarize(vb) if vb else None
            extra = case.extra() if case.extra is not None else {}
            row = _timing_row(case, a, b, extra)
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            if progress is not None:
                glibc = f", glibc {b.median:.0f}" if b is not None else ""
                progress.finish(label, f"pypool {a.median:.0f}{glibc} {case.unit}")
    finally:
        try:
            if _core.registry_has_pool(0):
                _core.registry_pool(0).empty_cache()
            _core.registry_reset()  # leave the registry unconfigured for whatever comes next
        except Exception:
            pass  # an error of the suite itself is already on its way up
    return rows


def _replay_configs() -> List[Tuple[str, PoolConfig]]:
    return [("default", PoolConfig()), ("expandable", PoolConfig(expandable_segments=True))]


def run_cpu_replays(s: BenchSettings, progress: Optional[Progress] = None) -> List[Dict[str, Any]]:
    """The bundled workloads replayed through pypool (null backend: bookkeeping only)
    against their physical floor, with and without expandable segments."""
    rows = []
    for name in sorted(WORKLOADS):
        trace = WORKLOADS[name](seed=0, scale=s.replay_scale)
        floor = trace.peak_live()
        for label, cfg in _replay_configs():
            tag = f"replay {name} ({label})"
            if progress is not None:
                progress.start(tag)
            t0 = time.perf_counter()
            # Memory figures are deterministic: the first run's (which also finds the
            # external fragmentation at the moment of peak reserved); the others time.
            results = [replay(trace, config=cfg, at_peak=True)]
            results += [replay(trace, config=cfg) for _ in range(s.replay_repeats - 1)]
            eps = summarize([x.events_per_second for x in results])
            r = results[0]
            rows.append({
                "workload": name,
                "config": label,
                "scale": s.replay_scale,
                "events": r.events,
                "events_per_second": eps.to_dict(),
                "peak_live": r.peak_live,
                "floor": floor,
                "peak_reserved": r.peak_reserved,
                "peak_allocated": r.peak_allocated,
                "utilization": r.utilization,
                "reserved_over_floor": (r.peak_reserved / floor) if floor else None,
                "allocated_utilization": r.allocated_utilization,
                "fragmentation_at_peak": r.fragmentation,
                "free_at_peak": r.at_peak["free_bytes"] if r.at_peak else None,
                "num_device_alloc": r.num_device_alloc,
                "ooms": r.ooms,
                "seconds": time.perf_counter() - t0,
            })
            if progress is not None:
                progress.finish(tag, f"{format_size(r.peak_reserved)} reserved for "
                                     f"{format_size(floor)} live, {eps.median / 1e6:.2f} M events/s")
    return rows


def _count_cpu_steps(s: BenchSettings, with_replay: bool) -> int:
    n = len(PAIR_SIZES) + len(RANDOM_MAX_MIB) + 1 + len(s.scaling_n_free)
    if with_replay:
        n += 2 * len(WORKLOADS)
    return n


def run_cpu(s: BenchSettings, progress: Optional[Progress] = None, replays: bool = True) -> Dict[str, Any]:
    """The CPU suite: ``{"timing": [...], "replay": [...]}``."""
    out: Dict[str, Any] = {"timing": run_cpu_timings(s, progress)}
    out["replay"] = run_cpu_replays(s, progress) if replays else []
    return out
