"""PyTorch's allocator settings (``PYTORCH_CUDA_ALLOC_CONF``) translated to pypool's.

PyTorch takes its caching allocator's settings from ``PYTORCH_ALLOC_CONF`` (torch 2.9+;
it wins when both are set) or ``PYTORCH_CUDA_ALLOC_CONF``, and at run time from
``torch.cuda.memory._set_allocator_settings("key:value,...")``. Under pypool those
settings reach no allocator unless pypool reads them: :func:`translate` maps every key
pypool has an equivalent for onto :class:`~pypool.PoolConfig` fields and names every
other key in a :class:`TorchSettingWarning`, so none is dropped silently.

Note [Which settings win]: lowest to highest, PoolConfig's defaults, then
``PYTORCH_CUDA_ALLOC_CONF`` (or ``PYTORCH_ALLOC_CONF``), then ``PYPOOL_CONF``, then what
``install()`` is given. A pypool-specific setting is the more specific one: a program
that sets both variables means pypool's for pypool. When ``install()`` is given a
``config``, neither variable applies (as for ``PYPOOL_CONF`` alone), and a set torch
variable is named in a warning.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .config import PoolConfig, _interval_text, _split_items

__all__ = ["TorchSettingWarning", "translate", "from_env", "env_text", "TORCH_KEYS", "RESET_EACH_CALL", "with_resets"]

MiB = 1 << 20
#: torch's per_process_memory_fraction 0.0 as a PoolConfig.memory_fraction
#: (Note [Fraction zero] in csrc/abi/c_api.cpp); get_per_process_memory_fraction reads it as 0.0.
FRACTION_ZERO = math.ulp(0.0)


class TorchSettingWarning(UserWarning):
    """A PyTorch allocator setting that pypool cannot honour (the message names it)."""


# Keys of torch's allocator configuration (c10 AllocatorConfig / CUDAAllocatorConfig,
# torch 2.8 - 2.14), with what pypool does with each.
TORCH_KEYS: Dict[str, str] = {
    "max_split_size_mb": "PoolConfig.max_split_size (MiB)",
    "roundup_power2_divisions": "PoolConfig.round_up_interval_divisions",
    "garbage_collection_threshold": "PoolConfig.garbage_collection_threshold",
    "expandable_segments": "PoolConfig.expandable_segments",
    "per_process_memory_fraction": "PoolConfig.memory_fraction",
    "backend": "native only (pypool is the allocator)",
    "release_lock_on_cudamalloc": "ignored with a warning (pypool never holds its lock across a device call)",
    "max_non_split_rounding_mb": "ignored with a warning (no pypool equivalent)",
    "graph_capture_record_stream_reuse": "ignored with a warning (CUDA graphs need torch's allocator)",
    # torch 2.14: refuse a request over the memory fraction at once, counted in
    # num_oom_rejections. pypool releases its cache and retries first, as torch does
    # without it, so its num_oom_rejections stays 0.
    "throw_on_cudamalloc_oom": "ignored with a warning (pypool releases its cache and retries before it refuses a request over the cap)",
    # Pinned host memory: torch's CachingHostAllocator keeps honouring these under
    # pypool (pypool replaces only the device allocator), so they are not pypool's.
    "pinned_use_cuda_host_register": "torch's host allocator",
    "pinned_num_register_threads": "torch's host allocator",
    "pinned_use_background_threads": "torch's host allocator",
    "pinned_use_hip_host_register": "torch's host allocator",
    "pinned_reserve_segment_size_mb": "torch's host allocator",
}
_HOST_KEYS = {k for k, v in TORCH_KEYS.items() if v == "torch's host allocator"}

_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def env_text() -> Tuple[str, str]:
    """(name, value) of the torch allocator variable in effect (``("", "")`` if none)."""
    for name in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"):
        value = os.environ.get(name)
        if value:
            return name, value
    return "", ""


def _split(text: str) -> List[Tuple[str, str]]:
    """``"a:1,b:[256:1,>:4]"`` -> ``[("a", "1"), ("b", "[256:1,>:4]")]`` (commas inside
    brackets belong to the value)."""
    out = []
    for item in (p.strip() for p in _split_items(text)):
        if not item:
            continue
        key, sep, value = item.partition(":")
        out.append((key.strip(), value.strip() if sep else ""))
    return out


def _divisions(value: str, source: str) -> str:
    """``roundup_power2_divisions``: ``"4"`` or the bucketed ``"[64:8,128:2,>:1]"``, as
    c10 reads them (the number fills every interval, Note [Interval divisions]), in
    round_up_interval_divisions' form."""
    what = f"{source}: roundup_power2_divisions"
    if not value.strip().startswith("["):
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"{what} expects an integer or [size_mb:divisions,...], got {value!r}") from None
        if n <= 0 or n & (n - 1):
            raise ValueError(f"{what}: For roundups, the divisions has to be power of 2, got {value!r}")
        value = f"[1:{n},>:{n}]"
    text = _interval_text(value, what)
    return text or "[]"


def _max_split(mb: int, value: str, source: str, warn: List[str]) -> int:
    """``max_split_size_mb``: torch accepts 20 (its large-segment size) and up. pypool
    needs more than ``large_segment_size`` (a fresh segment must stay splittable; torch
    splits fresh segments whatever max_split_size is), so 20 becomes the next 2 MiB step,
    which treats every 2 MiB-rounded size the same way, said in a warning."""
    if mb < 20:
        raise ValueError(f"{source}: max_split_size_mb must be >= 20 (PyTorch's minimum), got {value!r}")
    default = PoolConfig()
    large, step = int(default.large_segment_size), int(default.round_large)
    size = mb * MiB
    if size <= large:
        size = large + step
        warn.append(f"max_split_size_mb:{value} is at or below pypool's large_segment_size "
                    f"({large // MiB} MiB), which max_split_size must exceed; "
                    f"using {size // MiB} MiB (cached blocks of 20 MiB stay splittable)")
    return size


