"""``python -m pypool bench``: the CLI end to end (hidden --smoke mode, seconds long), the
GPU child's scenario code on CPU tensors, and the pieces the report is built from."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

import pypool
from pypool import bench, simdevice
from pypool.bench import child as bench_child
from pypool.bench import provenance as bench_provenance
from pypool.bench import gpu as bench_gpu
from pypool.bench import report as bench_report
from pypool.bench import runner as bench_runner
from pypool.bench import settings as bench_settings
from pypool.cli import bench as cli_bench
from pypool.bench import BenchSettings, Progress, summarize

PKG_PARENT = str(Path(pypool.__file__).resolve().parent.parent)

ROOT = Path(__file__).resolve().parents[2]


def _run_cli(args: List[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # The subprocess must import the pypool under test (source tree or installed copy).
    env["PYTHONPATH"] = PKG_PARENT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "pypool", "bench", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)  # catches hangs only: the sim
    # smoke starts several children that import the CUDA build of torch (92 s seen under load)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    d = tmp_path_factory.mktemp("bench")
    args = ["--device", "cpu", "--smoke", "--json", str(d / "out.json"), "--html", str(d / "out.html")]
    png = False
    try:
        import matplotlib  # noqa: F401
        png = True
        args += ["--png", str(d / "out.png")]
    except ImportError:
        pass
    proc = _run_cli(args, d)
    assert proc.returncode == 0, proc.stderr
    return {"dir": d, "proc": proc, "png": png,
            "json": json.loads((d / "out.json").read_text(encoding="utf-8"))}


# ---------------------------------------------------------------------------- CLI
def test_cli_json_structure(smoke_run: Dict[str, Any]) -> None:
    res = smoke_run["json"]
    assert res["schema"] == bench.SCHEMA
    env = res["environment"]
    for key in ("date", "command", "cpu_model", "cpu_count", "python", "pypool", "device"):
        assert env.get(key), f"environment.{key} missing"
    assert env["command"].startswith("python -m pypool bench --device cpu --smoke")
    assert env["device"] == "cpu" and res["gpu"] is None
    assert res["settings"]["mode"] == "smoke"
    timing = res["cpu"]["timing"]
    groups = [r["group"] for r in timing]
    assert groups.count("pairs") == len(bench.PAIR_SIZES)
    assert groups.count("random") == len(bench.RANDOM_MAX_MIB)
    assert groups.count("churn") == 1
    assert groups.count("scaling") == len(res["settings"]["scaling_n_free"])
    for r in timing:
        a = r["pypool"]
        assert a["n"] == res["settings"]["repeats"] == len(a["values"])
        assert 0 < a["min"] <= a["median"] <= a["p99"] <= a["max"]
        if r["group"] == "scaling":
            assert r["glibc"] is None and r["speedup"] is None
        else:
            assert r["baseline"] == "glibc" and r["glibc"]["median"] > 0
            assert r["speedup"] == pytest.approx(r["glibc"]["median"] / a["median"])
            # The ratio the tables show: pypool time / glibc time (< 1: pypool faster).
            assert r["pypool_over_glibc"] == pytest.approx(a["median"] / r["glibc"]["median"])
    replay = res["cpu"]["replay"]
    assert {(r["workload"], r["config"]) for r in replay} == {
        (w, c) for w in ("growing_batch", "kv_cache", "random", "transformer") for c in ("default", "expandable")}
    for r in replay:
        assert r["peak_reserved"] >= r["peak_allocated"] >= r["floor"] > 0
        assert r["utilization"] == pytest.approx(r["floor"] / r["peak_reserved"])
        assert r["events_per_second"]["median"] > 0
    assert res["runtime_seconds"] > 0


def test_cli_prints_tables_and_progress(smoke_run: Dict[str, Any]) -> None:
    out = smoke_run["proc"].stdout
    res = smoke_run["json"]
    # Issue 14: the time ratio's direction is in its name and explained (lower is better).
    assert "glibc/pypool" not in out and "pypool/glibc time" in out and "reserved/floor" in out
    assert "below 1 pypool is faster" in out and "lower is better for pypool" in out
    for r in res["cpu"]["timing"]:
        assert r["case"] in out
    for r in res["cpu"]["replay"]:
        assert r["workload"] in out
    # The header row and the dashes under it have the same width: the table is aligned.
    lines = out.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith("case "))
    assert len(lines[i + 1]) >= len(lines[i].rstrip()) and set(lines[i + 1]) <= {"-", " "}
    # stderr is not a terminal here: one line per finished case instead of a bar.
    err = smoke_run["proc"].stderr
    total = len(res["cpu"]["timing"]) + len(res["cpu"]["replay"])
    assert f"bench [{total}/{total}]" in err and "\r" not in err


def test_cli_html_is_self_contained(smoke_run: Dict[str, Any]) -> None:
    page = (smoke_run["dir"] / "out.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page
    assert "http" not in page  # no external reference of any kind
    assert "pair 512 B" in page


def test_cli_png(smoke_run: Dict[str, Any]) -> None:
    if not smoke_run["png"]:
        pytest.skip("matplotlib not installed")
    assert (smoke_run["dir"] / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_cuda_without_gpu_is_a_clear_error(tmp_path: Path) -> None:
    if pypool._core.cuda_device_count()[0] > 0:  # asks the driver without importing torch
        pytest.skip("this machine has a GPU")
    proc = _run_cli(["--device", "cuda", "--smoke"], tmp_path)
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr and "--device cpu" in proc.stderr


# ---------------------------------------------------------------------------- GPU child
def test_gpu_child_scenarios_on_cpu() -> None:
    """The GPU child's scenarios on CPU tensors (the only way to run that code without a
    GPU), plus a child that fails at set-up: its error is reported, nothing raises."""
    s = BenchSettings.for_mode("smoke")
    out = bench.run_gpu(s, None, allocators=["native", "pypool"], device="cpu")
    assert out["allocators"] == ["native", "pypool"]
    native = [r for r in out["scenarios"] if r["allocator"] == "native"]
    assert [r["scenario"] for r in native] == bench.gpu_scenarios(s)
    for r in native:
        assert not r.get("error"), r
        key = "step_ms" if r["metric"] == "step_ms" else "ns"
        assert r[key]["median"] > 0 and r[key]["p99"] >= r[key]["median"]
        assert r["peak_reserved"] is None  # no allocator statistics on CPU
    trace = next(r for r in native if r["scenario"] == "trace:transformer")
    assert trace["floor"] > 0 and trace["events"] > 0 and trace["ooms"] == 0
    train = next(r for r in native if r["scenario"] == "train:gpt")
    assert train["step_ms"]["n"] == s.gpu["train_steps"] - s.gpu["train_warmup"]
    assert out["children"]["native"]["returncode"] == 0
    failed = out["children"]["pypool"]
    assert failed["returncode"] != 0 and "set-up failed" in failed["error"]
    text = bench_report.format_tables({"environment": {}, "settings": {}, "gpu": out})
    assert "pair 512 B" in text and "train gpt" in text and "GPU errors" in text
    assert "http" not in bench_report.render_html({"environment": {}, "settings": {}, "gpu": out})


def test_pypool_child_statistics_come_from_the_registry() -> None:
    """What the pypool child reads after install(): the registry pool's figures (run here
    on a host-backed registry; a stand-in device object avoids initializing CUDA)."""
    from types import SimpleNamespace

    from pypool import PoolConfig, _core

    _core.registry_reset()
    _core.registry_configure("host", PoolConfig().to_core(), 1 << 32)
    try:
        alloc = bench_child._PypoolAllocator("pypool", None, SimpleNamespace(type="cuda", index=0))
        pool = _core.registry_pool(0)
        ptr = pool.malloc(3 << 20, 0)
        pool.free(ptr)
        st = alloc.stats()
        assert st["peak_allocated"] >= 3 << 20
        assert st["peak_reserved"] >= st["peak_allocated"]
        row = bench_child._with_memory({"floor": 3 << 20}, st)
        assert row["utilization"] == pytest.approx(st["peak_allocated"] / st["peak_reserved"])
        assert row["reserved_over_floor"] == pytest.approx(st["peak_reserved"] / (3 << 20))
        assert row["fragmentation"] is not None and 0 <= row["fragmentation"] <= 1
        alloc.empty_cache()
        alloc.reset_peaks()
        st = alloc.stats()
        assert st["reserved_now"] == st["peak_reserved"] == st["peak_allocated"] == 0
    finally:
        _core.registry_reset()


def test_run_benchmarks_cuda_glue(monkeypatch: pytest.MonkeyPatch) -> None:
    """``device="cuda"`` without a GPU: the suites are stand-ins; what is tested is how
    their results and the GPU's identity end up in the report."""
    gpu = {
        "allocators": ["native", "pypool"], "scenarios_run": ["pairs:512"],
        "children": {"native": {"returncode": 0, "device_info": {
            "name": "Fake GPU", "total_memory": 1 << 34, "capability": "9.0", "cuda_runtime": "13.0",
            "torch": "2.11", "label": "native", "alloc_conf": None}},
            "pypool": {"returncode": 3, "error": "set-up failed: boom"}},
        "scenarios": [{"scenario": "pairs:512", "allocator": "native", "metric": "ns_per_pair",
                       "ns": {"median": 1500.0, "p99": 2000.0, "min": 1400.0, "max": 2100.0, "n": 40},
                       "peak_reserved": 2 << 20, "peak_allocated": 512, "utilization": 512 / (2 << 20)}],
    }
    seen: Dict[str, Any] = {}

    def fake_run_gpu(s: BenchSettings, progress: Progress, names: List[str]) -> Dict[str, Any]:
        seen["names"], seen["total"] = names, progress.total
        return gpu

    monkeypatch.setattr(bench_runner, "_cuda_available", lambda: True)
    monkeypatch.setattr(bench_provenance, "_nvidia_smi", lambda: [])
    monkeypatch.setattr(bench_runner, "run_gpu", fake_run_gpu)
    monkeypatch.setattr(bench_runner, "run_cpu", lambda s, p: {"timing": [], "replay": []})
    res = bench.run_benchmarks(device="cuda", mode="smoke", progress=False, allocators=["native", "pypool"])
    assert seen["names"] == ["native", "pypool"]
    assert seen["total"] >= 2 * len(bench.gpu_scenarios(BenchSettings.for_mode("smoke")))
    env = res["environment"]
    assert env["device"] == "cuda" and env["gpu"] == "Fake GPU"
    assert env["gpu_torch"] == {"name": "Fake GPU", "total_memory": 1 << 34, "capability": "9.0",
                                "cuda_runtime": "13.0", "torch": "2.11"}
    text = bench_report.format_tables(res)
    assert "GPU: Fake GPU" in text and "1,500 (2,000)" in text and "2.00 MiB / 0.0%" in text
    assert "pypool: set-up failed: boom" in text
    assert json.loads(bench.dumps(res))["gpu"]["scenarios"][0]["ns"]["median"] == 1500.0


