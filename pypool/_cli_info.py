"""``python -m pypool info``: what this build of pypool can do on this machine."""

from __future__ import annotations

import argparse
import json

from . import _core, __version__

HELP = "show the build, the backends available here and the registry's state"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    n, why = _core.cuda_device_count()
    info = {
        "version": __version__,
        "library": _core.__file__,
        "cuda_backend_compiled": _core.cuda_backend_compiled(),
        "cuda_devices": n,
        "cuda_unavailable_reason": why or None,
        "registry_backend": _core.registry_backend(),
        "registry_devices": _core.registry_devices(),
    }
    if args.json:
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:24} {v}")
    return 0
