"""Pool configuration: :class:`PoolConfig`, size parsing and ``PYPOOL_CONF``."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

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


# Note [PoolConfig from the table]: the fields are declared once, in C++
# (Note [Config X-macro] in csrc/include/pypool/config.h), and `_core.CONFIG_FIELDS` lists
# them as (name, kind, native default, doc). PoolConfig itself stays a dataclass written out
# field by field, so that mypy and editors know each attribute's type (a class built from
# the table at run time would be `Any` to them). Everything else derives from the table:
# which fields are sizes, optional or floats, the conversions to and from the native
# config (to_core / from_core), the PYPOOL_CONF parser (_parse_value) and the snapshot's
# allocator_settings. _check_against_table() refuses, at import, a PoolConfig whose field
# names or order differ from the table; tests/core/test_config_table.py checks the defaults.
_TABLE = {name: kind for name, kind, _default, _doc in _core.CONFIG_FIELDS}


def _of_kind(*kinds: str) -> Tuple[str, ...]:
    return tuple(name for name, kind in _TABLE.items() if kind in kinds)


_GROWTH = tuple(_core.GrowthPolicy.__members__)
_SIZE_FIELDS = _of_kind("size", "optional_size")
_OPTIONAL_SIZES = _of_kind("optional_size")
_BOOL_FIELDS = _of_kind("bool")
_INT_FIELDS = _of_kind("int")
# Floats in the order __post_init__ has always checked them.
_FLOAT_FIELDS = _of_kind("fraction") + _of_kind("optional_fraction")
_OPTIONAL_FLOATS = _of_kind("optional_fraction")
_INTERVAL_FIELDS = _of_kind("interval_divisions")

# Note [Interval divisions] in csrc/include/pypool/size_policy.h: 16 power-of-two size
# intervals from 1 MiB, log2 of each one's divisions packed 4 bits apiece.
ROUND_INTERVALS = 16
MAX_INTERVAL_DIVISIONS = 1 << 15

IntervalDivisionsLike = Union[None, str, Mapping[Union[int, str], int]]


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _bracket_items(text: str, name: str) -> List[Tuple[str, str]]:
    body = text.strip()
    if not (body.startswith("[") and body.endswith("]")) or "[" in body[1:-1] or "]" in body[1:-1]:
        raise ValueError(f"{name}: expected [size_mb:divisions,...,>:divisions] (torch's "
                         f"roundup_power2_divisions list), got {text!r}")
    parts = [p.strip() for p in body[1:-1].split(",")]
    if parts and parts[-1] == "" and len(parts) > 1:
        parts.pop()  # c10 reads a trailing comma
    if parts == [""]:
        return []
    items = []
    for part in parts:
        key, sep, value = part.partition(":")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{name}: expected size_mb:divisions, got {part!r} in {text!r}")
        items.append((key.strip(), value.strip()))
    return items


def interval_divisions(value: IntervalDivisionsLike, name: str = "round_up_interval_divisions") -> List[int]:
    """The divisions of each of the 16 intervals (Note [Interval divisions]) that
    ``value`` asks for: torch's ``"[64:8,128:2,>:1]"`` or a mapping of the same pairs
    (``{64: 8, 128: 2, ">": 1}``), read as c10's parseRoundUpPower2Divisions reads them.
    Every interval starts at 0 (off). A key k (MiB, a power of two) is interval
    log2(k) (clamped to the last); the first key also sets every interval below it;
    ``">"`` sets every interval after the last key read. None or "[]" is all off.
    Raises ValueError naming ``name``."""
    if value is None:
        return [0] * ROUND_INTERVALS
    if isinstance(value, str):
        if value.strip().lower() in ("", "none", "off"):
            return [0] * ROUND_INTERVALS
        items: List[Tuple[Any, Any]] = list(_bracket_items(value, name))
    elif isinstance(value, Mapping):
        items = list(value.items())
    else:
        raise TypeError(f"{name}: expected torch's [size_mb:divisions,...] string or a mapping "
                        f"{{size_mb: divisions}}, got {type(value).__name__}")
    out = [0] * ROUND_INTERVALS
    first, last = True, 0
    for key, raw in items:
        div = _whole(raw, f"{name}: divisions for {key!r}")
        if div != 0 and not _power_of_two(div):
            raise ValueError(f"{name}: divisions must be 0 (off) or a power of two (torch: 'For roundups, "
                             f"the divisions has to be power of 2 or 0 to disable roundup'), got {div} for {key!r}")
        if div > MAX_INTERVAL_DIVISIONS:
            raise ValueError(f"{name}: divisions must be <= {MAX_INTERVAL_DIVISIONS} (pypool keeps 4 bits "
                             f"of log2 per interval), got {div} for {key!r}")
        if key == ">":
            out[last + 1:] = [div] * (ROUND_INTERVALS - last - 1)
            continue
        mb = _whole(key, f"{name}: interval key")
        if not _power_of_two(mb):
            raise ValueError(f"{name}: interval keys are sizes in MiB that must be powers of two (torch: "
                             f"'For roundups, the intervals have to be power of 2'), got {key!r}")
        index = min(mb.bit_length() - 1, ROUND_INTERVALS - 1)
        if first:
            out[:index] = [div] * index
            first = False
        out[index] = div
        last = index
    return out


def _whole(raw: Any, what: str) -> int:
    if isinstance(raw, bool):
        raise TypeError(f"{what}: expected an int, got bool")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().isascii() and raw.strip().isdigit():
        return int(raw)
    raise ValueError(f"{what}: expected a whole number, got {raw!r}")


def _interval_word(divisions: List[int]) -> int:
    """Pack per-interval divisions (powers of two or 0) as the native field holds them."""
    word = 0
    for i, d in enumerate(divisions):
        if d > 1:
            word |= (d.bit_length() - 1) << (4 * i)
    return word


def _interval_text(value: IntervalDivisionsLike, name: str) -> Optional[str]:
    """A round_up_interval_divisions value in its canonical form: torch's bracket text,
    shortest first (None when every interval is off)."""
    word = _interval_word(interval_divisions(value, name))
    return None if word == 0 else str(_core.interval_divisions_text(word))


def _split_items(text: str) -> List[str]:
    """``"a:1,b:[64:8,>:1]"`` -> ``["a:1", "b:[64:8,>:1]"]``: commas inside brackets
    belong to the value."""
    items: List[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return items


# Note [One rounding setting]: round_up_divisions and round_up_interval_divisions both
# decide how a request rounds, and a config sets at most one (Config::validate). A change
# that sets one of them (replace, PYPOOL_CONF over a base, install()'s arguments,
# update_config) turns the other off unless it names the other too: the setting given
# last is the one meant, as with any other field.
_ROUNDING_PAIR = ("round_up_divisions", "round_up_interval_divisions")


def _with_rounding_pair(changes: Dict[str, Any]) -> Dict[str, Any]:
    named = [k for k in _ROUNDING_PAIR if k in changes]
    if len(named) == 1 and changes[named[0]]:
        other = _ROUNDING_PAIR[1 - _ROUNDING_PAIR.index(named[0])]
        changes = dict(changes)
        changes[other] = 0 if other == "round_up_divisions" else None
    return changes


def _to_native(kind: str, value: Any) -> Any:
    """A PoolConfig value as the native field takes it (None = UNLIMITED / 0.0 = off)."""
    if kind == "optional_size" and value is None:
        return _core.UNLIMITED
    if kind == "optional_fraction" and value is None:
        return 0.0
    if kind == "growth":
        return getattr(_core.GrowthPolicy, value)
    if kind == "interval_divisions":
        return _interval_word(interval_divisions(value))
    return value


def _from_native(kind: str, value: Any) -> Any:
    """The inverse of _to_native."""
    if kind == "optional_size" and value == _core.UNLIMITED:
        return None
    if kind == "optional_fraction" and value == 0:
        return None
    if kind == "growth":
        return value.name
    if kind == "interval_divisions":
        return None if value == 0 else str(_core.interval_divisions_text(value))
    return value


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
            ``roundup_power2_divisions:N``, but only above ``small_size``).
        round_up_interval_divisions: divisions per power-of-two size interval, exactly as
            PyTorch's ``roundup_power2_divisions``: torch's ``"[64:8,128:2,>:1]"`` (keys in
            MiB, powers of two; divisions 0 = off or a power of two <= 32768) or a mapping
            ``{64: 8, 128: 2, ">": 1}``; kept in the shortest bracket form that reads back
            the same (``None`` = off). At most one of the two rounding fields is set
            (Note [One rounding setting]).
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
        reclaim_threshold: reclaim only once reserved memory plus the growth would pass
            this fraction of the pool's room, min(cap, reserved + the device's free
            memory): none on a roomy device, early enough under a cap (default 0.8;
            0 = before every growth).
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
    round_up_interval_divisions: IntervalDivisionsLike = None
    max_split_size: Optional[SizeLike] = None
    expandable_segments: bool = False
    expandable_reserve: SizeLike = 1 << 40
    initial_pool_size: SizeLike = 0
    growth: str = "segment"
    growth_step: SizeLike = 0
    release_threshold: SizeLike = 0
    garbage_collection_threshold: float = 0.0
    reclaim_before_grow: bool = True
    reclaim_threshold: float = 0.8

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
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"PoolConfig.{name}: expected an int, got {type(v).__name__}")
        if not 0 <= self.round_up_divisions <= 64:
            raise ValueError("PoolConfig.round_up_divisions: must be 0, 1 or a power of two <= 64, "
                             f"got {self.round_up_divisions}")
        for name in _INTERVAL_FIELDS:
            object.__setattr__(self, name, _interval_text(getattr(self, name), f"PoolConfig.{name}"))
        for name in _BOOL_FIELDS:
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"PoolConfig.{name}: expected a bool")
        if self.growth not in _GROWTH:
            raise ValueError(f"PoolConfig.growth: must be one of {_GROWTH}, got {self.growth!r}")
        for name in _FLOAT_FIELDS:
            v = getattr(self, name)
            if v is None and name in _OPTIONAL_FLOATS:
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
        for name, kind in _TABLE.items():
            setattr(c, name, _to_native(kind, getattr(self, name)))
        return c

    @classmethod
    def from_core(cls, core: "_core.Config") -> "PoolConfig":
        """A native config (``Pool``'s ``_pool.config``, the registry's) as a PoolConfig."""
        return cls(**{name: _from_native(kind, getattr(core, name)) for name, kind in _TABLE.items()})

    def replace(self, **changes: Any) -> "PoolConfig":
        """A copy with some fields changed (validated). Setting one of the two rounding
        fields turns the other off (Note [One rounding setting])."""
        return dataclasses.replace(self, **_with_rounding_pair(changes))

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
        for item in filter(None, (p.strip() for p in _split_items(text))):
            key, sep, raw = item.partition(":")
            key, raw = key.strip(), raw.strip()
            if not sep or not raw:
                raise ValueError(f"PYPOOL_CONF: expected key:value, got {item!r}")
            if key not in known:
                raise ValueError(f"PYPOOL_CONF: unknown option {key!r} (known: {', '.join(known)})")
            changes[key] = _parse_value(key, raw)
        return (base or cls()).replace(**changes)

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
            base = base.replace(**overrides)
        return base


def _parse_value(key: str, raw: str) -> Any:
    kind = _TABLE[key]
    low = raw.lower()
    if kind == "bool":
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise ValueError(f"PYPOOL_CONF: {key} expects true/false, got {raw!r}")
    if kind == "int":
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"PYPOOL_CONF: {key} expects an integer, got {raw!r}") from None
    if kind in ("fraction", "optional_fraction"):
        if kind == "optional_fraction" and low in ("none", "off"):
            return None
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"PYPOOL_CONF: {key} expects a number, got {raw!r}") from None
    if kind == "growth":
        return low
    if kind == "interval_divisions":
        return None if low in ("none", "off") else raw  # read by __post_init__
    return raw  # sizes: parsed (with the field name) by __post_init__


def _check_against_table() -> None:
    names = tuple(f.name for f in fields(PoolConfig))
    if names != tuple(_TABLE):
        raise ImportError(
            "pypool: PoolConfig's fields differ from the native config table "
            f"(Note [PoolConfig from the table]): PoolConfig has {names}, _core.CONFIG_FIELDS "
            f"has {tuple(_TABLE)}; the C++ module and the Python package are out of step")


_check_against_table()
