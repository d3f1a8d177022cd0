"""Replay of a trace that does not fit (issue 14, "figures that mislead"): exit status 3,
the limit that bound the pool named, the first out-of-memory failure explained in text,
JSON and the report's pictures, and no figure that contradicts another."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Dict

import pytest

import pypool
from pypool.__main__ import main
from pypool.replay import first_oom_text, replay
from pypool.trace import Trace

MiB = 1 << 20
GiB = 1 << 30


TiB = 1 << 40


def test_replay_names_the_expandable_reserve_when_it_binds(tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    # Two 1 TiB blocks on one stream: its expandable segment's 1 TiB virtual range is full
    # after the first, with 99 TiB of the device still free. The replay used to blame the
    # "100.00 TiB limit (device capacity)" with "99.00 TiB left under the limit".
    trace = pypool.trace.Trace.from_events([("a", 1, TiB), ("a", 2, TiB)], name="two-tib")
    r = pypool.replay.replay(trace, {"expandable_segments": True}, capacity=100 * TiB)
    assert not r.completed and r.first_oom is not None
    assert r.first_oom["expandable_reserve"] == TiB
    text = r.to_text()
    assert "under the 1.00 TiB expandable_reserve of stream 0's expandable segment" in text
    assert "the 100.00 TiB limit (device capacity) was not reached" in text
    explained = pypool.replay.first_oom_text(r)
    assert explained is not None
    assert "1.00 TiB mapped of its 1.00 TiB virtual range (expandable_reserve)" in explained
    assert "a new segment" not in explained.split("\n\n")[1]  # it grows in place
    # Without expandable segments nothing changes.
    r2 = pypool.replay.replay(trace, capacity=TiB + (1 << 30))
    assert r2.first_oom is not None and "expandable_reserve" not in r2.first_oom
    assert "limit (device capacity)" in r2.to_text()


def test_first_oom_picture_says_what_failed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    # The PNG's only text about the failure is its caption: it said "the pool at the first
    # out-of-memory failure" and nothing of the request or the limit.
    captions: Dict[str, Any] = {}

    def fake_png(self: Any, path: Any, max_segments: int = 64, dpi: int = 100, caption: Any = None) -> str:
        captions[Path(path).name] = caption
        return str(path)

    monkeypatch.setattr(pypool.FragmentationReport, "save_png", fake_png)
    trace = tmp_path / "t.trace"
    trace.write_text("# pypool-trace v1\na 1 629145600\na 2 629145600\n")
    rc = main(["replay", str(trace), "--capacity", "1GiB", "--report", str(tmp_path / "r")])
    out, err = capsys.readouterr()
    assert rc == 3
    assert ("a request for 600.00 MiB on stream 0 failed under the 1.00 GiB limit (device capacity)"
            in captions["first_oom.png"])
    # One failure is "1 allocation", not "1 allocations".
    assert "1 allocation failed in all" in out and "1 allocation ran out of memory" in err


def test_capped_replay_says_it_does_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's command: kv_cache under a 1 GiB max_pool_size."""
    rc = main(["replay", "--workload", "kv_cache", "--config", "max_pool_size:1GiB",
               "--report", str(tmp_path)])
    out, err = capsys.readouterr()
    assert rc == 3  # documented: the trace did not complete
    assert "DOES NOT FIT" in out and "1.00 GiB limit (max_pool_size)" in out
    m = re.search(r"first OOM +after ([\d,]+) of ([\d,]+) events: a request for .+ failed with (.+) live", out)
    assert m, out
    assert int(m.group(1).replace(",", "")) < int(m.group(2).replace(",", "")) == 639_314
    # No figure contradicting another: no ratio to a floor that never fit, no
    # utilization above 1, and the capacity shown is the one that bound the pool.
    assert "x the floor" not in out and "80.00 GiB" not in out
    utils = [float(x) for x in re.findall(r"utilization +([\d.]+)", out)]
    assert utils and all(0 <= u <= 1 for u in utils)
    assert "exit status 3" in err and "3,006 allocations ran out of memory" in err
    # Where the memory was at the first OOM.
    text = (tmp_path / "first_oom.txt").read_text()
    assert "could not be served" in text and "limit        1.00 GiB (max_pool_size)" in text
    assert "left under the limit, less than the" in text and "why not" in text
    assert "pypool memory report" in text  # the full report follows the explanation
    page = (tmp_path / "first_oom.html").read_text()
    assert "could not be served" in page and "(max_pool_size)" in page  # the explanation heads the page
    # Each page and picture says which moment it shows.
    assert "kv_cache: the pool at peak reserved (after event" in (tmp_path / "peak.html").read_text()


def test_capped_replay_json_rc_and_fields(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["replay", "--workload", "kv_cache", "--scale", "0.05", "--config", "max_pool_size:512MiB", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert rc == 3 and d["completed"] is False and d["overhead"] is None
    assert d["limit"] == 512 * MiB and d["limit_source"] == "max_pool_size"
    assert d["utilization"] <= 1 and d["first_oom"]["event"] >= 0


def test_complete_replay_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--workload", "kv_cache", "--scale", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "DOES NOT FIT" not in out and "x the floor" in out and "out of memory      0 (80.00 GiB limit (device capacity))" in out


def _two_blocks_trace() -> Trace:
    # a (600 MiB) then b (600 MiB) live together: b cannot fit under 1 GiB.
    return Trace.from_events([("a", 1, 600 * MiB), ("a", 2, 600 * MiB), ("f", 1, None), ("f", 2, None),
                              ("a", 3, 100 * MiB), ("f", 3, None)], name="two")


@pytest.mark.parametrize("how", ["max_pool_size", "capacity"])
def test_replay_result_of_an_oom(how: str) -> None:
    t = _two_blocks_trace()
    r = (replay(t, {"max_pool_size": GiB}) if how == "max_pool_size" else replay(t, capacity=GiB))
    assert not r.completed and r.ooms == 1
    assert r.limit == GiB and r.limit_source == ("max_pool_size" if how == "max_pool_size" else "device capacity")
    assert 0 < r.utilization <= 1          # was peak_live / peak_reserved = 1.17
    assert math.isnan(r.overhead)
    fo = r.first_oom
    assert fo is not None and fo["event"] == 1 and fo["size"] == 600 * MiB and fo["live"] == 600 * MiB
    assert "out of memory" in fo["error"]
    text = first_oom_text(r)
    assert text is not None and f"after 1 of {len(t)} events" in text
    # A complete replay has none of it.
    ok = replay(t)
    assert ok.completed and ok.first_oom is None and first_oom_text(ok) is None


def test_replay_help_documents_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 when the whole trace replayed; 3 when an allocation ran out of memory" in out
