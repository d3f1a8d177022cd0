"""PyTorch integration: :func:`install` makes pypool torch's CUDA allocator.

What ``install()`` does, in order:

1. builds the :class:`PoolConfig` (``config`` and keyword overrides; with ``config=None``
   the overrides apply over ``$PYPOOL_CONF``);
2. checks that torch can take a pluggable allocator here: torch is importable, it is a
   CUDA build, CUDA is not initialized yet, and a GPU is visible to torch and to pypool;
3. configures the process-wide registry (the state behind the C ABI) for the CUDA
   backend with that config;
4. loads the C ABI with ``torch.cuda.memory.CUDAPluggableAllocator(library_path(),
   "pypool_torch_malloc", "pypool_torch_free")`` (pypool_malloc / pypool_free with torch's
   modes, Note [Torch entry points] in csrc/abi/c_api.cpp), wires the hooks of its
   ``torch._C._CUDAPluggableAllocator`` (init, empty_cache, memory fraction,
   record_stream) to pypool's C functions, and swaps it in with
   ``torch.cuda.memory.change_current_allocator``;
5. makes pypool_malloc throw torch's own ``c10::OutOfMemoryError`` (so Python sees
   ``torch.OutOfMemoryError``) when the loaded torch exports what that needs
   (Note [torch OutOfMemoryError] in csrc/abi/torch_oom.cpp), and report allocations to
   ``torch.profiler`` (Note [torch profiler bridge] in csrc/abi/torch_profiler.cpp);
   ``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` makes every allocation uncached, as in torch;
6. with ``patch_torch=True``, puts pypool's equivalents in place of torch's memory API
   (:data:`PATCHES`: ``torch.cuda.memory_stats`` and friends, their ``torch.accelerator``
   twins, ``get_per_process_memory_fraction``, memory history and snapshots,
   ``_set_allocator_settings``), which raise or answer wrongly under any pluggable
   allocator (pytorch issue 133281).

Settings: with ``config=None``, ``PYTORCH_CUDA_ALLOC_CONF`` (or ``PYTORCH_ALLOC_CONF``)
is translated first and ``PYPOOL_CONF`` applied over it (Note [Which settings win] in
:mod:`pypool._torch_conf`).

Every torch entry point is reached through :func:`_import_torch` and every question to
the native CUDA layer through :func:`_native_cuda_devices`, so the tests run all of this
on a CPU machine against fakes of those entry points.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pickle
import sys
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Tuple, Union

from . import _context, _core, _pool, _registry, _torch_conf, memory
from . import snapshot as _snapshot_mod
from .config import PoolConfig

__all__ = [
    "install", "is_installed", "installed_config", "torch_originals", "torch_oom_enabled",
    "torch_profiler_enabled",
    "InstallError", "HOOKS", "PATCHES", "PATCHED_NAMES",
]

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

# Note [Patch table]: every torch entry point that patch_torch=True replaces, as
# (namespace under torch, attribute, replacement's name). Replacements named "memory.x"
# are pypool.memory's public functions; the others are the torch-signature functions
# at the end of this module. torch.cuda re-exports the torch.cuda.memory functions at
# import time, so both namespaces are patched, and so are torch.accelerator's
# (torch.accelerator.memory's functions call each other through their module, which is
# patched too). memory_summary is pypool's own (its cap, fragmentation and free blocks).
# Functions torch defines on top of these
# (memory_cached, reset_max_memory_allocated, torch.accelerator.memory._snapshot, ...)
# look them up at call time and so follow the patch. An attribute a torch version lacks
# is skipped.
_STATS = (
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
# torch.accelerator has these (2.9+). Its empty_cache does not reach a pluggable
# allocator's reset hook (torch 2.14.1: reserved memory stays), so it is patched too;
# get_memory_info asks the device and works unpatched.
_ACCELERATOR_STATS = (
    "empty_cache",
    "memory_stats",
    "memory_allocated",
    "memory_reserved",
    "max_memory_allocated",
    "max_memory_reserved",
    "reset_peak_memory_stats",
    "reset_accumulated_memory_stats",
)
PATCHES: Tuple[Tuple[str, str, str], ...] = (
    *((ns, name, "memory." + name) for ns in ("cuda", "cuda.memory") for name in _STATS),
    *((ns, name, "memory." + name) for ns in ("accelerator", "accelerator.memory") for name in _ACCELERATOR_STATS),
    ("cuda", "get_per_process_memory_fraction", "memory.get_per_process_memory_fraction"),
    ("cuda.memory", "get_per_process_memory_fraction", "memory.get_per_process_memory_fraction"),
    ("cuda", "memory_snapshot", "memory_snapshot"),
    ("cuda.memory", "memory_snapshot", "memory_snapshot"),
    ("cuda.memory", "_record_memory_history", "_record_memory_history"),
    ("cuda.memory", "_snapshot", "_snapshot"),
    ("cuda.memory", "_dump_snapshot", "_dump_snapshot"),
    ("cuda.memory", "_allocation_traceback", "_allocation_traceback"),
    ("_C", "_cuda_allocationTraceback", "_allocation_traceback"),
    # torch.cuda.memory._set_allocator_settings calls these at call time (2.9+: the
    # first; 2.8: the second), so patching them covers every spelling.
    ("_C", "_accelerator_setAllocatorSettings", "_accelerator_setAllocatorSettings"),
    ("_C", "_cuda_cudaCachingAllocator_set_allocator_settings", "_cuda_cudaCachingAllocator_set_allocator_settings"),
    # torch.cuda.memory._set_memory_metadata / _get_memory_metadata /
    # _memory_metadata_supported call these at call time (Note [Trace metadata]).
    ("_C", "_cuda_setMemoryMetadata", "_cuda_setMemoryMetadata"),
    ("_C", "_cuda_getMemoryMetadata", "_cuda_getMemoryMetadata"),
    ("_C", "_cuda_memoryMetadataSupported", "_cuda_memoryMetadataSupported"),
    # torch.autograd.profiler's profile starts and stops the profiler through these module
    # globals, looked up at call time (Note [Profiler gate]).
    ("autograd.profiler", "_enable_profiler", "_enable_profiler"),
    ("autograd.profiler", "_disable_profiler", "_disable_profiler"),
    # Note [Unsupported under a pluggable allocator]: torch._C functions that reach a
    # CUDAPluggableAllocator method which throws "does not yet support" (or, for
    # enable / is_enabled, does nothing), called at call time by torch.cuda.memory and
    # by code (torch's tests among it) that calls torch._C directly.
    ("_C", "_cuda_memoryStats", "_cuda_memoryStats"),
    ("_C", "_cuda_resetAccumulatedMemoryStats", "_cuda_resetAccumulatedMemoryStats"),
    ("_C", "_cuda_resetPeakMemoryStats", "_cuda_resetPeakMemoryStats"),
    ("_C", "_cuda_getMemoryFraction", "_cuda_getMemoryFraction"),
    ("_C", "_cuda_memorySnapshot", "_cuda_memorySnapshot"),
    ("_C", "_cuda_record_memory_history", "_cuda_record_memory_history"),
    ("_C", "_cuda_isHistoryEnabled", "_cuda_isHistoryEnabled"),
    ("_C", "_cuda_cudaCachingAllocator_enable", "_cuda_cudaCachingAllocator_enable"),
    ("_C", "_cuda_cudaCachingAllocator_is_enabled", "_cuda_cudaCachingAllocator_is_enabled"),
    ("_C", "_cuda_attach_out_of_memory_observer", "_cuda_attach_out_of_memory_observer"),
)
# The names patched in torch.cuda (kept for code that imported it).
PATCHED_NAMES: Tuple[str, ...] = tuple(name for ns, name, _ in PATCHES if ns == "cuda")

_SWAP_REFUSED = "Can't swap an already initialized allocator"


class InstallError(RuntimeError):
    """pypool could not be installed as PyTorch's allocator; the message says what to do."""


