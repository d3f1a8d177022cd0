"""Memory statistics of the process-wide pools, with ``torch.cuda``'s names.

These functions read the registry behind the C ABI, the pools torch allocates from once
:func:`pypool.install` has run (and host pools in a process without a GPU, where the
registry runs on the host backend). They keep working where PyTorch's own
``torch.cuda.memory_stats()`` and friends raise under a pluggable allocator
(pytorch issue 133281); ``install(patch_torch=True)`` puts them in place of those.

``device`` is accepted the way torch accepts it: ``None`` (the current torch device when
torch has initialized CUDA, else 0), an int, ``"cuda"`` / ``"cuda:1"``, a
``torch.device`` or a ``torch.cuda.device``.

Note [Pools before install]: one rule for every module-level function
(:func:`get_pool`, :func:`mem_get_info`, the statistics, :func:`pypool.fragmentation`,
:func:`pypool.snapshot`, :func:`pypool.dump_snapshot`, :func:`pypool.record_history`,
:func:`pypool.track_leaks`, :class:`pypool.LeakWatch`), with or without a GPU and with or
without :func:`pypool.install`:

* they work on the process-wide registry pools, one per device. The first function that
  needs a pool configures the registry, when nothing (``install()``) did yet, the way
  ``install()`` would: settings from ``$PYPOOL_CONF`` (a bad value raises ``ValueError``
  naming the variable), the CUDA backend when pypool sees a GPU, else the **host
  backend**: memory from the OS, standing in for one device (device 0) whose capacity is
  the machine's physical memory. Every figure then comes from that backend, and says so
  (``Pool.backend_name``, the ``backend`` of a snapshot, the title of
  :func:`memory_summary`);
* functions that need a live pool (:func:`get_pool`, :func:`mem_get_info`,
  ``record_history``, ``track_leaks``, ``LeakWatch``) make it; functions that only read
  (the statistics, :func:`memory_summary`, ``fragmentation``, ``snapshot``,
  ``dump_snapshot``) never do: a device without a pool reads as empty. Making a pool on
  the CUDA backend retains the device's primary context (hundreds of MiB on a GPU the
  process may never use) and, with ``initial_pool_size``, reserves memory;
* a device index that names no device (beyond the GPUs pypool sees; beyond device 0 on
  the host backend, unless a pool was made for it through the C ABI) raises
  ``ValueError`` in every one of them.

On a GPU machine, call ``install()`` first anyway: a pool made before it fixes the
settings, and ``install()`` with other settings than ``$PYPOOL_CONF``'s then raises.
"""

from __future__ import annotations

import collections
from typing import Any, Dict, List, Optional, Tuple

from . import _core
from ._pool import Pool
from ._registry import HOST_DEVICES, host_capacity  # noqa: F401  (public here before the seam moved)
from ._registry import (
    checked_device,
    device_index,
    ensure_registry,
    existing_pool,
    pending_config,
    registry_kind,
    resolve_pool,
)
from .config import PoolConfig, format_size  # noqa: F401  (PoolConfig: importable from here before)

__all__ = [
    "memory_stats",
    "memory_stats_as_nested_dict",
    "memory_allocated",
    "memory_reserved",
    "max_memory_allocated",
    "max_memory_reserved",
    "reset_peak_memory_stats",
    "reset_accumulated_memory_stats",
    "empty_cache",
    "mem_get_info",
    "memory_summary",
    "get_pool",
    "get_per_process_memory_fraction",
]


# ---------------------------------------------------------------------------- pools
# Which device and which pool a call means: pypool._registry (device arguments as torch
# reads them, the registry configured as install() would, the settings a pool reports).


def get_pool(device: Any = None) -> Pool:
    """A :class:`Pool` view of the registry's pool for ``device`` (made if it has none).

    Everything a :class:`Pool` offers works on it (``segments()``, ``check_invariants()``,
    ``live_blocks()``, ``set_memory_fraction()``...); it is the pool torch allocates from
    after :func:`pypool.install`. Before ``install()`` the pool gets ``$PYPOOL_CONF``'s
    settings, and on a machine without a GPU it is a host-backend pool (Note [Pools
    before install] in :mod:`pypool.memory`).

    Raises ``ValueError`` for a device that does not exist and for a bad ``$PYPOOL_CONF``.
    """
    d = checked_device(device)
    ensure_registry()
    core = _core.registry_pool(d)
    return Pool._wrap(core)


_ZERO_TEMPLATE: Optional[Dict[str, int]] = None


