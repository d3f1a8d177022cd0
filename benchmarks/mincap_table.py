"""The minimum-capacity table of benchmarks/results/ from ``python -m pypool size --json``.

Runs the CLI once per workload (pypool's rows are offline replays; PyTorch's run on the
simulated device in child processes, see pypool.torch_compare) and writes a Markdown table
and the raw JSON. Usage (from the repository root, pypool installed)::

    PYPOOL_TORCH_PYTHON=.venv-sim/bin/python .venv/bin/python -P benchmarks/mincap_table.py \
        benchmarks/results/2026-12-01-simdevice-mincap

writes ``<prefix>.json`` (``environment`` and one ``pypool size --json`` object per trace)
and ``<prefix>.txt`` (header and tables). ``--from-json PREFIX.json`` renders the tables of
an earlier run again without running anything. ``--pypool-rows-into OLD.json`` measures
pypool's rows only (no PyTorch Python needed) and keeps PyTorch's rows, ``torch`` and
``torch_note`` of OLD.json: the way to measure a pypool change against PyTorch's unchanged
allocator without the hour-long PyTorch search.

Not a pytest file: it takes minutes (the PYTORCH_CUDA_ALLOC_CONF search replays each trace
about a hundred times through real torch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

#: (workload, scale): the generated workloads shortened to keep the PyTorch search in
#: minutes (same size mix, about the same peaks); the recorded ones whole.
WORKLOADS = [("transformer", 0.25), ("growing_batch", 0.25), ("kv_cache", 0.25), ("random", 0.1),
             ("recorded_gpt_train", 1.0), ("recorded_cnn_growing_batch", 1.0), ("recorded_gpt_decode", 1.0)]
MiB = 1 << 20


def _cmd(w: str, scale: float) -> List[str]:
    cmd = [sys.executable, "-P", "-m", "pypool", "size", "--workload", w, "--json", "--torch-jobs", "2"]
    if scale != 1.0:
        cmd += ["--scale", f"{scale:g}"]
    return cmd


def _cell(r: Optional[Dict[str, Any]]) -> str:
    if not r or r.get("min_capacity") is None:
        return "-" if not r else f"error: {r.get('error')}"
    return f"{r['min_capacity'] / MiB:,.0f} ({r['over_floor']:.3f})"


def _sync(r: Optional[Dict[str, Any]]) -> str:
    if not r:
        return "-"
    a, b = r.get("sync_per_1k_allocs"), r.get("sync_at_min_per_1k_allocs")
    return ("-" if a is None else f"{a:.2f}") + " / " + ("-" if b is None else f"{b:.2f}")


def _environment() -> Dict[str, Any]:
    import datetime
    import platform

    import pypool

    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "pypool": getattr(pypool, "__version__", "?"), "load_average": list(os.getloadavg()),
            "torch_python": os.environ.get("PYPOOL_TORCH_PYTHON", ""),
            "command": "python -P benchmarks/mincap_table.py " + " ".join(sys.argv[1:])}


def main(out_prefix: str, from_json: Optional[str] = None, torch_from: Optional[str] = None) -> int:
    if from_json:
        with open(from_json) as f:
            saved = json.load(f)
        return render(saved["environment"], saved["results"], out_prefix)
    env = _environment()
    old: Dict[str, Dict[str, Any]] = {}
    if torch_from:
        with open(torch_from) as f:
            saved = json.load(f)
        old = {d["trace"]: d for d in saved["results"]}
        env["torch_python"] = ""
        env["command"] += (f" (pypool's rows measured now without a PyTorch Python; PyTorch's rows copied "
                           f"from {torch_from}, measured {saved['environment'].get('date', '?')})")
    results = []
    for w, scale in WORKLOADS:
        t0 = time.time()
        cmd = _cmd(w, scale)
        child_env = dict(os.environ)
        if torch_from:
            child_env.pop("PYPOOL_TORCH_PYTHON", None)  # pypool's rows only
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env)
        if proc.returncode != 0:
            print(f"{w}: exit {proc.returncode}: {proc.stderr[-500:]}", file=sys.stderr)
            return 1
        d = json.loads(proc.stdout)
        d["command"] = " ".join(["python"] + cmd[1:])
        d["scale"] = scale
        if torch_from:
            prev = old[w]
            d["torch"], d["torch_note"] = prev["torch"], prev.get("torch_note")
            d["min_capacity"] = [r for r in d["min_capacity"] if not r["label"].startswith("PyTorch")] + [
                r for r in prev["min_capacity"] if r["label"].startswith("PyTorch")]
        results.append(d)
        print(f"{w}: {time.time() - t0:.0f} s", file=sys.stderr)
    with open(out_prefix + ".json", "w") as f:
        json.dump({"environment": env, "results": results}, f, indent=1)
    return render(env, results, out_prefix)


def render(env: Dict[str, Any], results: List[Dict[str, Any]], out_prefix: str) -> int:
    torch_v = next((t.get("torch_version") for d in results for t in d["torch"] if t.get("torch_version")), "?")
    header = [f"pypool minimum-capacity table -- {env['date']}",
              f"CPU: {env['cpu']} ({env['cores']} cores); pypool {env['pypool']}, python {env['python']}, "
              f"torch {torch_v} (PyTorch's rows)",
              "load average at start (1/5/15 min): " + (" ".join(f"{x:.2f}" for x in env["load_average"])
                                                         if env.get("load_average") else env.get("note", "-")),
              "device: PyTorch's rows on pypool's SIMULATED CUDA device (1 x 80GiB of host memory, no GPU "
              "used); pypool's rows: offline replays (null backend), max_pool_size as the capacity",
              "command: " + (f"PYPOOL_TORCH_PYTHON={env['torch_python']} " if env.get("torch_python") else "")
              + env["command"], ""]
    lines = ["| trace (floor MiB) | PyTorch native | PyTorch expandable | PyTorch best conf | pypool default | "
             "pypool expandable | pypool suggested |", "|---|---:|---:|---:|---:|---:|---:|"]
    sync = ["| trace | PyTorch native | PyTorch expandable | pypool default | pypool expandable | pypool suggested |",
            "|---|---:|---:|---:|---:|---:|"]
    confs = []
    for d in results:
        rows = {r["label"]: r for r in d["min_capacity"]}
        name = d["trace"] + (f" ×{d['scale']:g}" if d["scale"] != 1.0 else "")
        best_t = rows.get("PyTorch best conf") or min(
            (rows[k] for k in ("PyTorch native", "PyTorch expandable") if rows.get(k, {}).get("min_capacity")),
            key=lambda r: r["min_capacity"], default=None)
        lines.append(f"| {name} ({d['peak_live'] / MiB:,.0f}) | {_cell(rows.get('PyTorch native'))} | "
                     f"{_cell(rows.get('PyTorch expandable'))} | {_cell(best_t)} | {_cell(rows.get('pypool defaults'))} | "
                     f"{_cell(rows.get('pypool expandable'))} | {_cell(rows.get('pypool suggested'))} |")
        sync.append(f"| {name} | {_sync(rows.get('PyTorch native'))} | {_sync(rows.get('PyTorch expandable'))} | "
                    f"{_sync(rows.get('pypool defaults'))} | {_sync(rows.get('pypool expandable'))} | "
                    f"{_sync(rows.get('pypool suggested'))} |")
        confs.append(f"- {name}: pypool suggested `{rows['pypool suggested']['conf'] or '(defaults)'}`; "
                     f"PyTorch best `PYTORCH_CUDA_ALLOC_CONF={(best_t or {}).get('conf') or '(unset)'}`")
    text = "\n".join(header + 
        ["Smallest capacity without out-of-memory, MiB (× floor), 2 MiB steps; floor = peak live requested bytes.",
         "PyTorch: torch " + str(next((t.get("torch_version") for d in results for t in d["torch"]
                                        if t.get("torch_version")), "?"))
         + " on pypool's simulated device (child processes); pypool: offline replays with max_pool_size as "
           "the capacity. Generated workloads shortened (×scale).", ""]
        + lines + ["", "Synchronizing device calls per 1,000 allocations: whole device from an empty cache / "
                   "at the smallest capacity (pypool: device frees and expandable-segment unmaps, one per operation).", ""] + sync + ["", "Settings:"] + confs
        + ["", "Commands (one per trace):"] + [f"    {d['command']}" for d in results]) + "\n"
    with open(out_prefix + ".txt", "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    args = sys.argv[1:]
    src = torch_src = None
    if len(args) == 3 and args[1] == "--from-json":
        src = args[2]
        args = args[:1]
    elif len(args) == 3 and args[1] == "--pypool-rows-into":
        torch_src = args[2]
        args = args[:1]
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(args[0], src, torch_src))
