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
  :mod:`pypool.bench.child`.

:func:`run_benchmarks` returns one JSON-serializable dict (see ``benchmarks/results/README.md``
for the layout); :mod:`pypool.bench.report` prints it as tables, HTML and PNG.

Note [Medians over repeats]: the machines this runs on are shared (CI, a 2-core VM with
other jobs). Every case runs ``repeats`` times, pypool and the baseline interleaved
(A B A B ...) so a burst of outside load hits both, and reports the median with p99 and
min/max over the repeats. With few repeats p99 is close to the maximum; it is reported
anyway so quick and full runs share one schema.

The package: :mod:`.common` (schema, fixed sizes, summaries, progress), :mod:`.settings`
(work sizes of each mode, scenario lists), :mod:`.provenance` (machine, software and revision),
:mod:`.cpu` (the CPU suite), :mod:`.gpu` (the parent of the GPU and simulated-device
children), :mod:`.child` (a child process; ``python -m pypool.bench --child`` runs one),
:mod:`.sim` (the simulated device's scenarios), :mod:`.report` (tables, HTML, PNG) and
:mod:`.runner` (:func:`run_benchmarks`). This module re-exports their public names.
"""

from __future__ import annotations

from .common import (HOST_CAPACITY, PAIR_SIZES, PROGRESS_TAG, RANDOM_MAX_MIB, RMM_MAX_USAGE,  # noqa: F401
                     SCALING_N_FREE, SCHEMA, Progress, Summary, summarize)
from ..config import PoolConfig, format_size  # noqa: F401  (importable from pypool.bench before the split)
from .common import short_size as _short_size  # noqa: F401  (the name tests and benchmarks import)
from .cpu import _random_live_max, run_cpu, run_cpu_replays, run_cpu_timings  # noqa: F401
from .provenance import _build_info, _git_revision, command_line, environment  # noqa: F401
from .gpu import default_device, gpu_allocators, run_gpu
from .runner import dumps, run_benchmarks
from .settings import BenchSettings, gpu_scenarios
from .settings import gpu_settings as _gpu_settings  # noqa: F401  (named in the child's --help)

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
