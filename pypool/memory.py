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
import dataclasses
import os
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


# Note [Pools before install] (module docstring): the host backend stands in for this
# many devices when pypool configured the registry itself on a machine without a GPU.
HOST_DEVICES = 1
_FALLBACK_HOST_CAPACITY = 80 << 30


def host_capacity() -> Tuple[int, str]:
    """(bytes, where the figure comes from): the capacity the registry's host backend
    gets when pypool configures it on a machine without a GPU."""
    try:
        n = int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        n = 0
    if n <= 0:
        return _FALLBACK_HOST_CAPACITY, "a fixed 80 GiB (the machine's memory size is unknown)"
    return min(n, _core.MAX_REQUEST), "the machine's physical memory"


def _pending_config() -> PoolConfig:
    """The settings the registry has, or would get from ``$PYPOOL_CONF`` when configured
    now (raises ValueError naming PYPOOL_CONF for a bad value)."""
    if _core.registry_configured():
        return _registry_pool_config()
    return PoolConfig.from_env()


def _ensure_registry() -> None:
    """Configure the registry as install() would, unless something already did
    (Note [Pools before install])."""
    if _core.registry_configured():
        return
    cfg = PoolConfig.from_env()
    n, _ = _core.cuda_device_count()
    if n > 0:
        # The same call install() makes, so install() with $PYPOOL_CONF's settings
        # still succeeds afterwards.
        _core.registry_configure("cuda", cfg.to_core(), 0)
    else:
        _core.registry_configure("host", cfg.to_core(), host_capacity()[0])


def _registry_kind() -> str:
    """The backend the registry's pools have or will have: 'cuda', 'host' or 'null'."""
    if _core.registry_configured():
        kind = str(_core.registry_backend())
        if kind != "auto":
            return kind
    return "cuda" if _core.cuda_device_count()[0] > 0 else "host"


def _checked_device(device: Any, name: str = "device") -> int:
    """:func:`_device_index`, and the device must exist (Note [Pools before install])."""
    d = _device_index(device, name)
    if d < _core.MAX_DEVICES and _core.registry_has_pool(d):
        return d  # the common case, and no device count asked
    kind = _registry_kind()
    if kind == "cuda":
        n, why = _core.cuda_device_count()
        if d >= n:
            seen = f"devices 0..{n - 1}" if n else f"no GPU ({why})" if why else "no GPU"
            raise ValueError(f"{name}: no CUDA device {d} (pypool sees {seen})")
    elif d >= HOST_DEVICES:
        raise ValueError(
            f"{name}: no device {d}: pypool sees no GPU here, and its {kind} backend stands in "
            f"for device 0 only")
    return d


def _existing_pool(device: int) -> Optional["_core.DevicePool"]:
    """The registry's pool of ``device``, or None if it has none yet (never creates one)."""
    if not _core.registry_has_pool(device):
        return None
    return _core.registry_pool(device)


def _registry_pool_config() -> PoolConfig:
    """The registry's settings as a PoolConfig."""
    if _installed_config is not None:
        return _installed_config
    return _config_of(_core.registry_config())


def _config_of(core: "_core.Config") -> PoolConfig:
    """A native config as a PoolConfig."""
    fields: Dict[str, Any] = {}
    for f in (field.name for field in dataclasses.fields(PoolConfig)):
        v = getattr(core, f)
        if f == "growth":
            v = v.name
        elif f in ("max_pool_size", "max_split_size") and v == _core.UNLIMITED:
            v = None
        elif f == "memory_fraction" and v == 0:
            v = None
        fields[f] = v
    return PoolConfig(**fields)


def get_pool(device: Any = None) -> Pool:
    """A :class:`Pool` view of the registry's pool for ``device`` (made if it has none).

    Everything a :class:`Pool` offers works on it (``segments()``, ``check_invariants()``,
    ``live_blocks()``, ``set_memory_fraction()``...); it is the pool torch allocates from
    after :func:`pypool.install`. Before ``install()`` the pool gets ``$PYPOOL_CONF``'s
    settings, and on a machine without a GPU it is a host-backend pool (Note [Pools
    before install] in :mod:`pypool.memory`).

    Raises ``ValueError`` for a device that does not exist and for a bad ``$PYPOOL_CONF``.
    """
    d = _checked_device(device)
    _ensure_registry()
    core = _core.registry_pool(d)
    cfg = _installed_config if _installed_config is not None else _config_of(core.config)
    return Pool._wrap(core, cfg)


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
    cap = _pending_config().max_pool_size  # what the pool will have, once made
    stats["max_pool_size"] = -1 if cap is None else int(cap)
    return stats


# ---------------------------------------------------------------------------- statistics


def memory_stats(device: Any = None) -> Dict[str, int]:
    """Statistics of ``device``'s pool with ``torch.cuda.memory_stats()``'s keys.

    Keys are sorted, as torch returns them: ``"allocated_bytes.all.current"``,
    ``"reserved_bytes.large_pool.peak"``, ``"requested_bytes.all.current"``,
    ``"num_ooms"``, ... A device whose pool has not allocated yet reports zeros (and the
    ``max_pool_size`` its pool will get); a device that does not exist raises
    ``ValueError`` (Note [Pools before install]).
    """
    pool = _existing_pool(_checked_device(device))
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
    pool = _existing_pool(_checked_device(device))
    if pool is not None:
        pool.reset_peak_memory_stats()


def reset_accumulated_memory_stats(device: Any = None) -> None:
    """Restart the ``*.allocated`` / ``*.freed`` totals and event counters of ``device``."""
    pool = _existing_pool(_checked_device(device))
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
    d = _checked_device(device)
    pool = _existing_pool(d)
    stats = pool.memory_stats() if pool is not None else _zero_stats()
    backend = pool.backend_name if pool is not None else _registry_kind()
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
