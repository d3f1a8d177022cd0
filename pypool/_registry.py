"""Which pool a call means: device arguments, the process-wide registry and its settings.

Every module-level function that works on "the pool of a device" (the statistics in
:mod:`pypool.memory`, :func:`pypool.fragmentation`, :func:`pypool.snapshot`,
:func:`pypool.record_history`, leak tracking, :mod:`pypool.distributed`) asks this
module, and only this module, which pool that is: :func:`device_index` reads a device
argument the way torch does, :func:`checked_device` also requires the device to exist,
:func:`existing_pool` looks a registry pool up without making it, :func:`ensure_registry`
configures the registry as ``install()`` would, and :func:`resolve_pool` turns ``device=`` / ``pool=`` into one pool.

Note [Reports never create pools]: a pool, once made, fixes the registry's settings, and
on a GPU it retains the device's context. So reading functions (:func:`fragmentation`,
:func:`snapshot`) look a registry pool up without creating it and report an empty pool
when there is none; :func:`record_history` creates one, configuring the registry from
``$PYPOOL_CONF`` when nothing did yet. The whole rule: Note [Pools before install] in
``memory.py``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from typing import Any, Dict, Optional, Tuple

from . import _core
from ._pool import Pool
from .config import PoolConfig

__all__ = [
    "device_index", "checked_device", "existing_pool", "ensure_registry", "registry_kind",
    "pending_config", "pool_config", "config_of", "set_installed_config", "installed_pool_config",
    "resolve_pool", "host_capacity", "HOST_DEVICES",
]

_DEVICE_RE = re.compile(r"^\s*cuda\s*(?::\s*(\d+))?\s*$")

# The PoolConfig given to install() (memory_fraction included, which the native config
# does not carry), kept current by run-time settings; None when pypool was not installed.
# Written only through set_installed_config (pypool._torch).
_installed_config: Optional[PoolConfig] = None


def set_installed_config(cfg: Optional[PoolConfig]) -> None:
    """Record the settings install() (or a later ``_set_allocator_settings``) gave the
    registry; None forgets them (tests)."""
    global _installed_config
    _installed_config = cfg


def installed_pool_config() -> Optional[PoolConfig]:
    """The settings :func:`set_installed_config` recorded, or None."""
    return _installed_config


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


def device_index(device: Any, name: str = "device") -> int:
    """The device index meant by ``device`` (see :mod:`pypool.memory`'s docstring):
    ``None`` (torch's current device once CUDA is up, else 0), an int, ``"cuda"`` /
    ``"cuda:N"``, a ``torch.device`` or a ``torch.cuda.device``."""
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


# ---------------------------------------------------------------------------- registry


# Note [Pools before install] (memory.py): the host backend stands in for this many
# devices when pypool configured the registry itself on a machine without a GPU.
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


def pending_config() -> PoolConfig:
    """The settings the registry has, or would get from ``$PYPOOL_CONF`` when configured
    now (raises ValueError naming PYPOOL_CONF for a bad value)."""
    if _core.registry_configured():
        return _registry_config()
    return PoolConfig.from_env()


def ensure_registry() -> None:
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


def registry_kind() -> str:
    """The backend the registry's pools have or will have: 'cuda', 'host' or 'null'."""
    if _core.registry_configured():
        kind = str(_core.registry_backend())
        if kind != "auto":
            return kind
    return "cuda" if _core.cuda_device_count()[0] > 0 else "host"


def checked_device(device: Any, name: str = "device") -> int:
    """:func:`device_index`, and the device must exist (Note [Pools before install])."""
    d = device_index(device, name)
    if d < _core.MAX_DEVICES and _core.registry_has_pool(d):
        return d  # the common case, and no device count asked
    kind = registry_kind()
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


def existing_pool(device: int) -> Optional["_core.DevicePool"]:
    """The registry's pool of ``device``, or None if it has none yet (never creates one)."""
    if not _core.registry_has_pool(device):
        return None
    return _core.registry_pool(device)


def _registry_config() -> PoolConfig:
    """The registry's settings as a PoolConfig."""
    if _installed_config is not None:
        return _installed_config
    return config_of(_core.registry_config())


def config_of(core: "_core.Config") -> PoolConfig:
    """A native config as a PoolConfig (one conversion, from the field table)."""
    return PoolConfig.from_core(core)


# ---------------------------------------------------------------------------- one pool


def resolve_pool(device: Any, pool: Any, create: bool, what: str) -> Tuple[Optional[Pool], int]:
    """Return ``(pool, device)`` for a call ``what(device=..., pool=...)``.

    ``pool`` may be a :class:`Pool` or a native ``_core.DevicePool``. Without one, the
    registry pool of ``device`` is used: ``None`` when it does not exist and ``create``
    is false (Note [Reports never create pools]).
    """
    if pool is not None:
        if isinstance(pool, _core.DevicePool):
            pool = Pool._wrap(pool)
        if not isinstance(pool, Pool):
            raise TypeError(f"{what}: pool must be a pypool.Pool, got {type(pool).__name__}")
        if device is not None and device_index(device) != pool.device:
            raise ValueError(f"{what}: device={device} does not match pool.device={pool.device}")
        return pool, pool.device
    d = checked_device(device)  # None: torch's current device once CUDA is up, else 0
    core = existing_pool(d)
    if core is None:
        if not create:
            return None, d
        ensure_registry()  # Note [Pools before install]
        core = _core.registry_pool(d)
    return Pool._wrap(core), d
