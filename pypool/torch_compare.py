"""PyTorch's own caching allocator on the user's trace, offline, on the simulated device.

``pypool replay TRACE --compare`` and ``pypool size TRACE`` print PyTorch's rows beside
pypool's: the smallest device capacity that runs the trace without out-of-memory, peak
reserved on the whole device, and device calls (``cudaMalloc``, ``cudaFree``, the calls that
synchronize a real GPU). No GPU is needed: each PyTorch configuration runs in a child
process of a Python with a CUDA build of torch, on pypool's simulated device
(:mod:`pypool.simdevice`), replaying the trace as ``torch.empty`` tensors
(``pypool/_torch_sim_child.py``; the bisection is :func:`pypool.mincap.min_capacity`).

Which Python runs the children (:func:`find_torch_python`): ``--torch-python PATH`` or
the environment variable ``PYPOOL_TORCH_PYTHON``, else this Python when its torch is a CUDA
build. That Python needs torch only (pypool need not be installed there): the children load
the two files they need by path, and the simulated device's libraries come from this pypool.

:func:`suggest_torch_conf` searches a small grid of ``PYTORCH_CUDA_ALLOC_CONF`` settings
(:data:`TORCH_GRID`) for the one with the smallest capacity, for users who cannot switch
allocators.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from . import simdevice
from .mincap import STEP
from .trace import Trace

__all__ = ["TORCH_PYTHON_ENV", "TORCH_BASELINES", "TORCH_GRID", "TorchUnavailable", "TorchRow",
           "find_torch_python", "install_hint", "torch_rows", "suggest_torch_conf"]

#: Environment variable naming the Python with a CUDA build of torch.
TORCH_PYTHON_ENV = "PYPOOL_TORCH_PYTHON"
#: PyTorch's two modes, always measured: (label, PYTORCH_CUDA_ALLOC_CONF).
TORCH_BASELINES = (("PyTorch native", ""), ("PyTorch expandable", "expandable_segments:True"))
#: The settings :func:`suggest_torch_conf` tries beyond the baselines. Note [PyTorch conf grid]:
#: max_split_size_mb stops the splitting of large cached blocks (less fragmentation, more
#: cudaMalloc); roundup_power2_divisions rounds requests to fewer distinct sizes (more reuse,
#: more internal waste); both matter with fixed segments and little with expandable ones.
#: garbage_collection_threshold acts only under a per-process memory fraction (PyTorch checks
#: it only then), so its rows also set ``torch.cuda.set_per_process_memory_fraction(1.0)``
#: and say so.
TORCH_GRID = (
    "max_split_size_mb:64",
    "max_split_size_mb:256",
    "roundup_power2_divisions:4",
    "max_split_size_mb:64,roundup_power2_divisions:4",
    "garbage_collection_threshold:0.8",
    "expandable_segments:True,roundup_power2_divisions:4",
    "expandable_segments:True,max_split_size_mb:64",
)
_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_torch_sim_child.py")
_MINCAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mincap.py")


class TorchUnavailable(RuntimeError):
    """No Python with a CUDA build of torch (or no simulated device) to run PyTorch's rows;
    the message says what to install."""


def install_hint() -> str:
    """What to install for PyTorch's rows (printed when they cannot run)."""
    return ("install the CUDA build of torch in a separate virtual environment (no GPU needed: it runs "
            "on pypool's simulated device), e.g. `python -m venv ~/torch-cuda && "
            "~/torch-cuda/bin/pip install torch==2.14.1` (the default Linux x86-64 wheel on PyPI is the "
            f"CUDA build), then pass `--torch-python ~/torch-cuda/bin/python` or set "
            f"{TORCH_PYTHON_ENV}=~/torch-cuda/bin/python")


def _has_cuda_torch_here() -> Optional[str]:
    return simdevice.torch_has_cuda_libs()


# Run by a candidate Python: the same file check as _has_cuda_torch_here, without
# importing torch (seconds), and a marker that a non-Python program cannot print.
_PROBE = (
    "import importlib.util, os\n"
    "s = importlib.util.find_spec('torch')\n"
    "locs = list(s.submodule_search_locations or []) if s else []\n"
    "cuda = any(os.path.exists(os.path.join(l, 'lib', 'libc10_cuda.so')) for l in locs)\n"
    "print('pypool-probe:' + ('cuda' if cuda else 'cpu' if locs else 'none'))\n"
)
_probed: Dict[str, Optional[str]] = {}