# ---------------------------------------------------------------------------- seams


def _import_torch() -> Any:
    """``import torch`` (the one place this module imports it; tests substitute a fake)."""
    import torch

    return torch


def _library_path() -> str:
    """The shared library holding the C ABI (what :func:`pypool.library_path` returns)."""
    return str(_core.__file__)


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
    # pypool_use_torch_oom's answer: 1 when pypool_malloc throws c10::OutOfMemoryError.
    torch_oom: int = 0
    # pypool_use_torch_profiler's answer: 1 when allocations are reported to torch.profiler.
    torch_profiler: int = 0
    # PYPOOL_TORCH_PROFILER=always: the profiler gate stays open (Note [Profiler gate]).
    profiler_always: bool = False
    # ctypes callbacks of _cuda_attach_out_of_memory_observer, kept alive while the C ABI
    # may call them.
    oom_observers: List[Any] = field(default_factory=list)
    # _record_memory_history's skip_actions and whether trace entries keep their
    # frames (torch's context "alloc" / "all"; "state" keeps them on live blocks only).
    skip_actions: Tuple[str, ...] = ()
    trace_frames: bool = True
    # Whether _record_memory_history last started recording (torch._C._cuda_isHistoryEnabled).
    history_enabled: bool = False


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
        # Note [Which settings win] (pypool._torch_conf): torch's variable, then PYPOOL_CONF.
        cfg = PoolConfig.coerce(PoolConfig.from_env(base=_torch_conf.from_env()), **overrides)
    else:
        cfg = PoolConfig.coerce(config, **overrides)
        name, text = _torch_conf.env_text()
        if text:
            warnings.warn(
                f"pypool: {name}={text!r} is not applied: install() was given a config, which "
                "replaces both it and PYPOOL_CONF (call install() without config to use them)",
                _torch_conf.TorchSettingWarning,
                stacklevel=2,
            )
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
        _state.torch_oom = _use_torch_oom(torch)
        _state.torch_profiler = _use_torch_profiler(torch)
        _apply_no_caching_env()
        _registry.set_installed_config(cfg)
        if patch_torch:
            _patch_torch(torch)
        elif _state.torch_profiler == 1:
            _patch_torch(torch, only=_GATE_PATCHES)
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

    allocator = torch.cuda.memory.CUDAPluggableAllocator(_library_path(), "pypool_torch_malloc", "pypool_torch_free")
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


