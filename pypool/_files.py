"""Reading the files users hand to pypool (traces and memory snapshots): bytes in, gzip
undone, values quoted safely in error messages.

A trace or snapshot file is user input: whatever is wrong with it must end as a
``ValueError`` naming the file (Note [Trace limits] in ``trace.py``), never as the
exception of a library deep inside.
"""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Any, Union

__all__ = ["FORMAT_HEADER", "read_maybe_gzipped", "show"]

PathLike = Union[str, "os.PathLike[str]"]

#: The first line of a pypool trace file (:mod:`pypool.trace`); defined here so that the
#: snapshot loader can tell a trace handed to it by mistake.
FORMAT_HEADER = "# pypool-trace v1"

_GZIP_MAGIC = b"\x1f\x8b"


def read_maybe_gzipped(path: PathLike) -> bytes:
    """The bytes of ``path``, gunzipped when they start with the gzip magic. Corrupt or
    truncated gzip data raises ValueError naming the file; OSError passes through."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{os.fspath(path)}: corrupt or truncated gzip data ({e})") from None


def show(v: Any, limit: int = 80) -> str:
    """``repr(v)`` for an error message, cut to ``limit`` characters. A hostile file can
    hold an int of 5,000 digits, whose repr raises ValueError (Python's int-to-str limit)
    and would otherwise replace the message naming the field."""
    try:
        text = repr(v)
    except ValueError:
        return f"an int of {v.bit_length()} bits" if isinstance(v, int) else f"a {type(v).__name__}"
    return text if len(text) <= limit else text[:limit - 3] + "..."
