"""The simulated CUDA device: run the real PyTorch CUDA build without a GPU.

pypool ships stand-ins for the CUDA runtime (``libcudart.so.13``), the driver
(``libcuda.so.1``), NVML (``libnvidia-ml.so.1``), cuBLAS (``libcublas.so.13``) and
cuBLASLt (``libcublasLt.so.13``) that back device memory with host memory (see Note
[Simulated device] in ``csrc/simdevice/sim_state.h``). A small ``LD_AUDIT`` library
redirects the dynamic loader's lookups of those files to the stand-ins, whether a library
asks for them by name or, as ``torch/__init__.py`` does, by full path. cuDNN is not
simulated: set ``torch.backends.cudnn.enabled = False`` (convolutions then take torch's
own im2col + cuBLAS path). The user's torch install is not touched, and nothing on pypool's normal path
loads any of this.

The audit library must be in place before the process starts, so the simulation is
chosen per process::

    python -m pypool simdevice --devices 2 --memory 24GiB -- python train.py

or, from Python, ``subprocess.run(cmd, env=pypool.simdevice.environ(devices=2))``.
Inside such a process :func:`active` is true and :func:`control` holds streams,
completes work, reads the call counters and sizes the device.

What it proves: everything an allocator sees — capacity and free memory, out-of-memory
and VMM error codes, which calls synchronize, when an event completes. What it cannot:
kernel results (kernels and cuBLAS calls are accepted and do nothing, so tensor values are
meaningless), and real driver latencies.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

from .config import parse_size

__all__ = [
    "SimControl",
    "SimDeviceError",
    "active",
    "available",
    "control",
    "environ",
    "lib_dir",
    "torch_has_cuda_libs",
]

AUDIT_LIB = "libpypool_simaudit.so"
# The largest event delay the device takes (its nanoseconds fit an int64).
_MAX_US = (2**63 - 1) // 1000
DRIVER_LIB = "libpypool_simcuda.so"
_LIBS = (AUDIT_LIB, DRIVER_LIB, "libpypool_simcudart.so", "libpypool_simnvml.so", "libpypool_simcublas.so",
         "libpypool_simcublasLt.so")


class SimDeviceError(RuntimeError):
    """The simulated device is not built into this pypool, or not active here."""


def lib_dir() -> Path:
    """Folder holding the stand-in libraries (``pypool/_simdevice``)."""
    return Path(__file__).resolve().parent / "_simdevice"


def available() -> bool:
    """True when this build of pypool carries the simulated device."""
    d = lib_dir()
    return all((d / name).is_file() for name in _LIBS)


def torch_has_cuda_libs() -> Optional[str]:
    """None when the installed torch is a CUDA build (judged by its files, without
    importing it), else why not: PyTorch runs on the simulated device only as its CUDA
    build."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return "torch is not installed"
    for loc in spec.submodule_search_locations:
        if os.path.exists(os.path.join(loc, "lib", "libc10_cuda.so")):
            return None
    return "the installed torch is a CPU-only build (no torch/lib/libc10_cuda.so); it needs the CUDA build"


_U64 = 1 << 64


def _size(value: Union[int, str]) -> str:
    if isinstance(value, bool) or (isinstance(value, int) and value <= 0):
        raise ValueError(f"memory must be a positive size, got {value!r}")
    if isinstance(value, int):
        parsed = value
    else:
        parsed = parse_size(value, "memory")  # sizes are spelt as everywhere else in pypool
    if parsed <= 0:
        raise ValueError(f"memory must be a positive size, got {value!r}")
    if parsed >= _U64:  # the device would fall back to its default size
        raise ValueError(f"memory must be below 2**64 bytes, got {value!r}")
    return str(parsed)


