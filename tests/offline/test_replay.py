"""Offline replay: determinism, agreement with a Python-driven pool, OOM counting, the
bundled workloads and the ``replay`` command."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest

import pypool
from pypool.__main__ import main
from pypool.replay import replay, replay_workload
from pypool.sizing import min_pool_size
from pypool.trace import ALLOC, Trace
from pypool.workloads import WORKLOADS, generate

MiB = 1 << 20
GiB = 1 << 30
ROOT = Path(__file__).resolve().parents[2]

SMALL = {"transformer": 0.02, "growing_batch": 0.03, "kv_cache": 0.02, "random": 0.01}


def figures(r: Any) -> Dict[str, Any]:
    d = r.to_dict()
    for k in ("seconds", "events_per_second"):
        d.pop(k)
    return d


def test_same_trace_twice_same_figures() -> None:
    t = generate("random", seed=1, scale=0.02)
    a = replay(t, at_peak=True)
    b = replay(t, at_peak=True)
    assert figures(a) == figures(b)
    assert a.pool is not None and b.pool is not None
    assert a.pool.segments() == b.pool.segments()


def test_generators_are_deterministic_and_seeded() -> None:
    for name in WORKLOADS:
        a, b = generate(name, seed=4, scale=SMALL[name]), generate(name, seed=4, scale=SMALL[name])
        assert a == b, name
    assert generate("transformer", seed=1, scale=0.02) != generate("transformer", seed=2, scale=0.02)


@pytest.mark.parametrize("config", [{}, {"expandable_segments": True}, {"round_up_divisions": 4}])
def test_agrees_with_python_driven_pool(config: Dict[str, Any]) -> None:
    """The C++ replay loop and Pool.malloc/free called from Python end in the same state."""
    t = generate("transformer", seed=0, scale=0.01)
    r = replay(t, config)
    direct = pypool.Pool(backend="null", capacity=80 * GiB, config=config)
    ptr: Dict[int, int] = {}
    live = peak_live = 0
    for act, i, size, stream in zip(t.actions.tolist(), t.ids.tolist(), t.sizes.tolist(), t.streams.tolist()):
        if act == ALLOC:
            ptr[i] = direct.malloc(size, stream)
            live += size
            peak_live = max(peak_live, live)
        else:
            direct.free(ptr.pop(i))
            live -= size
    assert r.pool is not None
    assert r.pool.memory_stats() == direct.memory_stats()
    assert r.pool.segments() == direct.segments()
    assert r.peak_live == peak_live
    assert r.peak_reserved == direct.max_memory_reserved()
    direct.check_invariants()


def test_oom_counting_with_small_capacity() -> None:
    t = Trace.from_events([
        ("a", "a", 40 * MiB), ("a", "b", 40 * MiB), ("a", "c", 10 * MiB),
        ("f", "a"), ("f", "b"), ("a", "d", 50 * MiB), ("f", "c"), ("f", "d"),
    ])
    r = replay(t, capacity=64 * MiB)
    assert r.ooms == 1                       # b does not fit next to a
    assert r.skipped_events == 1             # ... so its free is skipped
    assert r.pool is not None and r.pool.memory_stats()["num_ooms"] == 1
    assert r.peak_live == 90 * MiB           # the trace's demand, not what was served
    assert r.peak_reserved <= 64 * MiB
    assert r.pool.memory_allocated() == 0
    # The same trace with room for it: no OOM.
    assert replay(t, capacity=256 * MiB).ooms == 0


def test_max_pool_size_caps_below_capacity() -> None:
    t = generate("growing_batch", seed=0, scale=SMALL["growing_batch"])
    free_run = replay(t)
    capped = replay(t, {"max_pool_size": free_run.peak_reserved // 2 // MiB * MiB})
    assert capped.ooms > 0
    assert capped.peak_reserved <= free_run.peak_reserved // 2


@pytest.mark.parametrize("name", list(WORKLOADS))
def test_bundled_workloads_replay_without_oom(name: str) -> None:
    t = generate(name, seed=0, scale=SMALL[name])
    assert 1000 < len(t) < 100_000
    t.validate()
    for config in ({}, {"expandable_segments": True}):
        r = replay(t, config)
        assert r.ooms == 0 and r.skipped_events == 0
        assert r.peak_live == t.peak_live() > 0
        assert r.peak_allocated >= r.peak_live
        assert r.peak_reserved >= r.peak_allocated
        assert 0 < r.utilization <= r.allocated_utilization <= 1
        assert r.pool is not None
        r.pool.check_invariants()


@pytest.mark.parametrize("capped", [False, True])
def test_at_peak_reproduces_the_peak_state(capped: bool) -> None:
    """Uncapped, reserved never falls and the peak is found from a coarse timeline plus a
    few Python steps; capped, segments are released and every event is sampled. Both must
    give the first event at which reserved peaks and the pool's state there."""
    t = generate("kv_cache", seed=0, scale=SMALL["kv_cache"])
    config: Dict[str, Any] = {}
    if capped:
        config["max_pool_size"] = min_pool_size(t)  # tight: the pool must release to fit
    r = replay(t, config, at_peak=True, sample_every=1)
    assert r.ooms == 0
    assert r.pool is not None and (r.pool.memory_stats()["num_device_free"] > 0) == capped
    assert r.peak_event is not None and r.peak_pool is not None and r.at_peak is not None
    assert r.timeline["reserved"].max() == r.peak_reserved
    assert r.timeline["reserved"][r.peak_event] == r.peak_reserved
    assert (r.timeline["reserved"][: r.peak_event] < r.peak_reserved).all()  # the first time
    assert r.at_peak["live"] == r.timeline["live"][r.peak_event]
    assert r.at_peak["allocated"] == r.timeline["allocated"][r.peak_event]
    assert r.peak_pool.memory_reserved() == r.peak_reserved == r.at_peak["reserved"]
    assert r.at_peak["free_bytes"] == r.at_peak["reserved"] - r.at_peak["allocated"]
    assert r.fragmentation is not None and 0.0 <= r.fragmentation <= 1.0
    assert len(r.timeline["event"]) == len(t)
    r.peak_pool.check_invariants()


