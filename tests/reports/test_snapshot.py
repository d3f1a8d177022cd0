"""Memory snapshots in torch's schema, allocation history, and torch's offline tools."""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import tempfile
from pathlib import Path
import sys
import textwrap
import time

import pytest

import pypool
from pypool import _context, _core
from pypool.snapshot import dump_snapshot, load_snapshot, record_history, snapshot

MiB = 1 << 20

SEGMENT_KEYS = {"device", "address", "total_size", "allocated_size", "active_size", "requested_size",
                "stream", "segment_type", "segment_pool_id", "is_expandable", "frames", "blocks"}
BLOCK_KEYS = {"address", "size", "requested_size", "state", "frames"}
TRACE_KEYS = {"action", "addr", "size", "stream", "time_us", "frames"}


def _allocate_here(pool, size, stream=0):
    """A named frame that the captured stacks must show."""
    return pool.malloc(size, stream)


@pytest.fixture
def scenario():
    """A pool with history on and a known sequence of events behind it.

    Yields (pool, live pointers); the history holds, in order: segment_alloc (small),
    alloc a, segment_alloc (large), alloc b, free_requested a, free_completed a,
    segment_free (small, released by the out-of-memory path), oom, alloc c (small),
    alloc d (stream 3), free_requested d (pending: stream 9 busy).
    """
    p = pypool.Pool("host", capacity="64MiB")
    record_history(pool=p, stacks="python")
    a = _allocate_here(p, 1000)
    b = _allocate_here(p, 5 * MiB)
    p.free(a)
    # The C++ OutOfMemoryError reaches Python as RuntimeError (pypool.OutOfMemoryError
    # derives from it). 60 MiB fits the 64 MiB device but not what it has free, even once
    # the cached small segment is released (a request past the whole device would be
    # refused without releasing anything).
    with pytest.raises(RuntimeError, match="out of memory"):
        p.malloc(60 * MiB)
    c = _allocate_here(p, 3000)
    d = _allocate_here(p, 200, stream=3)
    p.record_stream(d, 9)
    p.backend.hold_stream(9)
    p.free(d)
    yield p, (b, c)
    p.backend.release_stream(9)
    record_history(False, pool=p)


def test_schema_of_segments_blocks_and_traces(scenario):
    p, (b, c) = scenario
    s = snapshot(pool=p)
    assert {"segments", "device_traces", "allocator_settings"} <= set(s)
    assert len(s["segments"]) == 3
    for seg in s["segments"]:
        assert set(seg) == SEGMENT_KEYS
        assert seg["segment_pool_id"] == (0, 0) and seg["device"] == 0
        assert sum(blk["size"] for blk in seg["blocks"]) == seg["total_size"]
        for blk in seg["blocks"]:
            assert set(blk) == BLOCK_KEYS
            assert blk["state"] in ("active_allocated", "active_pending_free", "inactive")
        alloc = [blk for blk in seg["blocks"] if blk["state"] == "active_allocated"]
        active = [blk for blk in seg["blocks"] if blk["state"] != "inactive"]
        assert seg["allocated_size"] == sum(blk["size"] for blk in alloc)
        assert seg["active_size"] == sum(blk["size"] for blk in active)
        assert seg["requested_size"] == sum(blk["requested_size"] for blk in active)
    by_addr = {blk["address"]: blk for seg in s["segments"] for blk in seg["blocks"]}
    assert by_addr[b]["size"] == 5 * MiB and by_addr[b]["requested_size"] == 5 * MiB
    assert by_addr[c]["size"] == 3072 and by_addr[c]["requested_size"] == 3000
    pending = [blk for blk in by_addr.values() if blk["state"] == "active_pending_free"]
    assert len(pending) == 1 and pending[0]["size"] == 512
    streams = sorted(seg["stream"] for seg in s["segments"])
    assert streams == [0, 0, 3]
    kinds = sorted(seg["segment_type"] for seg in s["segments"])
    assert kinds == ["large", "small", "small"]
    settings = s["allocator_settings"]
    assert settings["small_segment_size"] == 2 * MiB and settings["max_split_size"] is None
    assert s["pypool"]["memory_stats"]["num_ooms"] == 1
    for e in s["device_traces"][0]:
        assert TRACE_KEYS <= set(e)


