"""Benchmarks of pypool against the allocator it replaces: ``python -m pypool bench``.

Two suites, one result format:

* **CPU** (any machine). The core through its C ABI (the entry points torch calls,
  behind the process-wide registry, on the host backend) against glibc ``malloc``/``free``
  on the same request sequences, both timed inside C++ loops so no Python runs in the
  timed region; plus the bundled workloads replayed through pypool against their
  physical floor (the peak of live requested bytes).
* **GPU** (a CUDA machine). pypool installed as torch's allocator against PyTorch's
  native caching allocator, the native one with expandable segments,
  ``backend:cudaMallocAsync`` and (when importable) RMM, each in its own subprocess
  because torch fixes its allocator once per process. The child side lives in
  :mod:`pypool._bench_gpu`.

:func:`run_benchmarks` returns one JSON-serializable dict (see ``benchmarks/results/README.md``
for the layout); :mod:`pypool._bench_report` prints it as tables, HTML and PNG.

Note [Medians over repeats]: the machines this runs on are shared (CI, a 2-core VM with
other jobs). Every case runs ``repeats`` times, pypool and the baseline interleaved
(A B A B ...) so a burst of outside load hits both, and reports the median with p99 and
min/max over the repeats. With few repeats p99 is close to the maximum; it is reported
anyway so quick and full runs share one schema.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

from . import _core
from .config import PoolConfig, format_size

__all__ = [
    "BenchSettings",
    "Summary",
    "Progress",
    "summarize",
    "environment",
    "command_line",
    "default_device",
    "run_benchmarks",
    "run_cpu",
    "run_cpu_timings",
    "run_cpu_replays",
    "run_gpu",
    "gpu_allocators",
    "gpu_scenarios",
    "dumps",
    "SCHEMA",
]

SCHEMA = "pypool-bench/1"

#: Fixed request sizes of the cache-hit pair cases (bytes).
PAIR_SIZES: Tuple[int, ...] = (512, 64 << 10, 1 << 20, 16 << 20, 256 << 20)
#: Largest request of the RMM ``random_allocations`` style mixes (MiB).
RANDOM_MAX_MIB: Tuple[int, ...] = (1, 64, 1024)
#: RMM's random_allocations keeps at most 16000 MiB live; the live-count limits of the
#: CPU mixes are derived from it (see :func:`_random_live_max`).
RMM_MAX_USAGE = 16000 << 20
#: Free-block counts of the scaling cases.
SCALING_N_FREE: Tuple[int, ...] = (100, 10_000, 100_000)
#: Capacity of the host "device" behind the C ABI during the CPU suite. The host backend
#: maps with MAP_NORESERVE and never touches the pages, so a large virtual capacity costs
#: nothing and keeps the 1 GiB mixes from running out.
HOST_CAPACITY = 1 << 40

PROGRESS_TAG = "@@pypool-bench"


# ---------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class BenchSettings:
    """How much work each case does. Use :meth:`for_mode` rather than building one.

    Attributes:
        mode: ``"full"``, ``"quick"`` or ``"smoke"`` (seconds; for tests only).
        repeats: measurements per case (median / p99 / min / max over them; 7 quick, 15 full).
        pair_target_s: each timed repeat of a fixed-size pair case runs about this long
            (iterations are calibrated per allocator).
        pair_min_iters: lower bound of the calibrated iteration count.
        random_ops: steps of each random mix (same sequence for pypool and glibc).
        random_live_cap: most live blocks of a random mix.
        churn_ops, churn_live, churn_max: the mixed working-set churn.
        scaling_n_free, scaling_iters: free-block counts and pairs timed per repeat.
        replay_scale, replay_repeats: size and repetitions of the workload replays.
        gpu: settings of the GPU children (passed to them as JSON).
        sim: settings of the simulated-device scenarios (:func:`pypool._bench_sim.sim_settings`).
    """

    mode: str = "quick"
    repeats: int = 7
    pair_target_s: float = 0.02
    pair_min_iters: int = 1000
    random_ops: int = 20_000
    random_live_cap: int = 1000
    churn_ops: int = 50_000
    churn_live: int = 4096
    churn_max: int = 1 << 20
    scaling_n_free: Tuple[int, ...] = SCALING_N_FREE
    scaling_iters: int = 20_000
    replay_scale: float = 1.0
    replay_repeats: int = 3
    gpu: Dict[str, Any] = field(default_factory=dict)
    sim: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_mode(cls, mode: str, repeats: Optional[int] = None) -> "BenchSettings":
        """Settings of ``mode`` (``"full"``, ``"quick"`` or ``"smoke"``), optionally with
        another repeat count."""
        if mode == "full":
            s = cls(mode="full", repeats=15, pair_target_s=0.05, random_ops=50_000,
                    churn_ops=200_000, scaling_iters=100_000, replay_repeats=5,
                    gpu=_gpu_settings("full"))
        elif mode == "quick":
            s = cls(mode="quick", gpu=_gpu_settings("quick"))
        elif mode == "smoke":
            # Note [Smoke mode]: exercises every code path in a few seconds (the CLI test);
            # its figures mean nothing.
            s = cls(mode="smoke", repeats=2, pair_target_s=0.0005, pair_min_iters=100,
                    random_ops=1000, random_live_cap=50, churn_ops=3000, churn_live=256,
                    scaling_n_free=(100, 1000), scaling_iters=1000, replay_scale=0.05,
                    replay_repeats=1, gpu=_gpu_settings("smoke"))
        else:
            raise ValueError(f"mode: must be 'full', 'quick' or 'smoke', got {mode!r}")
        from ._bench_sim import sim_settings

        s = dataclasses.replace(s, sim=sim_settings(mode))
        if repeats is not None:
            if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
                raise ValueError(f"repeats: must be an int >= 1, got {repeats!r}")
            s = dataclasses.replace(s, repeats=repeats)
        return s

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scaling_n_free"] = list(self.scaling_n_free)
        return d


def _gpu_settings(mode: str) -> Dict[str, Any]:
    """Work sizes of the GPU scenarios (see :mod:`pypool._bench_gpu`)."""
    if mode == "full":
        return dict(pair_batches=200, pair_batch_ops=200, warmup_batches=10,
                    rmm_allocations=10_000, rmm_max_mib=[1, 64, 1024], rmm_passes=3,
                    streams=4, stream_ops=20_000, stream_window=64,
                    trace_scale=1.0, trace_passes=3,
                    train_steps=60, train_warmup=5, train_dim=512, train_layers=6, train_heads=8,
                    train_batch=16, train_min_len=64, train_max_len=1024, train_vocab=16384)
    if mode == "quick":
        return dict(pair_batches=40, pair_batch_ops=100, warmup_batches=5,
                    rmm_allocations=1000, rmm_max_mib=[1, 64, 1024], rmm_passes=2,
                    streams=4, stream_ops=4000, stream_window=64,
                    trace_scale=1.0, trace_passes=2,
                    train_steps=30, train_warmup=5, train_dim=256, train_layers=4, train_heads=4,
                    train_batch=16, train_min_len=64, train_max_len=512, train_vocab=8192)
    return dict(pair_batches=3, pair_batch_ops=10, warmup_batches=1,
                rmm_allocations=50, rmm_max_mib=[1], rmm_passes=1,
                streams=2, stream_ops=100, stream_window=8,
                trace_scale=0.02, trace_passes=1,
                train_steps=2, train_warmup=1, train_dim=32, train_layers=1, train_heads=2,
                train_batch=2, train_min_len=4, train_max_len=16, train_vocab=64)


# ---------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Summary:
    """Median, p99, min and max of repeated measurements (and the measurements)."""

    median: float
    p99: float
    min: float
    max: float
    n: int
    values: Tuple[float, ...] = ()

    def to_dict(self, with_values: bool = True) -> Dict[str, Any]:
        d: Dict[str, Any] = {"median": self.median, "p99": self.p99, "min": self.min,
                             "max": self.max, "n": self.n}
        if with_values:
            d["values"] = list(self.values)
        return d


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of already sorted values."""
    n = len(sorted_values)
    pos = q * (n - 1)
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    return float(sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo))


