"""``run_benchmarks``: the suites ``python -m pypool bench`` runs for a device, and the
result as strict JSON."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from .common import SCHEMA, Progress
from .cpu import _count_cpu_steps, run_cpu
from .provenance import _load_average, _stdout_target, environment
from .gpu import _cuda_available, check_sim, default_device, gpu_allocators, run_gpu, run_sim
from .settings import SIM_ALLOCATORS, SIM_EXCLUDED, BenchSettings, gpu_scenarios, sim_scenarios

__all__ = ["run_benchmarks", "dumps"]


def run_benchmarks(device: Optional[str] = None, mode: str = "quick", repeats: Optional[int] = None,
                   progress: bool = True, command: Optional[str] = None,
                   allocators: Optional[Sequence[str]] = None,
                   sim_memory: Optional[str] = None) -> Dict[str, Any]:
    """Run the suites for ``device`` (``"cpu"``, ``"cuda"``, ``"sim"``; default: cuda when
    torch sees a GPU) and return every figure as one JSON-serializable dict.

    ``device="cuda"`` runs the GPU suite and the CPU suite (the CPU figures of that host
    are cheap and give context). ``device="sim"`` runs only the simulated-device suite
    (:mod:`pypool.bench.sim`; ``sim_memory`` is the simulated device's size, default
    80GiB). ``mode`` is ``"quick"``, ``"full"`` or ``"smoke"``.
    """
    if device is None:
        device = default_device()
    if device not in ("cpu", "cuda", "sim"):
        raise ValueError(f"device: must be 'cpu', 'cuda' or 'sim', got {device!r}")
    if device == "cuda" and not _cuda_available():
        raise RuntimeError("device: 'cuda' requested but torch sees no CUDA GPU "
                           "(run with --device cpu for the CPU suite)")
    if device == "sim":
        return _run_sim_benchmarks(mode, repeats, progress, command, allocators, sim_memory)
    s = BenchSettings.for_mode(mode, repeats)
    t0 = time.perf_counter()
    env = environment(command, device)
    total = _count_cpu_steps(s, True)
    gpu_names: List[str] = []
    if device == "cuda":
        gpu_names = list(allocators) if allocators is not None else gpu_allocators()
        total += len(gpu_names) * len(gpu_scenarios(s))
    bar = Progress(total, enabled=progress)
    try:
        results: Dict[str, Any] = {"schema": SCHEMA, "environment": env, "settings": s.to_dict()}
        if device == "cuda":
            results["gpu"] = run_gpu(s, bar, gpu_names)
            gpu_info = next((c.get("device_info") for c in results["gpu"]["children"].values()
                             if c.get("device_info")), None)
            if gpu_info:
                # What torch saw in a child (the allocator-specific fields stay in children).
                env["gpu_torch"] = {k: gpu_info.get(k) for k in
                                    ("name", "total_memory", "capability", "cuda_runtime", "torch")}
                if not env.get("gpu"):  # no nvidia-smi: take torch's name for the GPU
                    env["gpu"] = gpu_info.get("name")
        else:
            results["gpu"] = None
        results["cpu"] = run_cpu(s, bar)
    finally:
        bar.close()
    results["runtime_seconds"] = time.perf_counter() - t0
    env["load_average_end"] = _load_average()
    return results


def _run_sim_benchmarks(mode: str, repeats: Optional[int], progress: bool, command: Optional[str],
                        allocators: Optional[Sequence[str]], sim_memory: Optional[str]) -> Dict[str, Any]:
    """``run_benchmarks(device="sim")``: the simulated-device suite alone."""
    s = BenchSettings.for_mode(mode, repeats)
    if sim_memory is not None:
        s = dataclasses.replace(s, sim={**s.sim, "sim_memory": sim_memory})
    names = list(allocators) if allocators is not None else list(SIM_ALLOCATORS)
    for n in names:  # refuse before paying for the probe
        if n not in SIM_ALLOCATORS:
            why = SIM_EXCLUDED.get(n, "unknown allocator")
            raise ValueError(f"--allocators: {n} is not run on the simulated device ({why}); "
                             f"choose from {', '.join(SIM_ALLOCATORS)}")
    t0 = time.perf_counter()
    probe = check_sim(s.sim["sim_memory"])
    env = environment(command, "sim")
    env["simulated_device"] = {"version": probe.get("version"), "name": probe.get("name"),
                               "memory": s.sim["sim_memory"], "devices": 1}
    env["torch_cuda"] = probe.get("cuda")
    # The exact invocation: interpreter, working directory and where stdout went.
    env["python_executable"] = sys.executable
    env["cwd"] = os.getcwd()
    env["stdout"] = _stdout_target()
    env["timing"] = "host overhead on a simulated device (no GPU; not GPU time)"
    total = len(names) * len(sim_scenarios({**s.gpu, **s.sim}))
    bar = Progress(total, enabled=progress)
    try:
        results: Dict[str, Any] = {"schema": SCHEMA, "environment": env, "settings": s.to_dict(),
                                   "gpu": None, "cpu": None}
        results["sim"] = run_sim(s, bar, names)
    finally:
        bar.close()
    results["runtime_seconds"] = time.perf_counter() - t0
    env["load_average_end"] = _load_average()
    return results


def _finite(obj: Any) -> Any:
    """``obj`` with NaN and infinities replaced by None (strict JSON has neither)."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dumps(results: Dict[str, Any]) -> str:
    """The results as strict JSON (NaN and infinities become null)."""
    return json.dumps(_finite(results), indent=2, allow_nan=False)
