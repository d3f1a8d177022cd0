"""Memory statistics of the process-wide pools, with ``torch.cuda``'s names.

These functions read the registry behind the C ABI, the pools torch allocates from once
:func:`pypool.install` has run (and host pools in a process without a GPU, where the
registry runs on the host backend). They keep working where PyTorch's own
``torch.cuda.memory_stats()`` and friends raise under a pluggable allocator
(pytorch issue 133281); ``install(patch_torch=True)`` puts them in place of those.

``device`` is accepted the way torch accepts it: ``None`` (the current torch device when
torch has initialized CUDA, else 0), an int, ``"cuda"`` / ``"cuda:1"``, a
``torch.device`` or a ``torch.cuda.device``.

Note [Stats never make a pool]: reading the statistics of a device that has no pool yet
returns zeros instead of creating the pool. Creating one would, on the CUDA backend,
retain the device's primary context (hundreds of MiB on a GPU the process may never
use) and, with ``initial_pool_size``, reserve memory. Only :func:`get_pool` and
:func:`mem_get_info`, which need a live pool, create it.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import sys
from typing import Any, Dict, List, Optional, Tuple

from . import _core
from ._pool import Pool
from .config import PoolConfig, format_size

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

_DEVICE_RE = re.compile(r"^\s*cuda\s*(?::\s*(\d+))?\s*$")

# The PoolConfig given to install(); None when pypool was not installed. Set by
# pypool._torch so that get_pool() reports what the user asked for (memory_fraction
# included, which the native config does not carry).
_installed_config: Optional[PoolConfig] = None


# ---------------------------------------------------------------------------- devices


def _loaded_torch() -> Any:
    """torch if this process imported it already, else None.

    Never imports torch: the statistics must stay cheap and usable without it.
    """
    return sys.modules.get("torch")


def _current_device() -> int:
    """torch's current CUDA device once torch has initialized CUDA, else 0."""
    torch = _loaded_torch()
    if torch is None:
        return 0
    try:
        if torch.cuda.is_initialized():
            return int(torch.cuda.current_device())
    except Exception:  # a CPU-only or broken torch: there is no current CUDA device
        pass
    return 0


def _device_index(device: Any, name: str = "device") -> int:
    """The device index meant by ``device`` (see the module docstring)."""
    if device is None:
        return _current_device()
    if isinstance(device, bool):
        raise TypeError(f"{name}: expected None, an int, 'cuda:N' or a torch.device, got bool")
    if isinstance(device, int):
        index = device
    elif isinstance(device, str):
        m = _DEVICE_RE.match(device)
        if m is None:
            raise ValueError(f"{name}: expected 'cuda' or 'cuda:N', got {device!r}")
        index = _current_device() if m.group(1) is None else int(m.group(1))
    elif hasattr(device, "type") and hasattr(device, "index"):  # torch.device, duck-typed
        if device.type != "cuda":
            raise ValueError(f"{name}: expected a cuda device, got {device}")
        index = _current_device() if device.index is None else int(device.index)
    elif isinstance(getattr(device, "idx", None), int):  # torch.cuda.device(...) context object
        index = device.idx
    else:
        raise TypeError(
            f"{name}: expected None, an int, 'cuda:N' or a torch.device, got {type(device).__name__}"
        )
    if index < 0:
        raise ValueError(f"{name}: device index must be >= 0, got {index}")
    return index


# ---------------------------------------------------------------------------- pools


def _existing_pool(device: int) -> Optional["_core.DevicePool"]:
    """The registry's pool of ``device``, or None if it has none yet (never creates one)."""
    if not _core.registry_has_pool(device):
        return None
    return _core.registry_pool(device)


def _registry_pool_config() -> PoolConfig:
    """The registry's settings as a PoolConfig."""
    if _installed_config is not None:
        return _installed_config
    core = _core.registry_config()
    fields: Dict[str, Any] = {}
    for f in (field.name for field in dataclasses.fields(PoolConfig)):
        if f == "memory_fraction":  # not a native setting (see pypool._torch)
            continue
        v = getattr(core, f)
        if f == "growth":
            v = v.name
        elif f in ("max_pool_size", "max_split_size") and v == _core.UNLIMITED:
            v = None
        fields[f] = v
    return PoolConfig(**fields)


