"""Bad input to every CLI command is one line on stderr naming the file (and line or field)
and what was expected, exit status 2, nothing on stdout and no traceback (issue 14).

A trace is user input: corrupt and adversarial files are refused the same way.
The commands run in-process through ``pypool.__main__.main`` (fast); a few checks that
need a real process (a closed pipe) run ``python -m pypool``.
"""

from __future__ import annotations

import gzip
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

from pypool.__main__ import main
from pypool.trace import FORMAT_HEADER

MiB = 1 << 20


def _torch_snapshot(entries: List[Any], segments: Any = None) -> Dict[str, Any]:
    return {"segments": [] if segments is None else segments, "device_traces": [entries]}


GOOD_ALLOC = {"action": "alloc", "addr": 0x1000, "size": 4096, "stream": 0, "time_us": 1}

# name -> (file content as bytes, or a callable writing it; words the message must contain)
BAD_FILES: Dict[str, Any] = {
    "truncated.trace.gz": (gzip.compress(f"{FORMAT_HEADER}\na 0 1024 0 0\n".encode())[:20],
                           ["corrupt or truncated gzip data"]),
    "bad-crc.trace.gz": (gzip.compress(f"{FORMAT_HEADER}\na 0 1024 0 0\n".encode())[:-8] + b"\0" * 8,
                         ["corrupt or truncated gzip data"]),
    "list.pickle": (pickle.dumps([1, 2, 3]), ["torch memory snapshot", "list"]),
    "int.pickle": (pickle.dumps(7), ["torch memory snapshot", "int"]),
    "truncated.pickle": (pickle.dumps(_torch_snapshot([GOOD_ALLOC]))[:40], ["not a readable torch memory snapshot"]),
    "code.pickle": (pickle.dumps(Path("x")), ["not a readable torch memory snapshot"]),
    "no-addr.pickle": (pickle.dumps(_torch_snapshot([{"action": "alloc", "size": 5}])),
                       ["device_traces[0][0]", "missing field 'addr'"]),
    "no-size.pickle": (pickle.dumps(_torch_snapshot([{"action": "alloc", "addr": 5}])),
                       ["device_traces[0][0]", "missing field 'size'"]),
    "str-size.pickle": (pickle.dumps(_torch_snapshot([dict(GOOD_ALLOC, size="4096")])),
                        ["'size' must be an int"]),
    "neg-stream.pickle": (pickle.dumps(_torch_snapshot([dict(GOOD_ALLOC, stream=-1)])), ["'stream' must be in 0.."]),
    "huge.pickle": (pickle.dumps(_torch_snapshot([dict(GOOD_ALLOC, size=1 << 60)])), ["'size' must be in 1.."]),
    "nan-time.pickle": (pickle.dumps(_torch_snapshot([dict(GOOD_ALLOC, time_us=float("nan"))])),
                        ["'time_us' must be a finite number"]),
    "entry-not-dict.pickle": (pickle.dumps(_torch_snapshot([GOOD_ALLOC, 3])), ["device_traces[0][1]", "expected a dict"]),
    "traces-not-list.pickle": (pickle.dumps({"segments": [], "device_traces": "abc"}), ["device_traces"]),
    "negative-stream.trace": (f"{FORMAT_HEADER}\na 1 1024 -3 0.0\n".encode(), [":2:", "negative stream -3"]),
    "over-1-PiB.trace": (f"{FORMAT_HEADER}\na 1 2000000000000000000 0 0.0\n".encode(),
                         [":2:", "allocation size must be 1 byte to 1 PiB"]),
    "too-much-live.trace": ((FORMAT_HEADER + "\n" + "".join(f"a {i} {1 << 50} 0 0\n" for i in range(1100))).encode(),
                            ["more than 1024 PiB"]),
    "big-id.trace": (f"{FORMAT_HEADER}\na 99999999999999999999 1024 0 0\n".encode(), [":2:", "out of range"]),
    "nan-time.trace": (f"{FORMAT_HEADER}\na 1 1024 0 nan\n".encode(), [":2:", "finite"]),
    "words.trace": (f"{FORMAT_HEADER}\na one 1024 0 0\n".encode(), [":2:", "cannot read numbers"]),
    "double-free.trace": (f"{FORMAT_HEADER}\na 1 10 0 0\nf 1\nf 1\n".encode(), [":4:", "not live"]),
    "meta-list.trace": (f"{FORMAT_HEADER}\n# meta: [1]\na 1 10 0 0\n".encode(), [":2:", "JSON object"]),
    "meta-torch.trace": (f'{FORMAT_HEADER}\n# meta: {{"torch": {{"peak_reserved": "x", "initial_reserved": 0}}}}\n'
                         "a 1 10 0 0\n".encode(), [":2:", "torch.peak_reserved"]),
    "meta-deep.trace": (f"{FORMAT_HEADER}\n# meta: {'[' * 100000}\na 1 10 0 0\n".encode(), [":2:", "bad meta JSON"]),
    "binary.trace": (bytes(range(256)) * 4, ["found binary data"]),
    "no-header.trace": (b"a 1 10 0 0\n", ["expected the header"]),
    "empty.trace": (b"", ["(empty file)"]),
}


