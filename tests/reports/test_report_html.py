"""The HTML and PNG renderings of a fragmentation report."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import pypool
from pypool._fragreport import _COLORS, FragmentationReport

MiB = 1 << 20
GiB = 1 << 30
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def report():
    """Three segments on two streams with allocated, free and pending blocks."""
    p = pypool.Pool("host", capacity="1GiB")
    ptrs = [p.malloc(s) for s in (1000, 3000, 5 * MiB, 100, 70000, 200000, 12 * MiB, 3 * MiB)]
    for x in ptrs[1::2]:
        p.free(x)
    p.malloc(9000, stream=5)
    p.record_stream(ptrs[0], 9)
    p.backend.hold_stream(9)
    p.free(ptrs[0])
    rep = FragmentationReport.from_pool(p)
    p.backend.release_stream(9)
    return rep


def test_html_is_self_contained(report, tmp_path):
    path = tmp_path / "r.html"
    assert report.save_html(path) == str(path)
    text = path.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"""(src|href)\s*=""", text)  # nothing loaded from anywhere
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert text.count("<svg") == report.segments
    # one hover title per block (allocated blocks: requested part + waste share one)
    n_blocks = sum(len(s["blocks"]) for s in report.layout)
    n_tiny = sum(1 for s in report.layout for b in s["blocks"]
                 if b["state"] != "inactive" and 1000 * b["size"] / s["total_size"] < 2)
    assert text.count("<title>") == 1 + n_blocks + n_tiny  # page title + blocks + tick marks
    assert "state active_pending_free" in text
    assert "requested 68.36 KiB (70000 B)" in text  # live
    assert "(200000 B)" not in text  # freed: a free block has no requested size
    assert "24.00 MiB" in text and "stream 0x5" in text
    assert "[8.00 MiB, 16.00 MiB)" in text or "[2.00 MiB, 4.00 MiB)" in text


def test_html_blocks_are_to_scale(report):
    text = report.to_html()
    # The 20 MiB segment holds 5 MiB + 12 MiB allocated then 3 MiB free: x positions of
    # the rectangles in a 1000-unit bar.
    seg = next(s for s in report.layout if s["total_size"] == 20 * MiB)
    start = text.index(f"{seg['address']:#x}")
    bar = text[start:text.index("</svg>", start)]
    xs = [float(x) for x in re.findall(r'<rect x="([0-9.]+)"', bar)]
    widths = [float(w) for w in re.findall(r'width="([0-9.]+)"', bar)]
    assert xs[0] == 0.0 and widths[0] == pytest.approx(250.0)
    assert xs[-1] == pytest.approx(850.0) and widths[-1] == pytest.approx(150.0)


def test_png_written(report, tmp_path):
    import matplotlib.image as mpimg

    path = tmp_path / "r.png"
    assert report.save_png(path) == str(path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000
    img = mpimg.imread(str(path))
    assert img.shape[0] > 300 and img.shape[1] > 800
    # not blank: many distinct colours, and the "allocated" blue is drawn
    flat = (img[..., :3] * 255).round().astype(int).reshape(-1, 3)
    assert len({tuple(c) for c in flat[:: max(1, len(flat) // 50_000)]}) > 20
    blue = tuple(int(_COLORS["requested"][i:i + 2], 16) for i in (1, 3, 5))
    assert ((abs(flat - blue).sum(axis=1)) < 6).sum() > 1000


def test_png_of_empty_report(tmp_path):
    path = tmp_path / "empty.png"
    FragmentationReport.from_segments([]).save_png(path)
    assert path.stat().st_size > 5_000
    with pytest.raises(ValueError, match="max_segments"):
        FragmentationReport.from_segments([]).save_png(path, max_segments=0)


def test_png_without_matplotlib_says_what_to_install(report, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        report.save_png(tmp_path / "x.png")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium) "
                                              "for the headless screenshot of the HTML report")
def test_headless_chromium_screenshot(report, tmp_path):
    from PIL import Image

    page = tmp_path / "r.html"
    shot = tmp_path / "shot.png"
    report.save_html(page)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,900",
           page.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert shot.exists()
    with Image.open(shot) as im:
        im = im.convert("RGB")
        assert im.size == (1200, 900)
        colors = im.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text and bars, not a blank page
    # the segment bars are on screen: plenty of the "allocated" and "free" colours
    def count(hex_color):
        rgb = tuple(int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
        return sum(n for n, c in colors if sum(abs(a - b) for a, b in zip(c, rgb)) < 6)

    assert count(_COLORS["requested"]) > 2000
    assert count(_COLORS["inactive"]) > 2000


def test_save_png_checks_dpi(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rep = pypool.Pool(backend="null", capacity="1GiB").fragmentation()
    for dpi in (0, -1, 10**5, 1.5):  # 10**5 ended in std::bad_alloc inside matplotlib
        with pytest.raises(ValueError, match="dpi: expected an int in 1..1000"):
            rep.save_png(tmp_path / "x.png", dpi=dpi)  # type: ignore[arg-type]


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
