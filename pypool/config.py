"""Pool configuration: :class:`PoolConfig`, size parsing and ``PYPOOL_CONF``."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Mapping, Optional, Union

from . import _core

__all__ = ["PoolConfig", "parse_size", "format_size", "SizeLike"]

SizeLike = Union[int, str]

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
    "g": 1024**3, "gb": 1000**3, "gib": 1024**3,
    "t": 1024**4, "tb": 1000**4, "tib": 1024**4,
    "p": 1024**5, "pb": 1000**5, "pib": 1024**5,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: SizeLike, name: str = "size") -> int:
    """Parse a byte count: an int, or a string such as ``"512MiB"``, ``"40GB"``, ``"2 GiB"``.

    Binary units (KiB, MiB, GiB, TiB, PiB, and the bare K, M, G, T, P) are powers of
    1024; decimal units (KB, MB, GB, TB, PB) are powers of 1000. Raises ``TypeError`` or
    ``ValueError`` naming ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(f"{name}: expected an int or a size string like '512MiB', got {type(value).__name__}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{name}: must be >= 0, got {value}")
        return value
    m = _SIZE_RE.match(value)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{name}: cannot parse size {value!r} (examples: 4096, '512MiB', '40GB')")
    number = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if number != int(number):
        raise ValueError(f"{name}: {value!r} is not a whole number of bytes")
    return int(number)


def format_size(n: Optional[float]) -> str:
    """Human-readable binary size, e.g. ``format_size(3 * 2**20) == '3.00 MiB'``."""
    if n is None:
        return "unlimited"
    sign = "-" if n < 0 else ""
    v = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{sign}{int(v)} B" if unit == "B" else f"{sign}{v:.2f} {unit}"
        v /= 1024
    raise AssertionError("unreachable")


_GROWTH = ("segment", "exact", "double", "fixed")
_SIZE_FIELDS = (
    "max_pool_size", "min_block_size", "small_size", "small_segment_size", "large_segment_size",
    "min_large_alloc", "round_large", "max_split_size", "expandable_reserve",
    "initial_pool_size", "growth_step", "release_threshold",
)
_OPTIONAL_SIZES = ("max_pool_size", "max_split_size")


