"""``python -m pypool <command>``: the command-line interface (:mod:`pypool.cli`)."""

from __future__ import annotations

import sys

from .cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