def test_replay_workload_forwards_arguments() -> None:
    r = replay_workload("random", {"round_up_divisions": 4}, seed=2, scale=0.01, capacity="64GiB",
                        max_size=4 * MiB)
    assert r.name == "random" and r.capacity == 64 * GiB and r.config == "round_up_divisions:4"
    t = generate("random", seed=2, scale=0.01, max_size=4 * MiB)
    assert r.events == len(t) and r.peak_live == t.peak_live()
    with pytest.raises(ValueError, match="unknown 'nope'"):
        replay_workload("nope")


def test_replay_argument_errors() -> None:
    t = generate("random", scale=0.01)
    with pytest.raises(ValueError, match="backend"):
        replay(t, backend="cuda")
    with pytest.raises(ValueError, match="capacity"):
        replay(t, capacity="lots")
    with pytest.raises(TypeError, match="trace"):
        replay([1, 2, 3])  # type: ignore[arg-type]


# ---------------------------------------------------------------- command line


def test_cli_replay_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--workload", "random", "--scale", "0.01", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    r = replay(generate("random", scale=0.01))
    assert d["peak_reserved"] == r.peak_reserved and d["peak_live"] == r.peak_live and d["ooms"] == 0
    assert d["fragmentation"] is not None and d["peak_event"] is not None


def test_cli_replay_text_and_saved_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "w.trace.gz"
    assert main(["replay", "--workload", "kv_cache", "--scale", "0.01", "--save-trace", str(path)]) == 0
    first = capsys.readouterr().out
    assert main(["replay", str(path), "--config", "expandable_segments:true"]) == 0
    second = capsys.readouterr().out
    for out in (first, second):
        for word in ("peak live (floor)", "peak reserved", "utilization", "external fragmentation",
                     "out of memory", "M events/s"):
            assert word in out
    assert "expandable_segments:true" in second