def test_history_in_order_with_actions(scenario):
    p, (b, c) = scenario
    trace = snapshot(pool=p)["device_traces"][0]
    actions = [e["action"] for e in trace]
    assert actions == ["segment_alloc", "alloc", "segment_alloc", "alloc", "free_requested", "free_completed",
                       "segment_free", "oom", "segment_alloc", "alloc", "segment_alloc", "alloc",
                       "free_requested"]
    sizes = [e["size"] for e in trace]
    assert sizes[:4] == [2 * MiB, 1000, 20 * MiB, 5 * MiB]  # alloc entries carry requested bytes, as torch
    assert trace[7]["size"] == 60 * MiB and "device_free" in trace[7]
    assert trace[6]["addr"] == trace[0]["addr"]  # the small segment went back
    assert trace[3]["addr"] == b and trace[9]["addr"] == c
    assert trace[10]["stream"] == 3 and trace[11]["stream"] == 3
    # Times are Unix-epoch microseconds (converted from the core's steady clock).
    times = [e["time_us"] for e in trace]
    assert times == sorted(times)
    assert abs(times[-1] - time.time() * 1e6) < 600e6


def test_frames_with_python_stacks(scenario):
    p, (b, c) = scenario
    s = snapshot(pool=p)
    blk = next(blk for seg in s["segments"] for blk in seg["blocks"] if blk["address"] == c)
    names = [f["name"] for f in blk["frames"]]
    assert "_allocate_here" in names and "scenario" in names
    f = blk["frames"][names.index("_allocate_here")]
    assert f["filename"] == __file__ and isinstance(f["line"], int)
    # innermost first: the helper comes before the fixture that called it
    assert names.index("_allocate_here") < names.index("scenario")
    alloc = next(e for e in s["device_traces"][0] if e["action"] == "alloc" and e["addr"] == c)
    assert "_allocate_here" in [fr["name"] for fr in alloc["frames"]]
    free_blocks = [blk for seg in s["segments"] for blk in seg["blocks"] if blk["state"] == "inactive"]
    assert all(blk["frames"] == [] for blk in free_blocks)


def test_stacks_none_and_switching_off():
    p = pypool.Pool("host", capacity="64MiB")
    record_history(pool=p, stacks="none", max_entries=16)
    x = p.malloc(4096)
    s = snapshot(pool=p)
    assert [e["action"] for e in s["device_traces"][0]] == ["segment_alloc", "alloc"]
    assert all(e["frames"] == [] for e in s["device_traces"][0])
    assert id(p._pool) not in _context._refs
    # ring buffer of 16: only the newest 16 events are kept
    for _ in range(20):
        p.free(p.malloc(512))
    assert len(snapshot(pool=p)["device_traces"][0]) == 16
    record_history(False, pool=p)
    p.free(x)
    assert snapshot(pool=p)["device_traces"][0] == []


def test_state_mode_keeps_stacks_without_events():
    p = pypool.Pool("host", capacity="64MiB")
    record_history("state", pool=p)
    assert _context._refs.get(id(p._pool)) == 1
    record_history("state", pool=p)  # again: capture is not taken twice
    assert _context._refs.get(id(p._pool)) == 1
    x = _allocate_here(p, 2048)
    s = snapshot(pool=p)
    assert s["device_traces"][0] == []
    blk = next(blk for seg in s["segments"] for blk in seg["blocks"] if blk["address"] == x)
    assert "_allocate_here" in [f["name"] for f in blk["frames"]]
    record_history(None, pool=p)
    assert id(p._pool) not in _context._refs
    p.free(x)


