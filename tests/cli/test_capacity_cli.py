"""Smallest capacity as the headline of ``pypool size`` / ``pypool replay`` and the PyTorch
comparison's refusal without a CUDA build of torch (CPU only; the comparison itself runs
in tests/gpu/test_torch_compare.py on the simulated device)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, List

import pytest

import pypool
from pypool import torch_compare
from pypool.replay import replay
from pypool.sizing import suggest_config
from pypool.workloads import generate

PKG_PARENT = str(Path(pypool.__file__).resolve().parent.parent)
MiB = 1 << 20


def _cli(args: List[str], **env_extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = PKG_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra)
    # cwd: not the source tree, whose pypool/ has no compiled core.
    return subprocess.run([sys.executable, "-m", "pypool", *args], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tempfile.gettempdir())


def test_size_headline_rows_are_the_smallest_caps() -> None:
    t = generate("growing_batch", scale=0.05)
    adv = suggest_config(t, jobs=2, objective="pool_size")
    rows = {r["label"]: r for r in adv.capacity_rows()}
    assert list(rows) == ["pypool defaults", "pypool expandable", "pypool suggested"]
    for r in rows.values():
        cap = r["min_capacity"]
        assert cap % (2 * MiB) == 0 and cap >= t.peak_live()
        assert r["over_floor"] == pytest.approx(cap / t.peak_live())
        conf = r["conf"] + ("," if r["conf"] else "")
        assert replay(t, f"{conf}max_pool_size:{cap}").ooms == 0
        assert replay(t, f"{conf}max_pool_size:{cap - 2 * MiB}").ooms > 0
        assert r["sync_at_min_per_1k_allocs"] is not None
    assert rows["pypool suggested"]["min_capacity"] <= rows["pypool defaults"]["min_capacity"]
    text = adv.to_text()
    assert text.index("smallest capacity without out-of-memory") < text.index("PYPOOL_CONF")


def test_size_prints_the_suggestions_syncs_at_its_cap() -> None:
    # Note [Sync budget]: the budget covers the whole device, not the smallest cap; the
    # text says what the suggestion makes there, and names plain expandable segments
    # when they need at most 0.1% more and sync less there.
    t = generate("transformer", scale=0.05)
    adv = suggest_config(t, capacity="23GiB", jobs=2, objective="pool_size")
    at_cap = adv.sync_per_1k(adv.at_min["best"])
    text = adv.to_text()
    assert (f"at the cap       {at_cap:.2f} synchronizing device calls per 1,000 allocations with the "
            f"suggestion capped at {adv.min_pool_size // MiB:,} MiB (not budgeted)") in text
    exp = adv.sync_per_1k(adv.at_min["expandable"])
    assert adv.min_pool_size_expandable is not None
    if adv.min_pool_size_expandable <= adv.min_pool_size * 1.001 and exp < at_cap:
        assert f"makes {exp:.2f} per 1,000 at its cap" in text
    else:
        assert "pypool expandable needs" not in text
    # PyTorch's rows were not run: its 0 is worded as an assumption.
    assert "assuming PyTorch native makes none on a roomy device: its rows were not run" in text


def test_size_candidates_are_all_it_compares_and_the_base_row_says_base() -> None:
    t = generate("growing_batch", scale=0.05)
    adv = suggest_config(t, jobs=2, objective="pool_size", base="reclaim_threshold:0.0",
                         candidates=["expandable_segments:true,reclaim_threshold:0.0", "growth:double"])
    # No descent and no garbage-collection variants: the candidates and the base only.
    assert {c.conf for c in adv.candidates} <= {
        "reclaim_threshold:0.0", "expandable_segments:true,reclaim_threshold:0.0", "growth:double"}
    assert adv.capacity_rows()[0]["label"] == "pypool base"
    text = adv.to_text()
    assert "pypool defaults" not in text and "\nbase             peak reserved" in text
    assert suggest_config(t, jobs=2, candidates=["growth:double"]).capacity_rows()[0]["label"] == "pypool defaults"


def test_size_cli_json_has_capacity_rows_and_says_what_to_install() -> None:
    # A Python that is not there: PyTorch's rows are skipped with the install hint.
    proc = _cli(["size", "--workload", "kv_cache", "--scale", "0.02", "--json", "--jobs", "1"],
                PYPOOL_TORCH_PYTHON="/nonexistent/python")
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert [r["label"] for r in d["min_capacity"]][:1] == ["pypool defaults"]
    assert d["objective"] == "pool_size" and d["torch"] == []
    assert "pip install torch==2.14.1" in d["torch_note"] and "PYPOOL_TORCH_PYTHON" in d["torch_note"]


def test_replay_prints_min_capacity_and_compare_refuses_without_cuda_torch() -> None:
    proc = _cli(["replay", "--workload", "kv_cache", "--scale", "0.02"])
    assert proc.returncode == 0, proc.stderr
    assert "smallest capacity without out-of-memory" in proc.stdout and "pypool expandable" not in proc.stdout
    proc = _cli(["replay", "--workload", "kv_cache", "--scale", "0.02", "--compare",
                 "--torch-python", "/nonexistent/python"])
    assert proc.returncode == 1
    assert "pypool expandable" in proc.stdout  # pypool's rows still come
    assert "--torch-python: /nonexistent/python is not an executable file" in proc.stderr
    assert "pip install torch==2.14.1" in proc.stderr


def test_no_cuda_torch_here_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from pypool import simdevice

    if not simdevice.available():
        pytest.skip("the simulated device is not built into this pypool")
    monkeypatch.delenv(torch_compare.TORCH_PYTHON_ENV, raising=False)
    monkeypatch.setattr(torch_compare, "_has_cuda_torch_here", lambda: "a CPU-only build")
    with pytest.raises(torch_compare.TorchUnavailable, match="pip install torch==2.14.1") as e:
        torch_compare.find_torch_python()
    assert "--torch-python" in str(e.value) and sys.executable in str(e.value)
    monkeypatch.setattr(torch_compare, "_has_cuda_torch_here", lambda: None)
    assert torch_compare.find_torch_python() == sys.executable
    monkeypatch.setenv(torch_compare.TORCH_PYTHON_ENV, sys.executable)
    monkeypatch.setattr(torch_compare, "_has_cuda_torch_here", lambda: "a CPU-only build")
    monkeypatch.setattr(torch_compare, "_probe_python", lambda path: None)
    assert torch_compare.find_torch_python() == sys.executable


def test_size_says_plainly_when_the_trace_does_not_fit(tmp_path: Path) -> None:
    # Issue 14 (review): with a capacity below the floor, size printed "utilization 1.000",
    # "min pool size unlimited; no OOM at that cap" and an empty "capped PYPOOL_CONF=", rc 0.
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-P", "-m", "pypool", "size", "--workload", "kv_cache", "--scale", "0.05",
                        "--capacity", "1MiB", "--no-torch", "--jobs", "1"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "DOES NOT FIT" in r.stdout and "1.00 MiB capacity" in r.stdout
    assert "utilization" not in r.stdout.split("DOES NOT FIT")[0].splitlines()[-1]
    assert "min pool size" not in r.stdout and "capped           PYPOOL_CONF=" not in r.stdout


def test_size_refuses_a_cap_in_the_base(tmp_path: Path) -> None:
    # A cap in --base was silently replaced by the search (review of issue 14).
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-P", "-m", "pypool", "size", "--workload", "kv_cache", "--scale", "0.05",
                        "--base", "max_pool_size:1GiB", "--no-torch"],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 2 and "--capacity" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_torch_python_that_is_not_a_cuda_torch_python_is_refused_up_front(tmp_path: Any) -> None:
    # A program that is not Python (exit 0, no output) and a Python whose torch is the CPU
    # build both ran every child and printed per-row errors with exit status 0.
    from pypool import simdevice

    if not simdevice.available():
        pytest.skip("the simulated device is not built into this pypool")
    fake = tmp_path / "notpython"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    proc = _cli(["replay", "--workload", "kv_cache", "--scale", "0.02", "--compare", "--torch-python", str(fake)])
    assert proc.returncode == 1, proc.stderr
    assert f"--torch-python: {fake} is not a Python that pypool could run" in proc.stderr
    assert "pip install torch==2.14.1" in proc.stderr and "PyTorch native" not in proc.stdout
    import importlib.util

    if importlib.util.find_spec("torch") is None or torch_compare._has_cuda_torch_here() is None:
        return  # the CPU-torch case needs this Python to have the CPU build
    proc = _cli(["replay", "--workload", "kv_cache", "--scale", "0.02", "--compare"],
                PYPOOL_TORCH_PYTHON=sys.executable)
    assert proc.returncode == 1, proc.stderr
    assert f"PYPOOL_TORCH_PYTHON: {sys.executable} has a CPU-only build of torch" in proc.stderr


def test_replay_torch_jobs_must_be_positive() -> None:
    # replay clamped --torch-jobs 0 or -3 to 1 silently, where size refuses it.
    for bad in ("0", "-3"):
        proc = _cli(["replay", "--workload", "kv_cache", "--scale", "0.02", "--compare", "--torch-jobs", bad])
        assert proc.returncode == 2, proc.stderr
        assert f"argument --torch-jobs: must be >= 1, got {bad}" in proc.stderr


@pytest.mark.parametrize("workload", ["recorded_gpt_decode", "recorded_cnn_growing_batch"])
def test_readme_capacity_tables_match_what_size_prints_now(workload: str) -> None:
    # The README quoted pypool expandable at 0.00 sync/1k on recorded_gpt_decode while
    # `pypool size` printed 0.02 (its sync count changed after the table was made). Checks
    # the pypool columns of both tables for the two traces that replay in about a second.
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    proc = _cli(["size", "--workload", workload, "--json"], PYPOOL_TORCH_PYTHON="/nonexistent/python")
    assert proc.returncode == 0, proc.stderr
    rows = {r["label"]: r for r in json.loads(proc.stdout)["min_capacity"]}
    labels = ("pypool defaults", "pypool expandable", "pypool suggested")
    MiB = 1 << 20
    caps = [f"{rows[k]['min_capacity'] / MiB:,.0f} ({rows[k]['over_floor']:.3f})" for k in labels]
    sync = [f"{rows[k]['sync_per_1k_allocs']:.2f} / {rows[k]['sync_at_min_per_1k_allocs']:.2f}" for k in labels]
    cap_line = next(ln for ln in readme.splitlines() if ln.startswith(f"| {workload} (") and ln.count("|") == 8)
    sync_line = next(ln for ln in readme.splitlines() if ln.startswith(f"| {workload} | 0") and ln.count("|") == 7)
    assert [c.strip() for c in cap_line.split("|")[5:8]] == caps, (cap_line, caps)
    assert [c.strip() for c in sync_line.split("|")[4:7]] == sync, (sync_line, sync)