def _libc10_path(torch: Any) -> Optional[str]:
    """Path of the libc10 shared library of this torch, or None (a fake or odd torch)."""
    where = getattr(torch, "__file__", None)
    if not isinstance(where, str):
        return None
    path = os.path.join(os.path.dirname(where), "lib", "libc10.so")
    return path if os.path.exists(path) else None


def _use_torch_oom(torch: Any) -> int:
    """Ask the C ABI to throw c10::OutOfMemoryError (Note [torch OutOfMemoryError]).

    Returns pypool_use_torch_oom's code: 1 enabled; 0 or negative not (pypool then
    raises a RuntimeError with the same message). ``PYPOOL_TORCH_OOM=0`` opts out.
    """
    if os.environ.get("PYPOOL_TORCH_OOM", "1").strip().lower() in ("0", "false", "no", "off"):
        return 0
    code = _bridge_to_libc10(torch, "pypool_use_torch_oom")
    if code != 1:
        log.debug("pypool: torch.OutOfMemoryError not available (code %d): OOM is a RuntimeError", code)
    return code


def _cdll() -> Any:
    """The C ABI through ctypes (the library torch loaded)."""
    return ctypes.CDLL(_library_path())


def _bridge_to_libc10(torch: Any, entry: str) -> int:
    """Call the C ABI's ``entry(libc10_path)`` (the OOM and profiler bridges): its code,
    -1 when this torch has no libc10, -5 when the library lacks the entry point."""
    path = _libc10_path(torch)
    if path is None:
        return -1
    try:
        fn = getattr(_cdll(), entry)
    except (OSError, AttributeError):  # a library without the entry point
        return -5
    fn.argtypes = [ctypes.c_char_p]
    fn.restype = ctypes.c_int
    return int(fn(os.fsencode(path)))


def _use_torch_profiler(torch: Any) -> int:
    """Report allocations to torch.profiler (Note [torch profiler bridge]).

    Returns pypool_use_torch_profiler's code: 1 on; 0 or negative not (then
    ``profile_memory=True`` sees no CUDA allocations). ``PYPOOL_TORCH_PROFILER=0`` opts out;
    ``PYPOOL_TORCH_PROFILER=always`` asks torch on every allocation, for profilers started
    from C++ (Note [Profiler gate]).
    """
    setting = os.environ.get("PYPOOL_TORCH_PROFILER", "1").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return 0
    code = _bridge_to_libc10(torch, "pypool_use_torch_profiler")
    if code != 1:
        log.debug("pypool: torch.profiler memory events not available (code %d)", code)
        return code
    # pypool_use_torch_profiler left the gate open; close it unless a profiler runs.
    _state.profiler_always = setting == "always"
    with _profilers_lock:
        _cdll().pypool_torch_profiler_gate(1 if (_profilers_running > 0 or _state.profiler_always) else 0)
    return code


def torch_profiler_enabled() -> bool:
    """True when pypool reports its allocations to ``torch.profiler`` (profile_memory)
    while a profiler runs (Note [Profiler gate])."""
    return _state.torch_profiler == 1


# Note [Profiler gate]: whether torch's profiler wants memory events is a thread-local
# question to libc10 (c10::memoryProfilingEnabled, ~60 instructions a call), and asking it
# on every allocation and free made a torch malloc+free pair ~27% dearer while no profiler
# runs, which is nearly always. So pypool asks only while a profiler started through
# torch.autograd.profiler (what torch.profiler.profile uses) is running: install() patches
# that module's _enable_profiler / _disable_profiler, and a count of running profilers
# turns the torch entry points' profiler bit on and off. ProfilerConfig does not show
# whether profile_memory is set, so any profiler opens the gate; libc10 still decides per
# call. A profiler started from C++ (or on demand, outside Python) is not seen:
# PYPOOL_TORCH_PROFILER=always keeps the gate open for those, at the cost above.
_profilers_lock = threading.Lock()
_profilers_running = 0


def _set_profiler_gate(on: bool) -> None:
    """Open or close the gate (with _profilers_lock held)."""
    if _state.torch_profiler == 1:
        _cdll().pypool_torch_profiler_gate(1 if (on or _state.profiler_always) else 0)


