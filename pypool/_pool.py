"""The Python face of one caching pool: :class:`Pool`."""

from __future__ import annotations

import dataclasses
import threading
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from . import _core
from ._fragreport import FragmentationReport, PoolBase
from .config import PoolConfig, SizeLike, parse_size

__all__ = ["Pool", "OutOfMemoryError", "InvalidPointerError", "InvariantError"]

OutOfMemoryError = _core.OutOfMemoryError
InvalidPointerError = _core.InvalidPointerError
InvariantError = _core.InvariantError

_BACKENDS = ("host", "null", "cuda")
DEFAULT_HOST_CAPACITY = 80 << 30
# Note [Ranges before the binding]: pybind11 rejects an int that does not fit the C++
# parameter with a TypeError listing overloads ("incompatible function arguments"),
# which names neither the argument nor its range. So every int is range-checked here,
# against the C++ type's limits, before it reaches _core.
_U64_MAX = (1 << 64) - 1  # pointers (uintptr_t) and streams (cudaStream_t as an integer)


def _check_int(value: Any, name: str, minimum: int = 0, maximum: Optional[int] = None,
               what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum or (maximum is not None and value > maximum):
        hi = "" if maximum is None else f"..{maximum if maximum < (1 << 32) else hex(maximum)}"
        raise ValueError(f"{name}: must be in {minimum}{hi}{' ' + what if what else ''}, got {value}"
                         if maximum is not None else f"{name}: must be >= {minimum}, got {value}")
    return value


def _check_ptr(value: Any, name: str = "ptr") -> int:
    return _check_int(value, name, 0, _U64_MAX, "(a 64-bit address)")


def _check_stream(value: Any, name: str = "stream") -> int:
    return _check_int(value, name, 0, _U64_MAX, "(a cudaStream_t as a 64-bit integer)")


def _check_device(value: Any, name: str = "device") -> int:
    return _check_int(value, name, 0, _core.MAX_DEVICES - 1, "(pypool handles up to "
                      f"{_core.MAX_DEVICES} devices)")


# The largest host/null capacity: far beyond any machine (a replay may assume a device
# twice a trace's peak) and far from 64-bit overflow in the pool's size arithmetic.
MAX_CAPACITY = 1 << 62


# Note [Config read-modify-write]: Pool.update_config and torch's
# _set_allocator_settings each change a few fields of a pool's live config, and the core
# takes whole configs. Each one reads the pool's *current* core config, changes only the
# fields it was given, and writes it back, under this lock, so neither undoes the
# other's fields and two threads updating one pool lose no update.
CONFIG_LOCK = threading.RLock()


def core_pool_config(core: "_core.DevicePool") -> PoolConfig:
    """The settings ``core`` applies now: its config, with the memory fraction it applies
    now (``set_memory_fraction`` and torch's ``set_per_process_memory_fraction`` change
    the fraction without rewriting the config)."""
    cfg = PoolConfig.from_core(core.config)
    fraction = float(core.memory_fraction())
    live = None if fraction == 0.0 else fraction
    return cfg if cfg.memory_fraction == live else cfg.replace(memory_fraction=live)


def _check_capacity(value: Any) -> int:
    cap = DEFAULT_HOST_CAPACITY if value is None else parse_size(value, "capacity")
    if cap == 0:
        raise ValueError("capacity: must be > 0")
    if cap > MAX_CAPACITY:
        raise ValueError(f"capacity: must be <= 4096 PiB (2**62 bytes), got {cap}")
    return cap


class Pool(PoolBase):
    """A caching block-pool allocator for one device.

    Args:
        backend: ``"host"`` (memory from the OS; stands in for a device of ``capacity``
            bytes, with fault injection and controllable stream events via
            :attr:`backend`), ``"null"`` (bookkeeping only: addresses are never backed, for
            replaying traces at full size) or ``"cuda"`` (a real GPU).
        device: device index (informational for host/null).
        capacity: device size for host/null backends (default 80 GiB); must be None for cuda.
        config: a :class:`PoolConfig`, a dict of its fields, or a ``PYPOOL_CONF`` string.
        **overrides: PoolConfig fields to change.

    ``malloc(0)`` returns 0 and records nothing; ``free(0)`` does nothing. A double free,
    a foreign pointer or a pointer into the middle of a block raises
    :class:`InvalidPointerError` (a ``ValueError``) and leaves the pool unchanged.
    """

    def __init__(
        self,
        backend: str = "host",
        device: int = 0,
        capacity: Optional[SizeLike] = None,
        config: Union[PoolConfig, Mapping[str, Any], str, None] = None,
        **overrides: Any,
    ) -> None:
        if not isinstance(backend, str) or backend not in _BACKENDS:
            raise ValueError(f"backend: must be one of {_BACKENDS}, got {backend!r}")
        _check_device(device)
        cfg = PoolConfig.coerce(config, **overrides)
        self._host: Optional[_core.HostBackend] = None
        if backend == "cuda":
            if capacity is not None:
                raise ValueError("capacity: only for the host and null backends (a GPU has its own)")
            be = _core.make_cuda_backend(device)
        else:
            cap = _check_capacity(capacity)
            if backend == "host":
                self._host = _core.HostBackend(cap)
                be = self._host
            else:
                be = _core.make_null_backend(cap)
        self._pool = _core.DevicePool(cfg.to_core(), be, device)
        self._backend_obj: Optional[_core.Backend] = be

    @classmethod
    def _wrap(cls, core_pool: "_core.DevicePool") -> "Pool":
        """A Pool view of an existing native pool (the registry's device pools);
        :attr:`config` reads the native pool's own settings."""
        self = cls.__new__(cls)
        self._pool = core_pool
        self._host = None
        self._backend_obj = None
        return self

    @property
    def config(self) -> PoolConfig:
        """The settings the pool applies now, read from the native pool, so never stale
        after :meth:`update_config`, :meth:`set_memory_fraction` or torch's
        ``_set_allocator_settings`` (Note [Config read-modify-write])."""
        return core_pool_config(self._pool)

    # ------------------------------------------------------------------ allocation
    def malloc(self, size: int, stream: int = 0) -> int:
        """Allocate ``size`` bytes for use on ``stream``; returns the address (0 for size 0).

        Raises :class:`OutOfMemoryError` (a ``RuntimeError``) when the request cannot be
        met after releasing cached memory, and for a request over 1 PiB (beyond any
        device, as PyTorch calls an impossible request out of memory); the pool stays
        usable.
        """
        _check_int(size, "size")
        _check_stream(stream)
        if size >= 1 << 64:  # beyond size_t; smaller sizes over 1 PiB: the core says the same
            raise OutOfMemoryError(
                f"pypool: out of memory. Tried to allocate more than 1EB memory ({size} bytes): pypool "
                f"refuses any request over 1 PiB ({_core.MAX_REQUEST} bytes), which is beyond any device."
            )
        return self._pool.malloc(size, stream)

    def free(self, ptr: int) -> None:
        """Return an allocation to the pool (cached for reuse, not given back to the device)."""
        self._pool.free(_check_ptr(ptr))

    def record_stream(self, ptr: int, stream: int) -> None:
        """Mark ``ptr`` as used on ``stream``: after ``free`` it is not reused until the
        work queued on ``stream`` by then has completed (``Tensor.record_stream``)."""
        self._pool.record_stream(_check_ptr(ptr), _check_stream(stream))

    def size_of(self, ptr: int) -> int:
        """Block size (rounded) of a live allocation."""
        return self._pool.size_of(_check_ptr(ptr))

    # ------------------------------------------------------------------ cache
    def empty_cache(self) -> None:
        """Give fully free cached segments back to the device (keeps ``release_threshold``)."""
        self._pool.empty_cache()

    def set_memory_fraction(self, fraction: float) -> None:
        """Cap reserved memory at ``fraction`` of the device's total (0 clears)."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise TypeError("fraction: expected a float")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction: must be in [0, 1], got {fraction}")
        self._pool.set_memory_fraction(float(fraction))

    def update_config(self, **fields: Any) -> None:
        """Change settings of this pool while it is in use: ``max_split_size``,
        ``round_up_divisions``, ``round_up_interval_divisions`` (setting one turns the other
        off: Note [One rounding setting]), ``garbage_collection_threshold``,
        ``release_threshold``, ``growth``, ``growth_step``, ``reclaim_before_grow``, ``reclaim_threshold``,
        ``expandable_reserve``, ``max_pool_size`` and ``memory_fraction`` (``_core.LIVE_CONFIG_FIELDS``). Each
        applies from the next decision it drives; cached blocks keep their sizes.

        Only the fields given change: the others keep the values the pool has now,
        whoever set them (Note [Config read-modify-write]).

        Values are checked as :class:`PoolConfig` checks them: a value of the wrong type
        raises ``TypeError``, a bad value ``ValueError``, both naming the field. An
        unknown field, or one fixed for the pool's life (the segment geometry,
        ``min_block_size``, ``expandable_segments``, ``initial_pool_size``), raises
        ``ValueError`` naming it. On any error nothing changes. A registry pool
        (``pypool.get_pool``) changes alone; to change every device's pool, and the
        pools made later, use ``torch.cuda.memory._set_allocator_settings``.
        """
        known = {f.name for f in dataclasses.fields(PoolConfig)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(
                f"update_config: unknown field(s) {', '.join(unknown)}; the fields a pool "
                f"takes while in use are {', '.join(sorted(_core.LIVE_CONFIG_FIELDS))}")
        with CONFIG_LOCK:
            new = self.config.replace(**fields)
            self._pool.update_config(new.to_core())
            if "memory_fraction" in fields:
                # The core applies a fraction only when it differs from its config's, which
                # a set_memory_fraction since then does not change: a fraction named here
                # is applied whatever the pool applied before (0 clears, as None).
                self._pool.set_memory_fraction(new.memory_fraction or 0.0)

    # ------------------------------------------------------------------ statistics
    def memory_stats(self) -> Dict[str, int]:
        """Statistics with ``torch.cuda.memory_stats()``'s keys
        (``allocated_bytes.all.current``, ``reserved_bytes.large_pool.peak``, ...)."""
        return self._pool.memory_stats()

    def memory_allocated(self) -> int:
        """Bytes in live allocations (rounded block sizes, as torch reports)."""
        return self.memory_stats()["allocated_bytes.all.current"]

    def memory_reserved(self) -> int:
        """Bytes held from the device (segments), live or cached."""
        return self.memory_stats()["reserved_bytes.all.current"]

    def max_memory_allocated(self) -> int:
        return self.memory_stats()["allocated_bytes.all.peak"]

    def max_memory_reserved(self) -> int:
        return self.memory_stats()["reserved_bytes.all.peak"]

    def memory_requested(self) -> int:
        """Bytes the live allocations asked for (before rounding)."""
        return self.memory_stats()["requested_bytes.all.current"]

    def reset_peak_memory_stats(self) -> None:
        self._pool.reset_peak_memory_stats()

    def reset_accumulated_memory_stats(self) -> None:
        self._pool.reset_accumulated_memory_stats()

    def mem_info(self) -> Tuple[int, int]:
        """(free, total) bytes of the device, as the backend sees it."""
        return self._pool.mem_info()

    # ------------------------------------------------------------------ structure
    def segments(self) -> List[Dict[str, Any]]:
        """Every segment with its blocks (address, size, requested_size, state, stream)."""
        return self._pool.segments()

    def live_blocks(self, min_seq: int = 0) -> List[Dict[str, Any]]:
        """Live allocations with allocation sequence number >= ``min_seq``."""
        return self._pool.live_blocks(_check_int(min_seq, "min_seq", 0, _U64_MAX))

    def fragmentation(self) -> "FragmentationReport":
        """A :class:`~pypool.fragmentation.FragmentationReport` of this pool now."""
        return FragmentationReport.from_pool(self)

    def check_invariants(self) -> None:
        """Walk every structure; raise :class:`InvariantError` on the first violation."""
        self._pool.check_invariants()

    @property
    def backend(self) -> "_core.HostBackend":
        """The host backend (fault injection, capacity, stream events); host pools only."""
        if self._host is None:
            raise AttributeError("backend: only pools with backend='host' expose their backend")
        return self._host

    @property
    def device(self) -> int:
        return self._pool.device

    @property
    def backend_name(self) -> str:
        return self._pool.backend_name

    @property
    def cap(self) -> Optional[int]:
        """Effective cap on reserved bytes (None = unlimited)."""
        c = self._pool.cap
        return None if c == _core.UNLIMITED else c

    def __repr__(self) -> str:
        s = self.memory_stats()
        return (f"Pool(backend={self.backend_name!r}, device={self.device}, "
                f"allocated={s['allocated_bytes.all.current']}, reserved={s['reserved_bytes.all.current']})")
