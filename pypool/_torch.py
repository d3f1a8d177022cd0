"""PyTorch integration: :func:`install` makes pypool torch's CUDA allocator.

What ``install()`` does, in order:

1. builds the :class:`PoolConfig` (``config`` and keyword overrides; with ``config=None``
   the overrides apply over ``$PYPOOL_CONF``);
2. checks that torch can take a pluggable allocator here: torch is importable, it is a
   CUDA build, CUDA is not initialized yet, and a GPU is visible to torch and to pypool;
3. configures the process-wide registry (the state behind the C ABI) for the CUDA
   backend with that config;
4. loads the C ABI with ``torch.cuda.memory.CUDAPluggableAllocator(library_path(),
   "pypool_malloc", "pypool_free")``, wires the hooks of its
   ``torch._C._CUDAPluggableAllocator`` (init, empty_cache, memory fraction,
   record_stream) to pypool's C functions, and swaps it in with
   ``torch.cuda.memory.change_current_allocator``;
5. with ``patch_torch=True``, puts pypool's statistics (:mod:`pypool.memory`) in place of
   ``torch.cuda.memory_stats`` and friends, which raise under any pluggable allocator
   (pytorch issue 133281).

Every torch entry point is reached through :func:`_import_torch` and every question to
the native CUDA layer through :func:`_native_cuda_devices`, so the tests run all of this
on a CPU machine against fakes of those entry points.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from . import _core, memory
from .config import PoolConfig

__all__ = ["install", "is_installed", "installed_config", "torch_originals", "InstallError", "HOOKS", "PATCHED_NAMES"]

log = logging.getLogger("pypool")

# (setter on torch._C._CUDAPluggableAllocator, pypool C function it receives). Each setter
# takes the function's address as an int; the signatures (torch 2.8 - 2.14,
# torch/csrc/cuda/Module.cpp) are void(int), void(), void(double, int) and
# void(void*, cudaStream_t), which pypool_init, pypool_empty_cache,
# pypool_set_memory_fraction and pypool_record_stream match.
HOOKS: Tuple[Tuple[str, str], ...] = (
    ("set_init_fn", "pypool_init"),
    ("set_reset_fn", "pypool_empty_cache"),
    ("set_memory_fraction_fn", "pypool_set_memory_fraction"),
    ("set_record_stream_fn", "pypool_record_stream"),
)

# Functions replaced in both torch.cuda and torch.cuda.memory by patch_torch=True.
# torch.cuda re-exports them at import time, so patching only torch.cuda.memory would
# leave torch.cuda.memory_stats pointing at torch's raising original.
# memory_summary is included because torch's own reads keys pypool does not keep
# (oversize_allocations, ...). Functions torch defines on top of these (memory_cached,
# reset_max_memory_allocated, ...) look them up in torch.cuda.memory at call time and
# so follow the patch.
PATCHED_NAMES: Tuple[str, ...] = (
    "memory_stats",
    "memory_stats_as_nested_dict",
    "memory_allocated",
    "memory_reserved",
    "max_memory_allocated",
    "max_memory_reserved",
    "reset_peak_memory_stats",
    "reset_accumulated_memory_stats",
    "memory_summary",
)

_SWAP_REFUSED = "Can't swap an already initialized allocator"


class InstallError(RuntimeError):
    """pypool could not be installed as PyTorch's allocator; the message says what to do."""


# ---------------------------------------------------------------------------- seams


def _import_torch() -> Any:
    """``import torch`` (the one place this module imports it; tests substitute a fake)."""
    import torch

    return torch


def _native_cuda_devices() -> Tuple[int, str]:
    """(GPUs pypool's own CUDA backend sees, reason when none)."""
    n, why = _core.cuda_device_count()
    return int(n), str(why)


# ---------------------------------------------------------------------------- state


@dataclass
class _State:
    config: Optional[PoolConfig] = None
    torch: Any = None
    # Kept alive for the life of the process: it owns the ctypes handle of the library
    # whose functions torch now calls.
    allocator: Any = None
    hooks: Dict[str, int] = field(default_factory=dict)  # setter -> address passed
    skipped_hooks: List[str] = field(default_factory=list)
    patched: List[Tuple[Any, str, Any]] = field(default_factory=list)  # (namespace, name, original)


_state = _State()
_lock = threading.RLock()


def is_installed() -> bool:
    """True once :func:`install` has made pypool torch's CUDA allocator in this process."""
    return _state.config is not None


def installed_config() -> Optional[PoolConfig]:
    """The configuration :func:`install` was given (None before install)."""
    return _state.config