def _count_profiler(delta: int) -> None:
    global _profilers_running
    with _profilers_lock:
        _profilers_running = max(0, _profilers_running + delta)
        _set_profiler_gate(_profilers_running > 0)


def _forget_profilers() -> None:
    global _profilers_running
    with _profilers_lock:
        _profilers_running = 0


def _enable_profiler(*args: Any, **kwargs: Any) -> Any:
    """``torch.autograd.profiler._enable_profiler`` that opens pypool's profiler gate first
    (Note [Profiler gate])."""
    _count_profiler(+1)
    try:
        return _state.torch.autograd._enable_profiler(*args, **kwargs)
    except BaseException:
        _count_profiler(-1)
        raise


def _disable_profiler(*args: Any, **kwargs: Any) -> Any:
    """``torch.autograd.profiler._disable_profiler`` that closes pypool's profiler gate
    when the last running profiler stops (Note [Profiler gate])."""
    try:
        return _state.torch.autograd._disable_profiler(*args, **kwargs)
    finally:
        _count_profiler(-1)


def _apply_no_caching_env() -> None:
    """``PYTORCH_NO_CUDA_MEMORY_CACHING=1``: every allocation torch makes is uncached, as
    torch's own allocator does (it reads the variable once; c10::utils::check_env, which
    takes "1" as on)."""
    if os.environ.get("PYTORCH_NO_CUDA_MEMORY_CACHING", "").strip() == "1":
        _cdll().pypool_force_uncached(1)


def torch_oom_enabled() -> bool:
    """True when an out-of-memory under pypool raises ``torch.OutOfMemoryError`` (else a
    ``RuntimeError`` with the same message)."""
    if _state.torch_oom != 1:
        return False
    # The C side turns it off by itself on a c10::OutOfMemoryError larger than assumed.
    return bool(ctypes.CDLL(_library_path()).pypool_torch_oom_active())


# ---------------------------------------------------------------------------- torch stats


def _namespace(torch: Any, path: str) -> Any:
    node = torch
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


def _replacement(name: str) -> Callable[..., Any]:
    if name.startswith("memory."):
        return getattr(memory, name[len("memory."):])  # type: ignore[no-any-return]
    return globals()[name]  # type: ignore[no-any-return]


# The profiler gate's patches: applied even with patch_torch=False, since they replace no
# answer of torch's and without them the gate never opens (Note [Profiler gate]).
_GATE_PATCHES = frozenset({"_enable_profiler", "_disable_profiler"})


def _patch_torch(torch: Any, only: Optional[FrozenSet[str]] = None) -> None:
    """Put pypool's functions in place of torch's (PATCHES, or those of them named in
    ``only``; originals kept in _state)."""
    for path, name, replacement in PATCHES:
        if only is not None and name not in only:
            continue
        namespace = _namespace(torch, path)
        if namespace is None or not hasattr(namespace, name):
            continue
        _state.patched.append((namespace, name, getattr(namespace, name)))
        setattr(namespace, name, _replacement(replacement))


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
        _state.torch_oom = 0
        _state.torch_profiler = 0
        _state.profiler_always = False
        _forget_profilers()
        if _state.oom_observers:
            _cdll().pypool_clear_oom_observers()
            _state.oom_observers = []
        _cdll().pypool_set_caching_enabled(1)
        _cdll().pypool_force_uncached(0)
        _registry.set_installed_config(None)


# ---------------------------------------------------------------------------- torch's names
# The functions below take torch's arguments (torch 2.8 - 2.14) and answer with pypool's
# history, snapshots and settings in torch's schema, so torch.cuda._memory_viz and other
# readers of torch's snapshots work unchanged.

# pypool's history is a ring allocated when recording starts; torch's default of
# sys.maxsize entries ("keep everything") is taken as this many.
MAX_HISTORY_ENTRIES = 1_000_000


def _torch_original(path: str, name: str) -> Optional[Callable[..., Any]]:
    for ns, n, fn in _state.patched:
        if n == name and getattr(ns, "__name__", "") == "torch." + path:
            return fn  # type: ignore[no-any-return]
    return None


