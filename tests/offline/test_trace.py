"""Trace format: round trips (plain and gzip), parsing rules, torch snapshot reading."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest

import pypool

from pypool.trace import FORMAT_HEADER, Trace, load_torch_snapshot, torch_reserved_profile
from pypool.workloads import WORKLOADS

MiB = 1 << 20


def small_trace() -> Trace:
    return Trace.from_events(
        [
            ("a", "x", 100, 0, 0.0),
            ("a", "y", 5 * MiB, 7, 2.5),
            ("f", "x", None, 0, 3.125),
            ("a", "x", 4096, 0, 4.0),   # key reused after its free: a new id
            ("f", "y", None, 0, 1e9 + 0.1),
        ],
        name="small",
        meta={"origin": "test", "n": 3},
    )


def test_from_events_densifies_and_fills_frees() -> None:
    t = small_trace()
    assert t.actions.tolist() == [0, 0, 1, 0, 1]
    assert t.ids.tolist() == [0, 1, 0, 2, 1]
    assert t.sizes.tolist() == [100, 5 * MiB, 100, 4096, 5 * MiB]  # free sizes from the alloc
    assert t.streams.tolist() == [0, 7, 0, 0, 7]                   # ... and streams
    assert t.actions.dtype == np.int8 and t.ids.dtype == np.int64 and t.times.dtype == np.float64
    assert t.peak_live() == 4096 + 5 * MiB  # after the second allocation of "x"
    assert t.num_allocs == 3 and t.num_ids == 3


@pytest.mark.parametrize("suffix", [".trace", ".trace.gz"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    t = small_trace()
    path = tmp_path / ("t" + suffix)
    t.save(path)
    raw = path.read_bytes()
    if suffix.endswith(".gz"):
        assert raw[:2] == b"\x1f\x8b"
        raw = gzip.decompress(raw)
    text = raw.decode()
    assert text.splitlines()[0] == FORMAT_HEADER
    assert "a 1 5242880 7 2.5" in text.splitlines()
    back = Trace.load(path)
    assert back == t  # arrays, name and meta; times exactly (Note [Trace text times])


def test_round_trip_bundled_workload(tmp_path: Path) -> None:
    t = WORKLOADS["kv_cache"](seed=3, scale=0.02)
    t.save(tmp_path / "kv.trace.gz")
    assert Trace.load(tmp_path / "kv.trace.gz") == t


def test_load_detects_gzip_by_content(tmp_path: Path) -> None:
    t = small_trace()
    t.save(tmp_path / "a.gz")
    (tmp_path / "b.trace").write_bytes((tmp_path / "a.gz").read_bytes())  # gzip, no .gz name
    assert Trace.load(tmp_path / "b.trace") == t


def test_text_with_comments_short_lines_and_address_ids(tmp_path: Path) -> None:
    path = tmp_path / "hand.trace"
    path.write_text(
        f"{FORMAT_HEADER}\n"
        "# a comment\n"
        "\n"
        "a 140000000 1024\n"          # stream and time left out
        "a 140004096 2048 3\n"
        "f 140000000\n"               # free without size
        "a 140000000 512 0 9.5\n"     # address reused
        "f 140004096 999 3 10\n"      # free's size is informational: the alloc's wins
    )
    t = Trace.load(path)
    assert t.name == "hand.trace"
    assert t.ids.tolist() == [0, 1, 0, 2, 1]
    assert t.sizes.tolist() == [1024, 2048, 1024, 512, 2048]
    assert t.streams.tolist() == [0, 3, 0, 0, 3]
    assert t.times.tolist() == [0, 0, 0, 9.5, 10]


@pytest.mark.parametrize(
    "body, message",
    [
        ("f 1 10 0 0\n", "free of id 1 which is not live"),
        ("a 1 10 0 0\na 1 10 0 0\n", "allocation of id 1 which is still live"),
        ("a 1 10 0 0\nx 1 10 0 0\n", "unknown action 'x'"),
        ("a 1 0 0 0\n", "allocation size must be 1 byte to 1 PiB"),
        ("a 1 ten 0 0\n", "cannot read numbers"),
    ],
)
def test_bad_text_names_the_line(tmp_path: Path, body: str, message: str) -> None:
    path = tmp_path / "bad.trace"
    path.write_text(f"{FORMAT_HEADER}\n# c\n" + body)
    with pytest.raises(ValueError, match=message) as e:
        Trace.load(path)
    assert "bad.trace:" in str(e.value)


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.txt"
    path.write_text("hello\n")
    with pytest.raises(ValueError, match="pypool-trace v1"):
        Trace.load(path)


def test_validate_catches_bad_arrays() -> None:
    with pytest.raises(ValueError, match="never allocated"):
        Trace([1], [0], [8])
    with pytest.raises(ValueError, match="second free"):
        Trace([0, 1, 1], [0, 0, 0], [8, 8, 8])
    with pytest.raises(ValueError, match="its allocation asked for 8"):
        Trace([0, 1], [0, 0], [8, 9])
    with pytest.raises(ValueError, match="sizes: has 1 entries"):
        Trace([0, 1], [0, 0], [8])
    with pytest.raises(ValueError, match="action 2"):
        Trace([2], [0], [8])


def test_slice_prefix() -> None:
    t = small_trace()
    p = t[:3]
    assert len(p) == 3 and p.ids.tolist() == [0, 1, 0]
    assert p.peak_live() == 100 + 5 * MiB


# ---------------------------------------------------------------- torch snapshots


def _entry(action: str, addr: int, size: int, stream: int = 0, t: int = 0) -> Dict[str, Any]:
    return {"action": action, "addr": addr, "size": size, "stream": stream, "time_us": t,
            "frames": [{"filename": "train.py", "line": 1, "name": "f"}]}


def hand_snapshot() -> Dict[str, Any]:
    """Device 1 is busier than device 0. The recording began mid-run: block 0x9000 was
    allocated before it (its free is skipped) and one 20 MiB segment existed already."""
    A, B, C = 0x7F0000000000, 0x7F0000100000, 0x7F0000200000
    dev1: List[Dict[str, Any]] = [
        _entry("free_requested", 0x9000, 512), _entry("free_completed", 0x9000, 512),
        _entry("segment_alloc", 0x7F0000000000, 20 * MiB),
        _entry("alloc", A, 1000, 5, 10),
        _entry("alloc", B, 3 * MiB, 5, 11),
        _entry("free_requested", A, 1000, 5, 12),
        _entry("alloc", C, 4096, 5, 13),
        _entry("free_completed", A, 1000, 5, 14),   # record_stream delayed it
        _entry("segment_alloc", 0x7F0010000000, 2 * MiB),
        _entry("alloc", A, 2000, 5, 15),             # address reused
        _entry("free_requested", B, 3 * MiB, 5, 16),
        _entry("free_completed", B, 3 * MiB, 5, 16),
        _entry("segment_free", 0x7F0010000000, 2 * MiB),
        _entry("segment_map", 0x7F0020000000, 4 * MiB),
        _entry("segment_unmap", 0x7F0020000000, 4 * MiB),
    ]
    dev0 = [_entry("alloc", 0x1000, 64), _entry("free_requested", 0x1000, 64), _entry("free_completed", 0x1000, 64)]
    segments = [
        {"device": 1, "address": 0x7F0000000000, "total_size": 20 * MiB, "stream": 5, "segment_type": "large",
         "blocks": []},
        {"device": 1, "address": 0x7E0000000000, "total_size": 20 * MiB, "stream": 5, "segment_type": "large",
         "blocks": []},  # present before the recording began
        {"device": 0, "address": 0x1000, "total_size": 2 * MiB, "stream": 0, "segment_type": "small", "blocks": []},
    ]
    return {"segments": segments, "device_traces": [dev0, dev1], "allocator_settings": {}}


def test_torch_snapshot_pickle(tmp_path: Path) -> None:
    path = tmp_path / "snap.pickle"
    with open(path, "wb") as f:
        pickle.dump(hand_snapshot(), f)
    t = Trace.load(path)
    assert t.meta["source"] == "torch_snapshot" and t.meta["device"] == 1
    assert t.meta["free_action"] == "free_completed"
    assert t.meta["skipped_unknown_frees"] == 1
    # alloc A, alloc B, alloc C, free A (completed), alloc A', free B
    assert t.actions.tolist() == [0, 0, 0, 1, 0, 1]
    assert t.ids.tolist() == [0, 1, 2, 0, 3, 1]
    assert t.sizes.tolist() == [1000, 3 * MiB, 4096, 1000, 2000, 3 * MiB]
    assert t.streams.tolist() == [5] * 6
    assert t.times.tolist() == [10, 11, 13, 14, 15, 16]
    assert t.peak_live() == 2000 + 3 * MiB + 4096
    prof = t.meta["torch"]
    # 40 MiB at the end, +20 +2 -2 +4 -4 during the trace: 20 MiB at the start, 44 at peak (20+20+2-2+4).
    assert prof["initial_reserved"] == 20 * MiB
    assert prof["peak_reserved"] == 44 * MiB
    assert prof["final_reserved"] == 40 * MiB
    assert prof["consistent"] is True
    assert torch_reserved_profile(path).peak_reserved == 44 * MiB
    assert torch_reserved_profile(hand_snapshot(), device=0).peak_reserved == 2 * MiB


def test_torch_snapshot_free_requested_and_device_choice() -> None:
    t = Trace.from_torch_snapshot(hand_snapshot(), free_action="free_requested")
    # free A now comes at free_requested, before alloc C.
    assert t.actions.tolist() == [0, 0, 1, 0, 0, 1]
    t0 = Trace.from_torch_snapshot(hand_snapshot(), device=0)
    assert t0.actions.tolist() == [0, 1] and t0.sizes.tolist() == [64, 64]
    with pytest.raises(ValueError, match="device"):
        Trace.from_torch_snapshot(hand_snapshot(), device=5)


def test_torch_snapshot_gzipped_and_refuses_code(tmp_path: Path) -> None:
    path = tmp_path / "snap.pickle.gz"
    path.write_bytes(gzip.compress(pickle.dumps(hand_snapshot())))
    assert load_torch_snapshot(path)["device_traces"][1][2]["action"] == "segment_alloc"
    evil = tmp_path / "evil.pickle"
    evil.write_bytes(pickle.dumps({"device_traces": [[]], "x": Path("/")}))  # any global
    with pytest.raises(ValueError, match="refusing to load"):
        Trace.load(evil)


def test_torch_snapshot_without_history_is_explained() -> None:
    with pytest.raises(ValueError, match="_record_memory_history"):
        Trace.from_torch_snapshot({"segments": [], "device_traces": [[], []]})


def test_snapshot_made_by_torch_itself() -> None:
    """A snapshot dict built by torch's own code (from a CPU profiler run: the same
    device_traces schema as _dump_snapshot, with frames and categories) reads and replays."""
    torch = pytest.importorskip("torch")
    memory_viz = pytest.importorskip("torch.cuda._memory_viz")
    with torch.profiler.profile(profile_memory=True, record_shapes=True, with_stack=True) as prof:
        for n in (64, 128, 256):
            x = torch.randn(n, 256)
            for _ in range(3):
                x = torch.relu(x @ torch.randn(256, 256))
            del x
    snap = memory_viz._profile_to_snapshot(prof)
    t = Trace.from_torch_snapshot(pickle.loads(pickle.dumps(snap)))
    entries = [e for d in snap["device_traces"] for e in d]
    assert t.num_allocs == sum(1 for e in entries if e["action"] == "alloc") > 10
    assert t.peak_live() >= 256 * 256 * 4
    assert "error" in t.meta["torch"]  # a profiler snapshot has no segment events
    from pypool.replay import replay

    r = replay(t)
    assert r.ooms == 0 and r.skipped_events == 0 and r.peak_live == t.peak_live()


def test_from_events_names_a_giant_int() -> None:
    with pytest.raises(ValueError, match=r"events\[0\]: .*size must be an int in 1\.\..*an int of"):
        pypool.trace.Trace.from_events([("a", 1, 10**5000, 0, 0)])
