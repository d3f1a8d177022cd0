"""Where the figures of ``python -m pypool bench`` come from: the machine, the software
and the code revision, recorded with every result."""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Dict, List, Optional, Sequence

from .. import _core
from .._version import __version__

__all__ = ["environment", "command_line"]

# The directory of the pypool package (what runs, and where its build left _build_info.json).
_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _package_version(name: str) -> Optional[str]:
    # Importing torch only for its version costs seconds: read the installed metadata.
    try:
        return metadata.version(name)
    except Exception:
        return None


def _nvidia_smi() -> List[Dict[str, str]]:
    """GPU name, driver and memory from ``nvidia-smi`` (empty when it is not there)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    gpus = []
    for line in out.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2]})
    return gpus


def _git_revision() -> str:
    """The git commit of the code that runs: ``abc123def456`` (``+dirty`` with local
    changes), or ``"unknown (why)"``.

    Note [Build revision]: pypool normally runs from an installed copy (site-packages of a
    virtual environment), which no git checkout tracks, so asking git about the package
    directory says nothing. The build records the revision of the tree it was built from
    in ``_build_info.json`` beside the package (cmake/build_info.cmake); a package that
    git does track (running from the source tree) asks git directly.
    """
    pkg = _PKG
    root = os.path.dirname(pkg)
    git_why = ""
    try:
        # An installed copy may sit in a virtual environment inside a checkout: only a
        # package that git tracks is that checkout's code.
        subprocess.run(["git", "-C", root, "ls-files", "--error-unmatch", os.path.join(pkg, "__init__.py")],
                       capture_output=True, timeout=10, check=True)
        rev = subprocess.run(["git", "-C", root, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        if rev:
            return rev + ("+dirty" if dirty else "")
    except FileNotFoundError:
        git_why = "git is not installed here; "
    except (OSError, subprocess.SubprocessError):
        pass
    info = _build_info(pkg)
    if info.get("git_revision"):
        return f"{info['git_revision']}{'+dirty' if info.get('dirty') else ''} (recorded at build time)"
    why = info.get("reason") or "its build recorded no revision (no _build_info.json)"
    return f"unknown ({git_why}pypool runs from {pkg}, which no git checkout tracks, and {why})"


def _build_info(pkg: str) -> Dict[str, Any]:
    try:
        with open(os.path.join(pkg, "_build_info.json"), encoding="utf-8") as f:
            d = json.load(f)
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _load_average() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The command as the user typed it (``python -m pypool bench ...``)."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    head = argv[0]
    if head.endswith(os.path.join("pypool", "__main__.py")) or head == "-m":
        prog = "python -m pypool"
    else:
        prog = os.path.basename(head)
    return " ".join([prog] + [shlex.quote(a) for a in argv[1:]])


def environment(command: Optional[str] = None, device: str = "cpu") -> Dict[str, Any]:
    """Where the figures come from: CPU model, Python, torch, pypool, date, the command,
    and (``device="cuda"``) the GPUs with their driver."""
    env: Dict[str, Any] = {
        "date": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "command": command if command is not None else command_line(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "glibc": "-".join(platform.libc_ver()) or None,
        "pypool": __version__,
        "pypool_library": _core.__file__,
        "git_revision": _git_revision(),
        "cuda_backend_compiled": bool(_core.cuda_backend_compiled()),
        "torch": _package_version("torch"),
        "numpy": _package_version("numpy"),
        "rmm": _package_version("rmm") or _package_version("rmm-cu12") or _package_version("rmm-cu13"),
        "device": device,
        # Other work on the machine shows up in every figure: keep the evidence.
        "load_average": _load_average(),
    }
    if device == "cuda":
        gpus = _nvidia_smi()
        env["gpus"] = gpus
        env["gpu"] = gpus[0]["name"] if gpus else None
        env["driver"] = gpus[0]["driver"] if gpus else None
    return env


def _stdout_target() -> Optional[str]:
    """The file stdout is redirected to (None for a terminal, a pipe or elsewhere)."""
    try:
        if not os.path.isfile(f"/proc/self/fd/{sys.stdout.fileno()}"):
            return None
        return os.readlink(f"/proc/self/fd/{sys.stdout.fileno()}")
    except (OSError, ValueError, AttributeError):
        return None
