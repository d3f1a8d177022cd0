"""Issue 14 review: bad input the first pass missed (each test failed before its fix).

Every case is user input reaching a public entry point; the rule is the issue's: one line
on stderr naming the file / field and what was expected, status 2, for the CLI; a typed
error naming the argument (never pybind11's "incompatible function arguments" or a raw
unpickler exception) for the API.
"""

from __future__ import annotations

import gzip
import importlib
import pickle
from pathlib import Path
from typing import Any, Dict, List

import pytest

import pypool
from pypool.__main__ import main
from pypool.fragmentation import explain_oom

snapshot_mod = importlib.import_module("pypool.snapshot")  # pypool.snapshot is the function

GOOD_ALLOC = {"action": "alloc", "addr": 0x1000, "size": 4096, "stream": 0, "time_us": 1}


def _torch_snapshot(entries: List[Any]) -> Dict[str, Any]:
    return {"segments": [], "device_traces": [entries]}


def _one_line_error(capsys: pytest.CaptureFixture[str], rc: int, command: str) -> str:
    out, err = capsys.readouterr()
    assert rc == 2, f"status {rc}, stderr: {err}"
    assert out == "", out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"pypool {command}: error: "), err
    return lines[0]


# ---------------------------------------------------------------- hostile snapshot entries

HOSTILE = {
    # math.isfinite(10**400) raises OverflowError: was a traceback.
    "int-time.pickle": (_torch_snapshot([dict(GOOD_ALLOC, time_us=10**400)]),
                        ["device_traces[0][0]", "'time_us' must be a finite number"]),
    # repr() of a 5,000-digit int raises ValueError (Python's int-to-str limit): the message
    # naming the field was replaced by "Exceeds the limit (4300 digits)".
    "giant-addr.pickle": (_torch_snapshot([dict(GOOD_ALLOC, addr=10**5000)]),
                          ["device_traces[0][0]", "'addr' must be in 0..", "an int of 16610 bits"]),
    # A list as the action reached `a in {set}`: TypeError unhashable.
    "list-action.pickle": (_torch_snapshot([GOOD_ALLOC, {"action": ["alloc"], "addr": 1}]), None),
}


