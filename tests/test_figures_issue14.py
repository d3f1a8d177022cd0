"""Issue 14, "figures that mislead": every printed figure true, labelled and defined where
it is shown. Text, exit status and picture checks of replay, the fragmentation report,
bench's tables, ``pypool info`` and ``install()``'s error for a build without CUDA."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List

import pytest

import pypool
from pypool import _core, bench
from pypool.bench import provenance as bench_provenance
from pypool.__main__ import main
from pypool.fragmentation import EXTERNAL_FRAGMENTATION_DEFINITION, FragmentationReport, explain_oom
from pypool.replay import first_oom_text, replay
from pypool.trace import Trace

MiB = 1 << 20
GiB = 1 << 30
ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- capped replay
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


# ---------------------------------------------------------------------------- labels
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


# ---------------------------------------------------------------------------- PNG
def _png_or_skip() -> None:
    pytest.importorskip("matplotlib")


def test_png_title_and_legend_do_not_overlap() -> None:
    _png_or_skip()
    from pypool._fragreport import _png_figure

    pool = pypool.Pool(backend="null", capacity=64 * GiB)
    for i in range(40):
        pool.malloc((i + 3) * MiB)
    fig = _png_figure(pool.fragmentation(), max_segments=4, dpi=100,  # long title: "36 smaller ... not drawn"
                      caption="the pool at peak reserved")
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    title = fig._suptitle.get_window_extent(r)
    (legend,) = [lg for ax in fig.axes for lg in [ax.get_legend()] if lg is not None]
    assert "smaller segments not drawn" in fig._suptitle.get_text()
    assert fig._suptitle.get_text().endswith("\nthe pool at peak reserved")
    assert not title.overlaps(legend.get_window_extent(r))
    # Segment labels say what they are.
    labels = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    assert labels and all(re.fullmatch(r"(small|large) [\d.]+ [KMG]?i?B, stream 0", s) for s in labels), labels
    assert fig.axes[1].get_ylabel() == "segment: pool, size, stream"


def test_png_tiny_block_is_visible(tmp_path: Path) -> None:
    _png_or_skip()
    import numpy as np
    from matplotlib.image import imread

    def blue_pixels(with_block: bool) -> int:
        pool = pypool.Pool(backend="null", capacity=8 * GiB)
        p = pool.malloc(1024)              # 1 KiB in a 2 MiB small segment
        if not with_block:
            pool.free(p)
        path = tmp_path / f"tiny{with_block}.png"
        pool.fragmentation().save_png(path)
        img = imread(str(path))[..., :3]
        blue = np.array([0x2F, 0x6D, 0xB5]) / 255.0       # the "requested" colour
        return int((np.abs(img - blue).max(axis=2) < 0.02).sum())

    legend_only = blue_pixels(False)        # the legend's swatch
    assert blue_pixels(True) - legend_only >= 4 * 20   # a bar at least ~4 px wide, full height


# ---------------------------------------------------------------------------- bench
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


# ---------------------------------------------------------------------------- no CUDA backend
def test_info_and_install_say_loudly_when_the_cuda_backend_is_missing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from pypool import _torch
    from pypool.cli import info as cli_info

    assert _core.cuda_backend_compiled()  # the build under test has it (needs no toolkit)
    assert main(["info"]) == 0
    assert "WARNING" not in capsys.readouterr().err
    monkeypatch.setattr(_core, "cuda_backend_compiled", lambda: False)
    assert cli_info.run(SimpleNamespace(json=True)) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["warning"].startswith("WARNING: this pypool was built WITHOUT its CUDA backend")
    assert "WITHOUT its CUDA backend" in err
    assert cli_info.run(SimpleNamespace(json=False)) == 0
    assert "WITHOUT its CUDA backend" in capsys.readouterr().err

    monkeypatch.setattr(_torch, "_native_cuda_devices", lambda: (0, "not built"))
    fake = SimpleNamespace(__version__="2.13.0", version=SimpleNamespace(cuda="13.0", hip=None),
                           cuda=SimpleNamespace(is_initialized=lambda: False, device_count=lambda: 1))
    with pytest.raises(_torch.InstallError, match="built without its CUDA backend"):
        _torch._check_torch(fake)


# ---------------------------------------------------------------------------- set-up
def test_make_chromium_says_what_it_does(tmp_path: Path) -> None:
    make = shutil.which("make")
    if make is None or not (ROOT / "Makefile").exists():
        pytest.skip("make or the source tree is missing")
    # A PATH without chromium (and without apt-get): only the tools the recipe needs.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "id", "grep", "timeout"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {"PATH": str(bin_dir), "PYPOOL_NO_APT": "1", "HOME": str(tmp_path)}
    p = subprocess.run([make, "-s", "-C", str(ROOT), "chromium"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert "not installed (PYPOOL_NO_APT set): the HTML screenshot test will skip" in p.stdout
    recipe = (ROOT / "Makefile").read_text()
    body = recipe[recipe.index("\nchromium:"):recipe.index("\nsanitize:")]
    assert "/dev/null 2>&1; }" not in body and "apt-get install" in body  # apt's output is shown


def test_readme_mentions_setup_and_extras() -> None:
    readme = (ROOT / "README.md")
    if not readme.exists():
        pytest.skip("no README beside the tests")
    text = readme.read_text()
    assert "PYPOOL_NO_APT" in text and "chromium" in text.lower()
    assert "matplotlib" in text and "CUDA toolkit" in text


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


def test_replay_help_documents_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["replay", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "exit status: 0 when the whole trace replayed; 3 when an allocation ran out of memory" in out


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
