"""The parent side of the GPU and simulated-device suites of ``python -m pypool bench``:
one child process per allocator (:mod:`pypool.bench.child`), its progress lines relayed,
its JSON result collected; on the simulated device, the timing rounds and the fresh
children that confirm each smallest capacity."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import _core, simdevice
from .child import ALLOCATORS
from .common import PKG_PARENT, PROGRESS_TAG, Progress, summarize
from .settings import SIM_ALLOCATORS, SIM_EXCLUDED, STEP, BenchSettings, gpu_scenarios, memory_scenarios, timing_scenarios

__all__ = ["gpu_allocators", "run_gpu", "default_device", "check_sim", "run_sim"]


# ---------------------------------------------------------------------------- GPU suite
def _rmm_importable() -> bool:
    try:
        return importlib.util.find_spec("rmm") is not None
    except (ImportError, ValueError):
        return False


def gpu_allocators(include_rmm: Optional[bool] = None) -> List[str]:
    """The allocators the GPU suite compares, in report order (RMM only when importable)."""
    names = [n for n in ALLOCATORS if n != "rmm"]
    if include_rmm if include_rmm is not None else _rmm_importable():
        names.append("rmm")
    return names


def _child_command(allocator: str, scenarios: Sequence[str], settings: Dict[str, Any], out: str,
                   device: str) -> List[str]:
    # Note [Child import path] (pypool.bench.common): -c, and PKG_PARENT first on sys.path.
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from pypool.bench.child import child_main; sys.exit(child_main(sys.argv[1:]))")
    return [sys.executable, "-c", code, PKG_PARENT, "--child", "--allocator", allocator,
            "--scenarios", ",".join(scenarios), "--settings", json.dumps(settings),
            "--out", out, "--device", device]


def _run_child(allocator: str, scenarios: Sequence[str], settings: Dict[str, Any],
               progress: Optional[Progress], timeout_s: float, device: str,
               base_env: Optional[Dict[str, str]] = None, tag: str = "gpu") -> Dict[str, Any]:
    """One child (see :mod:`pypool.bench.child`); ``base_env`` replaces ``os.environ`` as
    the child's environment (the simulated device's), ``tag`` starts progress labels."""
    spec = ALLOCATORS[allocator]
    env = dict(os.environ if base_env is None else base_env)
    # The allocator of a child is set by its environment before torch is imported there.
    env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    env.pop("PYTORCH_ALLOC_CONF", None)
    if spec.get("alloc_conf"):
        env["PYTORCH_CUDA_ALLOC_CONF"] = spec["alloc_conf"]
    with tempfile.TemporaryDirectory(prefix="pypool-bench-") as tmp:
        out = os.path.join(tmp, "result.json")
        err_path = os.path.join(tmp, "stderr.txt")
        cmd = _child_command(allocator, scenarios, settings, out, device)
        with open(err_path, "w+", encoding="utf-8", errors="replace") as err:
            with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env) as proc:
                timer = threading.Timer(timeout_s, proc.kill)
                timer.start()
                try:
                    assert proc.stdout is not None
                    for line in proc.stdout:
                        if not line.startswith(PROGRESS_TAG) or progress is None:
                            continue
                        parts = line.split(None, 3)
                        if len(parts) >= 3:
                            label = f"{tag} {allocator} {parts[2]}"
                            if parts[1] == "start":
                                progress.start(label)
                            elif parts[1] == "done":
                                progress.finish(label, parts[3].strip() if len(parts) > 3 else "")
                    rc = proc.wait()
                finally:
                    timer.cancel()
            err.seek(0)
            stderr_tail = err.read()[-4000:]
        result: Dict[str, Any] = {}
        if os.path.exists(out):
            with open(out, encoding="utf-8") as f:
                result = json.load(f)
    result.setdefault("allocator", allocator)
    result.setdefault("scenarios", [])
    result["returncode"] = rc
    if rc != 0:
        why = "timed out" if rc in (-9, 137) else f"exit status {rc}"
        result["error"] = result.get("error") or f"child {why}: {stderr_tail.strip()[-2000:]}"
    return result


def run_gpu(s: BenchSettings, progress: Optional[Progress] = None,
            allocators: Optional[Sequence[str]] = None, device: str = "cuda",
            scenarios: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """The GPU suite: one child process per allocator running every scenario.

    Returns ``{"allocators": [...], "children": {name: {...}}, "scenarios": [rows]}``
    where each row is ``{"scenario", "allocator", metrics...}`` (or ``"error"``).
    ``scenarios`` defaults to :func:`gpu_scenarios` of ``s``.
    ``device="cpu"`` runs the scenarios with CPU tensors and no allocator swap: only for
    testing this code without a GPU.
    """
    names = list(allocators) if allocators is not None else gpu_allocators()
    scenarios = list(scenarios) if scenarios is not None else gpu_scenarios(s)
    timeout = {"full": 1800.0, "quick": 600.0}.get(s.mode, 300.0)
    children: Dict[str, Any] = {}
    rows: List[Dict[str, Any]] = []
    for name in names:
        # The simulated device's work sizes travel too: the sim scenarios run on CPU
        # tensors in the tests.
        res = _run_child(name, scenarios, {**s.gpu, **s.sim}, progress, timeout, device)
        children[name] = {k: v for k, v in res.items() if k != "scenarios"}
        rows.extend(res["scenarios"])
        if progress is not None:
            # Steps of scenarios the child never reached still count as done.
            reached = sum(1 for r in res["scenarios"] if r.get("allocator") == name)
            for sc in scenarios[reached:]:
                progress.finish(f"gpu {name} {sc}", "skipped: " + str(res.get("error", ""))[:80])
    return {"allocators": names, "scenarios_run": scenarios, "children": children, "scenarios": rows}


def _cuda_available() -> bool:
    # No driver or no device: torch cannot see one either, and asking the driver is
    # instant where importing torch takes seconds.
    if _core.cuda_device_count()[0] == 0 or importlib.util.find_spec("torch") is None:
        return False
    try:
        import torch  # seconds to import: only once the driver has a device

        return bool(torch.cuda.is_available())
    except Exception:
        return False


def default_device() -> str:
    """``"cuda"`` when torch sees a GPU, else ``"cpu"``."""
    return "cuda" if _cuda_available() else "cpu"


# ---------------------------------------------------------------------------- simulated device
def check_sim(memory: str) -> Dict[str, Any]:
    """Raise ``RuntimeError`` (one line) unless the simulated device can run the bench
    here; return what a probe child saw on it."""
    if not simdevice.available():
        raise RuntimeError(f"--device sim: the simulated device is not built into this pypool "
                           f"(no {simdevice.AUDIT_LIB} in {simdevice.lib_dir()})")
    why = simdevice.torch_has_cuda_libs()
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
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PKG_PARENT, env.get("PYTHONPATH", "")) if p)
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