@pytest.mark.parametrize("command", ["replay", "size"])
@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_snapshot_entries(command: str, name: str, tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    snap, words = HOSTILE[name]
    path = tmp_path / name
    path.write_bytes(pickle.dumps(snap))
    if words is None:  # an entry pypool does not use: ignored, the rest replays
        rc = main([command, str(path), "--json"] + (["--jobs", "1"] if command == "size" else []))
        assert rc == 0, capsys.readouterr().err
        capsys.readouterr()
        return
    line = _one_line_error(capsys, main([command, str(path)]), command)
    assert str(path) in line
    for word in words:
        assert word in line, line


def test_from_events_names_a_giant_int() -> None:
    with pytest.raises(ValueError, match=r"events\[0\]: .*size must be an int in 1\.\..*an int of"):
        pypool.trace.Trace.from_events([("a", 1, 10**5000, 0, 0)])


# ---------------------------------------------------------------- explain_oom


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


# ---------------------------------------------------------------- load_snapshot


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
        snapshot_mod.load_snapshot(str(path))
    assert str(path) in str(e.value) and words in str(e.value), str(e.value)


def test_load_snapshot_reads_gzip(tmp_path: Path) -> None:
    # A gzipped snapshot loads, as `python -m pypool report` reads it.
    gz = tmp_path / "snap.pickle.gz"
    gz.write_bytes(gzip.compress(pickle.dumps({"segments": [], "device_traces": [[]]})))
    assert snapshot_mod.load_snapshot(gz)["segments"] == []


# ---------------------------------------------------------------- report --device


def test_report_refuses_a_device_the_snapshot_lacks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seg = {"device": 0, "address": 0, "total_size": 2 << 20, "stream": 0, "segment_type": "small",
           "blocks": [{"address": 0, "size": 2 << 20, "requested_size": 0, "state": "inactive"}]}
    path = tmp_path / "snap.pickle"
    path.write_bytes(pickle.dumps({"segments": [seg], "device_traces": [[], []]}))
    # Device 1 has a trace list (torch writes one per device) but no segment: an empty
    # report is the truth. Device 5 is not in the file: it used to print "0 B reserved".
    assert main(["report", str(path), "--device", "1"]) == 0
    capsys.readouterr()
    line = _one_line_error(capsys, main(["report", str(path), "--device", "5"]), "report")
    assert "has no device 5 (its devices: 0, 1)" in line


# ---------------------------------------------------------------- bench output paths


@pytest.mark.parametrize("flag", ["--json", "--html", "--png"])
def test_bench_checks_output_paths_before_running(flag: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # Used to run every benchmark (a minute or more) and only then fail on the path.
    line = _one_line_error(capsys, main(["bench", "--smoke", "--no-progress", flag, str(tmp_path)]), "bench")
    assert f"{flag} {tmp_path}: is a directory" in line
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = _one_line_error(capsys, main(["bench", "--smoke", "--no-progress", flag,
                                         str(blocker / "out")]), "bench")
    assert "cannot create its directory" in line


# ---------------------------------------------------------------- leak tools


@pytest.mark.parametrize("value", ["false", 0, None])
def test_capture_stacks_must_be_a_bool(value: Any) -> None:
    pool = pypool.Pool(backend="host", capacity="64MiB")
    # bool("false") is True: the string used to switch stack capture on.
    with pytest.raises(TypeError, match="capture_stacks: expected True or False"):
        pypool.track_leaks(capture_stacks=value, pool=pool)
    with pytest.raises(TypeError, match="capture_stacks: expected True or False"):
        pypool.LeakWatch(capture_stacks=value, pool=pool)
    pool.check_invariants()


# ---------------------------------------------------------------- expandable_reserve

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


def test_readme_configuration_table_has_every_field() -> None:
    # The issue: expandable_reserve was missing from the table.
    import dataclasses
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    rows = set(re.findall(r"^\| `(\w+)` \|", readme, re.M))
    missing = [f.name for f in dataclasses.fields(pypool.PoolConfig) if f.name not in rows]
    # growth_step is explained in the growth row.
    assert [m for m in missing if m != "growth_step"] == [], missing


# ---------------------------------------------------------------- smaller truths


def test_report_refuses_sizes_past_64_bits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was printed as "reserved 1073741824.00 TiB".
    path = tmp_path / "huge.pickle"
    path.write_bytes(pickle.dumps({"segments": [{"device": 0, "total_size": 2**70, "blocks": []}],
                                   "device_traces": [[]]}))
    line = _one_line_error(capsys, main(["report", str(path)]), "report")
    assert "segments[0]: 'total_size' must be a non-negative int of at most 64 bits" in line


def test_write_errors_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    seg = {"device": 0, "address": 0, "total_size": 2 << 20, "stream": 0, "segment_type": "small",
           "blocks": [{"address": 0, "size": 2 << 20, "requested_size": 0, "state": "inactive"}]}
    snap = tmp_path / "s.pickle"
    snap.write_bytes(pickle.dumps({"segments": [seg], "device_traces": [[]]}))
    # Was "pypool report: error: No space left on device", naming no file.
    rc = main(["report", str(snap), "--html", "/dev/full"])
    err = capsys.readouterr().err
    assert rc == 2 and "pypool report: error: --html /dev/full: cannot write: No space left" in err, err
    line = _one_line_error(capsys, main(["replay", "--workload", "random", "--scale", "0.01",
                                         "--save-trace", "/dev/full"]), "replay")
    assert "--save-trace /dev/full: cannot write" in line


def test_info_checks_pypool_conf(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # `pypool info`, the command for checking a set-up, said nothing of a PYPOOL_CONF that
    # get_pool() and install() then refuse.
    monkeypatch.setenv("PYPOOL_CONF", "max_pool_size:-1")
    rc = main(["info"])
    out, err = capsys.readouterr()
    assert rc == 2 and "PYPOOL_CONF" in out
    assert err.strip().splitlines()[-1].startswith("pypool info: error: PYPOOL_CONF='max_pool_size:-1': ")
    monkeypatch.setenv("PYPOOL_CONF", "max_pool_size:1GiB")
    assert main(["info", "--json"]) == 0
    import json

    d = json.loads(capsys.readouterr().out)
    assert d["PYPOOL_CONF"] == "max_pool_size:1GiB" and d["PYPOOL_CONF_error"] is None


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


def test_readme_simulated_device_floors_say_their_scale() -> None:
    # The README showed kv_cache's floor as 16.48 GiB in one table and 16,018 MiB in the
    # next without saying why: the simulated-device run replays generated workloads at
    # --scale 0.5. Each floor there must be that scale's, and the text must say so.
    import re

    from pypool.workloads import generate

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    part = readme[readme.index("**Simulated-device figures**"):]
    part = part[:part.index("What the counts show")]
    assert "`--scale 0.5`" in part
    rows = dict(re.findall(r"^\| (transformer|growing_batch|kv_cache|random) \| ([\d,]+) MiB \|", part, re.M))
    assert sorted(rows) == ["growing_batch", "kv_cache", "random", "transformer"], rows
    for name, floor in rows.items():
        assert int(floor.replace(",", "")) == round(generate(name, seed=0, scale=0.5).peak_live() / (1 << 20)), name


# ---------------------------------------------------------------- FragmentationReport API


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


def test_save_png_checks_dpi(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rep = pypool.Pool(backend="null", capacity="1GiB").fragmentation()
    for dpi in (0, -1, 10**5, 1.5):  # 10**5 ended in std::bad_alloc inside matplotlib
        with pytest.raises(ValueError, match="dpi: expected an int in 1..1000"):
            rep.save_png(tmp_path / "x.png", dpi=dpi)  # type: ignore[arg-type]


def test_bench_html_wraps_the_table_definitions() -> None:
    # The definitions above bench's tables (what pypool/glibc time means) are single lines
    # of ~300 characters: in the HTML page's scrolling box they ran off the right edge.
    import html as html_mod
    import json
    import re

    from pypool.bench import report as bench_report

    results = json.loads((Path(__file__).resolve().parent.parent / "benchmarks" / "results" /
                          "2026-11-22-cpu-bench.json").read_text())
    page = bench_report.render_html(results)
    pre = html_mod.unescape(re.search(r"<pre>(.*)</pre>", page, re.S).group(1))  # type: ignore[union-attr]
    prose = [ln for ln in pre.splitlines() if "  " not in ln.strip()]
    assert prose and max(len(ln) for ln in prose) <= 110, max(prose, key=len)
    assert "pypool/glibc time = pypool's median time / glibc's" in " ".join(ln.strip() for ln in pre.splitlines())
    # The terminal tables are unchanged (tests and users grep them).
    assert "below 1 pypool is faster" in bench_report.format_tables(results)


@pytest.mark.parametrize(("command", "flag", "conf", "words"), [
    ("replay", "--config", "memory_fraction:0.1,initial_pool_size:50GiB",
     "the limit is 8.00 GiB (memory_fraction 0.1 of 80.00 GiB)"),
    ("replay", "--config", "expandable_segments:true,initial_pool_size:2TiB", "(expandable_reserve"),
    ("size", "--base", "expandable_segments:true,initial_pool_size:2TiB", "(expandable_reserve"),
])
def test_initial_pool_size_under_every_limit(command: str, flag: str, conf: str, words: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    # initial_pool_size within the capacity but over memory_fraction's cap or the
    # expandable_reserve: the pool's OutOfMemoryError escaped as a traceback (rc 1).
    trace = tmp_path / "t.trace"
    trace.write_text("# pypool-trace v1\na 1 4096\n")
    argv = [command, str(trace), flag, conf] + (["--capacity", "80GiB"] if "memory_fraction" in conf
                                                 else ["--capacity", "4TiB"])
    if command == "size":
        argv += ["--jobs", "1"]
    line = _one_line_error(capsys, main(argv), command)
    assert f"{flag}: initial_pool_size" in line and words in line, line