def _record_memory_history(enabled: Any = "all", *args: Any, **kwargs: Any) -> None:
    """``torch.cuda.memory._record_memory_history`` backed by :func:`pypool.record_history`.

    Takes torch's arguments: ``enabled`` (``"all"``, ``"state"``, ``None``; or a bool in
    the legacy form), ``context``, ``stacks`` (``"python"``: Python and TorchScript
    frames, ``"all"``: C++ frames too; recorded with torch's own CapturedTraceback, as
    torch does, Note [Torch tracebacks] in csrc/bindings/stack_capture.cpp),
    ``max_entries`` (at most
    MAX_HISTORY_ENTRIES), ``device``, ``clear_history``. Recording starts on the given
    device (default: the current one) and on every device that already has a pool.
    Arguments pypool has no equivalent for are named in a warning when set.
    """
    if isinstance(enabled, bool):  # torch's legacy signature
        legacy_names = ("record_context", "trace_alloc_max_entries", "trace_alloc_record_context", "device",
                        "record_context_cpp", "clear_history", "compile_context", "global_record_annotations")
        legacy = dict(zip(legacy_names, args))
        legacy.update(kwargs)
        entries = int(legacy.get("trace_alloc_max_entries", 1))
        mode: Optional[str] = None if not enabled else "all"
        _history(mode, "all" if legacy.get("record_context", True) else None,
                 "all" if legacy.get("record_context_cpp", False) else "python",
                 max(entries, 1), legacy.get("device"), bool(legacy.get("clear_history", False)), {})
        return
    names = ("context", "stacks", "max_entries", "device", "clear_history")
    opts = dict(zip(names, args))
    opts.update(kwargs)
    extra = {k: v for k, v in opts.items() if k not in names}
    _history(enabled, opts.get("context", "all"), opts.get("stacks", "all"),
             opts.get("max_entries", sys.maxsize), opts.get("device"),
             bool(opts.get("clear_history", False)), extra)


_HISTORY_DEFAULTS = {"compile_context": False, "global_record_annotations": False,
                     "record_pinned_host_memory": False, "record_cuda": True}


def _history(enabled: Any, context: Any, stacks: Any, max_entries: Any, device: Any, clear: bool,
             extra: Dict[str, Any]) -> None:
    skip = extra.pop("skip_actions", None) or ()
    if isinstance(skip, str) or not all(isinstance(a, str) for a in skip):
        raise TypeError(f"skip_actions: expected a list of action names, got {skip!r}")
    unknown = [k for k in extra if k not in _HISTORY_DEFAULTS]
    if unknown:
        raise TypeError(f"_record_memory_history() got unexpected keyword argument(s) {unknown}")
    ignored = [f"{k}={v!r}" for k, v in extra.items() if v != _HISTORY_DEFAULTS[k]]
    if ignored:
        warnings.warn(f"pypool: _record_memory_history: {', '.join(ignored)} not supported by pypool; ignored",
                      stacklevel=3)
    if enabled not in (None, "all", "state"):
        raise ValueError(f"enabled: expected 'all', 'state' or None, got {enabled!r}")
    if context not in (None, "state", "alloc", "all"):
        raise ValueError(f"context: expected 'state', 'alloc', 'all' or None, got {context!r}")
    if stacks not in ("python", "all"):
        raise ValueError(f"stacks: expected 'python' or 'all', got {stacks!r}")
    if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
        raise ValueError(f"max_entries: expected an int >= 1, got {max_entries!r}")
    entries = min(max_entries, MAX_HISTORY_ENTRIES)
    devices = set(_core.registry_devices())
    if enabled is not None:
        # Checked before any state changes: a bad device changes nothing (review finding).
        index = _registry.device_index(device)
        count = int(_state.torch.cuda.device_count()) if _state.torch is not None else None
        if index < 0 or (count is not None and index >= count):
            raise ValueError(f"device: no CUDA device {index} (torch sees {count} device(s))")
        devices.add(index)
    _state.skip_actions = tuple(skip) if enabled is not None else ()
    _state.history_enabled = enabled is not None
    _state.trace_frames = context in ("alloc", "all")
    # The frames torch records (Note [Torch tracebacks]); pypool's native walker again
    # once history is off or keeps no stacks.
    torch_stacks = stacks if enabled is not None and context is not None else None
    for d in sorted(devices):
        if clear or enabled is None:
            _snapshot_mod.record_history(False, device=d)
        core = _registry.existing_pool(d)
        if torch_stacks is not None and core is None:
            target, _ = _registry.resolve_pool(d, None, create=True, what="_record_memory_history")
            core = target._pool if target is not None else None
        if core is not None:
            # Before capture starts, so that the first allocations record torch's frames.
            _context.use_torch_stacks(core, torch_stacks)
        if enabled is None:
            continue
        # torch records the event trace whenever history is on ("state" and "all");
        # `context` says which events carry stacks (None: none at all).
        keep_stacks = "python" if context is not None else "none"
        # "all" records the stacks of frees and of empty_cache too (Note [Free stacks]).
        _snapshot_mod.record_history("all", max_entries=entries, stacks=keep_stacks, device=d,
                                     free_stacks=context == "all")
    if torch_stacks is None:
        # No pool gathers torch tracebacks now, so none would collect them again: drop
        # every one that no block or kept entry names (Note [Torch tracebacks]).
        _core.torch_traceback_collect(everything=True)