def _int(value: object, what: str, lo: int, hi: int) -> int:
    """``value`` as an int in lo..hi (bool refused), or a TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{what} must be in {lo}..{hi}, got {value}")
    return value


def environ(
    devices: int = 1,
    memory: Union[int, str] = "80GiB",
    event_delay_us: int = 0,
    quiet: bool = True,
    base: Optional[Mapping[str, str]] = None,
) -> Dict[str, str]:
    """The environment of a child process that runs on the simulated device.

    ``devices`` (1..16) devices of ``memory`` bytes each ("80GiB", "512MiB" or an int);
    ``event_delay_us``: work on a stream that the test does not hold completes this long
    after it was enqueued; ``quiet=False`` names each CUDA function that is not simulated
    on stderr, once. ``base`` (a mapping of str to str) defaults to ``os.environ``; the
    per-device sizes ``PYPOOL_SIM_MEMORY_<i>`` it may carry (from a parent that runs on
    the simulated device) are dropped, so every device has ``memory`` bytes (resize one
    from inside with :meth:`SimControl.set_memory`).
    """
    if not available():
        raise SimDeviceError(
            f"the simulated device is not built into this pypool (no {AUDIT_LIB} in {lib_dir()}); "
            "it needs the CUDA toolkit headers at build time"
        )
    if isinstance(devices, bool) or not isinstance(devices, int) or not 1 <= devices <= 16:
        raise ValueError(f"devices must be an int in 1..16, got {devices!r}")
    if isinstance(event_delay_us, bool) or not isinstance(event_delay_us, int) or not 0 <= event_delay_us <= _MAX_US:
        raise ValueError(f"event_delay_us must be an int in 0..{_MAX_US}, got {event_delay_us!r}")
    if not isinstance(quiet, bool):
        raise TypeError(f"quiet must be a bool, got {type(quiet).__name__}")
    if base is not None and not isinstance(base, Mapping):
        raise TypeError(f"base must be a mapping of str to str, got {type(base).__name__}")
    env = dict(os.environ if base is None else base)
    bad = [k for k, v in env.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"base must map str to str; {bad[0]!r} does not")
    for key in [k for k in env if k.startswith("PYPOOL_SIM_MEMORY_")]:
        del env[key]
    audit = str(lib_dir() / AUDIT_LIB)
    others = [p for p in env.get("LD_AUDIT", "").split(":") if p and p != audit]
    env["LD_AUDIT"] = ":".join([audit, *others])
    env["PYPOOL_SIM_LIBDIR"] = str(lib_dir())
    env["PYPOOL_SIM_DEVICES"] = str(devices)
    env["PYPOOL_SIM_MEMORY"] = _size(memory)
    env["PYPOOL_SIM_EVENT_DELAY_US"] = str(event_delay_us)
    env["PYPOOL_SIM_QUIET"] = "1" if quiet else "0"
    return env


def active() -> bool:
    """True when this process runs on the simulated device (its driver is loaded)."""
    try:
        with open("/proc/self/maps") as f:
            return DRIVER_LIB in f.read()
    except OSError:
        return False


class SimControl:
    """The simulated device's control panel (the ``pypoolsim_*`` C functions).

    Streams are raw ``cudaStream_t`` values, e.g. ``torch.cuda.Stream().cuda_stream``;
    0 means the current device's default stream.
    """

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        u64, i32 = ctypes.c_ulonglong, ctypes.c_int
        sig = {
            "pypoolsim_configure": (i32, [i32, u64]),
            "pypoolsim_set_memory": (i32, [i32, u64]),
            "pypoolsim_device_count": (i32, []),
            "pypoolsim_device_total": (u64, [i32]),
            "pypoolsim_device_used": (u64, [i32]),
            "pypoolsim_device_peak": (u64, [i32]),
            "pypoolsim_reset_peak": (i32, [i32]),
            "pypoolsim_hold_stream": (i32, [u64, i32]),
            "pypoolsim_complete_stream": (i32, [u64]),
            "pypoolsim_hold_all": (i32, [i32]),
            "pypoolsim_pending_work": (i32, [u64]),
            "pypoolsim_set_event_delay_us": (i32, [ctypes.c_longlong]),
            "pypoolsim_calls": (u64, [ctypes.c_char_p]),
            "pypoolsim_sync_calls": (u64, []),
            "pypoolsim_reset_counters": (None, []),
            "pypoolsim_counters_text": (u64, [ctypes.c_char_p, u64]),
            "pypoolsim_fail_next_allocs": (i32, [i32]),
            "pypoolsim_version": (ctypes.c_char_p, []),
        }
        for name, (res, args) in sig.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args

    @staticmethod
    def _check(rc: int, what: str) -> None:
        if rc != 0:
            raise ValueError(f"simulated device: {what} was refused")

    def version(self) -> str:
        return str(self._lib.pypoolsim_version().decode())

    def device_count(self) -> int:
        return int(self._lib.pypoolsim_device_count())

    def _dev(self, device: int) -> int:
        if isinstance(device, bool) or not isinstance(device, int):
            raise TypeError(f"device must be an int, got {type(device).__name__}")
        if not 0 <= device < self.device_count():
            raise ValueError(f"device {device} out of range (the simulation has {self.device_count()})")
        return device

    @staticmethod
    def _stream(stream: int) -> int:
        """A raw ``cudaStream_t`` as an int (the device refuses ones it does not know)."""
        return _int(stream, "stream", 0, _U64 - 1)

    def total(self, device: int = 0) -> int:
        """Capacity of ``device`` in bytes."""
        return int(self._lib.pypoolsim_device_total(self._dev(device)))

    def used(self, device: int = 0) -> int:
        """Device memory in use now (every allocator and handle of this process)."""
        return int(self._lib.pypoolsim_device_used(self._dev(device)))

    def peak(self, device: int = 0) -> int:
        """Peak of :meth:`used` since the start or :meth:`reset_peak`."""
        return int(self._lib.pypoolsim_device_peak(self._dev(device)))

    def reset_peak(self, device: int = 0) -> None:
        self._check(self._lib.pypoolsim_reset_peak(self._dev(device)), "reset_peak")

    def set_memory(self, device: int, nbytes: int) -> None:
        """Resize ``device``; refused below what is in use."""
        nbytes = _int(nbytes, "nbytes", 1, _U64 - 1)
        self._check(self._lib.pypoolsim_set_memory(self._dev(device), nbytes), f"set_memory({device}, {nbytes})")

    def hold_stream(self, stream: int, hold: bool = True) -> None:
        """While held, work enqueued on ``stream`` (and events recorded there) stays pending."""
        rc = self._lib.pypoolsim_hold_stream(self._stream(stream), int(hold))
        self._check(rc, f"hold_stream({stream:#x}) (no such stream, or destroyed)")

    def complete_stream(self, stream: int) -> None:
        """Completes the work pending on ``stream`` now (a hold stays in force)."""
        rc = self._lib.pypoolsim_complete_stream(self._stream(stream))
        self._check(rc, f"complete_stream({stream:#x}) (no such stream, or destroyed)")

    def hold_all(self, hold: bool = True) -> None:
        """Hold every stream, including ones created later."""
        self._check(self._lib.pypoolsim_hold_all(int(hold)), "hold_all")

    def pending_work(self, stream: int) -> int:
        n = int(self._lib.pypoolsim_pending_work(self._stream(stream)))
        if n < 0:
            raise ValueError(f"simulated device: unknown stream {stream:#x} (no such stream, or destroyed)")
        return n

    def set_event_delay_us(self, us: int) -> None:
        us = _int(us, "us", 0, _MAX_US)
        self._check(self._lib.pypoolsim_set_event_delay_us(us), f"set_event_delay_us({us})")

    def calls(self, name: Optional[str] = None) -> int:
        """Calls to the CUDA entry point ``name`` (e.g. "cuMemCreate"); None: all calls."""
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {type(name).__name__}")
        return int(self._lib.pypoolsim_calls(None if name is None else name.encode()))

    def sync_calls(self) -> int:
        """Calls that synchronize the device on real hardware (cudaFree, cuMemUnmap, ...)."""
        return int(self._lib.pypoolsim_sync_calls())

    def counters(self) -> Dict[str, int]:
        """Every entry point called since the last reset, with its count."""
        n = int(self._lib.pypoolsim_counters_text(None, 0))
        buf = ctypes.create_string_buffer(n + 4096)
        self._lib.pypoolsim_counters_text(buf, len(buf))
        out: Dict[str, int] = {}
        for line in buf.value.decode().splitlines():
            name, count, _sync = line.split()
            out[name] = int(count)
        return out

    def reset_counters(self) -> None:
        self._lib.pypoolsim_reset_counters()

    def fail_next_allocs(self, n: int) -> None:
        """The next ``n`` device allocations fail with out-of-memory (0 clears)."""
        n = _int(n, "n", 0, 2**31 - 1)
        self._check(self._lib.pypoolsim_fail_next_allocs(n), f"fail_next_allocs({n})")


_control: Optional[SimControl] = None


def control() -> SimControl:
    """The control panel of the simulated device this process runs on."""
    global _control
    if _control is None:
        if not active():
            raise SimDeviceError(
                "this process does not run on the simulated device: start it with "
                "`python -m pypool simdevice -- CMD` or with pypool.simdevice.environ()"
            )
        # The driver is loaded already; this returns the same handle.
        _control = SimControl(ctypes.CDLL(str(lib_dir() / DRIVER_LIB)))
    return _control