@pytest.fixture(scope="module")
def bad_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    for name, (content, _) in BAD_FILES.items():
        (d / name).write_bytes(content)
    (d / "a-directory").mkdir()
    return d


def _one_line_error(capsys: pytest.CaptureFixture[str], rc: int, command: str) -> str:
    out, err = capsys.readouterr()
    assert rc == 2, f"status {rc}, stderr: {err}"
    assert out == "", out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"pypool {command}: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize("command", ["replay", "size"])
@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_corrupt_trace_files(command: str, name: str, bad_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(bad_dir / name)
    line = _one_line_error(capsys, main([command, path]), command)
    assert path in line
    for word in BAD_FILES[name][1]:
        assert word in line, line


@pytest.mark.parametrize("command", ["replay", "size", "report"])
def test_a_directory_or_a_missing_file(command: str, bad_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_line_error(capsys, main([command, str(bad_dir / "a-directory")]), command)
    assert "is a directory" in line
    line = _one_line_error(capsys, main([command, str(bad_dir / "missing")]), command)
    assert "no such file" in line


@pytest.mark.parametrize("name", ["truncated.trace.gz", "list.pickle", "truncated.pickle", "code.pickle",
                                  "negative-stream.trace", "binary.trace", "empty.trace"])
def test_report_refuses_what_is_not_a_snapshot(name: str, bad_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_line_error(capsys, main(["report", str(bad_dir / name)]), "report")
    assert str(bad_dir / name) in line


@pytest.mark.parametrize(("snapshot", "words"), [
    ({"segments": [{"total_size": -100, "blocks": []}]}, ["segments[0]", "'total_size' must be a non-negative int"]),
    ({"segments": [{"total_size": 100, "blocks": [1]}]}, ["segments[0].blocks[0]", "expected a dict"]),
    ({"segments": [{"total_size": 100, "blocks": [{"size": "x", "state": "inactive"}]}]}, ["'size'"]),
    ({"segments": [{"total_size": 100, "blocks": [{"size": 10, "state": "bogus"}]}]}, ["unknown state 'bogus'"]),
    ({"segments": "abc"}, ["'segments' must be a list"]),
    ({"device_traces": []}, ["'segments'"]),
    ({"segments": [], "pypool": {"memory_stats": [1]}}, ["cannot read a memory snapshot"]),
])
def test_report_damaged_snapshots(snapshot: Dict[str, Any], words: List[str], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "damaged.pickle"
    path.write_bytes(pickle.dumps(snapshot))
    line = _one_line_error(capsys, main(["report", str(path)]), "report")
    for word in words:
        assert word in line, line


def test_report_reads_gzipped_snapshots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "snap.pickle.gz"
    seg = {"device": 0, "address": 0, "total_size": 2 * MiB, "stream": 0, "segment_type": "small",
           "blocks": [{"address": 0, "size": 2 * MiB, "requested_size": 0, "state": "inactive"}]}
    path.write_bytes(gzip.compress(pickle.dumps({"segments": [seg], "device_traces": [[]]})))
    assert main(["report", str(path)]) == 0
    assert "reserved" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "words"), [
    (["size", "--workload", "random", "--top", "-1"], ["--top: must be >= 1, got -1"]),
    (["size", "--workload", "random", "--top", "0"], ["--top"]),
    (["size", "--workload", "random", "--jobs", "0"], ["--jobs"]),
    (["size", "--workload", "random", "--base", "round_up_divisions:-4"], ["--base", "round_up_divisions"]),
    (["size", "--workload", "random", "--candidates", "growth:fixed"], ["--candidates 'growth:fixed'", "growth_step"]),
    (["size", "--workload", "random", "--base", "initial_pool_size:100GiB"], ["--base", "initial_pool_size"]),
    (["replay", "--workload", "random", "--config", "round_up_divisions:-4"], ["--config", "round_up_divisions"]),
    (["replay", "--workload", "random", "--config", "max_pool_size:2**70"], ["--config", "max_pool_size"]),
    (["replay", "--workload", "random", "--config", "max_pool_size:2000PiB"], ["--config", "1 PiB"]),
    (["replay", "--workload", "random", "--config", "initial_pool_size:100GiB"], ["initial_pool_size", "capacity"]),
    (["replay", "--workload", "random", "--capacity", "0"], ["--capacity"]),
    (["replay", "--workload", "random", "--capacity", "-5"], ["--capacity"]),
    (["replay", "--workload", "random", "--capacity", "5000PiB"], ["--capacity: must be <= 4096 PiB"]),
    (["replay", "--workload", "random", "--scale", "nan"], ["--scale"]),
    (["replay", "--workload", "random", "--scale", "-1"], ["--scale"]),
    (["replay", "--workload", "random", "--scale", "inf"], ["scale"]),
    (["replay", "--workload", "random", "--seed", "-1"], ["seed"]),
    (["replay", "--workload", "random", "--device", "1"], ["--device", "torch snapshot"]),
    (["replay", "--workload", "recorded_gpt_train", "--scale", "2"], ["scale"]),
    (["replay"], ["give a TRACE file or --workload"]),
    (["report", "--device", "-1"], ["--device"]),
])
def test_bad_options(argv: List[str], words: List[str], capsys: pytest.CaptureFixture[str]) -> None:
    line = _one_line_error(capsys, main(argv), argv[0])
    for word in words:
        assert word in line, line


def test_device_only_for_torch_snapshots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "t.trace"
    path.write_text(f"{FORMAT_HEADER}\na 0 4096 0 0\n")
    line = _one_line_error(capsys, main(["replay", str(path), "--device", "0"]), "replay")
    assert "a pypool trace (one device)" in line
    snap = tmp_path / "s.pickle"
    snap.write_bytes(pickle.dumps(_torch_snapshot([GOOD_ALLOC])))
    line = _one_line_error(capsys, main(["replay", str(snap), "--device", "3"]), "replay")
    assert "devices 0..0" in line


def test_unwritable_output_paths(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    for argv in (["replay", "--workload", "random", "--scale", "0.01", "--save-trace", str(missing / "t.trace")],
                 ["report", "--html", str(missing / "r.html")]):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2 and "Traceback" not in err and str(missing) in err, err
        assert err.strip().splitlines()[-1].startswith(f"pypool {argv[0]}: error: ")


@pytest.mark.parametrize("command", ["replay", "size"])
def test_more_than_the_issue_listed(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.trace"
    empty.write_text(FORMAT_HEADER + "\n# only comments\n")
    assert "the trace has no events" in _one_line_error(capsys, main([command, str(empty)]), command)
    # A device file would be read until memory runs out.
    assert "not a regular file or a pipe" in _one_line_error(capsys, main([command, "/dev/zero"]), command)
    # Workload options with a file are refused, not ignored.
    ok = tmp_path / "ok.trace"
    ok.write_text(FORMAT_HEADER + "\na 0 4096\n")
    for flag in ("--seed", "--scale"):
        line = _one_line_error(capsys, main([command, str(ok), flag, "1"]), command)
        assert f"{flag}: only for --workload" in line


def test_trailing_comments_in_a_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The README's trace-format example, pasted with its comments (issue 14).
    path = tmp_path / "c.trace"
    path.write_text(f"{FORMAT_HEADER}\n# name: my-run\n"
                    "a 0 67108864 0 0.0      # action id size stream time_us; a = allocate\n"
                    "f 0 67108864 0 3.0      #                                f = free\n"
                    "a 1 4096#no space before the comment\n"
                    "f 1\t# a tab\n")
    assert main(["replay", str(path), "--json"]) == 0
    assert '"events": 4' in capsys.readouterr().out


def _python_m_pypool(args: List[str], **kw: Any) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent / "none"))
    env.pop("PYPOOL_CONF", None)
    return subprocess.run([sys.executable, "-P", "-m", "pypool"] + args, env=env, cwd=tempfile.gettempdir(),
                          timeout=300, **kw)


@pytest.mark.parametrize("args", [
    ["replay", "--workload", "random", "--scale", "0.05"],
    ["size", "--workload", "random", "--scale", "0.05", "--jobs", "1"],
    ["info"],
    ["replay", "--workload", "random", "--scale", "0.05", "--json"],
])
def test_output_into_a_closed_pipe_ends_quietly(args: List[str]) -> None:
    # `python -m pypool replay ... | head`: the reader is gone before the command writes.
    # Status 1 and nothing on stderr, as the Python docs advise for SIGPIPE.
    r, w = os.pipe()
    os.close(r)
    try:
        out = _python_m_pypool(args, stdout=w, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(w)
    assert out.returncode == 1, out.stderr
    assert out.stderr == "", out.stderr


def test_a_real_process_prints_one_line(tmp_path: Path) -> None:
    path = tmp_path / "list.pickle"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    out = _python_m_pypool(["replay", str(path)], capture_output=True, text=True)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == (f"pypool replay: error: {path}: expected a torch memory snapshot (a pickled dict "
                          "with 'segments' and 'device_traces'), found a pickled list\n")


# Issue 14 review: bad input the first pass missed (each test failed before its fix).

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


def test_report_refuses_sizes_past_64_bits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Was printed as "reserved 1073741824.00 TiB".
    path = tmp_path / "huge.pickle"
    path.write_bytes(pickle.dumps({"segments": [{"device": 0, "total_size": 2**70, "blocks": []}],
                                   "device_traces": [[]]}))
    line = _one_line_error(capsys, main(["report", str(path)]), "report")
    assert "segments[0]: 'total_size' must be a non-negative int of at most 64 bits" in line


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