def test_cli_replay_torch_snapshot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entries = [{"action": "segment_alloc", "addr": 1 << 40, "size": 20 * MiB, "stream": 0}]
    for i in range(4):
        entries.append({"action": "alloc", "addr": (1 << 40) + i * 4 * MiB, "size": 3 * MiB, "stream": 0})
    for i in range(4):
        entries.append({"action": "free_completed", "addr": (1 << 40) + i * 4 * MiB, "size": 3 * MiB, "stream": 0})
    snap = {"segments": [{"device": 0, "address": 1 << 40, "total_size": 20 * MiB, "blocks": []}],
            "device_traces": [entries]}
    path = tmp_path / "snap.pickle"
    path.write_bytes(pickle.dumps(snap))
    assert main(["replay", str(path)]) == 0
    out = capsys.readouterr().out
    assert "PyTorch reserved   20.00 MiB" in out
    assert main(["replay", str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["torch"]["peak_reserved"] == 20 * MiB and d["peak_live"] == 12 * MiB


def test_cli_replay_report(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    frag = pytest.importorskip("pypool.fragmentation")
    # PNG rendering (matplotlib, seconds) is the fragmentation module's to test; here only
    # that the command asks for it, for both moments.
    pngs: List[str] = []
    monkeypatch.setattr(frag.FragmentationReport, "save_png",
                        lambda self, path, **kw: pngs.append(str(path)) or str(path))
    out_dir = tmp_path / "frag"
    rc = main(["replay", "--workload", "transformer", "--scale", "0.01", "--report", str(out_dir)])
    assert rc == 0
    for label in ("peak", "end"):
        assert (out_dir / f"{label}.txt").stat().st_size > 0
        assert (out_dir / f"{label}.html").stat().st_size > 0
    assert sorted(pngs) == [str(out_dir / "end.png"), str(out_dir / "peak.png")]
    peak_txt = (out_dir / "peak.txt").read_text()
    assert peak_txt.startswith("# transformer: the pool at peak reserved (after event ")
    assert "reports" in capsys.readouterr().out


def test_cli_replay_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["replay"]) == 2
    assert "give a TRACE file or --workload" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "missing.trace")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["replay", "--workload", "random", "--scale", "0.01", "--config", "bogus:1"]) == 2
    assert "unknown option 'bogus'" in capsys.readouterr().err


# Issue 14, "figures that mislead": the source a replay names, and the README's workloads table.


def test_replaying_pypools_own_snapshot_does_not_say_pytorch(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    entries: List[Dict[str, Any]] = [{"action": "segment_alloc", "addr": 1 << 40, "size": 20 * MiB, "stream": 0}]
    for i in range(4):
        entries.append({"action": "alloc", "addr": (1 << 40) + i * 4 * MiB, "size": 3 * MiB, "stream": 0})
    for i in range(4):
        entries.append({"action": "free_completed", "addr": (1 << 40) + i * 4 * MiB, "size": 3 * MiB, "stream": 0})
    snap = {"segments": [{"device": 0, "address": 1 << 40, "total_size": 20 * MiB, "blocks": []}],
            "device_traces": [entries]}
    torch_path, own_path = tmp_path / "torch.pickle", tmp_path / "pypool.pickle"
    torch_path.write_bytes(pickle.dumps(snap))
    own_path.write_bytes(pickle.dumps(dict(snap, pypool={"allocator": "pypool", "memory_stats": {}})))
    assert main(["replay", str(torch_path)]) == 0
    assert "PyTorch reserved" in capsys.readouterr().out
    assert main(["replay", str(own_path)]) == 0
    out = capsys.readouterr().out
    assert "PyTorch" not in out
    assert "by pypool (the snapshot is pypool's own)" in out and "pypool against itself" in out


def test_pypool_snapshot_round_trip_label(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A snapshot written by pypool.dump_snapshot, with history, replays labelled pypool."""
    pool = pypool.Pool(backend="null", capacity=8 * GiB)
    pool._pool.set_history(True, 1000)
    ptrs = [pool.malloc(3 * MiB) for _ in range(4)]
    for p in ptrs:
        pool.free(p)
    path = tmp_path / "own.pickle"
    pypool.dump_snapshot(path, pool=pool)
    # An assertion, not a skip: a pypool snapshot that stopped replaying is a regression.
    rc = main(["replay", str(path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "PyTorch" not in out and "by pypool (the snapshot is pypool's own)" in out


def _readme_workloads_rows() -> Dict[str, List[float]]:
    text = (ROOT / "README.md").read_text()
    start = text.index("| workload | floor | default: peak reserved (×floor)")
    rows: Dict[str, List[float]] = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        ratios = [float(m) for m in re.findall(r"\((\d+\.\d+)×\)", line)]
        rows[cells[0]] = ratios
    return rows


def test_readme_workloads_table_is_one_measure_and_true() -> None:
    """The README's CPU workloads table shows reserved/floor in both columns, and the
    figures are what a replay gives today (deterministic, so exactly reproducible)."""
    if not (ROOT / "README.md").exists():
        pytest.skip("no README beside the tests")
    rows = _readme_workloads_rows()
    assert set(rows) == {"transformer", "growing_batch", "kv_cache", "random"}
    from pypool.workloads import generate

    for name, (default, expandable) in rows.items():
        t = generate(name)
        for shown, cfg in ((default, None), (expandable, "expandable_segments:true")):
            r = replay(t, cfg)
            assert r.completed and shown == pytest.approx(r.peak_reserved / r.peak_live, abs=0.0006), (name, cfg)
