"""Child processes that load the simulated device's libraries through ctypes (no torch).

Each library test runs in a child so that a crash in native code fails one test, and so
that every child reads its own ``PYPOOL_SIM_*`` settings at load time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Dict, Optional

from pypool import simdevice


def run_lib_child(prelude: str, body: str, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """Run ``prelude + body`` with ``sys.argv[1]`` = the folder of the stand-ins, on two
    quiet 1 GiB devices unless ``env`` says otherwise."""
    child_env = dict(os.environ)
    child_env.update({"PYPOOL_SIM_MEMORY": "1GiB", "PYPOOL_SIM_DEVICES": "2", "PYPOOL_SIM_QUIET": "1"})
    child_env.update(env or {})
    script = prelude + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script, str(simdevice.lib_dir())], env=child_env,
                          capture_output=True, text=True, timeout=120)


def ok(r: subprocess.CompletedProcess) -> str:
    """The child's stdout; fails the test with both streams unless it exited 0."""
    assert r.returncode == 0, f"child failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return r.stdout


def run_audited(script: str) -> subprocess.CompletedProcess:
    """Run ``script`` with only the LD_AUDIT loader in place (no pypool.simdevice.environ):
    the redirection of the real libraries' names to the stand-ins is what is tested."""
    lib = simdevice.lib_dir()
    env = dict(os.environ, LD_AUDIT=str(lib / simdevice.AUDIT_LIB), PYPOOL_SIM_LIBDIR=str(lib),
               PYPOOL_SIM_QUIET="1")
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
