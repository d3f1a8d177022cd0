"""``python -m pypool report``."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import tempfile
import sys

import pytest

import pypool
from pypool import _core
from pypool.cli import report as cli_report
from pypool.snapshot import dump_snapshot

MiB = 1 << 20


def _run(argv):
    parser = argparse.ArgumentParser()
    cli_report.add_arguments(parser)
    return cli_report.run(parser.parse_args(argv))


@pytest.fixture
def snapshot_file(tmp_path):
    p = pypool.Pool("host", capacity="64MiB")
    a = p.malloc(1000)
    p.malloc(3000)
    p.malloc(5 * MiB)
    p.free(a)
    return dump_snapshot(tmp_path / "snap.pickle", pool=p)


def torch_style_snapshot():
    """What ``torch.cuda.memory._snapshot()`` returns (torch 2.x keys), for device 1."""
    seg = {"device": 1, "address": 0x7F0000000000, "total_size": 2 * MiB, "allocated_size": 1024,
           "active_size": 1024, "requested_size": 1000, "stream": 0, "segment_type": "small",
           "segment_pool_id": (0, 0), "is_expandable": False, "frames": [],
           "blocks": [
               {"address": 0x7F0000000000, "size": 1024, "requested_size": 1000, "state": "active_allocated",
                "frames": [{"filename": "train.py", "line": 3, "name": "step"}]},
               {"address": 0x7F0000000400, "size": 2 * MiB - 1024, "requested_size": 0, "state": "inactive",
                "frames": []},
           ]}
    return {"segments": [seg], "device_traces": [[], []],
            "allocator_settings": {"PYTORCH_CUDA_ALLOC_CONF": "", "expandable_segments": False}}


def test_text_report_of_a_snapshot(snapshot_file, capsys):
    assert _run([snapshot_file]) == 0
    out = capsys.readouterr().out
    assert out.startswith("pypool memory report - device 0 - backend host - from snapshot")
    assert "reserved" in out and "22.00 MiB" in out
    assert "peak utilization" in out  # pypool snapshots carry their statistics


def test_json_html_png(snapshot_file, tmp_path, capsys):
    html, png = tmp_path / "r.html", tmp_path / "r.png"
    assert _run([snapshot_file, "--json", "--html", str(html), "--png", str(png)]) == 0
    captured = capsys.readouterr()
    d = json.loads(captured.out)  # stdout is exactly one JSON document
    assert d["reserved"] == 22 * MiB and d["allocated"] == 3072 + 5 * MiB
    assert d["free_blocks"] == 3  # before and after the 3000 B block, and the large tail
    assert f"wrote {html}" in captured.err and f"wrote {png}" in captured.err
    assert "https://" not in html.read_text() and png.read_bytes()[:4] == b"\x89PNG"


def test_torch_snapshot_and_device_filter(tmp_path, capsys):
    path = tmp_path / "torch.pickle"
    with open(path, "wb") as f:
        pickle.dump(torch_style_snapshot(), f)
    assert _run([str(path), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert (d["device"], d["reserved"], d["allocated"], d["requested"]) == (1, 2 * MiB, 1024, 1000)
    assert d["peak_allocated"] is None  # torch snapshots carry no statistics
    assert _run([str(path), "--json", "--device", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["segments"] == 0


def test_errors(tmp_path, capsys):
    # Bad input is one line on stderr, status 2 (issue 14).
    assert _run([str(tmp_path / "missing.pickle")]) == 2
    assert "no such file" in capsys.readouterr().err
    junk = tmp_path / "junk.pickle"
    junk.write_bytes(b"not a pickle")
    assert _run([str(junk)]) == 2
    assert "junk.pickle: not a memory snapshot" in capsys.readouterr().err
    assert _run(["--device", "-1"]) == 2


def test_registry_device_that_does_not_exist(capsys):
    # Note [Pools before install]: without a GPU only device 0 exists.
    if _core.cuda_device_count()[0] > 0:
        pytest.skip("a GPU machine has other devices")
    assert _run(["--device", "61", "--json"]) == 2
    assert "no device 61" in capsys.readouterr().err
    assert not _core.registry_has_pool(61)


def test_python_dash_m_pypool_report(snapshot_file):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pypool.__file__)))
    out = subprocess.run([sys.executable, "-m", "pypool", "report", snapshot_file], capture_output=True,
                         text=True, timeout=120, env=env, cwd=tempfile.gettempdir())
    assert out.returncode == 0, out.stderr
    assert "external fragmentation" in out.stdout