def _free_here(p, ptr):
    p.free(ptr)


def _release_here(p):
    p.empty_cache()


def test_free_stacks_on_free_and_release_entries():
    # Note [Free stacks]: free_stacks=True gives free_requested / free_completed the
    # free's stack and the segment_free of an empty_cache the caller's; without it they
    # keep the allocation's stack and none.
    for free_stacks in (True, False):
        p = pypool.Pool("host", capacity="64MiB")
        record_history(pool=p, free_stacks=free_stacks)
        x = _allocate_here(p, 4096)
        _free_here(p, x)
        _release_here(p)
        trace = snapshot(pool=p)["device_traces"][0]
        names = {e["action"]: [f["name"] for f in e["frames"]] for e in trace}
        assert set(names) == {"segment_alloc", "alloc", "free_requested", "free_completed", "segment_free"}
        assert "_allocate_here" in names["alloc"]
        for action in ("free_requested", "free_completed"):
            assert ("_free_here" in names[action]) == free_stacks, (action, names)
            assert ("_allocate_here" in names[action]) != free_stacks, (action, names)
        assert ("_release_here" in names["segment_free"]) == free_stacks, names
        if not free_stacks:
            assert names["segment_free"] == []
        record_history(False, pool=p)
        # history off: a new history records no free stacks until asked again
        record_history(pool=p)
        _free_here(p, _allocate_here(p, 4096))
        trace = snapshot(pool=p)["device_traces"][0]
        assert all("_free_here" not in [f["name"] for f in e["frames"]] for e in trace)
        record_history(False, pool=p)


def test_free_stacks_needs_python_stacks():
    p = pypool.Pool("host", capacity="64MiB")
    with pytest.raises(ValueError, match="free_stacks"):
        record_history(pool=p, stacks="none", free_stacks=True)
    with pytest.raises(TypeError, match="free_stacks"):
        record_history(pool=p, free_stacks="yes")


def test_trace_entries_carry_the_threads_metadata_label():
    # Note [Trace metadata]: the label set on a thread is copied into the entries it makes.
    import threading

    from pypool import _core

    p = pypool.Pool("host", capacity="64MiB")
    record_history(pool=p, stacks="none")
    a = p.malloc(4096)
    _core.set_trace_metadata("step 3")
    try:
        assert _core.trace_metadata() == "step 3"
        b = p.malloc(8192)
        other = []
        t = threading.Thread(target=lambda: other.append(p.malloc(16384)))
        t.start()
        t.join()
        p.free(b)
    finally:
        _core.set_trace_metadata("")
    c = p.malloc(512)
    labels = [(e["action"], e["size"], e["user_metadata"]) for e in snapshot(pool=p)["device_traces"][0]]
    assert ("alloc", 4096, "") in labels and ("alloc", 512, "") in labels
    assert ("alloc", 8192, "step 3") in labels and ("free_requested", 8192, "step 3") in labels
    assert ("alloc", 16384, "") in labels  # made by another thread
    for ptr in (a, c, *other):
        p.free(ptr)
    record_history(False, pool=p)