def _zero_stats() -> Dict[str, int]:
    """Statistics of a device with no pool: every key, all zero (see the module note)."""
    global _ZERO_TEMPLATE
    if _ZERO_TEMPLATE is None:
        # A fresh pool on a bookkeeping-only backend gives the exact keys (and the
        # stats_version) the core reports, so the two never drift apart.
        probe = _core.DevicePool(_core.Config(), _core.make_null_backend(1 << 30), 0)
        _ZERO_TEMPLATE = {k: (v if k == "stats_version" else 0) for k, v in probe.memory_stats().items()}
    stats = dict(_ZERO_TEMPLATE)
    cfg = pending_config()  # what the pool will have, once made
    stats["max_pool_size"] = -1 if cfg.max_pool_size is None else int(cfg.max_pool_size)
    stats["max_split_size"] = -1 if cfg.max_split_size is None else int(cfg.max_split_size)
    return stats


# ---------------------------------------------------------------------------- statistics


def memory_stats(device: Any = None) -> Dict[str, int]:
    """Statistics of ``device``'s pool with ``torch.cuda.memory_stats()``'s keys.

    Keys are sorted, as torch returns them: ``"allocated_bytes.all.current"``,
    ``"reserved_bytes.large_pool.peak"``, ``"requested_bytes.all.current"``,
    ``"num_ooms"``, ``"oversize_allocations.current"``, ``"max_split_size"`` (-1 for no
    limit, as torch reports it), ... A device whose pool has not allocated yet reports
    zeros (and the ``max_pool_size`` and ``max_split_size`` its pool will get); a device that does not exist raises
    ``ValueError`` (Note [Pools before install]).
    """
    pool = existing_pool(checked_device(device))
    stats = pool.memory_stats() if pool is not None else _zero_stats()
    return collections.OrderedDict(sorted(stats.items()))


def memory_stats_as_nested_dict(device: Any = None) -> Dict[str, Any]:
    """:func:`memory_stats` as nested dicts: ``d["allocated_bytes"]["all"]["current"]``."""
    nested: Dict[str, Any] = {}
    for key, value in memory_stats(device).items():
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def memory_allocated(device: Any = None) -> int:
    """Bytes in live allocations on ``device`` (block sizes, as torch counts them)."""
    return memory_stats(device)["allocated_bytes.all.current"]


def memory_reserved(device: Any = None) -> int:
    """Bytes ``device``'s pool holds from the device, in use or cached."""
    return memory_stats(device)["reserved_bytes.all.current"]


def max_memory_allocated(device: Any = None) -> int:
    """Peak of :func:`memory_allocated` since start or :func:`reset_peak_memory_stats`."""
    return memory_stats(device)["allocated_bytes.all.peak"]


def max_memory_reserved(device: Any = None) -> int:
    """Peak of :func:`memory_reserved` since start or :func:`reset_peak_memory_stats`."""
    return memory_stats(device)["reserved_bytes.all.peak"]


def reset_peak_memory_stats(device: Any = None) -> None:
    """Set every ``*.peak`` statistic of ``device`` to its current value."""
    pool = existing_pool(checked_device(device))
    if pool is not None:
        pool.reset_peak_memory_stats()


def reset_accumulated_memory_stats(device: Any = None) -> None:
    """Restart the ``*.allocated`` / ``*.freed`` totals and event counters of ``device``."""
    pool = existing_pool(checked_device(device))
    if pool is not None:
        pool.reset_accumulated_memory_stats()


def empty_cache() -> None:
    """Give every pool's fully free cached segments back to its device (all devices,
    like ``torch.cuda.empty_cache()``; ``release_threshold`` bytes are kept)."""
    for d in _core.registry_devices():
        _core.registry_pool(d).empty_cache()


def mem_get_info(device: Any = None) -> Tuple[int, int]:
    """``(free, total)`` bytes of the device as its backend sees it: ``cuMemGetInfo`` on
    a GPU. On a machine without a GPU the pools run on the host backend (Note [Pools
    before install]): total is its capacity (the machine's physical memory unless the
    registry was configured otherwise) and free is that minus what the pool holds; only
    device 0 exists there. Makes the pool if needed; ``ValueError`` for a device that does
    not exist."""
    return get_pool(device).mem_info()