def _describe(cfg: PoolConfig) -> str:
    return cfg.to_string() or "the defaults"


# ---------------------------------------------------------------------------- install


def install(
    config: Union[PoolConfig, Mapping[str, Any], str, None] = None,
    *,
    patch_torch: bool = True,
    **overrides: Any,
) -> PoolConfig:
    """Make pypool PyTorch's CUDA memory allocator for this process.

    Call it first thing, before anything touches CUDA::

        import pypool
        pypool.install(max_pool_size="40GiB")

    Args:
        config: a :class:`PoolConfig`, a dict of its fields or a ``PYPOOL_CONF``-style
            string. With ``None`` the settings come from ``$PYPOOL_CONF``.
        patch_torch: replace ``torch.cuda.memory_stats``, ``memory_allocated``,
            ``memory_reserved``, ``max_memory_*``, ``reset_peak_memory_stats``,
            ``reset_accumulated_memory_stats``, ``memory_stats_as_nested_dict`` and
            ``memory_summary`` (in ``torch.cuda`` and ``torch.cuda.memory``) by pypool's,
            since torch's raise under a pluggable allocator.
        **overrides: PoolConfig fields, applied over ``config``.

    Returns the configuration in effect. Calling again with the same configuration does
    nothing; with a different one raises :class:`InstallError` (the allocator is fixed
    for the life of the process).

    ``memory_fraction`` in the configuration caps each device's pool at that share of the
    device's memory from its first allocation (Note [Memory fraction at creation] in the
    C++ core); ``torch.cuda.set_per_process_memory_fraction`` changes it later.

    Raises :class:`InstallError` when torch is missing or has no CUDA, when no GPU is
    visible, when CUDA is already initialized, or when torch refuses the swap.
    """
    if not isinstance(patch_torch, bool):
        raise TypeError(f"patch_torch: expected a bool, got {type(patch_torch).__name__}")
    if config is None:
        cfg = PoolConfig.coerce(PoolConfig.from_env(), **overrides)
    else:
        cfg = PoolConfig.coerce(config, **overrides)
    with _lock:
        if _state.config is not None:
            if cfg != _state.config:
                raise InstallError(
                    f"pypool.install: pypool is already installed with {_describe(_state.config)}; "
                    f"cannot install again with {_describe(cfg)}. The allocator is fixed for the "
                    "life of the process: start a new process to change the configuration."
                )
            if patch_torch and not _state.patched:
                _patch_torch(_state.torch)
            return _state.config

        torch = _load_torch()
        _check_torch(torch)
        _configure_registry(cfg)
        try:
            allocator = _swap_allocator(torch)
        except BaseException:
            _rollback_registry()
            raise
        _state.config = cfg
        _state.torch = torch
        _state.allocator = allocator
        memory._installed_config = cfg
        if patch_torch:
            _patch_torch(torch)
        log.debug("pypool installed as torch's CUDA allocator (%s)", _describe(cfg))
        return cfg


def _load_torch() -> Any:
    try:
        return _import_torch()
    except ImportError as e:
        raise InstallError(
            f"pypool.install: PyTorch is not installed ({e}). Install a CUDA build of PyTorch "
            "(https://pytorch.org/get-started/locally/), or use pypool.Pool(backend='host') "
            "without torch."
        ) from e


def _check_torch(torch: Any) -> None:
    """Refuse, with the fix in the message, every case where the swap cannot work."""
    version = getattr(torch, "__version__", "?")
    if getattr(torch.version, "cuda", None) is None:
        if getattr(torch.version, "hip", None):
            raise InstallError(
                f"pypool.install: this PyTorch ({version}) is a ROCm build; pypool's device "
                "backend is CUDA only. Use a CUDA build of PyTorch on an NVIDIA GPU."
            )
        raise InstallError(
            f"pypool.install: this PyTorch ({version}) is a CPU-only build (torch.version.cuda "
            "is None). Install a CUDA build of PyTorch (https://pytorch.org/get-started/locally/)."
        )
    if torch.cuda.is_initialized():
        raise InstallError(
            "pypool.install: CUDA is already initialized in this process, so PyTorch's "
            "allocator can no longer be replaced: call pypool.install() first thing, before "
            "any CUDA call (torch.cuda.current_device(), .cuda(), .to('cuda'), "
            "torch.cuda.set_device(), creating a tensor on a GPU, ...)."
        )
    n_torch = int(torch.cuda.device_count())
    n_native, why = _native_cuda_devices()
    if n_native == 0 and not _core.cuda_backend_compiled():
        raise InstallError(
            "pypool.install: this pypool was built without its CUDA backend (CMake option "
            "PYPOOL_WITH_CUDA=OFF), so it cannot serve torch's CUDA memory. Reinstall pypool "
            "without that option; `python -m pypool info` shows cuda_backend_compiled."
        )
    if n_torch == 0 or n_native == 0:
        raise InstallError(
            f"pypool.install: no CUDA GPU is usable here (torch.cuda.device_count() = {n_torch}; "
            f"pypool sees {n_native} device(s){': ' + why if why else ''}). Check nvidia-smi, "
            "the NVIDIA driver and CUDA_VISIBLE_DEVICES; on a machine without a GPU use "
            "pypool.Pool(backend='host')."
        )
    if n_torch != n_native:
        log.debug("torch sees %d CUDA device(s), pypool's backend sees %d", n_torch, n_native)