def _snapshot(device: Any = None, augment_with_fx_traces: bool = False) -> Dict[str, Any]:
    """``torch.cuda.memory._snapshot``: every device's pool in one dict of torch's schema
    (``segments`` of all devices, ``device_traces[d]`` the history of device d,
    ``allocator_settings``), as torch's covers all devices whatever ``device`` is."""
    torch = _state.torch
    count = 0
    try:
        count = int(torch.cuda.device_count()) if torch is not None else 0
    except Exception:
        count = 0
    devices = _core.registry_devices()
    count = max([count] + [d + 1 for d in devices])
    out: Dict[str, Any] = {"segments": [], "device_traces": [[] for _ in range(count)]}
    first: Optional[Dict[str, Any]] = None
    skip = set(_state.skip_actions)
    for d in devices:
        snap = _snapshot_mod.snapshot(device=d)
        out["segments"].extend(snap["segments"])
        trace = snap["device_traces"][d]
        if _state.trace_frames:
            _segment_frames(trace)
        trace = [e for e in trace if e["action"] not in skip]
        if not _state.trace_frames:
            trace = [dict(e, frames=[]) for e in trace]
        out["device_traces"][d] = trace
        first = first or snap
    if first is None:
        first = _snapshot_mod.snapshot(device=_registry.device_index(device))
    out["allocator_settings"] = first["allocator_settings"]
    if augment_with_fx_traces:
        original = _torch_original("cuda.memory", "_snapshot")
        torch_mod = sys.modules.get("torch.cuda.memory")
        augment = getattr(torch_mod, "_augment_memory_snapshot_stack_traces", None) if original else None
        if augment is not None:
            out = augment(out)
    return out


def _segment_frames(trace: List[Dict[str, Any]]) -> None:
    """Give segment_alloc / segment_map entries the stack of the allocation that made
    the segment grow, as torch's do (its timeline keeps a segment's stack after the
    allocations in it are freed). pypool records that allocation's stack on its alloc
    entry, the next one on the same stream; entries are copied, not shared."""
    for i, e in enumerate(trace):
        if e["action"] not in ("segment_alloc", "segment_map") or e["frames"]:
            continue
        for later in trace[i + 1:]:
            if later["action"] == "alloc" and later["stream"] == e["stream"]:
                trace[i] = dict(e, frames=list(later["frames"]))
                break


def memory_snapshot(mempool_id: Any = None, include_traces: bool = True) -> List[Dict[str, Any]]:
    """``torch.cuda.memory_snapshot``: the segments of :func:`_snapshot`."""
    if mempool_id is not None:
        raise RuntimeError(
            "pypool: memory_snapshot(mempool_id=...) needs torch.cuda.MemPool, which no pluggable "
            "allocator supports; pypool has one pool per device"
        )
    return _snapshot()["segments"]  # type: ignore[no-any-return]


def _dump_snapshot(filename: str = "dump_snapshot.pickle", augment_with_fx_traces: bool = False) -> None:
    """``torch.cuda.memory._dump_snapshot``: pickle :func:`_snapshot` to ``filename``."""
    data = _snapshot(augment_with_fx_traces=augment_with_fx_traces)
    with open(filename, "wb") as f:
        pickle.dump(data, f)


def _allocation_traceback(data_ptr: int) -> Optional[List[Dict[str, Any]]]:
    """``torch.cuda.memory._allocation_traceback``: the Python frames recorded for the
    live allocation at ``data_ptr`` (its base address), or None when it is not a live
    pypool allocation or no stack was recorded (:func:`_record_memory_history` first)."""
    if isinstance(data_ptr, bool) or not isinstance(data_ptr, int):
        raise TypeError(f"data_ptr: expected an int, got {type(data_ptr).__name__}")
    for d in _core.registry_devices():
        for seg in _snapshot_mod.snapshot(device=d)["segments"]:
            if not seg["address"] <= data_ptr < seg["address"] + seg["total_size"]:
                continue
            for block in seg["blocks"]:
                if block["address"] == data_ptr and block["state"] == "active_allocated":
                    return block["frames"] or None
            return None
    return None


def _cuda_setMemoryMetadata(metadata: str) -> None:
    """``torch._C._cuda_setMemoryMetadata`` (what ``torch.cuda.memory._set_memory_metadata``
    calls): label the history entries the calling thread makes from now on with
    ``metadata`` (their ``user_metadata``; ``""`` clears it), as torch's native allocator
    does (Note [Trace metadata] in csrc/include/pypool/device_pool.h)."""
    if not isinstance(metadata, str):
        raise TypeError(f"metadata: expected a str, got {type(metadata).__name__}")
    _core.set_trace_metadata(metadata)


def _cuda_getMemoryMetadata() -> str:
    """``torch._C._cuda_getMemoryMetadata``: the calling thread's label."""
    return _core.trace_metadata()


def _cuda_memoryMetadataSupported() -> bool:
    """``torch._C._cuda_memoryMetadataSupported``: pypool records the labels."""
    return True