def summarize(values: Sequence[float], keep_values: bool = True) -> Summary:
    """:class:`Summary` of ``values`` (at least one). ``keep_values=False`` drops the raw
    list (for per-operation latencies, which can number in the tens of thousands)."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("values: need at least one measurement")
    s = sorted(vals)
    return Summary(median=_quantile(s, 0.5), p99=_quantile(s, 0.99), min=s[0], max=s[-1],
                   n=len(s), values=tuple(vals) if keep_values else ())


# ---------------------------------------------------------------------------- progress
class Progress:
    """A progress bar on a terminal; one line per finished case otherwise (logs, CI).

    Args:
        total: number of steps.
        stream: where to draw (default ``sys.stderr``).
        enabled: False prints nothing at all.
    """

    def __init__(self, total: int, stream: Optional[TextIO] = None, enabled: bool = True) -> None:
        self.total = max(1, int(total))
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.done_count = 0
        self.t0 = time.monotonic()
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False

    def add_total(self, extra: int) -> None:
        self.total += max(0, int(extra))

    def start(self, label: str) -> None:
        """A step begins (redraws the bar on a terminal)."""
        if self.enabled and self.tty:
            self._draw(label)

    def finish(self, label: str, result: str = "") -> None:
        """A step is done: advance; off a terminal, print ``[k/n] label: result``."""
        self.done_count = min(self.total, self.done_count + 1)
        if not self.enabled:
            return
        if self.tty:
            self._draw(label)
        else:
            tail = f": {result}" if result else ""
            print(f"bench [{self.done_count}/{self.total}] {label}{tail}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _draw(self, label: str) -> None:
        width = 24
        filled = int(width * self.done_count / self.total)
        elapsed = time.monotonic() - self.t0
        line = (f"[{'#' * filled}{'.' * (width - filled)}] {self.done_count}/{self.total} "
                f"{elapsed:5.1f}s  {label}")
        try:
            cols = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            cols = 0
        if cols < 20:  # unknown (a pseudo-terminal without a size) or absurdly narrow
            cols = 100
        self.stream.write("\r\x1b[K" + line[: cols - 1])
        self.stream.flush()


# ---------------------------------------------------------------------------- environment
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _package_version(name: str) -> Optional[str]:
    # Importing torch only for its version costs seconds: read the installed metadata.
    try:
        from importlib import metadata
        return metadata.version(name)
    except Exception:
        return None


def _nvidia_smi() -> List[Dict[str, str]]:
    """GPU name, driver and memory from ``nvidia-smi`` (empty when it is not there)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return gpus


