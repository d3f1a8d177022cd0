"""``python -m pypool <command>``: the command-line interface.

Each command lives in its own module ``pypool/_cli_<name>.py`` exposing
``HELP: str``, ``add_arguments(parser)`` and ``run(args) -> int``; this file only
dispatches, so commands load lazily and stay independent.
"""

from __future__ import annotations

import argparse
import importlib
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
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