# ---------------------------------------------------------------------------- pieces
def test_summarize() -> None:
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.median, s.min, s.max, s.n) == (3.0, 1.0, 5.0, 5)
    assert s.p99 == pytest.approx(4.96)  # linear interpolation between 4 and 5
    assert s.values == (5.0, 1.0, 3.0, 2.0, 4.0)
    assert summarize([7]).to_dict(with_values=False) == {"median": 7.0, "p99": 7.0, "min": 7.0, "max": 7.0, "n": 1}
    with pytest.raises(ValueError, match="values"):
        summarize([])


def test_settings_modes() -> None:
    quick, full = BenchSettings.for_mode("quick"), BenchSettings.for_mode("full")
    assert full.repeats > quick.repeats and full.random_ops > quick.random_ops
    assert BenchSettings.for_mode("quick", repeats=9).repeats == 9
    with pytest.raises(ValueError, match="mode"):
        BenchSettings.for_mode("fast")
    with pytest.raises(ValueError, match="repeats"):
        BenchSettings.for_mode("quick", repeats=0)


def test_random_live_max_follows_rmm_usage() -> None:
    assert bench._random_live_max(1 << 20, 1000) == 1000  # capped
    assert bench._random_live_max(1024 << 20, 1000) == bench.RMM_MAX_USAGE // (512 << 20)