def _accelerator_setAllocatorSettings(env: str) -> None:
    """``torch._C._accelerator_setAllocatorSettings`` (what
    ``torch.cuda.memory._set_allocator_settings`` calls): see :func:`_set_allocator_settings`."""
    _set_allocator_settings(env, "_accelerator_setAllocatorSettings")


def _cuda_cudaCachingAllocator_set_allocator_settings(env: str) -> None:
    """torch 2.8's spelling of :func:`_accelerator_setAllocatorSettings`."""
    _set_allocator_settings(env, "_cuda_cudaCachingAllocator_set_allocator_settings")


def _apply_live_settings(env: str, installed: PoolConfig, devices: List[int],
                         fields: Dict[str, Any]) -> None:
    """Apply a settings call's live ``fields`` (those the string names, and those torch
    resets) to each pool in ``devices`` over that pool's own current settings, and make
    ``installed`` the settings of the pools made later (Note [Config read-modify-write]
    in _pool.py: a field one pool took from ``Pool.update_config`` and the call does
    not name stays)."""
    with _pool.CONFIG_LOCK:
        pools = {d: _core.registry_pool(d) for d in devices}
        try:
            # Every pool's new settings are built (and so checked) before any changes.
            targets = {d: _pool.core_pool_config(p).replace(**fields) for d, p in pools.items()}
        except ValueError as e:
            raise ValueError(f"_set_allocator_settings({env!r}): {e}") from None
        try:
            # The registry's config is what pools made later take; the core sets it only
            # with every pool's (Registry::update_config, which checks every pool first),
            # so each pool whose own settings differ is set again at once.
            _core.registry_update_config(installed.to_core())
        except ValueError as e:
            raise ValueError(f"_set_allocator_settings({env!r}): {e}") from None
        for d, p in pools.items():
            if targets[d] != installed:
                p.update_config(targets[d].to_core())
            if "memory_fraction" in fields:
                # The fraction every pool applies now, whatever set_per_process_memory_fraction
                # set since (the native config only reapplies a fraction that differs from its own).
                p.set_memory_fraction(fields["memory_fraction"] or 0.0)
        _registry.set_installed_config(installed)


def _set_allocator_settings(env: str, name: str) -> None:
    """Allocator settings given at run time: torch parses the string as always (it
    rejects what it rejects natively, and its host-allocator settings keep working),
    then pypool applies the keys it has an equivalent for (:mod:`pypool._torch_conf`).
    Before the first allocation every setting applies. Once pools exist, the settings a
    pool takes while in use (Note [Live settings] in csrc/include/pypool/config.h:
    max_split_size_mb, roundup_power2_divisions, garbage_collection_threshold,
    per_process_memory_fraction) change every pool at once, over each pool's own
    current settings (a field set by Pool.update_config and not named stays; Note
    [Config read-modify-write] in _pool.py), and the pools made later; a bad value
    raises ValueError and changes nothing. expandable_segments is fixed
    for a pool's life and is named in a warning. As in torch, max_split_size_mb,
    roundup_power2_divisions and garbage_collection_threshold go back to their defaults
    when the string does not name them (Note [Settings reset by each call])."""
    original = _torch_original("_C", name)
    if original is not None:
        original(env)
    if not isinstance(env, str):
        raise TypeError(f"_set_allocator_settings: expected a str, got {type(env).__name__}")
    fields, lines = _torch_conf.translate(env, "_set_allocator_settings")
    _torch_conf.warn_all(lines, "_set_allocator_settings", stacklevel=4)
    fields = _torch_conf.with_resets(fields)  # Note [Settings reset by each call]
    with _lock:
        if _state.config is None:
            return
        current = _registry.installed_pool_config() or _state.config
        try:
            changed = _torch_conf.changed_fields(current, fields)
            # The values each pool takes: those named, and torch's per-call resets.
            named = {k: v for k, v in current.replace(**fields).to_dict().items()
                     if k in fields and k in _core.LIVE_CONFIG_FIELDS}
        except ValueError as e:  # PoolConfig's field names are not the keys the user wrote
            raise ValueError(f"_set_allocator_settings({env!r}): {e}") from None
        devices = _core.registry_devices()
        if not devices:  # no pool made yet: every setting applies
            if changed:
                new = current.replace(**changed)
                _core.registry_configure("cuda", new.to_core(), 0)
                _registry.set_installed_config(new)
            return
        live = {k: v for k, v in changed.items() if k in _core.LIVE_CONFIG_FIELDS}
        fixed = {k: v for k, v in changed.items() if k not in live}
        if named:
            # Over each pool's own settings, not the installed ones: a pool's
            # Pool.update_config fields the string does not name stay.
            _apply_live_settings(env, current.replace(**live), devices, named)
        if fixed:
            keys = ", ".join(f"{k}={v!r}" for k, v in sorted(fixed.items()))
            warnings.warn(
                f"pypool: _set_allocator_settings: {keys} not applied: fixed for a pool's life, "
                f"and device(s) {devices} already allocate; set it before "
                "the first CUDA allocation, or in PYTORCH_CUDA_ALLOC_CONF / PYPOOL_CONF",
                _torch_conf.TorchSettingWarning,
                stacklevel=4,
            )