def _git_revision() -> str:
    """The git commit of the code that runs: ``abc123def456`` (``+dirty`` with local
    changes), or ``"unknown (why)"``.

    Note [Build revision]: pypool normally runs from an installed copy (site-packages of a
    virtual environment), which no git checkout tracks, so asking git about the package
    directory says nothing. The build records the revision of the tree it was built from
    in ``_build_info.json`` beside the package (cmake/build_info.cmake); a package that
    git does track (running from the source tree) asks git directly.
    """
    pkg = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(pkg)
    git_why = ""
    try:
        # An installed copy may sit in a virtual environment inside a checkout: only a
        # package that git tracks is that checkout's code.
        subprocess.run(["git", "-C", root, "ls-files", "--error-unmatch", os.path.join(pkg, "__init__.py")],
                       capture_output=True, timeout=10, check=True)
        rev = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        if rev:
            return rev + ("+dirty" if dirty else "")
    except FileNotFoundError:
        git_why = "git is not installed here; "
    except (OSError, subprocess.SubprocessError):
        pass
    info = _build_info(pkg)
    if info.get("git_revision"):
        return f"{info['git_revision']}{'+dirty' if info.get('dirty') else ''} (recorded at build time)"
    why = info.get("reason") or "its build recorded no revision (no _build_info.json)"
    return f"unknown ({git_why}pypool runs from {pkg}, which no git checkout tracks, and {why})"


def _build_info(pkg: str) -> Dict[str, Any]:
    try:
        with open(os.path.join(pkg, "_build_info.json"), encoding="utf-8") as f:
            d = json.load(f)
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _load_average() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The command as the user typed it (``python -m pypool bench ...``)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    head = argv[0]
    if head.endswith(os.path.join("pypool", "__main__.py")) or head == "-m":
        prog = "python -m pypool"
    else:
        prog = os.path.basename(head)
    return " ".join([prog] + [shlex.quote(a) for a in argv[1:]])