def translate(text: str, source: str = "PYTORCH_CUDA_ALLOC_CONF") -> Tuple[Dict[str, Any], List[str]]:
    """Map a torch allocator setting string to PoolConfig fields.

    Returns ``(fields, warnings)``: the PoolConfig fields the keys map to, and one line
    for every key pypool cannot honour (unknown keys included). Raises ``ValueError``
    naming ``source`` and the key for a value that cannot be read.
    """
    fields: Dict[str, Any] = {}
    warn: List[str] = []
    for key, value in _split(text):
        low = value.lower()
        if key == "max_split_size_mb":
            try:
                mb = int(value)
            except ValueError:
                raise ValueError(f"{source}: max_split_size_mb expects an integer number of MiB, got {value!r}") from None
            fields["max_split_size"] = _max_split(mb, value, source, warn)
        elif key == "roundup_power2_divisions":
            fields["round_up_interval_divisions"] = _divisions(value, source)
        elif key == "garbage_collection_threshold":
            try:
                fields["garbage_collection_threshold"] = float(value)
            except ValueError:
                raise ValueError(f"{source}: garbage_collection_threshold expects a number, got {value!r}") from None
        elif key == "expandable_segments":
            if low in _TRUE:
                fields["expandable_segments"] = True
            elif low in _FALSE:
                fields["expandable_segments"] = False
            else:
                raise ValueError(f"{source}: expandable_segments expects True or False, got {value!r}")
        elif key == "per_process_memory_fraction":
            try:
                fraction = float(value)
            except ValueError:
                raise ValueError(f"{source}: per_process_memory_fraction expects a number, got {value!r}") from None
            if not 0.0 <= fraction <= 1.0:
                # torch's own words (c10's CUDAAllocatorConfig), which its tests look for.
                raise ValueError(f"{source}: per_process_memory_fraction is invalid, set it in [0.0, 1.0] "
                                 f"(got {value!r})")
            # 0.0 is torch's "no memory at all"; memory_fraction 0 is pypool's "off", so it
            # becomes the smallest positive fraction, which caps the pool at 0 bytes and reads
            # back as 0.0 (Note [Fraction zero] in csrc/abi/c_api.cpp).
            fields["memory_fraction"] = fraction if fraction > 0.0 else FRACTION_ZERO
        elif key == "backend":
            if low != "native":
                warn.append(f"backend:{value} is not used: pypool is the CUDA allocator in this process")
        elif key in _HOST_KEYS:
            pass  # honoured by torch's pinned host allocator, which pypool does not replace
        elif key in TORCH_KEYS:
            warn.append(f"{key}:{value} is not honoured: {TORCH_KEYS[key].replace('ignored with a warning ', '')}")
        else:
            warn.append(f"{key}:{value} is not a PyTorch allocator setting pypool knows; ignored")
    return fields, warn


def warn_all(lines: List[str], source: str, stacklevel: int = 3) -> None:
    """One TorchSettingWarning per setting pypool cannot honour."""
    for line in lines:
        warnings.warn(f"pypool: {source}: {line}", TorchSettingWarning, stacklevel=stacklevel)


def from_env(base: Optional[PoolConfig] = None) -> PoolConfig:
    """``base`` (default PoolConfig()) with ``PYTORCH_ALLOC_CONF`` or
    ``PYTORCH_CUDA_ALLOC_CONF`` applied; warns for every key it cannot honour."""
    base = base or PoolConfig()
    name, text = env_text()
    if not text:
        return base
    fields, lines = translate(text, name)
    warn_all(lines, name)
    try:
        return base.replace(**fields) if fields else base
    except ValueError as e:
        # Name the variable, as PYPOOL_CONF's errors do: PoolConfig's field names are not
        # the torch keys the user wrote (round_up_divisions for roundup_power2_divisions).
        raise ValueError(f"{name}={text!r}: {e}") from None


# Note [Settings reset by each call]: torch resets max_split_size_mb,
# roundup_power2_divisions and garbage_collection_threshold to their defaults at the
# start of every parse of a settings string (c10's AcceleratorAllocatorConfig::parseArgs),
# so a _set_allocator_settings call that does not name one of them turns it back off
# (torch's test_allocator_settings relies on it). pypool does the same for the fields
# they map to; the other keys keep their values.
RESET_EACH_CALL: Tuple[str, ...] = ("max_split_size", "round_up_divisions", "round_up_interval_divisions",
                                    "garbage_collection_threshold")


def with_resets(fields: Mapping[str, Any]) -> Dict[str, Any]:
    """``fields`` of a run-time settings string, plus the PoolConfig default of every
    field torch resets when its key is not named (Note [Settings reset by each call])."""
    default = PoolConfig()
    out = {k: getattr(default, k) for k in RESET_EACH_CALL}
    out.update(fields)
    return out


def changed_fields(cfg: PoolConfig, fields: Mapping[str, Any]) -> Dict[str, Any]:
    """The entries of ``fields`` whose value differs from ``cfg``'s (after validation)."""
    if not fields:
        return {}
    new = cfg.replace(**fields)
    return {k: getattr(new, k) for k in fields if getattr(new, k) != getattr(cfg, k)}
