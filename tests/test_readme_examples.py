"""Every code block of README.md runs as written, on a CPU machine, the way a new user
pastes it (issue 14): each ```python block in a fresh interpreter, each ```bash / ```sh
block in bash (``python`` on its PATH is this test's interpreter), the trace-format
example through ``Trace.load`` and ``python -m pypool replay``.

All blocks run in order in one scratch directory, so a block may use a file an earlier
one wrote (``step.pickle``, ``my.trace.gz``), as a reader following the README would.

Note [README allowlist]: a block that cannot run here is listed in NOT_HERE with the
reason, matched by a line of it; a listed line that is no longer in the README fails the
test, so the list cannot hide a block that changed. Blocks that need a GPU to *work*
(``pypool.install``) run everywhere: they must succeed where torch sees a GPU (or the
simulated device) and fail with ``pypool.InstallError`` saying why elsewhere.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"

# A distinctive line of the block -> why it does not run in the test suite.
NOT_HERE: Dict[str, str] = {
    "make bench   # main job": "the README's top-level commands: a full build, benchmarks and "
                               "the whole test suite (this test is part of it)",
    "pip install torch==2.14.1": "installs the CUDA build of torch (~5.5 GB) and runs programs on the "
                                 "simulated device; make test-sim runs that suite",
    "python -m pypool bench --quick": "benchmarks: minutes of CPU time, and --device cuda needs a GPU; "
                                      "make bench runs them",
    "tools/dev_build.sh": "development commands: rebuilds, sanitizer builds and the simulated-device "
                          "suite (make sanitize, make test-sim)",
}
# Blocks that need a CUDA GPU to succeed: without one they must raise InstallError.
NEEDS_GPU = 'pypool.install(max_pool_size="40GiB")'
TRACE_HEADER = "# pypool-trace v1"

_FENCE = re.compile(r"^```([\w-]*)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def readme_blocks() -> List[Tuple[int, str, str]]:
    """(line, language, code) of every fenced block of README.md."""
    text = README.read_text()
    return [(text.count("\n", 0, m.start()) + 1, m.group(1).lower(), m.group(2))
            for m in _FENCE.finditer(text)]


BLOCKS = readme_blocks()


def test_the_readme_has_blocks_and_the_allowlist_is_current() -> None:
    assert len(BLOCKS) >= 10
    codes = [code for _, _, code in BLOCKS]
    for line in list(NOT_HERE) + [NEEDS_GPU]:
        assert any(line in code for code in codes), f"README no longer has {line!r}: update NOT_HERE"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Dict[str, str]]:
    """The shared working directory, and an environment whose ``python`` is this one."""
    work = tmp_path_factory.mktemp("readme")
    bindir = work / ".bin"
    bindir.mkdir()
    wrapper = bindir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}", MPLBACKEND="Agg")
    for var in ("PYPOOL_CONF", "PYPOOL_LEAK_CHECK", "PYTHONPATH"):  # a new user's shell
        env.pop(var, None)
    return work, env


def _run(cmd: List[str], cwd: Path, env: Dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _gpu_visible() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # no torch, or a broken one: no GPU for this purpose
        return False


@pytest.mark.parametrize("line, lang, code", BLOCKS, ids=[f"README.md:{ln}-{lang or 'text'}" for ln, lang, _ in BLOCKS])
def test_readme_block_runs(line: int, lang: str, code: str, scratch: Tuple[Path, Dict[str, str]]) -> None:
    work, env = scratch
    for key, reason in NOT_HERE.items():
        if key in code:
            pytest.skip(reason)
    where = f"README.md:{line}"
    if "--png" in code or "save_png" in code:
        pytest.importorskip("matplotlib", reason="PNG output needs matplotlib (pip install pypool[report])")
    if lang == "python":
        path = work / f"readme_{line}.py"
        path.write_text(code)
        out = _run([sys.executable, path.name], work, env)
        if NEEDS_GPU in code:
            if _gpu_visible():  # a GPU or the simulated device: the block must just work
                assert out.returncode == 0, f"{where} failed:\n{code}\n--- stderr ---\n{out.stderr[-3000:]}"
                return
            # Without a GPU the block must fail the documented way, saying why.
            assert out.returncode != 0, f"{where}: install() succeeded without a GPU"
            assert "pypool.InstallError" in out.stderr or "InstallError: pypool.install:" in out.stderr, out.stderr
            assert "Traceback" in out.stderr and out.stderr.strip().splitlines()[-1].count("pypool.install:") == 1
            return
        assert out.returncode == 0, f"{where} failed:\n{code}\n--- stderr ---\n{out.stderr[-3000:]}"
    elif lang in ("bash", "sh", "shell", "console"):
        out = _run(["bash", "-e", "-o", "pipefail", "-c", code], work, env)
        assert out.returncode == 0, f"{where} failed:\n{code}\n--- stderr ---\n{out.stderr[-3000:]}"
        assert "Traceback" not in out.stderr, f"{where}:\n{out.stderr[-3000:]}"
    elif lang == "" and code.startswith(TRACE_HEADER):
        # The trace-format example, pasted into a file as it stands (comments included).
        path = work / "example.trace"
        path.write_text(code)
        from pypool.trace import Trace

        trace = Trace.load(path)
        assert len(trace) == 2 and trace.peak_live() == 64 << 20
        out = _run([sys.executable, "-m", "pypool", "replay", path.name], work, env)
        assert out.returncode == 0, f"{where}: replay of the example failed:\n{out.stderr}"
    elif lang == "text":
        return  # printed output shown for reading (an OOM message, a table): nothing to run
    elif lang == "":
        pytest.fail(f"{where}: a block without a language: give it one (or teach this test what it is)")
    else:
        pytest.fail(f"{where}: this test does not know how to run a ```{lang} block; add it here")


def test_readme_mentions_setup_and_extras() -> None:
    readme = README
    if not readme.exists():
        pytest.skip("no README beside the tests")
    text = readme.read_text()
    assert "PYPOOL_NO_APT" in text and "chromium" in text.lower()
    assert "matplotlib" in text and "CUDA toolkit" in text