def environment(command: Optional[str] = None, device: str = "cpu") -> Dict[str, Any]:
    """Where the figures come from: CPU model, Python, torch, pypool, date, the command,
    and (``device="cuda"``) the GPUs with their driver."""
    from . import __version__

    env: Dict[str, Any] = {
        "date": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "command": command if command is not None else command_line(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "glibc": "-".join(platform.libc_ver()) or None,
        "pypool": __version__,
        "pypool_library": _core.__file__,
        "git_revision": _git_revision(),
        "cuda_backend_compiled": bool(_core.cuda_backend_compiled()),
        "torch": _package_version("torch"),
        "numpy": _package_version("numpy"),
        "rmm": _package_version("rmm") or _package_version("rmm-cu12") or _package_version("rmm-cu13"),
        "device": device,
        # Other work on the machine shows up in every figure: keep the evidence.
        "load_average": _load_average(),
    }
    if device == "cuda":
        gpus = _nvidia_smi()
        env["gpus"] = gpus
        env["gpu"] = gpus[0]["name"] if gpus else None
        env["driver"] = gpus[0]["driver"] if gpus else None
    return env


# ---------------------------------------------------------------------------- CPU suite
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


def _short_size(n: int) -> str:
    """``512 B``, ``64 KiB``, ``16 MiB``: exact sizes for case names."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= (1 << shift) and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} B"


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
        cases.append(_TimingCase("pairs", f"pair {_short_size(size)}", "ns/pair",
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
        "churn", f"churn {s.churn_live} live <= {_short_size(s.churn_max)}", "ns/op",
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
    from .replay import replay
    from .workloads import WORKLOADS

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
        try:
            from .workloads import WORKLOADS
            n += 2 * len(WORKLOADS)
        except ImportError:
            pass
    return n


def run_cpu(s: BenchSettings, progress: Optional[Progress] = None, replays: bool = True) -> Dict[str, Any]:
    """The CPU suite: ``{"timing": [...], "replay": [...]}``."""
    out: Dict[str, Any] = {"timing": run_cpu_timings(s, progress)}
    out["replay"] = run_cpu_replays(s, progress) if replays else []
    return out


# ---------------------------------------------------------------------------- GPU suite
def _rmm_importable() -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec("rmm") is not None
    except (ImportError, ValueError):
        return False


def gpu_allocators(include_rmm: Optional[bool] = None) -> List[str]:
    """The allocators the GPU suite compares, in report order (RMM only when importable)."""
    from ._bench_gpu import ALLOCATORS

    names = [n for n in ALLOCATORS if n != "rmm"]
    if include_rmm if include_rmm is not None else _rmm_importable():
        names.append("rmm")
    return names


def gpu_scenarios(s: BenchSettings) -> List[str]:
    """Scenario names for the GPU children (``kind[:param]``)."""
    g = s.gpu
    names = [f"pairs:{size}" for size in PAIR_SIZES]
    names += [f"random:{mib}" for mib in g["rmm_max_mib"]]
    names += ["streams", "trace:transformer", "trace:growing_batch", "train:gpt"]
    return names


def _child_command(allocator: str, scenarios: Sequence[str], settings: Dict[str, Any], out: str,
                   device: str) -> List[str]:
    # Note [Child import path]: the child must import the very pypool this process runs
    # (an installed copy or the source tree). `python -m` would put the working directory
    # first on sys.path and could pick the other one, so the child is started with -c and
    # the package's parent directory inserted first.
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from pypool._bench_gpu import child_main; sys.exit(child_main(sys.argv[1:]))")
    return [sys.executable, "-c", code, pkg_parent, "--child", "--allocator", allocator,
            "--scenarios", ",".join(scenarios), "--settings", json.dumps(settings),
            "--out", out, "--device", device]


def _run_child(allocator: str, scenarios: Sequence[str], settings: Dict[str, Any],
               progress: Optional[Progress], timeout_s: float, device: str,
               base_env: Optional[Dict[str, str]] = None, tag: str = "gpu") -> Dict[str, Any]:
    """One child (see :mod:`pypool._bench_gpu`); ``base_env`` replaces ``os.environ`` as
    the child's environment (the simulated device's), ``tag`` starts progress labels."""
    from ._bench_gpu import ALLOCATORS

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


# ---------------------------------------------------------------------------- entry point
def _cuda_available() -> bool:
    import importlib.util
    # No driver or no device: torch cannot see one either, and asking the driver is
    # instant where importing torch takes seconds.
    if _core.cuda_device_count()[0] == 0 or importlib.util.find_spec("torch") is None:
        return False
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:
        return False


def default_device() -> str:
    """``"cuda"`` when torch sees a GPU, else ``"cpu"``."""
    return "cuda" if _cuda_available() else "cpu"


def run_benchmarks(device: Optional[str] = None, mode: str = "quick", repeats: Optional[int] = None,
                   progress: bool = True, command: Optional[str] = None,
                   allocators: Optional[Sequence[str]] = None,
                   sim_memory: Optional[str] = None) -> Dict[str, Any]:
    """Run the suites for ``device`` (``"cpu"``, ``"cuda"``, ``"sim"``; default: cuda when
    torch sees a GPU) and return every figure as one JSON-serializable dict.

    ``device="cuda"`` runs the GPU suite and the CPU suite (the CPU figures of that host
    are cheap and give context). ``device="sim"`` runs only the simulated-device suite
    (:mod:`pypool._bench_sim`; ``sim_memory`` is the simulated device's size, default
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


def _stdout_target() -> Optional[str]:
    """The file stdout is redirected to (None for a terminal, a pipe or elsewhere)."""
    try:
        if not os.path.isfile(f"/proc/self/fd/{sys.stdout.fileno()}"):
            return None
        return os.readlink(f"/proc/self/fd/{sys.stdout.fileno()}")
    except (OSError, ValueError, AttributeError):
        return None


def _run_sim_benchmarks(mode: str, repeats: Optional[int], progress: bool, command: Optional[str],
                        allocators: Optional[Sequence[str]], sim_memory: Optional[str]) -> Dict[str, Any]:
    """``run_benchmarks(device="sim")``: the simulated-device suite alone."""
    from . import _bench_sim

    s = BenchSettings.for_mode(mode, repeats)
    if sim_memory is not None:
        s = dataclasses.replace(s, sim={**s.sim, "sim_memory": sim_memory})
    names = list(allocators) if allocators is not None else list(_bench_sim.SIM_ALLOCATORS)
    for n in names:  # refuse before paying for the probe
        if n not in _bench_sim.SIM_ALLOCATORS:
            why = _bench_sim.SIM_EXCLUDED.get(n, "unknown allocator")
            raise ValueError(f"--allocators: {n} is not run on the simulated device ({why}); "
                             f"choose from {', '.join(_bench_sim.SIM_ALLOCATORS)}")
    t0 = time.perf_counter()
    probe = _bench_sim.check_sim(s.sim["sim_memory"])
    env = environment(command, "sim")
    env["simulated_device"] = {"version": probe.get("version"), "name": probe.get("name"),
                               "memory": s.sim["sim_memory"], "devices": 1}
    env["torch_cuda"] = probe.get("cuda")
    # The exact invocation: interpreter, working directory and where stdout went.
    env["python_executable"] = sys.executable
    env["cwd"] = os.getcwd()
    env["stdout"] = _stdout_target()
    env["timing"] = "host overhead on a simulated device (no GPU; not GPU time)"
    total = len(names) * len(_bench_sim.sim_scenarios({**s.gpu, **s.sim}))
    bar = Progress(total, enabled=progress)
    try:
        results: Dict[str, Any] = {"schema": SCHEMA, "environment": env, "settings": s.to_dict(),
                                   "gpu": None, "cpu": None}
        results["sim"] = _bench_sim.run_sim(s, bar, names)
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


if __name__ == "__main__":
    # `python -m pypool.bench --child ...`: the GPU child (see Note [Child import path]
    # for why the suite itself starts children with -c instead).
    from ._bench_gpu import child_main

    sys.exit(child_main(sys.argv[1:]))