def get_pool(device: Any = None) -> Pool:
    """A :class:`Pool` view of the registry's pool for ``device`` (made if it has none).

    Everything a :class:`Pool` offers works on it (``segments()``, ``check_invariants()``,
    ``live_blocks()``, ``set_memory_fraction()``...); it is the pool torch allocates from
    after :func:`pypool.install`.
    """
    d = _device_index(device)
    return Pool._wrap(_core.registry_pool(d), _registry_pool_config())


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
    cap = _core.registry_config().max_pool_size
    stats["max_pool_size"] = -1 if cap == _core.UNLIMITED else int(cap)
    return stats


# ---------------------------------------------------------------------------- statistics


def memory_stats(device: Any = None) -> Dict[str, int]:
    """Statistics of ``device``'s pool with ``torch.cuda.memory_stats()``'s keys.

    Keys are sorted, as torch returns them: ``"allocated_bytes.all.current"``,
    ``"reserved_bytes.large_pool.peak"``, ``"requested_bytes.all.current"``,
    ``"num_ooms"``, ... A device whose pool has not allocated yet reports zeros.
    """
    pool = _existing_pool(_device_index(device))
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
    pool = _existing_pool(_device_index(device))
    if pool is not None:
        pool.reset_peak_memory_stats()


def reset_accumulated_memory_stats(device: Any = None) -> None:
    """Restart the ``*.allocated`` / ``*.freed`` totals and event counters of ``device``."""
    pool = _existing_pool(_device_index(device))
    if pool is not None:
        pool.reset_accumulated_memory_stats()


def empty_cache() -> None:
    """Give every pool's fully free cached segments back to its device (all devices,
    like ``torch.cuda.empty_cache()``; ``release_threshold`` bytes are kept)."""
    for d in _core.registry_devices():
        _core.registry_pool(d).empty_cache()


def mem_get_info(device: Any = None) -> Tuple[int, int]:
    """``(free, total)`` bytes of the device as its backend sees it (``cudaMemGetInfo``
    on a GPU; the host backend's capacity and use on CPU). Makes the pool if needed."""
    return get_pool(device).mem_info()


def get_per_process_memory_fraction(device: Any = None) -> float:
    """The share of ``device``'s memory its pool may reserve, as
    ``torch.cuda.get_per_process_memory_fraction`` reports it: the fraction set last by
    ``torch.cuda.set_per_process_memory_fraction`` (or :meth:`Pool.set_memory_fraction`),
    else ``memory_fraction`` from the configuration, else 1.0 (no cap from a fraction;
    ``max_pool_size`` is a separate cap). Makes no pool."""
    pool = _existing_pool(_device_index(device))
    if pool is not None:
        fraction = float(pool.memory_fraction())
        if fraction == 0.0:
            return 1.0  # no fraction set
        # torch's fraction 0.0 ("no memory") is kept as the smallest positive double
        # (Note [Fraction zero] in csrc/abi/c_api.cpp).
        return 0.0 if fraction < 1e-300 else fraction
    configured = _registry_pool_config().memory_fraction if _core.registry_configured() else None
    return 1.0 if configured is None else float(configured)


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


def _free_blocks(pool: "_core.DevicePool") -> Tuple[int, int, int]:
    """(free bytes in pool, largest free block, number of free blocks)."""
    total = largest = count = 0
    for seg in pool.segments():
        for b in seg["blocks"]:
            if b["state"] == "inactive":
                total += b["size"]
                largest = max(largest, b["size"])
                count += 1
    return total, largest, count


def memory_summary(device: Any = None, abbreviated: bool = False) -> str:
    """A readable table of ``device``'s pool statistics (``torch.cuda.memory_summary``'s
    signature): current, peak, total allocated and total freed of every byte and count
    statistic, split by small and large pool unless ``abbreviated``, then the event
    counters and the pool's fragmentation."""
    d = _device_index(device)
    pool = _existing_pool(d)
    stats = pool.memory_stats() if pool is not None else _zero_stats()
    backend = pool.backend_name if pool is not None else _core.registry_backend()
    cap = stats["max_pool_size"]
    width = 78
    lines: List[str] = []
    where = "backend not chosen yet" if backend == "auto" else f"{backend} backend"
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
