"""Helpers for the GPU tests: each scenario runs in a child Python process.

PyTorch fixes its CUDA allocator once per process (``change_current_allocator`` refuses
after CUDA is initialized, and there is no way back), so every scenario that installs
pypool needs a fresh interpreter. Children import the same pypool as this process
(its directory goes first on ``PYTHONPATH``) and print ``CHILD OK`` as their last act.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence

import pytest

import pypool
from pool_backends import Backend

# Where this process imported pypool from: the source tree or site-packages.
PYPOOL_PARENT = str(Path(pypool.__file__).resolve().parent.parent)

CHILD_TIMEOUT_S = 300

RunChild = Callable[..., str]


def run_child_script(
    script: str,
    workdir: Path,
    args: Sequence[str] = (),
    env: Optional[Dict[str, str]] = None,
    name: str = "child.py",
) -> str:
    """Run ``script`` (dedented) with this interpreter; return its stdout.

    Fails the test, showing both streams, unless the child exits 0 and printed
    ``CHILD OK``.
    """
    path = workdir / name
    path.write_text(textwrap.dedent(script))
    child_env = dict(os.environ)
    child_env.pop("PYPOOL_CONF", None)
    child_env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (PYPOOL_PARENT, child_env.get("PYTHONPATH", "")) if p)
    child_env["PYTHONFAULTHANDLER"] = "1"  # a crash in native code still shows a stack
    if env:
        child_env.update(env)
    proc = subprocess.run(
        [sys.executable, str(path), *args],
        cwd=workdir,
        env=child_env,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    report = f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == 0, f"child exited with {proc.returncode}\n{report}"
    assert proc.stdout.rstrip().endswith("CHILD OK"), f"child did not finish\n{report}"
    return proc.stdout


@pytest.fixture
def run_child(tmp_path: Path) -> RunChild:
    """``run_child(script, *args, env=None, name="child.py") -> stdout``."""

    def run(script: str, *args: str, env: Optional[Dict[str, str]] = None, name: str = "child.py") -> str:
        return run_child_script(script, tmp_path, args, env, name)

    return run


@pytest.fixture(params=["cuda"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The generic suites' pools on the CUDA backend, in this process (test_generic_cuda.py);
    overrides tests/conftest.py's host and null."""
    made = Backend(request.param)
    yield made
    made.close()