def _probe_python(path: str) -> Optional[str]:
    """None when ``path`` is a Python whose torch is a CUDA build, else why not (the
    children would each fail, one row at a time, with exit status 0 for a non-Python)."""
    if path in _probed:
        return _probed[path]
    try:
        proc = subprocess.run([path, "-c", _PROBE], capture_output=True, text=True, timeout=120)
        lines = proc.stdout.strip().splitlines()
        tag = lines[-1] if lines and proc.returncode == 0 else f"exit status {proc.returncode}"
    except (OSError, subprocess.SubprocessError) as e:
        tag = f"error: {e}"
    why: Optional[str]
    if tag == "pypool-probe:cuda":
        why = None
    elif tag == "pypool-probe:cpu":
        why = "has a CPU-only build of torch (no torch/lib/libc10_cuda.so); it needs the CUDA build"
    elif tag == "pypool-probe:none":
        why = "has no torch installed"
    else:
        why = f"is not a Python that pypool could run ({tag[:200]})"
    _probed[path] = why
    return why


def find_torch_python(explicit: Optional[str] = None) -> str:
    """The Python that runs PyTorch's children: ``explicit``, else ``$PYPOOL_TORCH_PYTHON``,
    else this Python if its torch is a CUDA build. Raises :class:`TorchUnavailable` saying
    what to install."""
    if not simdevice.available():
        raise TorchUnavailable(f"the simulated device is not built into this pypool (no {simdevice.AUDIT_LIB} "
                               f"in {simdevice.lib_dir()}): PyTorch's allocator cannot be run without a GPU")
    for source, path in (("--torch-python", explicit), (TORCH_PYTHON_ENV, os.environ.get(TORCH_PYTHON_ENV))):
        if path:
            path = os.path.expanduser(path)
            if not (os.path.isfile(path) and os.access(path, os.X_OK)):
                raise TorchUnavailable(f"{source}: {path} is not an executable file; {install_hint()}")
            why = _probe_python(path)
            if why is not None:
                raise TorchUnavailable(f"{source}: {path} {why}; {install_hint()}")
            return path
    why = _has_cuda_torch_here()
    if why is None:
        return sys.executable
    raise TorchUnavailable(f"PyTorch's rows need a CUDA build of torch, and {sys.executable} has none "
                           f"({why}); " + install_hint())


@dataclass
class TorchRow:
    """PyTorch's allocator under one ``PYTORCH_CUDA_ALLOC_CONF`` on the simulated device.

    Attributes:
        label, conf: what ran.
        min_capacity: smallest device capacity (bytes, 2 MiB steps) without OOM; None if
            not found (see ``error`` / ``note``).
        floor: peak live requested bytes of the trace.
        peak_reserved: ``torch.cuda.max_memory_reserved()`` on the whole device.
        device_peak: the device's own peak use during that run.
        allocations: allocation events of the trace.
        calls, calls_at_min: device calls on the whole device (from an empty cache) and in
            the passing replay at ``min_capacity``: ``total``, ``sync`` (calls that
            synchronize a real GPU) and ``memory_calls`` by name.
        seconds: the child's wall time.
    """

    label: str
    conf: str
    min_capacity: Optional[int] = None
    floor: int = 0
    peak_reserved: Optional[int] = None
    device_peak: Optional[int] = None
    allocations: int = 0
    calls: Dict[str, Any] = field(default_factory=dict)
    calls_at_min: Optional[Dict[str, Any]] = None
    note: Optional[str] = None
    error: Optional[str] = None
    seconds: float = 0.0
    torch_version: Optional[str] = None
    #: The bisection's probes in order: ``[capacity, passed]``.
    attempts: List[List[Any]] = field(default_factory=list)

    @property
    def over_floor(self) -> Optional[float]:
        return self.min_capacity / self.floor if self.min_capacity and self.floor else None

    def sync_per_k(self, at_min: bool = False) -> Optional[float]:
        """Synchronizing device calls per 1,000 allocations."""
        c = self.calls_at_min if at_min else self.calls
        if not c or not self.allocations:
            return None
        return 1000.0 * int(c.get("sync", 0)) / self.allocations

    def mallocs(self) -> Optional[int]:
        m = (self.calls or {}).get("memory_calls") or {}
        return int(m.get("cudaMalloc", 0) + m.get("cuMemCreate", 0)) if self.calls else None

    def to_dict(self) -> Dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["over_floor"] = self.over_floor
        d["sync_per_1k_allocs"] = self.sync_per_k()
        return d