def test_metadata_labels_past_the_cap_never_raise():
    # Note [Trace metadata]: past the table's cap new labels share one marked id with a
    # warning; the labels already recorded stay right. In a child: the table is per process.
    code = textwrap.dedent("""
        import warnings
        import pypool
        from pypool import _core
        from pypool.snapshot import record_history, snapshot
        p = pypool.Pool("host", capacity="64MiB")
        record_history(pool=p, stacks="none")
        _core.set_trace_metadata("first")
        a = p.malloc(4096)
        for i in range(_core.trace_metadata_cap() - 2):  # fills the table ("", "first" and these)
            _core.set_trace_metadata(f"label {i}")
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            _core.set_trace_metadata("late")
            b = p.malloc(8192)
        assert [x.category for x in w] == [RuntimeWarning], w
        assert "2**20" in str(w[0].message)
        assert _core.trace_metadata() == "late"
        _core.set_trace_metadata("label 7")  # kept: still its own id
        c = p.malloc(512)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _core.set_trace_metadata("later")  # no second warning, no error
        labels = {e["size"]: e["user_metadata"] for e in snapshot(pool=p)["device_traces"][0]
                  if e["action"] == "alloc"}
        assert labels[4096] == "first" and labels[512] == "label 7", labels
        assert labels[8192] == "(pypool: label not kept, more than 2**20 distinct labels)", labels
        print("ok")
    """)
    r = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_memory_viz_functions_accept_the_snapshot(scenario):
    from torch.cuda import _memory_viz

    p, _ = scenario
    s = snapshot(pool=p)
    summary = _memory_viz.segsum(s)  # asserts that every segment's bytes add up
    assert "segments: 3" in summary
    assert "total_reserved: 24.0MiB" in summary
    text = _memory_viz.trace(s)
    assert "13 entries" in text
    assert "raise OutOfMemoryError # 60.0MiB requested" in text
    assert "cudaMalloc(" in text and "cudaFree(" in text
    assert _memory_viz.segment_plot(s).startswith("\n<!DOCTYPE html>")
    assert "Active Memory Timeline" in _memory_viz.trace_plot(s)


def test_dump_and_torch_cli(scenario, tmp_path):
    p, _ = scenario
    path = tmp_path / "snap.pickle"
    assert dump_snapshot(path, pool=p) == os.fspath(path)
    data = load_snapshot(path)
    assert len(data["segments"]) == 3
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    for cmd, expect in (("stats", "total_reserved: 24.0MiB"), ("trace", "raise OutOfMemoryError")):
        out = subprocess.run([sys.executable, "-m", "torch.cuda._memory_viz", cmd, str(path)],
                             capture_output=True, text=True, timeout=120, env=env)
        assert out.returncode == 0, out.stderr
        assert expect in out.stdout


def test_load_snapshot_refuses_code(tmp_path):
    path = tmp_path / "evil.pickle"
    with open(path, "wb") as f:
        pickle.dump({"segments": [], "x": os.system}, f)  # a global: would be code
    # A ValueError naming the file, like every other unreadable snapshot (issue 14 review).
    with pytest.raises(ValueError, match="evil.pickle: .*only plain"):
        load_snapshot(path)
    legacy = tmp_path / "legacy.pickle"
    with open(legacy, "wb") as f:
        pickle.dump([{"total_size": 0, "blocks": []}], f)
    assert load_snapshot(legacy)["segments"] == [{"total_size": 0, "blocks": []}]
    bad = tmp_path / "bad.pickle"
    with open(bad, "wb") as f:
        pickle.dump({"a": 1}, f)
    with pytest.raises(ValueError, match="not a memory snapshot"):
        load_snapshot(bad)