def get_per_process_memory_fraction(device: Any = None) -> float:
    """The share of ``device``'s memory its pool may reserve, as
    ``torch.cuda.get_per_process_memory_fraction`` reports it: the fraction set last by
    ``torch.cuda.set_per_process_memory_fraction`` (or :meth:`Pool.set_memory_fraction`),
    else ``memory_fraction`` from the configuration, else 1.0 (no cap from a fraction;
    ``max_pool_size`` is a separate cap). Makes no pool."""
    pool = existing_pool(device_index(device))
    if pool is not None:
        fraction = float(pool.memory_fraction())
        if fraction == 0.0:
            return 1.0  # no fraction set
    else:
        configured = pending_config().memory_fraction if _core.registry_configured() else None
        if configured is None:
            return 1.0
        fraction = float(configured)
    # torch's fraction 0.0 ("no memory") is kept as the smallest positive double, from
    # set_per_process_memory_fraction(0.0) or per_process_memory_fraction:0.0 in its
    # settings (Note [Fraction zero] in csrc/abi/c_api.cpp).
    return 0.0 if fraction < 1e-300 else fraction


# ---------------------------------------------------------------------------- summary

_SUMMARY_ROWS = (
    ("allocated_bytes", "Allocated memory", True),
    ("requested_bytes", "Requested memory", True),
    ("active_bytes", "Active memory", True),
    ("reserved_bytes", "Reserved memory", True),
    ("inactive_split_bytes", "Non-releasable memory", True),
    ("allocation", "Allocations", False),
    ("active", "Active blocks", False),
    ("segment", "Device segments", False),
    ("inactive_split", "Non-releasable blocks", False),
)


def _free_blocks(pool: Pool) -> Tuple[int, int, int]:
    """(free bytes in pool, largest free block, number of free blocks)."""
    total = largest = count = 0
    for seg in pool.segments():
        for b in seg["blocks"]:
            if b["state"] == "inactive":
                total += b["size"]
                largest = max(largest, b["size"])
                count += 1
    return total, largest, count


def memory_summary(device: Any = None, abbreviated: bool = False, pool: Optional[Pool] = None) -> str:
    """A readable table of ``device``'s pool statistics (``torch.cuda.memory_summary``'s
    signature): current, peak, total allocated and total freed of every byte and count
    statistic, split by small and large pool unless ``abbreviated``, then the event
    counters and the pool's fragmentation. ``pool``: a :class:`Pool` of your own instead
    (as in :func:`pypool.fragmentation`)."""
    target, d = resolve_pool(device, pool, create=False, what="memory_summary")
    pool = target
    stats = pool.memory_stats() if pool is not None else _zero_stats()
    backend = pool.backend_name if pool is not None else registry_kind()
    cap = stats["max_pool_size"]
    width = 78
    lines: List[str] = []
    where = f"{backend} backend"
    if backend == "host" and pool is not None:
        # Say where the figures come from: no GPU is involved (Note [Pools before install]).
        where += f": no GPU, capacity {format_size(pool.mem_info()[1])}"
    title = f"pypool memory summary, device {d} ({where}), cap {format_size(None if cap < 0 else cap)}"
    lines.append("=" * width)
    lines.append(title)
    lines.append("=" * width)
    lines.append(f"{'':28}{'Current':>12}{'Peak':>12}{'Tot. alloc':>13}{'Tot. freed':>13}")
    lines.append("-" * width)

    def cell(v: int, as_bytes: bool) -> str:
        return format_size(v) if as_bytes else str(v)

    for key, label, as_bytes in _SUMMARY_ROWS:
        pools = [("all", label)]
        if not abbreviated:
            pools += [("large_pool", "  from large pool"), ("small_pool", "  from small pool")]
        for sub, name in pools:
            p = f"{key}.{sub}."
            lines.append(
                f"{name:28}{cell(stats[p + 'current'], as_bytes):>12}{cell(stats[p + 'peak'], as_bytes):>12}"
                f"{cell(stats[p + 'allocated'], as_bytes):>13}{cell(stats[p + 'freed'], as_bytes):>13}"
            )
        if not abbreviated:
            lines.append("-" * width)
    if abbreviated:
        lines.append("-" * width)
    lines.append(
        f"Device allocs: {stats['num_device_alloc']}   device frees: {stats['num_device_free']}   "
        f"retries: {stats['num_alloc_retries']}   OOMs: {stats['num_ooms']}   "
        f"stream syncs: {stats['num_sync_all_streams']}"
    )
    if pool is None:
        lines.append("No memory allocated on this device yet.")
    else:
        free, largest, count = _free_blocks(pool)
        ext = 0.0 if free == 0 else 1.0 - largest / free
        lines.append(
            f"Free in pool: {format_size(free)} in {count} block(s), largest {format_size(largest)}, "
            f"external fragmentation {ext * 100:.0f}%"
        )
    lines.append("=" * width)
    return "\n".join(lines) + "\n"
