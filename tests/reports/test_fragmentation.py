"""Fragmentation report figures against pools whose layout is known by hand."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
import sys
import textwrap
from typing import Any, Dict

import pytest

import pypool
from pypool import _core
from pypool.fragmentation import (EXTERNAL_FRAGMENTATION_DEFINITION, Figures, FragmentationReport, explain_oom,
                                  fragmentation)

KiB, MiB = 1 << 10, 1 << 20
GiB = 1 << 30
SMALL_SEG, LARGE_SEG = 2 * MiB, 20 * MiB


def _layout_pool():
    """A host pool in a known state (default config: 512 B rounding, 2 MiB small and
    20 MiB large segments):

    small segment, stream 0: [a 1024 pending][b 3072 free][c 512][free 2 MiB - 4608]
    large segment, stream 0: [d 5 MiB][e 3 MiB + 512][free 12 MiB - 512]
    small segment, stream 5: [f 512][free 2 MiB - 512]
    """
    p = pypool.Pool("host", capacity="1GiB")
    a = p.malloc(1000)
    b = p.malloc(3000)
    c = p.malloc(100)
    d = p.malloc(5 * MiB)
    e = p.malloc(3 * MiB + 1)
    f = p.malloc(100, stream=5)
    p.free(b)
    # a is freed while stream 7 still has work queued: pending, not reusable yet.
    p.record_stream(a, 7)
    p.backend.hold_stream(7)
    p.free(a)
    return p, (a, b, c, d, e, f)


def test_figures_of_known_layout():
    p, _ = _layout_pool()
    r = FragmentationReport.from_pool(p)
    assert r.source == "pool" and r.device == 0 and r.backend == "host"

    assert r.reserved == 2 * SMALL_SEG + LARGE_SEG
    assert r.allocated == 512 + 5 * MiB + (3 * MiB + 512) + 512
    assert r.requested == 100 + 5 * MiB + (3 * MiB + 1) + 100
    assert r.internal_waste == 412 + 511 + 412
    assert r.pending_free == 1024
    free_blocks = [3072, 2 * MiB - 4608, 12 * MiB - 512, 2 * MiB - 512]
    assert r.free == sum(free_blocks)
    assert r.largest_free == 12 * MiB - 512
    assert r.reserved == r.allocated + r.pending_free + r.free
    assert r.external_fragmentation == pytest.approx(1 - (12 * MiB - 512) / sum(free_blocks))
    assert r.utilization == pytest.approx(r.allocated / r.reserved)
    assert (r.segments, r.allocated_blocks, r.pending_blocks, r.free_blocks) == (3, 4, 1, 4)

    # Per pool kind.
    small, large = r.pools["small"], r.pools["large"]
    assert small.reserved == 2 * SMALL_SEG and large.reserved == LARGE_SEG
    assert small.allocated == 1024 and small.requested == 200 and small.pending_free == 1024
    assert small.free == 3072 + 2 * MiB - 4608 + 2 * MiB - 512
    assert small.largest_free == 2 * MiB - 512
    assert large.allocated == 8 * MiB + 512 and large.requested == 8 * MiB + 1
    assert large.free == large.largest_free == 12 * MiB - 512
    assert large.external_fragmentation == 0.0
    assert (small.segments, large.segments) == (2, 1)

    # Per stream.
    assert sorted(r.streams) == [0, 5]
    s0, s5 = r.streams[0], r.streams[5]
    assert s0.reserved == SMALL_SEG + LARGE_SEG and s5.reserved == SMALL_SEG
    assert s5.allocated == 512 and s5.requested == 100 and s5.free == 2 * MiB - 512
    assert s5.external_fragmentation == 0.0
    assert s0.free == 3072 + 2 * MiB - 4608 + 12 * MiB - 512
    assert s0.pending_free == 1024 and s0.pending_blocks == 1

    # Histogram in power-of-two buckets.
    assert r.free_histogram == [
        {"low": 2 * KiB, "high": 4 * KiB, "count": 1, "bytes": 3072},
        {"low": 1 * MiB, "high": 2 * MiB, "count": 2, "bytes": 4 * MiB - 4608 - 512},
        {"low": 8 * MiB, "high": 16 * MiB, "count": 1, "bytes": 12 * MiB - 512},
    ]

    # Peaks from the statistics: everything was live at once before the frees.
    peak_alloc = 1024 + 3072 + 512 + 5 * MiB + 3 * MiB + 512 + 512
    assert r.peak_allocated == peak_alloc
    assert r.peak_reserved == 2 * SMALL_SEG + LARGE_SEG
    assert r.peak_requested == 1000 + 3000 + 100 + 5 * MiB + 3 * MiB + 1 + 100
    assert r.peak_utilization == pytest.approx(peak_alloc / (24 * MiB))
    assert r.counters["num_device_alloc"] == 3 and r.counters["num_ooms"] == 0
    p.backend.release_stream(7)


def test_pending_block_becomes_free_after_its_stream_completes():
    p, _ = _layout_pool()
    p.backend.release_stream(7)
    p.empty_cache()  # processes completed events (and keeps segments with live blocks)
    r = FragmentationReport.from_pool(p)
    assert r.pending_free == 0 and r.pending_blocks == 0
    # the pending 1024 B merged with the free 3072 B next to it
    assert r.pools["small"].free == 4096 + 2 * MiB - 4608 + 2 * MiB - 512
    assert {"low": 4 * KiB, "high": 8 * KiB, "count": 1, "bytes": 4096} in r.free_histogram


def test_empty_pool_report():
    r = FragmentationReport.from_pool(pypool.Pool("host", capacity="64MiB"))
    assert (r.reserved, r.allocated, r.free, r.largest_free, r.segments) == (0, 0, 0, 0, 0)
    assert r.external_fragmentation == 0.0 and r.utilization == 0.0
    assert r.peak_utilization == 0.0
    assert r.free_histogram == []
    assert set(r.pools) == {"small", "large"} and r.streams == {}
    assert "free blocks by size: none" in r.to_text()


def test_from_segments_by_hand_and_without_stats():
    segs = [
        {"address": 0x1000, "total_size": 4096, "segment_type": "small", "stream": 0, "blocks": [
            {"address": 0x1000, "size": 1024, "requested_size": 1000, "state": "active_allocated"},
            {"address": 0x1400, "size": 1024, "requested_size": 0, "state": "inactive"},
            {"address": 0x1800, "size": 2048, "requested_size": 0, "state": "inactive"},
        ]},
    ]
    r = FragmentationReport.from_segments(segs)
    assert r.source == "segments"
    assert (r.reserved, r.allocated, r.requested, r.free, r.largest_free) == (4096, 1024, 1000, 3072, 2048)
    assert r.external_fragmentation == pytest.approx(1 / 3)
    assert r.utilization == 0.25
    assert r.peak_allocated is None and r.peak_utilization is None and r.counters == {}
    assert "peaks" not in r.to_text()


def test_from_snapshot_of_torch_layout_without_addresses():
    # Old torch snapshots: a bare list of segments, blocks without addresses and the
    # requested size in the block history.
    segs = [{"device": 1, "address": 1 << 20, "total_size": 2 * MiB, "stream": 0, "segment_type": "small",
             "blocks": [
                 {"size": 512, "state": "active_allocated", "history": [{"real_size": 300, "addr": 1 << 20}]},
                 {"size": 2 * MiB - 1024, "state": "inactive"},
                 {"size": 512, "state": "active_pending_free"},
             ]}]
    r = FragmentationReport.from_snapshot(segs)
    assert r.source == "snapshot" and r.device == 1
    assert (r.allocated, r.requested, r.pending_free, r.free) == (512, 300, 512, 2 * MiB - 1024)
    addrs = [b["address"] for b in r.layout[0]["blocks"]]
    assert addrs == [1 << 20, (1 << 20) + 512, (1 << 20) + 2 * MiB - 512]
    assert FragmentationReport.from_snapshot({"segments": segs}, device=0).segments == 0


def test_report_from_snapshot_equals_report_from_pool():
    p, _ = _layout_pool()
    from pypool.snapshot import snapshot

    a = FragmentationReport.from_pool(p).to_dict()
    b = FragmentationReport.from_snapshot(snapshot(pool=p)).to_dict()
    a.pop("source"), b.pop("source")
    assert a == b
    p.backend.release_stream(7)


def test_dict_json_and_text_renderings():
    p, _ = _layout_pool()
    r = FragmentationReport.from_pool(p)
    d = r.to_dict()
    for key in ("reserved", "allocated", "requested", "free", "largest_free", "external_fragmentation",
                "utilization", "internal_waste", "pools", "streams", "free_histogram", "peak_utilization",
                "segments", "free_blocks"):
        assert key in d, key
    assert d["pools"]["large"]["largest_free"] == 12 * MiB - 512
    assert d["segments"] == 3  # the count; the layout only with include_segments
    full = r.to_dict(include_segments=True)
    assert len(full["segments"]) == 3
    j = json.loads(r.to_json())
    assert j["streams"]["5"]["allocated"] == 512
    assert j["reserved"] == r.reserved

    text = r.to_text()
    lines = text.splitlines()
    header = next(line for line in lines if "small pool" in line)
    for col in ("all", "small pool", "large pool", "stream 0", "stream 0x5"):
        assert col in header
    row = next(line for line in lines if line.startswith("reserved"))
    assert row.split()[1:3] == ["24.00", "MiB"]
    # columns are aligned: every table row is as long as the header
    table = lines[2:2 + 1 + len(r.table_rows())]
    assert len({len(line) for line in table}) == 1
    assert "[8.00 MiB, 16.00 MiB)" in text and "peak utilization" in text
    p.backend.release_stream(7)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"segments\[0\]\.blocks\[0\]: unknown state 'busy'"):
        FragmentationReport.from_segments([{"total_size": 1, "blocks": [{"size": 1, "state": "busy"}]}])
    with pytest.raises(ValueError, match="missing key 'blocks'"):
        FragmentationReport.from_segments([{"total_size": 1}])
    with pytest.raises(TypeError, match="pool: expected a pypool.Pool"):
        FragmentationReport.from_pool(object())
    with pytest.raises(ValueError, match="no 'segments' key"):
        FragmentationReport.from_snapshot({"device_traces": []})


def test_fragmentation_takes_a_pool_like_the_other_reports():
    """fragmentation(device=None, pool=None): the signature of snapshot() and the others."""
    p = pypool.Pool("host", capacity="64MiB")
    ptr = p.malloc(3 * MiB)
    rep = pypool.fragmentation(pool=p)
    assert rep.to_dict() == FragmentationReport.from_pool(p).to_dict() == p.fragmentation().to_dict()
    assert rep.allocated == p.memory_allocated() and rep.source == "pool" and rep.backend == "host"
    assert pypool.fragmentation(0, pool=p).device == 0
    with pytest.raises(ValueError, match="does not match pool.device"):
        pypool.fragmentation(1, pool=p)
    with pytest.raises(TypeError, match="pool must be a pypool.Pool"):
        pypool.fragmentation(pool=object())  # type: ignore[arg-type]
    p.free(ptr)


def test_figures_properties():
    f = Figures(reserved=100, allocated=40, requested=30, free=60, largest_free=15)
    assert f.internal_waste == 10
    assert f.external_fragmentation == pytest.approx(0.75)
    assert f.utilization == pytest.approx(0.4)


def test_registry_report_does_not_create_a_pool():
    # A fresh process, so that device 0 has no pool (Note [Pools before install]).
    code = textwrap.dedent("""
        from pypool import _core
        from pypool.fragmentation import fragmentation
        r = fragmentation(0)
        assert r.device == 0 and r.segments == 0 and r.reserved == 0
        assert not _core.registry_configured() and _core.registry_devices() == []
        for bad, what in ((-1, "device index must be >= 0"), (63, "no device 63")):
            try:
                fragmentation(bad)
            except ValueError as e:
                assert what in str(e), e
            else:
                raise SystemExit(f"fragmentation({bad}) was accepted")
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(Path(pypool.__file__).resolve().parent.parent)),
                         cwd=tempfile.gettempdir())
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_registry_report_in_a_fresh_process():
    # The registry is process-wide: configure it in a process of its own.
    code = textwrap.dedent("""
        import json, pypool
        from pypool import _core
        from pypool.fragmentation import fragmentation
        _core.registry_configure("host", pypool.PoolConfig().to_core(), 1 << 30)
        core = _core.registry_pool(0)
        core.malloc(3000, 0)
        r = fragmentation(0)
        print(json.dumps([r.reserved, r.allocated, r.requested, r.backend, r.source]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(Path(pypool.__file__).resolve().parent.parent)),
                         cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [SMALL_SEG, 3072, 3000, "host", "pool"]


@pytest.mark.slow  # torch's profiler takes seconds to start
def test_snapshot_made_by_torch_from_a_cpu_profile():
    # torch builds this snapshot itself (no CUDA needed): blocks without addresses,
    # segments without a type.
    import torch
    from torch.cuda._memory_viz import _profile_to_snapshot
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        x = torch.ones(1000, 1000)
        y = x * 2
        z = torch.zeros(300)
        del y
    snap = _profile_to_snapshot(prof)
    r = FragmentationReport.from_snapshot(snap)
    assert r.allocated == r.requested == 4_000_000 + 1200
    assert r.allocated_blocks == 2
    assert r.reserved == r.allocated + r.free
    assert set(r.pools) == {"small", "large", "unknown"} and r.pools["unknown"].segments == 1
    assert "unknown pool" in r.to_text()
    del x, z


@pytest.mark.parametrize(("kwargs", "exc", "words"), [
    ({"size": 2**70}, ValueError, "size: must be in 1.."),      # was pybind11's message
    ({"size": 1.5}, TypeError, "size: expected an int"),        # was pybind11's message
    ({"size": "1GiB"}, TypeError, "size: expected an int"),     # was "'>' not supported"
    ({"size": -5}, ValueError, "size: must be in 1.."),         # was "a request for -5 B"
    ({"size": 0}, ValueError, "size: must be in 1.."),
    ({"size": 4096, "stream": -1}, ValueError, "stream: must be in 0.."),  # was "stream -0x1"
    ({"size": 4096, "stream": 2**64}, ValueError, "stream: must be in 0.."),
])
def test_explain_oom_checks_its_arguments(kwargs: Dict[str, Any], exc: type, words: str) -> None:
    pool = pypool.Pool(backend="null", capacity="1GiB")
    with pytest.raises(exc) as e:
        explain_oom(pool, **kwargs)
    assert words in str(e.value) and "incompatible function arguments" not in str(e.value)
    pool.check_invariants()
    with pytest.raises(TypeError, match="pool: expected a pypool.Pool, got int"):
        explain_oom(5, 4096)  # type: ignore[arg-type]


@pytest.mark.parametrize(("snapshot", "exc", "words"), [
    ({"segments": 5}, TypeError, "'segments' must be a list"),                 # was "'int' object is not iterable"
    ({"segments": [{"total_size": -5, "blocks": []}]}, ValueError,             # was a report with -5 B reserved
     "segments[0]: 'total_size' must be a non-negative int"),
    ({"segments": [{"total_size": 2**70, "blocks": []}]}, ValueError, "at most 64 bits"),
    ({"segments": [{"total_size": 10, "blocks": 3}]}, TypeError, "segments[0].blocks: expected a list"),
    ({"segments": [{"total_size": 10, "blocks": [7]}]}, TypeError, "segments[0].blocks[0]: expected a dict"),
    ({"segments": [{"total_size": 10, "blocks": [{"size": "x", "state": "inactive"}]}]}, ValueError,
     "segments[0].blocks[0]: 'size' must be"),                                 # was int()'s "invalid literal"
    ({"segments": [{"total_size": 10, "blocks": [{"state": "inactive"}]}]}, ValueError,
     "segments[0].blocks[0]: missing key 'size'"),                             # was KeyError: 'size'
])
def test_from_snapshot_names_the_damaged_field(snapshot: Dict[str, Any], exc: type, words: str) -> None:
    with pytest.raises(exc) as e:
        pypool.FragmentationReport.from_snapshot(snapshot)
    assert words in str(e.value), str(e.value)


def test_explain_oom_sorts_free_blocks_by_reason() -> None:
    pool = pypool.Pool(backend="null", capacity=64 * GiB, max_pool_size=64 * MiB)
    keep = [pool.malloc(4 * MiB) for _ in range(6)]          # large pool, stream 0
    other = [pool.malloc(8 * MiB, stream=7) for _ in range(2)]  # large pool, stream 7
    small = pool.malloc(100 * 1024)                           # small pool
    for p in keep[::2]:
        pool.free(p)                                          # free 4 MiB holes on stream 0
    pool.free(other[0])                                       # its segment stays (other[1] lives)
    with pytest.raises(_core.OutOfMemoryError) as e:
        pool.malloc(40 * MiB)
    text = explain_oom(pool, 40 * MiB, 0, error=str(e.value))
    assert "a request for 40.00 MiB" in text and "(max_pool_size)" in text
    assert "smaller than the 40.00 MiB needed" in text
    assert "in the small pool" in text
    assert "cached for another stream than 0" in text
    assert "the pool said: " in text
    for line in text.splitlines():
        assert "large enough and usable" not in line  # the failure proves none could serve it
    del small


def test_external_fragmentation_defined_where_shown() -> None:
    pool = pypool.Pool(backend="null", capacity=8 * GiB)
    a, b, c = (pool.malloc(30 * MiB) for _ in range(3))
    pool.free(a)
    pool.free(c)
    rep = FragmentationReport.from_pool(pool)
    text = rep.to_text()
    row = next(line for line in text.splitlines() if line.startswith("external fragmentation "))
    assert f"of {pypool.config.format_size(rep.free)}" in row  # beside the free bytes
    assert EXTERNAL_FRAGMENTATION_DEFINITION in text
    html = rep.to_html()
    assert "external fragmentation = 1 - largest free block / free bytes" in html
    assert f"{pypool.config.format_size(rep.free)} free in the pool with" in html
    del b