def test_registry_snapshot_without_pool_creates_nothing():
    # A fresh process: reading creates no pool and configures nothing (Note [Pools before
    # install]); the settings shown are those the pool would get from $PYPOOL_CONF.
    code = textwrap.dedent("""
        import pypool
        from pypool import _core
        from pypool.snapshot import record_history, snapshot
        s = snapshot()
        assert s["segments"] == [] and len(s["device_traces"]) == 1, s
        assert s["allocator_settings"]["max_pool_size"] == 1 << 30, s["allocator_settings"]
        assert s["allocator_settings"]["PYPOOL_CONF"] == "max_pool_size:1073741824"
        record_history(False)  # turning off a pool that does not exist: no-op
        assert not _core.registry_configured() and _core.registry_devices() == []
        try:
            snapshot(device=62)
        except ValueError as e:
            assert "no device 62" in str(e), e
        else:
            raise SystemExit("snapshot(device=62) accepted a device that does not exist")
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYPOOL_CONF="max_pool_size:1GiB",
                                  PYTHONPATH=str(Path(pypool.__file__).resolve().parent.parent)),
                         cwd=tempfile.gettempdir())
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_argument_errors():
    p = pypool.Pool("host", capacity="64MiB")
    with pytest.raises(ValueError, match="stacks"):
        record_history(pool=p, stacks="cpp")
    with pytest.raises(ValueError, match="max_entries"):
        record_history(pool=p, max_entries=0)
    with pytest.raises(ValueError, match="enabled"):
        record_history("sometimes", pool=p)
    with pytest.raises(TypeError, match="pool must be a pypool.Pool"):
        snapshot(pool="pool")
    with pytest.raises(ValueError, match="does not match pool.device"):
        snapshot(device=3, pool=p)


def test_registry_history_in_a_fresh_process(tmp_path):
    # Note [Pools before install]: record_history on an unconfigured registry configures it
    # from $PYPOOL_CONF, as install() would, and on a machine without a GPU the pool is on
    # the host backend. A fresh process keeps this process's registry out of it.
    path = tmp_path / "reg.pickle"
    code = textwrap.dedent(f"""
        import pypool
        from pypool import _core
        from pypool.snapshot import record_history, dump_snapshot, load_snapshot
        if _core.cuda_device_count()[0] == 0:
            record_history()
            assert _core.registry_configured() and _core.registry_backend() == "host"
            assert pypool.get_pool().cap == 1 << 30
            _core.registry_pool(0).malloc(1000, 0)
            dump_snapshot({str(path)!r})
            s = load_snapshot({str(path)!r})
            assert s["allocator_settings"]["PYPOOL_CONF"] == "max_pool_size:1073741824"
            print([e["action"] for e in s["device_traces"][0]], s["pypool"]["backend"])
        else:
            print("['segment_alloc', 'alloc'] host")  # a GPU machine: not this test's case
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYPOOL_CONF="max_pool_size:1GiB",
                                  PYTHONPATH=str(Path(pypool.__file__).resolve().parent.parent)),
                         cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['segment_alloc', 'alloc'] host"


def test_expandable_segments_round_trip():
    from torch.cuda import _memory_viz

    from pypool.fragmentation import FragmentationReport

    p = pypool.Pool("host", capacity="1GiB", expandable_segments=True)
    record_history(pool=p, stacks="none")
    a = p.malloc(3 * MiB)
    b = p.malloc(5 * MiB)
    p.free(a)
    s = snapshot(pool=p)
    seg = next(seg for seg in s["segments"] if seg["is_expandable"])
    # total_size is the mapped part; its blocks cover exactly that (segsum checks it)
    assert seg["total_size"] == sum(blk["size"] for blk in seg["blocks"]) == 8 * MiB
    assert "total_reserved: 8.0MiB" in _memory_viz.segsum(s)
    actions = [e["action"] for e in s["device_traces"][0]]
    assert actions == ["segment_alloc", "segment_map", "alloc", "segment_map", "alloc", "free_requested",
                       "free_completed"]
    assert "{'action': 'segment_map'" in _memory_viz.trace(s)
    r = FragmentationReport.from_snapshot(s)
    assert (r.reserved, r.allocated, r.free, r.largest_free) == (8 * MiB, 5 * MiB, 3 * MiB, 3 * MiB)
    p.free(b)
    record_history(False, pool=p)


