"""``python -m pypool <command>``: the command-line interface.

Each command is a module of this package exposing ``HELP: str``,
``add_arguments(parser)`` and ``run(args) -> int``; :data:`COMMANDS` lists them and
:func:`main` dispatches. Options shared by several commands live in modules of their own:
:mod:`.trace_options` (the trace a command reads: ``replay``, ``size``; the file checks
``report`` shares) and :mod:`.compare` (``--compare`` / ``--torch-python`` and the
capacity rows).
"""

from __future__ import annotations

import argparse
import os
import sys
from types import ModuleType
from typing import Dict, List, Optional

from . import bench, info, replay, report, simdevice, size

__all__ = ["COMMANDS", "build_parser", "main"]

# command name -> its module, in the order `--help` lists them
COMMANDS: Dict[str, ModuleType] = {
    "bench": bench,
    "replay": replay,
    "report": report,
    "size": size,
    "info": info,
    "simdevice": simdevice,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pypool", description="pypool: a caching GPU memory allocator for PyTorch")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, mod in COMMANDS.items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run one command; returns its exit status (0 ok, 1 failed, 2 bad input).

    Note [CLI errors]: a command reports bad input itself (one line on stderr, status 2).
    Two cases are handled here, once for every command: output into a closed pipe
    (``python -m pypool replay ... | head``) ends the command quietly, the way the Python
    docs recommend for SIGPIPE (flush, point stdout at /dev/null so the interpreter's own
    flush at exit cannot fail again, status 1); and an OSError that escapes a command (a
    path given for an output that cannot be written) is one line naming the path, status 2.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        rc = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler
        return rc
    except BrokenPipeError:
        _stdout_to_devnull()
        return 1
    except KeyboardInterrupt:
        print(f"pypool {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"pypool {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2


def _stdout_to_devnull() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor
        pass
