"""``python -m pypool <command>``: the command-line interface.

Each command lives in its own module ``pypool/_cli_<name>.py`` exposing
``HELP: str``, ``add_arguments(parser)`` and ``run(args) -> int``; this file only
dispatches, so commands load lazily and stay independent.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

# command name -> module (relative to the pypool package)
COMMANDS = {
    "bench": "._cli_bench",
    "replay": "._cli_replay",
    "report": "._cli_report",
    "size": "._cli_size",
    "info": "._cli_info",
    "simdevice": "._cli_simdevice",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pypool", description="pypool: a caching GPU memory allocator for PyTorch")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, modname in COMMANDS.items():
        try:
            mod = importlib.import_module(modname, __package__ or "pypool")
        except ModuleNotFoundError as e:
            if e.name and e.name.endswith(modname.lstrip(".")):
                continue  # command not built into this version
            raise
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


if __name__ == "__main__":
    sys.exit(main())