def _write_trace(trace: Trace, path: str) -> None:
    with open(path, "wb") as f:
        for col in (trace.actions, trace.ids, trace.sizes, trace.streams):
            f.write(np.ascontiguousarray(col, dtype="<i8").tobytes())


def _one(python: str, tpath: str, trace: Trace, label: str, conf: str, memory: Any, step: int,
         search: bool, timeout_s: float, tmp: str) -> TorchRow:
    row = TorchRow(label=label, conf=conf, floor=trace.peak_live())
    env = simdevice.environ(memory=memory)
    env.pop("PYTORCH_ALLOC_CONF", None)
    env["PYTORCH_CUDA_ALLOC_CONF"] = conf
    job = {"trace": tpath, "events": len(trace), "num_ids": int(trace.num_ids), "floor": trace.peak_live(),
           "step": step, "search": search, "mincap": _MINCAP,
           "memory_fraction": "garbage_collection_threshold" in conf}
    jpath = os.path.join(tmp, f"job{abs(hash((label, conf)))}.json")
    with open(jpath, "w") as f:
        json.dump(job, f)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([python, _CHILD, jpath], env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        row.error = f"timed out after {timeout_s:.0f} s"
        return row
    except OSError as e:
        row.error = f"{python}: {e}"
        return row
    row.seconds = time.perf_counter() - t0
    lines = proc.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1]) if lines else {}
    except ValueError:
        out = {}
    if proc.returncode != 0 or "error" in out or not out:
        tail = out.get("error") or (proc.stderr.strip().splitlines() or ["no output"])[-1]
        row.error = f"exit status {proc.returncode}: {str(tail)[:300]}"
        return row
    row.min_capacity = out.get("min_capacity")
    row.peak_reserved = out.get("peak_reserved")
    row.device_peak = out.get("device_peak")
    row.allocations = int(out.get("allocations", 0))
    row.calls = out.get("calls_cold") or {}
    row.calls_at_min = out.get("calls_at_min")
    row.note = out.get("note")
    row.torch_version = out.get("torch")
    row.attempts = out.get("attempts") or []
    return row


def torch_rows(trace: Trace, confs: Sequence[Any] = TORCH_BASELINES, python: Optional[str] = None,
               memory: Any = "80GiB", step: int = STEP, jobs: int = 2, search: bool = True,
               timeout_s: float = 1800.0) -> List[TorchRow]:
    """PyTorch's allocator on ``trace`` under each of ``confs`` (``(label, conf)`` pairs or
    conf strings), one child each, ``jobs`` at a time. Raises :class:`TorchUnavailable`
    when there is no Python with a CUDA build of torch (see :func:`find_torch_python`)."""
    if not isinstance(trace, Trace):
        raise TypeError(f"trace: expected a pypool.trace.Trace, got {type(trace).__name__}")
    py = find_torch_python(python)
    items = [(c, c) if isinstance(c, str) else (str(c[0]), str(c[1])) for c in confs]
    with tempfile.TemporaryDirectory(prefix="pypool-torch-") as tmp:
        tpath = os.path.join(tmp, "trace.bin")
        _write_trace(trace, tpath)
        with cf.ThreadPoolExecutor(max(1, jobs)) as ex:
            return list(ex.map(lambda lc: _one(py, tpath, trace, lc[0], lc[1], memory, step, search,
                                               timeout_s, tmp), items))


def suggest_torch_conf(trace: Trace, python: Optional[str] = None, baselines: Optional[List[TorchRow]] = None,
                       grid: Sequence[str] = TORCH_GRID, **kw: Any) -> List[TorchRow]:
    """Every setting of ``grid`` (plus the baselines, reused if given) measured, best first:
    least minimum capacity, then least peak reserved, then fewest synchronizing calls."""
    rows = list(baselines) if baselines is not None else torch_rows(trace, TORCH_BASELINES, python, **kw)
    have = {r.conf for r in rows}
    todo = [(f"PyTorch {c}", c) for c in grid if c not in have]
    if todo:
        rows += torch_rows(trace, todo, python, **kw)
    return sorted(rows, key=_rank)


def _rank(r: TorchRow) -> Any:
    big = 1 << 62
    return (r.error is not None, r.min_capacity if r.min_capacity is not None else big,
            r.peak_reserved if r.peak_reserved is not None else big, (r.calls or {}).get("sync", big), len(r.conf))
