"""pypool: a caching block-pool GPU memory allocator for PyTorch.

Quick start::

    import pypool
    pypool.install(max_pool_size="40GiB")   # first thing, before any CUDA call

Without a GPU, :class:`Pool` runs the same allocator on the host backend.
"""

from __future__ import annotations

from ._version import __version__
from ._pool import InvalidPointerError, InvariantError, OutOfMemoryError, Pool
from ._torch import InstallError, install, installed_config, is_installed
from .config import PoolConfig, format_size, parse_size
from .memory import (
    empty_cache,
    get_pool,
    max_memory_allocated,
    max_memory_reserved,
    mem_get_info,
    memory_allocated,
    memory_reserved,
    memory_stats,
    memory_stats_as_nested_dict,
    memory_summary,
    reset_accumulated_memory_stats,
    reset_peak_memory_stats,
)
from .fragmentation import FragmentationReport, fragmentation
from .snapshot import dump_snapshot, record_history, snapshot
from .leaks import LeakError, LeakReport, LeakWarning, LeakWatch, track_leaks
from . import _torch, distributed, leaks, memory

__all__ = [
    # pools and configuration
    "Pool",
    "PoolConfig",
    "parse_size",
    "format_size",
    "library_path",
    # errors
    "OutOfMemoryError",
    "InvalidPointerError",
    "InvariantError",
    "InstallError",
    # PyTorch integration
    "install",
    "is_installed",
    "installed_config",
    # statistics (names as in torch.cuda)
    "memory_stats",
    "memory_stats_as_nested_dict",
    "memory_allocated",
    "memory_reserved",
    "max_memory_allocated",
    "max_memory_reserved",
    "reset_peak_memory_stats",
    "reset_accumulated_memory_stats",
    "memory_summary",
    "empty_cache",
    "mem_get_info",
    "get_pool",
    "memory",
    # fragmentation, snapshots, history
    "FragmentationReport",
    "fragmentation",
    "snapshot",
    "record_history",
    "dump_snapshot",
    "distributed",
    # leaks
    "track_leaks",
    "LeakWatch",
    "LeakError",
    "LeakWarning",
    "LeakReport",
]

if leaks.exit_check_requested():  # PYPOOL_LEAK_CHECK=1: report live allocations at exit
    leaks.enable_exit_check()


def library_path() -> str:
    """Path of the shared library holding the C ABI (what torch loads with ctypes)."""
    return _torch._library_path()