class _FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_and_lines() -> None:
    tty = _FakeTTY()
    p = Progress(2, stream=tty)
    p.start("one")
    p.finish("one", "ok")
    p.finish("two")
    p.close()
    assert "\r" in tty.getvalue() and "2/2" in tty.getvalue() and "[" + "#" * 24 + "]" in tty.getvalue()
    plain = io.StringIO()
    p = Progress(2, stream=plain)
    p.start("one")
    p.finish("one", "12 ns")
    assert plain.getvalue() == "bench [1/2] one: 12 ns\n"
    quiet = io.StringIO()
    p = Progress(2, stream=quiet, enabled=False)
    p.finish("one")
    assert quiet.getvalue() == ""


def test_text_table_aligns() -> None:
    t = bench_report.text_table(["name", "ns"], [["a", "1.5"], ["longer", "100"]], right=[False, True])
    lines = t.splitlines()
    assert lines[0] == "name     ns"
    assert lines[2] == "a       1.5" and lines[3] == "longer  100"


def test_dumps_is_strict_json() -> None:
    text = bench.dumps({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": 2}})
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": 2}}


# ---------------------------------------------------------------------------- simulated device
def _sim_usable() -> bool:
    """The simulated device is built in and torch is a CUDA build (the sim smoke test's
    precondition; the CPU venv has neither)."""
    return simdevice.available() and simdevice.torch_has_cuda_libs() is None


def test_cli_sim_unavailable_is_a_one_line_error(tmp_path: Path) -> None:
    if _sim_usable():
        pytest.skip("the simulated device works here (test_bench_sim_smoke covers it)")
    proc = _run_cli(["--device", "sim", "--smoke", "--no-progress"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pypool bench: --device sim: "), proc.stderr
    assert ("not built into this pypool" in lines[0] or "CUDA build" in lines[0]
            or "torch is not installed" in lines[0])
    assert proc.stdout == ""


def _cli_args(**kw: Any) -> Any:
    import argparse

    p = argparse.ArgumentParser()
    cli_bench.add_arguments(p)
    argv: List[str] = []
    for k, v in kw.items():
        argv += [f"--{k.replace('_', '-')}"] + ([] if v is True else [str(v)])
    return p.parse_args(argv)


@pytest.mark.parametrize("missing", ["sim", "torch"])
def test_sim_missing_pieces_give_rc2(missing: str, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:

    if missing == "sim":
        monkeypatch.setattr(simdevice, "available", lambda: False)
        want = "the simulated device is not built into this pypool"
    else:
        monkeypatch.setattr(simdevice, "available", lambda: True)
        monkeypatch.setattr(simdevice, "torch_has_cuda_libs", lambda: "the installed torch is a CPU-only build")
        want = "CPU-only build"
    assert cli_bench.run(_cli_args(device="sim", smoke=True, no_progress=True)) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    assert err.startswith("pypool bench: --device sim: ") and want in err


def test_sim_argument_errors(capsys: pytest.CaptureFixture[str]) -> None:
    # Allocators the simulation cannot stand for are refused with the reason, before any probe.
    for name, why in (("cudaMallocAsync", "driver"), ("rmm", "setting")):
        assert cli_bench.run(_cli_args(device="sim", smoke=True, allocators=f"native,{name}")) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{name} is not run on the simulated device" in err and why in err
    assert cli_bench.run(_cli_args(device="cpu", smoke=True, sim_memory="1GiB")) == 2
    assert "--sim-memory goes with --device sim" in capsys.readouterr().err
    with pytest.raises(ValueError, match="device"):
        bench.run_benchmarks(device="tpu", mode="smoke")


def test_sim_scenarios_on_cpu() -> None:
    """The simulated device's child scenarios on CPU tensors (no sim, no GPU): every code
    path but the capacity search and the counters, which need the simulation."""
    s = BenchSettings.for_mode("smoke")
    g = {**s.gpu, **s.sim}
    names = bench_settings.sim_scenarios(g)
    assert names[0] == "minmem:kv_cache" and "tspairs:512:2" in names and "cthreads:512:2" in names
    assert not [n for n in names if "meta" in n]  # meta batches run inside tpairs/tspairs
    out = bench.run_gpu(s, None, allocators=["native"], device="cpu", scenarios=names)
    rows = {r["scenario"]: r for r in out["scenarios"]}
    assert list(rows) == names
    mm = rows["minmem:kv_cache"]
    assert not mm.get("error") and mm["events"] > 0 and mm["floor"] > 0
    assert mm["cold"]["ok"] and mm["warm"]["ok"] and mm["min_capacity"] is None
    assert "not on the simulated device" in mm["min_capacity_note"]
    for name in names[1:]:
        r = rows[name]
        if name.startswith("cthreads"):
            assert "no C entry point" in r["skipped"]
            continue
        assert not r.get("error"), r
        assert r["ns"]["median"] > 0 and r["cpu_ns"]["median"] > 0 and r["threads"] == int(name.split(":")[2])
        assert r["device"] == "cpu" and "GPU time" not in r["timing"]
        assert r["meta_cpu_ns"]["n"] == r["cpu_ns"]["n"] == len(r["over_meta_cpu_ns_values"])
        assert r["over_meta_cpu_ns_values"] == pytest.approx(
            [c - m for c, m in zip(r["cpu_ns_values"], r["meta_cpu_ns_values"])])
    text = bench_report.sim_tables(out)
    assert "HOST OVERHEAD ON A SIMULATED DEVICE" in text and "meta (no allocator)" in text
    assert "min capacity MiB" in text and "TorchScript fork" in text


def test_sim_tables_from_a_result() -> None:
    """The report of a simulated-device result: capacities, x floor, a disagreeing
    confirmation, call counts, ratios of pypool to native side by side."""
    MiB = 1 << 20

    def pair(sc: str, a: str, ns: float) -> Dict[str, Any]:
        return {"scenario": sc, "allocator": a, "metric": "ns_per_pair",
                "ns": {"median": ns, "p99": ns * 1.5}, "thread_ns": {"median": ns * 2, "p99": ns * 3},
                "cpu_ns": {"median": ns / 2, "p99": ns}, "meta_cpu_ns": {"median": 100.0},
                "over_meta_cpu_ns": {"median": ns / 2 - 100}}

    rows: List[Dict[str, Any]] = []
    for a, cap, agrees in (("native", 1200 * MiB, True), ("pypool", 1100 * MiB, False)):
        rows.append({"scenario": "minmem:transformer", "allocator": a, "metric": "min_capacity",
                     "workload": "transformer", "floor": 1000 * MiB, "peak_reserved": cap + 50 * MiB,
                     "sim_peak": cap + 50 * MiB, "min_capacity": cap, "min_capacity_over_floor": cap / (1000 * MiB),
                     "attempts": [[cap, True, None]] * 3, "scale": 0.25,
                     "calls_cold": {"total": 5000, "sync": 12, "by_name": {"cudaMalloc": 40, "cudaFree": 12, "cudaGetDevice": 4000}},
                     "calls_warm": {"total": 900, "sync": 0, "by_name": {}},
                     "confirm": {"agrees": agrees, "at": {"ok": True}, "below": {"ok": agrees is False},
                                 **({} if agrees else {"disagreement": "fresh child at 1098 MiB: passed"})}})
        rows.append(pair("tpairs:512:1", a, 2000 if a == "native" else 1500))
        rows.append(pair("tspairs:512:4", a, 400 if a == "native" else 500))
    rows.append({"scenario": "cthreads:512:4", "allocator": "native", "skipped": "no C entry point"})
    rows.append(pair("cthreads:512:4", "pypool", 300))
    sim = {"allocators": ["native", "pypool"], "scenarios": rows, "children": {},
           "scenarios_run": ["minmem:transformer", "tpairs:512:1", "tspairs:512:4", "cthreads:512:4"]}
    text = bench_report.sim_tables(sim)
    assert "1,200" in text and "1.200" in text and "1.100" in text
    assert "confirmation disagrees: fresh child at 1098 MiB: passed" in text
    assert "cudaMalloc 40, cudaFree 12" in text and "5,000" in text
    # wall / CPU / CPU above meta cells; pypool/native of CPU and of above-meta, same row
    line = next(x for x in text.splitlines() if x.startswith("512 B") and x.split()[2] == "1")
    assert "2,000 / 1,000 / +900" in line and "1,500 / 750 / +650" in line and line.split()[3] == "100"
    assert line.split()[-3:] == ["0.75", "/", "0.72"]
    ts = next(x for x in text.splitlines() if x.startswith("512 B") and x.split()[2] == "4")
    assert ts.split()[-3:] == ["1.25", "/", "1.50"]
    assert "pypool wall / cpu" in text and "300 / 150" in text
    page = bench_report.render_html({"environment": {"device": "sim"}, "settings": {}, "sim": sim})
    assert "smallest capacity without OOM" in page and "http" not in page


def test_bench_sim_smoke(tmp_path: Path) -> None:
    """End to end on the simulated device (skips where torch lacks CUDA or the sim is not
    built): two allocators, the capacity search confirmed in fresh children."""
    if not _sim_usable():
        pytest.skip("needs the simulated device built into pypool and torch's CUDA build")
    out = tmp_path / "sim.json"
    proc = _run_cli(["--device", "sim", "--smoke", "--allocators", "native,pypool", "--no-progress",
                     "--json", str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text(encoding="utf-8"))
    env = res["environment"]
    assert env["device"] == "sim" and env["simulated_device"]["version"]
    assert "host overhead on a simulated device" in env["timing"]
    sim = res["sim"]
    assert sim["allocators"] == ["native", "pypool"]
    for name, child in sim["children"].items():
        assert child["returncode"] == 0, child
        assert child["device_info"]["simulated"] is True
    rows = {(r["scenario"], r["allocator"]): r for r in sim["scenarios"]}
    for a in ("native", "pypool"):
        mm = rows[("minmem:kv_cache", a)]
        assert not mm.get("error"), mm
        assert mm["min_capacity"] >= mm["floor"] and mm["min_capacity"] % (2 << 20) == 0
        assert mm["sim_peak"] >= mm["min_capacity"] - (2 << 20)
        assert mm["calls_cold"]["total"] > 0 and mm["confirm"]["agrees"] is True, mm["confirm"]
        tp = rows[("tpairs:512:1", a)]
        assert tp["ns"]["median"] > 0 and tp["timing"] == "host overhead on a simulated device"
    assert rows[("cthreads:512:2", "pypool")]["ns"]["median"] > 0
    assert "HOST OVERHEAD ON A SIMULATED DEVICE" in proc.stdout and "SIMULATED CUDA device" in proc.stdout
    assert f"run as: cd {tmp_path} && {sys.executable} -m pypool bench --device sim" in proc.stdout


def test_run_sim_orchestration(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent side of --device sim with stand-in children: memory children once,
    timing children in interleaved rounds with their batches pooled, confirmations at the
    capacity found and 2 MiB below, a disagreeing confirmation reported."""
    MiB = 1 << 20
    calls: List[Any] = []

    def fake_child(name: str, scenarios: List[str], settings: Dict[str, Any], progress: Any,
                   timeout_s: float, device: str, base_env: Any = None, tag: str = "gpu") -> Dict[str, Any]:
        assert device == "sim" and base_env["PYPOOL_SIM_MEMORY"]
        cap = int(base_env["PYPOOL_SIM_MEMORY"])
        calls.append((name, tuple(scenarios), cap))
        rows: List[Dict[str, Any]] = []
        for sc in scenarios:
            kind = sc.split(":")[0]
            if kind == "minmem":
                rows.append({"scenario": sc, "allocator": name, "workload": sc[7:], "floor": 90 * MiB,
                             "min_capacity": 100 * MiB, "min_capacity_over_floor": 100 / 90})
            elif kind == "confirm":
                # pypool "passes" 2 MiB below its answer too: a disagreement to report.
                ok = cap >= 100 * MiB or name == "pypool"
                rows.append({"scenario": sc, "allocator": name, "ok": ok, "oom_at_event": None if ok else 7})
            elif kind == "cthreads" and not name.startswith("pypool"):
                rows.append({"scenario": sc, "allocator": name, "skipped": "no C entry point"})
            else:
                k = sum(1 for c in calls if c[0] == name and len(c[1]) > 1)
                rows.append({"scenario": sc, "allocator": name, "metric": "ns_per_pair",
                             "ns": {"median": 10.0 * k}, "ns_values": [10.0 * k] * 3,
                             "device_calls": {"total": 5, "sync": 0, "per_pair": 0.5}})
        return {"allocator": name, "scenarios": rows, "returncode": 0}

    monkeypatch.setattr(simdevice, "available", lambda: True)
    monkeypatch.setattr(bench_gpu, "_run_child", fake_child)
    s = BenchSettings.for_mode("smoke")
    s = dataclasses.replace(s, sim={**s.sim, "sim_rounds": 3})
    out = bench_gpu.run_sim(s, None, ["native", "pypool"])
    timing = [c for c in calls if len(c[1]) > 1]
    assert [c[0] for c in timing] == ["native", "pypool", "pypool", "native", "native", "pypool"]
    assert [c[0] for c in calls[:2]] == ["native", "pypool"] and calls[0][1] == ("minmem:kv_cache",)
    confirms = sorted((c[0], c[2]) for c in calls if c[1][0].startswith("confirm:"))
    assert confirms == [("native", 98 * MiB), ("native", 100 * MiB), ("pypool", 98 * MiB), ("pypool", 100 * MiB)]
    rows = {(r["scenario"], r["allocator"]): r for r in out["scenarios"]}
    tp = rows[("tpairs:512:1", "native")]
    assert tp["rounds"] == 3 and tp["round_medians"] == [10.0, 20.0, 30.0]
    assert len(tp["ns_values"]) == 9 and tp["ns"]["median"] == 20.0
    assert rows[("cthreads:512:1", "native")]["skipped"]
    assert rows[("minmem:kv_cache", "native")]["confirm"]["agrees"] is True
    bad = rows[("minmem:kv_cache", "pypool")]["confirm"]
    assert bad["agrees"] is False and "at 98 MiB: passed" in bad["disagreement"]
    text = bench_report.sim_tables(out)
    assert "confirmation disagrees" in text and "3 interleaved round(s)" in text
    assert "0.50" in text  # device calls per pair


@pytest.mark.parametrize("fault", ["capacity", "baseline"])
def test_run_sim_confirmation_must_run_where_the_bisection_did(monkeypatch: pytest.MonkeyPatch,
                                                               fault: str) -> None:
    """'confirmed' is evidence only when the fresh child's device has the capacity asked
    for and starts with the bisection's memory in use: a child on a bigger device passes
    and one with more in use runs out, whatever the allocator needs."""
    MiB = 1 << 20

    def fake_child(name: str, scenarios: List[str], settings: Dict[str, Any], progress: Any,
                   timeout_s: float, device: str, base_env: Any = None, tag: str = "gpu") -> Dict[str, Any]:
        cap = int(base_env["PYPOOL_SIM_MEMORY"])
        rows: List[Dict[str, Any]] = []
        for sc in scenarios:
            kind = sc.split(":")[0]
            if kind == "minmem":
                rows.append({"scenario": sc, "allocator": name, "workload": sc[7:], "floor": 90 * MiB,
                             "base_used": 0, "min_capacity": 100 * MiB, "min_capacity_over_floor": 100 / 90})
            elif kind == "confirm":
                ran_at = cap + 4 * MiB if fault == "capacity" else cap
                base = 4 * MiB if fault == "baseline" and cap < 100 * MiB else 0
                ok = ran_at - base >= 100 * MiB
                rows.append({"scenario": sc, "allocator": name, "ok": ok, "capacity": ran_at,
                             "base_used": base, "oom_at_event": None if ok else 7})
            else:
                rows.append({"scenario": sc, "allocator": name, "skipped": "not this test"})
        return {"allocator": name, "scenarios": rows, "returncode": 0}

    monkeypatch.setattr(simdevice, "available", lambda: True)
    monkeypatch.setattr(bench_gpu, "_run_child", fake_child)
    s = BenchSettings.for_mode("smoke")
    out = bench_gpu.run_sim(s, None, ["pypool"])
    row = next(r for r in out["scenarios"] if r["scenario"] == "minmem:kv_cache")
    c = row["confirm"]
    assert c["agrees"] is False, c
    if fault == "capacity":
        assert c["at"]["ok"] is None and "not 104857600" in c["at"]["error"]
    else:
        assert "started with 4194304 bytes in use, the bisection with 0" in c["disagreement"]
    assert "confirmation disagrees" in bench_report.sim_tables(out)



def test_bench_html_wraps_the_table_definitions() -> None:
    # The definitions above bench's tables (what pypool/glibc time means) are single lines
    # of ~300 characters: in the HTML page's scrolling box they ran off the right edge.
    import html as html_mod
    import json
    import re

    from pypool.bench import report as _bench_report

    results = json.loads((ROOT / "benchmarks" / "results" /
                          "2026-11-22-cpu-bench.json").read_text())
    page = _bench_report.render_html(results)
    pre = html_mod.unescape(re.search(r"<pre>(.*)</pre>", page, re.S).group(1))  # type: ignore[union-attr]
    prose = [ln for ln in pre.splitlines() if "  " not in ln.strip()]
    assert prose and max(len(ln) for ln in prose) <= 110, max(prose, key=len)
    assert "pypool/glibc time = pypool's median time / glibc's" in " ".join(ln.strip() for ln in pre.splitlines())
    # The terminal tables are unchanged (tests and users grep them).
    assert "below 1 pypool is faster" in _bench_report.format_tables(results)


def test_bench_ratio_direction_is_explicit() -> None:
    from pypool.bench.report import cpu_timing_table, format_tables

    def summ(m: float) -> Dict[str, float]:
        return {"median": m, "p99": m, "min": m, "max": m}

    slow = {"case": "pair 512 B", "unit": "ns/pair", "group": "pairs", "pypool": summ(72.0), "glibc": summ(10.0),
            "pypool_over_glibc": 7.2, "speedup": 10 / 72}
    fast = {"case": "pair 256 MiB", "unit": "ns/pair", "group": "pairs", "pypool": summ(58.5),
            "glibc": summ(11102.0), "speedup": 11102 / 58.5}  # an old result: only "speedup"
    table = cpu_timing_table([slow, fast])
    assert "pypool/glibc time" in table.splitlines()[0]
    assert re.search(r"pair 512 B .* 7\.20$", table, re.M)        # slower: above 1
    assert re.search(r"pair 256 MiB .* 0\.0053$", table, re.M)    # faster: below 1
    text = format_tables({"cpu": {"timing": [slow]}})
    assert "below 1 pypool is faster" in text


def test_bench_git_revision_never_none(monkeypatch: pytest.MonkeyPatch) -> None:
    rev = bench._git_revision()
    assert rev and rev != "None"
    info = bench._build_info(os.path.dirname(pypool.__file__))
    if info.get("git_revision"):
        assert rev.startswith(info["git_revision"][:12]) or re.fullmatch(r"[0-9a-f]{12}(\+dirty)?", rev)
    # Outside any checkout and without build information: "unknown" and why.
    monkeypatch.setattr(bench_provenance, "_build_info", lambda pkg: {})

    def no_git(*a: Any, **k: Any) -> Any:
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    rev = bench._git_revision()
    assert rev.startswith("unknown (git is not installed here; pypool runs from ") and "no _build_info.json" in rev
    from pypool.bench.report import render_html

    page = render_html({"environment": {"git_revision": rev}})
    assert "None" not in page


def test_installed_build_records_its_revision() -> None:
    """`make install` builds from a git checkout: the wheel carries its revision."""
    path = Path(pypool.__file__).with_name("_build_info.json")
    if not path.exists():
        pytest.skip("pypool runs from a tree without build information")
    info = json.loads(path.read_text())
    assert set(info) == {"git_revision", "dirty", "reason"}
    assert info["git_revision"] or info["reason"]


def test_readme_cpu_ratio_is_pypool_over_glibc() -> None:
    """The README's CPU table: the last column is pypool time / glibc time (its direction
    is in the header), consistent with the two time columns beside it."""
    if not (ROOT / "README.md").exists():
        pytest.skip("no README beside the tests")
    text = (ROOT / "README.md").read_text()
    start = text.index("| case | pypool | glibc | pypool time / glibc time (< 1: pypool faster) |")
    checked = 0
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        try:
            p, g, ratio = (float(c.split()[0].replace(",", "")) for c in cells[1:4])
        except ValueError:
            continue  # the free-block scaling row has no glibc figure
        assert ratio == pytest.approx(p / g, rel=0.03), line  # 2 significant digits
        checked += 1
    assert checked == 7
