"""pypool: a caching block-pool GPU memory allocator for PyTorch.

Quick start::

    import pypool
    pypool.install(max_pool_size="40GiB")   # first thing, before any CUDA call

Without a GPU, :class:`Pool` runs the same allocator on the host backend.
"""

from __future__ import annotations

from . import _core
from ._pool import InvalidPointerError, InvariantError, OutOfMemoryError, Pool
from .config import PoolConfig, format_size, parse_size

__version__ = "0.1.0"

__all__ = [
    "Pool",
    "PoolConfig",
    "OutOfMemoryError",
    "InvalidPointerError",
    "InvariantError",
    "parse_size",
    "format_size",
    "library_path",
]


def library_path() -> str:
    """Path of the shared library holding the C ABI (what torch loads with ctypes)."""
    return _core.__file__