@dataclass(frozen=True)
class PoolConfig:
    """Validated settings of a pool. Sizes accept ints or strings (``"40GiB"``).

    Attributes:
        max_pool_size: cap on reserved bytes (``None`` = no cap but the device).
        memory_fraction: cap as a fraction of the device's total memory (``None`` = off);
            with ``max_pool_size`` too, the smaller cap wins.
        min_block_size: every block size is a multiple of this (a power of two, default 512).
        small_size: requests up to this size use the small pool (default 1 MiB).
        small_segment_size: segment size of the small pool (default 2 MiB).
        large_segment_size: segment size for large requests below ``min_large_alloc`` (20 MiB).
        min_large_alloc: larger requests get a segment of their own (default 10 MiB) ...
        round_large: ... rounded up to this (default 2 MiB).
        round_up_divisions: 0 = off; else sizes above ``small_size`` round up to one of this
            many divisions of their power-of-two interval (like PyTorch's
            ``roundup_power2_divisions``).
        max_split_size: blocks this large or larger are never split (``None`` = no limit).
        expandable_segments: segments on virtual memory that grow in place.
        expandable_reserve: virtual address space reserved per expandable segment.
        initial_pool_size: reserved when the pool is made, so early steps never wait for
            the device.
        growth: how much a growing pool reserves: ``"segment"`` (PyTorch's sizes),
            ``"exact"``, ``"double"`` (as much as is reserved so far) or ``"fixed"``
            (at least ``growth_step``).
        growth_step: step for ``growth="fixed"``.
        release_threshold: cached bytes ``empty_cache()`` keeps.
        garbage_collection_threshold: 0 = off; else cached segments are released before
            growing once reserved memory would pass this fraction of the cap.
        reclaim_before_grow: before the large pool grows, give back the same stream's fully
            free cached large segments that cannot serve the request when they cover the
            growth, so reserved memory tracks the live peak as shapes change (default on;
            each reclaim costs a device free, which synchronizes on CUDA).
    """

    max_pool_size: Optional[SizeLike] = None
    memory_fraction: Optional[float] = None
    min_block_size: SizeLike = 512
    small_size: SizeLike = 1 << 20
    small_segment_size: SizeLike = 2 << 20
    large_segment_size: SizeLike = 20 << 20
    min_large_alloc: SizeLike = 10 << 20
    round_large: SizeLike = 2 << 20
    round_up_divisions: int = 0
    max_split_size: Optional[SizeLike] = None
    expandable_segments: bool = False
    expandable_reserve: SizeLike = 1 << 40
    initial_pool_size: SizeLike = 0
    growth: str = "segment"
    growth_step: SizeLike = 0
    release_threshold: SizeLike = 0
    garbage_collection_threshold: float = 0.0
    reclaim_before_grow: bool = True

    def __post_init__(self) -> None:
        for name in _SIZE_FIELDS:
            value = getattr(self, name)
            if value is None and name in _OPTIONAL_SIZES:
                continue
            if isinstance(value, str) and name in _OPTIONAL_SIZES and value.strip().lower() in ("none", "unlimited"):
                object.__setattr__(self, name, None)
                continue
            size = parse_size(value, f"PoolConfig.{name}")
            # Note [Ranges before the binding] (in _pool.py): a value that does not fit
            # the C++ field would fail in pybind11 without naming the field.
            if size > _core.MAX_REQUEST:
                hint = " or None for no limit" if name in _OPTIONAL_SIZES else ""
                raise ValueError(f"PoolConfig.{name}: must be <= 1 PiB ({_core.MAX_REQUEST} bytes, "
                                 f"the largest size pypool handles){hint}; got {size}")
            object.__setattr__(self, name, size)
        if isinstance(self.round_up_divisions, bool) or not isinstance(self.round_up_divisions, int):
            raise TypeError(f"PoolConfig.round_up_divisions: expected an int, got "
                            f"{type(self.round_up_divisions).__name__}")
        if not 0 <= self.round_up_divisions <= 64:
            raise ValueError("PoolConfig.round_up_divisions: must be 0, 1 or a power of two <= 64, "
                             f"got {self.round_up_divisions}")
        for name in ("expandable_segments", "reclaim_before_grow"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"PoolConfig.{name}: expected a bool")
        if self.growth not in _GROWTH:
            raise ValueError(f"PoolConfig.growth: must be one of {_GROWTH}, got {self.growth!r}")
        for name in ("garbage_collection_threshold", "memory_fraction"):
            v = getattr(self, name)
            if v is None and name == "memory_fraction":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise TypeError(f"PoolConfig.{name}: expected a float")
            try:
                object.__setattr__(self, name, float(v))
            except OverflowError:
                raise ValueError(f"PoolConfig.{name}: out of range (an int too large for a "
                                 "float)") from None
        if self.memory_fraction is not None and not (0.0 < self.memory_fraction <= 1.0):
            raise ValueError(f"PoolConfig.memory_fraction: must be in (0, 1], got {self.memory_fraction}")
        self.to_core().validate()  # the C++ rules, raising ValueError("PoolConfig.<field>: ...")

    # ------------------------------------------------------------------ conversions
    def to_core(self) -> "_core.Config":
        """The native config (used by the pools)."""
        c = _core.Config()
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "memory_fraction":
                v = 0.0 if v is None else v
            if f.name in _OPTIONAL_SIZES and v is None:
                v = _core.UNLIMITED
            if f.name == "growth":
                v = getattr(_core.GrowthPolicy, v)
            setattr(c, f.name, v)
        return c

    def replace(self, **changes: Any) -> "PoolConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_string(self) -> str:
        """The non-default fields in ``PYPOOL_CONF`` syntax (round-trips through from_string)."""
        default = PoolConfig()
        parts = []
        for f in fields(self):
            v = getattr(self, f.name)
            if v != getattr(default, f.name):
                if isinstance(v, bool):
                    v = "true" if v else "false"
                elif v is None:
                    v = "none"
                parts.append(f"{f.name}:{v}")
        return ",".join(parts)

    @classmethod
    def from_string(cls, text: str, base: Optional["PoolConfig"] = None) -> "PoolConfig":
        """Parse ``"key:value,key:value"`` (``PYTORCH_CUDA_ALLOC_CONF`` style) over ``base``."""
        if not isinstance(text, str):
            raise TypeError("PoolConfig.from_string: expected a str")
        known = {f.name: f for f in fields(cls)}
        changes: Dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, sep, raw = item.partition(":")
            key, raw = key.strip(), raw.strip()
            if not sep or not raw:
                raise ValueError(f"PYPOOL_CONF: expected key:value, got {item!r}")
            if key not in known:
                raise ValueError(f"PYPOOL_CONF: unknown option {key!r} (known: {', '.join(known)})")
            changes[key] = _parse_value(key, raw)
        return dataclasses.replace(base or cls(), **changes)

    @classmethod
    def from_env(cls, var: str = "PYPOOL_CONF", base: Optional["PoolConfig"] = None) -> "PoolConfig":
        """Read ``$PYPOOL_CONF`` (e.g. ``max_pool_size:40GiB,round_up_divisions:4``).

        A bad value raises ``ValueError`` / ``TypeError`` naming the variable, its value
        and the field (never silently ignored)."""
        text = os.environ.get(var, "")
        try:
            return cls.from_string(text, base)
        except (TypeError, ValueError) as e:
            msg = str(e)
            if msg.startswith("PYPOOL_CONF: "):
                msg = msg[len("PYPOOL_CONF: "):]
            raise type(e)(f"{var}={text!r}: {msg}") from None

    @classmethod
    def coerce(cls, config: Union["PoolConfig", Mapping[str, Any], str, None] = None, **overrides: Any) -> "PoolConfig":
        """A PoolConfig from a PoolConfig, a dict, a ``PYPOOL_CONF``-style string or None."""
        if config is None:
            base = cls()
        elif isinstance(config, PoolConfig):
            base = config
        elif isinstance(config, str):
            base = cls.from_string(config)
        elif isinstance(config, Mapping):
            unknown = set(config) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(f"PoolConfig: unknown option(s) {sorted(unknown)}")
            base = cls(**config)
        else:
            raise TypeError(f"config: expected PoolConfig, dict, str or None, got {type(config).__name__}")
        if overrides:
            unknown = set(overrides) - {f.name for f in fields(cls)}
            if unknown:
                raise TypeError(f"unknown option(s) {sorted(unknown)}")
            base = dataclasses.replace(base, **overrides)
        return base


def _parse_value(key: str, raw: str) -> Any:
    low = raw.lower()
    if key in ("expandable_segments", "reclaim_before_grow"):
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"PYPOOL_CONF: {key} expects true/false, got {raw!r}")
    if key == "round_up_divisions":
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"PYPOOL_CONF: {key} expects an integer, got {raw!r}") from None
    if key in ("garbage_collection_threshold", "memory_fraction"):
        if key == "memory_fraction" and low in ("none", "off"):
            return None
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"PYPOOL_CONF: {key} expects a number, got {raw!r}") from None
    if key == "growth":
        return low
    return raw  # sizes: parsed (with the field name) by __post_init__