# ---------------------------------------------------------------------------- torch._C
# The torch._C functions of Note [Unsupported under a pluggable allocator]; they take the
# arguments torch's do (torch 2.8 - 2.14) and answer from pypool's pools.


def _cuda_memoryStats(device: int) -> Dict[str, Any]:
    """``torch._C._cuda_memoryStats``: the nested statistics of ``device``."""
    return memory.memory_stats_as_nested_dict(device)


def _cuda_resetAccumulatedMemoryStats(device: int) -> None:
    """``torch._C._cuda_resetAccumulatedMemoryStats``."""
    memory.reset_accumulated_memory_stats(device)


def _cuda_resetPeakMemoryStats(device: int) -> None:
    """``torch._C._cuda_resetPeakMemoryStats``."""
    memory.reset_peak_memory_stats(device)


def _cuda_getMemoryFraction(device: int) -> float:
    """``torch._C._cuda_getMemoryFraction``."""
    return memory.get_per_process_memory_fraction(device)


def _cuda_memorySnapshot(mempool_id: Any = None) -> Dict[str, Any]:
    """``torch._C._cuda_memorySnapshot``: :func:`_snapshot` (every device)."""
    if mempool_id is not None:
        raise RuntimeError(
            "pypool: _cuda_memorySnapshot(mempool_id=...) needs torch.cuda.MemPool, which no "
            "pluggable allocator supports; pypool has one pool per device"
        )
    return _snapshot()


def _cuda_record_memory_history(enabled: Any, context: Any, stacks: Any, max_entries: Any,
                                clear_history: bool = False, compile_context: bool = False,
                                global_record_annotations: bool = False,
                                skip_actions: Any = None, record_pinned_host_memory: bool = False,
                                record_cuda: bool = True) -> None:
    """``torch._C._cuda_record_memory_history`` (torch 2.14's positional order): see
    :func:`_record_memory_history`. Recording starts on the current device."""
    _history(enabled, context, stacks, max_entries, None, bool(clear_history),
             {"compile_context": compile_context, "global_record_annotations": global_record_annotations,
              "skip_actions": list(skip_actions or ()), "record_pinned_host_memory": record_pinned_host_memory,
              "record_cuda": record_cuda})


def _cuda_isHistoryEnabled() -> bool:
    """``torch._C._cuda_isHistoryEnabled``: whether ``_record_memory_history`` last
    started recording (and has not stopped it since)."""
    return _state.history_enabled


def _cuda_cudaCachingAllocator_enable(value: bool) -> None:
    """``torch._C._cuda_cudaCachingAllocator_enable`` (what ``torch.cuda.caching_allocator_enable``
    calls): with False, each allocation torch makes from now on goes straight to the device
    and each free straight back, with no pool and no statistics, as torch's own allocator
    does; True caches again. Allocations keep their kind when freed (Note [Torch entry
    points] in csrc/abi/c_api.cpp). ``PYTORCH_NO_CUDA_MEMORY_CACHING=1`` overrides it."""
    _cdll().pypool_set_caching_enabled(1 if value else 0)


def _cuda_cudaCachingAllocator_is_enabled() -> bool:
    """``torch._C._cuda_cudaCachingAllocator_is_enabled``: the flag set last (as torch's,
    it does not reflect ``PYTORCH_NO_CUDA_MEMORY_CACHING``)."""
    return bool(_cdll().pypool_caching_enabled())


_OOM_OBSERVER = ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t)


def _cuda_attach_out_of_memory_observer(observer: Callable[[int, int, int, int], Any]) -> None:
    """``torch._C._cuda_attach_out_of_memory_observer``: ``observer(device, alloc,
    device_allowed, device_free)`` is called on each out-of-memory of a torch allocation,
    before torch raises ``torch.OutOfMemoryError``, with torch's arguments: the bytes the
    pool tried to get from the device, the memory it may use (its cap when one is set,
    else the device's total) and the device's free memory. Called outside pypool's locks,
    with the GIL taken; an exception it raises is printed and ignored (as in torch)."""
    if not callable(observer):
        raise TypeError(f"observer: expected a callable, got {type(observer).__name__}")

    def call(device: int, alloc: int, total: int, free: int) -> None:
        observer(device, alloc, total, free)

    thunk = _OOM_OBSERVER(call)
    with _lock:
        if int(_cdll().pypool_add_oom_observer(thunk)) != 0:
            raise RuntimeError("pypool: too many out-of-memory observers (64 at most)")
        _state.oom_observers.append(thunk)