def _configure_registry(cfg: PoolConfig) -> None:
    try:
        _core.registry_configure("cuda", cfg.to_core(), 0)
    except (RuntimeError, ValueError) as e:
        raise InstallError(
            f"pypool.install: pypool's process-wide pools are already in use (backend "
            f"'{_core.registry_backend()}', devices {_core.registry_devices()}): {e}. Call "
            "pypool.install() before anything allocates through pypool's module-level "
            "functions or its C API."
        ) from e


def _rollback_registry() -> None:
    """Undo _configure_registry after a failed swap.

    Only a registry without pools can have been changed (with pools, configure either
    raised or found the same settings), and a registry without pools holds nothing but
    its settings: resetting it returns it to its unconfigured state.
    """
    if not _core.registry_devices():
        try:
            _core.registry_reset()
        except RuntimeError:  # a pool appeared meanwhile: leave it as it is
            pass


def _swap_allocator(torch: Any) -> Any:
    """Register pypool's C ABI with torch, wire its hooks, make it the current allocator."""
    from . import library_path  # here: pypool/__init__ imports this module

    allocator = torch.cuda.memory.CUDAPluggableAllocator(library_path(), "pypool_malloc", "pypool_free")
    raw = allocator.allocator()
    symbols = _core.c_api_symbols()
    hooks: Dict[str, int] = {}
    skipped: List[str] = []
    for setter_name, symbol in HOOKS:
        setter = getattr(raw, setter_name, None)
        if setter is None:
            # An older or newer torch without this hook: pypool works without it, only
            # the matching torch function (empty_cache, record_stream, ...) does nothing.
            log.debug("torch %s has no %s: %s not wired", getattr(torch, "__version__", "?"), setter_name, symbol)
            skipped.append(setter_name)
            continue
        address = int(symbols[symbol])
        setter(address)
        hooks[setter_name] = address
    try:
        torch.cuda.memory.change_current_allocator(allocator)
    except RuntimeError as e:
        if _SWAP_REFUSED in str(e):
            raise InstallError(
                "pypool.install: PyTorch refused to swap its allocator because the current "
                f"one is already initialized ({e}). Something initialized CUDA (or installed "
                "another pluggable allocator) before pypool.install(): call pypool.install() "
                "first thing in the program, before any CUDA call or library that allocates "
                "on the GPU at import time."
            ) from e
        raise InstallError(f"pypool.install: torch.cuda.memory.change_current_allocator failed: {e}") from e
    _state.hooks = hooks
    _state.skipped_hooks = skipped
    return allocator


# ---------------------------------------------------------------------------- torch stats


def _patch_torch(torch: Any) -> None:
    """Put pypool.memory's functions in place of torch's (originals kept in _state)."""
    for namespace in (torch.cuda, torch.cuda.memory):
        for name in PATCHED_NAMES:
            if not hasattr(namespace, name):
                continue
            _state.patched.append((namespace, name, getattr(namespace, name)))
            setattr(namespace, name, getattr(memory, name))


def _unpatch_torch() -> None:
    """Give torch its own functions back (tests; torch's raise under pypool)."""
    while _state.patched:
        namespace, name, original = _state.patched.pop()
        setattr(namespace, name, original)


def torch_originals() -> Dict[str, Any]:
    """torch's own functions replaced by ``patch_torch``, as ``{"torch.cuda.memory_stats":
    fn, ...}`` (under a pluggable allocator they raise; kept for comparison and tests)."""
    return {f"{getattr(ns, '__name__', '?')}.{name}": fn for ns, name, fn in _state.patched}


def _reset_for_tests() -> None:
    """Forget an install (tests with fake torch only: the real swap cannot be undone)."""
    with _lock:
        _unpatch_torch()
        _state.config = None
        _state.torch = None
        _state.allocator = None
        _state.hooks = {}
        _state.skipped_hooks = []
        memory._installed_config = None
