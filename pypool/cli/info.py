"""``python -m pypool info``: what this build of pypool can do on this machine."""

from __future__ import annotations

import argparse
import json
import os
import sys

from .. import _core
from .._version import __version__
from ..config import PoolConfig

HELP = "show the build, the backends available here and the registry's state"

# Shown whenever the build lacks the CUDA backend (only -DPYPOOL_WITH_CUDA=OFF does that).
NO_CUDA_BACKEND = ("WARNING: this pypool was built WITHOUT its CUDA backend (CMake option "
                   "PYPOOL_WITH_CUDA=OFF): pypool.install() and Pool(backend='cuda') cannot work. "
                   "Reinstall without that option; no CUDA toolkit is needed.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    n, why = _core.cuda_device_count()
    compiled = bool(_core.cuda_backend_compiled())
    info = {
        "version": __version__,
        "library": _core.__file__,
        "cuda_backend_compiled": compiled,
        "cuda_devices": n,
        "cuda_unavailable_reason": why or None,
        "registry_backend": _core.registry_backend(),
        "registry_devices": _core.registry_devices(),
    }
    # What a pool made now would get (Note [Pools before install]): a bad value raises in
    # get_pool() and install(), so the command meant for checking a set-up says so here.
    conf_error = None
    if "PYPOOL_CONF" in os.environ:
        try:
            PoolConfig.from_env()
        except (TypeError, ValueError) as e:
            conf_error = str(e)
        info["PYPOOL_CONF"] = os.environ["PYPOOL_CONF"]
        info["PYPOOL_CONF_error"] = conf_error
    if args.json:
        if not compiled:
            info["warning"] = NO_CUDA_BACKEND
        print(json.dumps(info))
    else:
        for k, v in info.items():
            print(f"{k:24} {v}")
    if not compiled:
        print(NO_CUDA_BACKEND, file=sys.stderr)
    if conf_error:
        print(f"pypool info: error: {conf_error}", file=sys.stderr)
        return 2
    return 0
