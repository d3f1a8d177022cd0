"""The CUDA backend builds without any CUDA toolkit (issue 14: a GPU machine often has
only the driver and torch's pip wheels). Configures and builds the extension with CMake
told that the toolkit does not exist, then asks that build's ``python -m pypool info``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _tools() -> None:
    for tool in ("cmake", "ninja"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found")
    if not (ROOT / "CMakeLists.txt").exists():
        pytest.skip("no source tree beside the tests")
    try:
        import pybind11  # noqa: F401
    except ImportError:
        pytest.skip("pybind11 is not installed")


def _configure(build: Path, *extra: str) -> str:
    import pybind11

    cmd = ["cmake", "-S", str(ROOT), "-B", str(build), "-G", "Ninja",
           f"-DPython_EXECUTABLE={sys.executable}", f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
           # Hide the toolkit from every find_package(CUDAToolkit) in the project.
           "-DCMAKE_DISABLE_FIND_PACKAGE_CUDAToolkit=ON", *extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout + p.stderr


def test_cuda_backend_builds_without_the_toolkit(tmp_path: Path) -> None:
    _tools()
    # Kept between runs (incremental): the first build takes about a minute.
    build = ROOT / "build" / "test-no-toolkit"
    out = _configure(build, "-DPYPOOL_WITH_CUDA=ON")
    assert "CUDA backend ON" in out and "not re-checked against <cuda.h>" in out, out
    assert "simulated device not built (optional" in out, out
    p = subprocess.run(["cmake", "--build", str(build), "--target", "_core"],
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    assert "cuda_driver_check" not in p.stdout  # no toolkit: the drift check is not built
    # That build's extension inside a copy of the Python package.
    pkg = tmp_path / "pypool"
    shutil.copytree(ROOT / "pypool", pkg, ignore=shutil.ignore_patterns("_core*.so", "_simdevice"))
    (so,) = build.glob("_core*.so")
    shutil.copy2(so, pkg)
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    r = subprocess.run([sys.executable, "-P", "-m", "pypool", "info", "--json"], env=env,
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["library"].startswith(str(tmp_path)), info
    assert info["cuda_backend_compiled"] is True, info
    assert "warning" not in info and "WARNING" not in r.stderr

    # And it drives a CUDA driver: the simulated device's libcuda stand-in, when the
    # installed pypool has it (device memory, then VMM for expandable segments).
    from pypool import simdevice

    if not simdevice.available():
        pytest.skip("the simulated device is not built into the installed pypool")
    check = ("import pypool\n"
             "p = pypool.Pool(backend='cuda', device=0, expandable_segments=True)\n"
             "a = p.malloc(64 << 20); b = p.malloc(1000)\n"
             "assert p.memory_stats()['num_segment_map'] >= 1, p.memory_stats()\n"
             "p.free(a); p.free(b); p.empty_cache()\n"
             "print('cuda backend ok', pypool._core.__file__)\n")
    r = subprocess.run([sys.executable, "-P", "-m", "pypool", "simdevice", "--devices", "1", "--",
                        "env", f"PYTHONPATH={tmp_path}", sys.executable, "-P", "-c", check],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"cuda backend ok {pkg}" in r.stdout, r.stdout


def test_build_without_cuda_backend_warns_at_configure(tmp_path: Path) -> None:
    _tools()
    out = _configure(tmp_path / "b", "-DPYPOOL_WITH_CUDA=OFF", "-DPYPOOL_BUILD_SIMDEVICE=OFF")
    assert "CMake Warning" in out and "WITHOUT the CUDA backend" in out, out