# ---------------------------------------------------------------- one loader
def test_one_loader_reads_gzipped_and_bare_list_snapshots(tmp_path: Path, capsys) -> None:
    """A gzipped pickle loads the same through load_snapshot, `pypool report` and the
    trace path; a bare segment list (older torch) loads through the trace path too."""
    from pypool.__main__ import main
    from pypool.trace import Trace, load_torch_snapshot

    p = pypool.Pool("host", capacity="64MiB")
    record_history(True, pool=p, stacks="none")
    ptrs = [p.malloc(n * MiB) for n in (1, 3, 5)]
    p.free(ptrs[1])
    plain = tmp_path / "snap.pickle"
    dump_snapshot(plain, pool=p)
    gz = tmp_path / "snap.pickle.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    record_history(False, pool=p)
    for ptr in (ptrs[0], ptrs[2]):
        p.free(ptr)
    data = load_snapshot(plain)
    assert load_snapshot(gz) == data == load_torch_snapshot(gz)
    assert Trace.load(gz).num_allocs == Trace.load(plain).num_allocs == 3
    assert main(["report", str(gz), "--json"]) == 0
    assert main(["report", str(plain), "--json"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[: len(out) // 2] == out[len(out) // 2:]  # the same report from both files

    bare = tmp_path / "legacy.pickle.gz"
    bare.write_bytes(gzip.compress(pickle.dumps(data["segments"])))
    assert load_torch_snapshot(bare) == {"segments": data["segments"], "device_traces": []}
    assert load_snapshot(bare)["segments"] == data["segments"]
    with pytest.raises(ValueError, match="legacy.pickle.gz: a bare list of segments .* no allocation history"):
        Trace.load(bare)  # a bare segment list has no trace to replay: say that, not "was history on?"



@pytest.mark.parametrize(("content", "words"), [
    (b"(" * 1000 + b".", "not a readable torch memory snapshot"),        # was UnpicklingError
    (pickle.dumps({"segments": []})[:10], "not a readable torch memory snapshot"),  # truncated
    (gzip.compress(pickle.dumps({"segments": []}))[:15], "corrupt or truncated gzip"),
    (b"# pypool-trace v1\na 0 10\n", "not a readable torch memory snapshot"),
], ids=["unpickler-error", "truncated-pickle", "truncated-gzip", "a-trace"])
def test_load_snapshot_names_the_file(content: bytes, words: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.pickle"
    path.write_bytes(content)
    with pytest.raises(ValueError) as e:
        load_snapshot(str(path))
    assert str(path) in str(e.value) and words in str(e.value), str(e.value)


def test_load_snapshot_reads_gzip(tmp_path: Path) -> None:
    # A gzipped snapshot loads, as `python -m pypool report` reads it.
    gz = tmp_path / "snap.pickle.gz"
    gz.write_bytes(gzip.compress(pickle.dumps({"segments": [], "device_traces": [[]]})))
    assert load_snapshot(gz)["segments"] == []


def test_a_history_without_segments_still_replays(tmp_path: Path, capsys) -> None:
    """The trace path reads only the history: a dict with device_traces and no segments
    replayed before the loaders were unified, and must still (review of issue 17)."""
    from pypool.__main__ import main
    from pypool.trace import Trace

    p = pypool.Pool("host", capacity="64MiB")
    record_history(True, pool=p, stacks="none")
    ptrs = [p.malloc(n * MiB) for n in (1, 3, 5)]
    snap = snapshot(pool=p)
    record_history(False, pool=p)
    for ptr in ptrs:
        p.free(ptr)
    del snap["segments"]
    path = tmp_path / "history_only.pickle"
    path.write_bytes(pickle.dumps(snap))
    assert Trace.load(path).num_allocs == 3
    assert main(["replay", str(path)]) == 0
    capsys.readouterr()
    with pytest.raises(ValueError, match="history_only.pickle: .*'segments'"):
        load_snapshot(path)  # a report needs the segments


def test_allocator_settings_show_the_fraction_in_effect() -> None:
    q = pypool.Pool("host", capacity="64MiB", memory_fraction=0.5)
    q.set_memory_fraction(0.75)
    settings = snapshot(pool=q)["allocator_settings"]
    assert settings["memory_fraction"] == 0.75
    assert "memory_fraction:0.75" in settings["PYPOOL_CONF"]
    q.set_memory_fraction(0.0)  # 0 turns the fraction off
    assert snapshot(pool=q)["allocator_settings"]["memory_fraction"] is None
