"""Presenting ``pypool bench`` results: aligned text tables, an offline HTML page with
inline SVG bars, and a PNG through matplotlib when it is installed; the simulated
device's tables and figures included.

Everything here reads the JSON-ready dict of :func:`pypool.bench.run_benchmarks` (or a
saved ``--json`` file), so a result can be re-rendered later without re-running it.
"""

from __future__ import annotations

import html
import math
import shlex
import textwrap
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..config import format_size
from .common import short_size

MiB = 1 << 20

__all__ = ["format_tables", "render_html", "render_png", "text_table", "scenario_label", "sim_tables",
           "memory_table", "side_by_side_table", "calls_table", "calls_per_pair_table", "cthreads_table",
           "sim_html_figures"]


# ---------------------------------------------------------------------------- text
def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] = ()) -> str:
    """Columns padded to their widest cell; ``right[i]`` right-aligns column i."""
    cols = len(headers)
    widths = [len(h) for h in headers]
    for r in rows:
        for i, cell in enumerate(r):
            widths[i] = max(widths[i], len(cell))
    align = list(right) + [False] * (cols - len(right))

    def line(cells: Sequence[str]) -> str:
        out = [(c.rjust(w) if a else c.ljust(w)) for c, w, a in zip(cells, widths, align)]
        return "  ".join(out).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), sep] + [line(r) for r in rows])


def _num(v: Optional[float]) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _time_ratio(v: Optional[float]) -> str:
    """pypool time / glibc time, with enough digits for the small ones (0.0053)."""
    if v is None or not math.isfinite(v):
        return "-"
    if v >= 10:
        return f"{v:,.0f}"
    return f"{v:.2f}" if v >= 0.1 else f"{v:.2g}"


def _pypool_over_glibc(r: Dict[str, Any]) -> Optional[float]:
    """pypool's median time / glibc's: < 1 means pypool is faster. Results saved before
    the key existed carry only the inverse ("speedup")."""
    v = r.get("pypool_over_glibc")
    if v is None and r.get("speedup"):
        v = 1.0 / r["speedup"]
    return v


# The column heading and its meaning, wherever the ratio is shown.
TIME_RATIO_HEADER = "pypool/glibc time"
TIME_RATIO_NOTE = ("pypool/glibc time = pypool's median time / glibc's: below 1 pypool is faster, "
                   "above 1 it is slower (lower is better for pypool)")


def _size(v: Optional[int]) -> str:
    return "-" if v is None else format_size(v)


def _pct(v: Optional[float]) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _header(results: Dict[str, Any]) -> str:
    env = results.get("environment", {})
    s = results.get("settings", {})
    bits = [f"pypool {env.get('pypool', '?')}", f"python {env.get('python', '?')}",
            f"torch {env.get('torch') or 'not installed'}"]
    lines = [f"pypool bench ({s.get('mode', '?')}, {s.get('repeats', '?')} repeats) -- {env.get('date', '')}",
             f"CPU: {env.get('cpu_model', '?')} ({env.get('cpu_count', '?')} cores); " + ", ".join(bits)]
    if env.get("load_average"):
        lines.append("load average at start (1/5/15 min): " + " ".join(f"{x:.2f}" for x in env["load_average"])
                     + f" on {env.get('cpu_count', '?')} cores")
    if env.get("gpu"):
        lines.append(f"GPU: {env.get('gpu')}, driver {env.get('driver') or '?'}")
    elif env.get("device") == "cpu":
        lines.append("GPU: none used (CPU figures only)")
    elif env.get("device") == "sim":
        sd = env.get("simulated_device") or {}
        lines.append(f"device: SIMULATED CUDA device ({sd.get('version') or 'pypool-simdevice'}, "
                     f"{sd.get('devices', 1)} x {sd.get('memory', '?')} of host memory); no GPU used; "
                     f"torch CUDA build {env.get('torch_cuda') or '?'}")
        lines.append("times: host overhead on a simulated device, not GPU time")
        if env.get("python_executable") and env.get("command", "").startswith("python -m pypool"):
            run = env["command"].replace("python", shlex.quote(env["python_executable"]), 1)
            out = f" > {shlex.quote(env['stdout'])}" if env.get("stdout") else ""
            lines.append(f"run as: cd {shlex.quote(env.get('cwd', '.'))} && {run}{out}")
    if env.get("git_revision"):
        lines.append(f"source: git {env['git_revision']}")
    if env.get("command"):
        lines.append(f"command: {env['command']}")
    return "\n".join(lines)


def cpu_timing_table(rows: Sequence[Dict[str, Any]]) -> str:
    headers = ["case", "unit", "pypool", "p99", "min-max", "glibc", "p99", "min-max", TIME_RATIO_HEADER]
    out = []
    for r in rows:
        a, b = r["pypool"], r.get("glibc")
        out.append([
            r["case"], r["unit"], _num(a["median"]), _num(a["p99"]), f"{_num(a['min'])}-{_num(a['max'])}",
            _num(b["median"]) if b else "-", _num(b["p99"]) if b else "-",
            f"{_num(b['min'])}-{_num(b['max'])}" if b else "-", _time_ratio(_pypool_over_glibc(r)),
        ])
    return text_table(headers, out, right=[False, False, True, True, True, True, True, True, True])


def _frag_cell(frag: Optional[float], free: Optional[int]) -> str:
    """External fragmentation at peak beside the free bytes it is a share of."""
    if frag is None:
        return "-"
    return f"{100 * frag:.1f}%" + (f" of {format_size(free)}" if free is not None else "")


def replay_table(rows: Sequence[Dict[str, Any]]) -> str:
    headers = ["workload", "config", "events", "M events/s", "floor (peak live)", "peak reserved",
               "reserved/floor", "utilization", "frag@peak", "ooms"]
    out = []
    for r in rows:
        frag = r.get("fragmentation_at_peak")
        out.append([
            r["workload"], r["config"], f"{r['events']:,}", _num(r["events_per_second"]["median"] / 1e6),
            _size(r["floor"]), _size(r["peak_reserved"]),
            "-" if r.get("reserved_over_floor") is None else f"{r['reserved_over_floor']:.3f}",
            f"{r['utilization']:.3f}", _frag_cell(frag, r.get("free_at_peak")), str(r["ooms"]),
        ])
    return text_table(headers, out, right=[False, False] + [True] * 8)


def scenario_label(name: str) -> str:
    """Readable name of a GPU scenario (``pairs:65536`` -> ``pair 64 KiB``)."""
    kind, _, param = name.partition(":")
    try:
        if kind == "pairs":
            return f"pair {short_size(int(param))}"
        if kind == "random":
            return f"random <= {int(param)} MiB"
    except ValueError:
        pass
    if kind == "trace":
        return f"trace {param}"
    if kind == "train":
        return f"train {param}"
    return name


def _gpu_index(gpu: Dict[str, Any]) -> Tuple[List[str], List[str], Dict[Tuple[str, str], Dict[str, Any]]]:
    allocs = list(gpu.get("allocators", []))
    scenarios = list(gpu.get("scenarios_run", []))
    cell = {}
    for r in gpu.get("scenarios", []):
        cell[(r["scenario"], r["allocator"])] = r
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])
    return allocs, scenarios, cell


def _gpu_unit(rows: Sequence[Dict[str, Any]]) -> str:
    for r in rows:
        m = r.get("metric")
        if m:
            return {"ns_per_pair": "ns/pair", "ns_per_op": "ns/op", "ns_per_event": "ns/event",
                    "step_ms": "ms/step"}.get(m, m)
    return ""


def _gpu_time_cell(r: Optional[Dict[str, Any]]) -> str:
    if r is None:
        return "-"
    if r.get("error"):
        return "error"
    if r.get("skipped"):
        return "skipped"
    s = r.get("step_ms") if r.get("metric") == "step_ms" else r.get("ns")
    if not s or s.get("median") is None:
        return "-"
    return f"{_num(s['median'])} ({_num(s['p99'])})"


def gpu_tables(gpu: Dict[str, Any]) -> str:
    allocs, scenarios, cell = _gpu_index(gpu)
    time_rows, mem_rows = [], []
    for sc in scenarios:
        rs = [cell.get((sc, a)) for a in allocs]
        time_rows.append([scenario_label(sc), _gpu_unit([r for r in rs if r])] + [_gpu_time_cell(r) for r in rs])
        floor = next((r.get("floor") for r in rs if r and r.get("floor")), None)
        mem = []
        for r in rs:
            if r is None or r.get("error") or r.get("skipped"):
                mem.append("-" if r is None else ("error" if r.get("error") else "skipped"))
                continue
            util = f" / {_pct(r.get('utilization'))}" if r.get("utilization") is not None else ""
            mem.append(_size(r.get("peak_reserved")) + util)
        mem_rows.append([scenario_label(sc), _size(floor) if floor else "-"] + mem)
    t1 = text_table(["scenario", "unit"] + allocs, time_rows, right=[False, False] + [True] * len(allocs))
    t2 = text_table(["scenario", "floor"] + allocs, mem_rows, right=[False, True] + [True] * len(allocs))
    errors = []
    for name, child in gpu.get("children", {}).items():
        if child.get("error"):
            errors.append(f"  {name}: {str(child['error']).splitlines()[0][:200]}")
    for (sc, a), r in cell.items():
        if r.get("error"):
            errors.append(f"  {a} {sc}: {str(r['error']).splitlines()[0][:200]}")
    text = ("GPU time per operation: median (p99)\n" + t1 +
            "\n\nGPU memory: peak reserved / utilization (peak allocated / peak reserved)\n" + t2)
    if errors:
        text += "\n\nGPU errors:\n" + "\n".join(errors)
    return text


def format_tables(results: Dict[str, Any]) -> str:
    """Every table of a result, as printed at the end of ``python -m pypool bench``."""
    parts = [_header(results)]
    gpu = results.get("gpu")
    if gpu:
        parts.append(gpu_tables(gpu))
    sim = results.get("sim")
    if sim:
        parts.append(sim_tables(sim))
    cpu = results.get("cpu") or {}
    if cpu.get("timing"):
        parts.append("CPU figures: pypool through its C ABI (host backend) vs glibc malloc/free, "
                     "timed in C++; median over repeats, p99 and min-max over repeats; "
                     + TIME_RATIO_NOTE + "\n" + cpu_timing_table(cpu["timing"]))
    if cpu.get("replay"):
        parts.append("CPU figures: bundled workloads replayed through pypool (null backend) "
                     "against their physical floor (peak live bytes); utilization = floor / "
                     "peak reserved; frag@peak = external fragmentation when reserved peaked, "
                     "1 - largest free block / free bytes, shown with those free bytes\n"
                     + replay_table(cpu["replay"]))
    if "runtime_seconds" in results:
        parts.append(f"total time {results['runtime_seconds']:.1f} s")
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- HTML
_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _svg_bars(title: str, groups: Sequence[Tuple[str, Sequence[Tuple[str, Optional[float], str]]]],
              series: Sequence[str], note: str = "") -> str:
    """Horizontal bars: one block of bars per group, one bar per series, each block scaled
    to its own largest value (the figures span six orders of magnitude)."""
    label_w, bar_w, row_h, gap = 230, 420, 16, 10
    value_w = 290
    height = 40 + sum(len(g[1]) * row_h + gap for g in groups) + 24
    width = label_w + bar_w + value_w
    color = {s: _COLORS[i % len(_COLORS)] for i, s in enumerate(series)}
    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">',
           f'<text x="4" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>']
    y = 34
    for group, bars in groups:
        top = max((v for _, v, _ in bars if v is not None and v > 0), default=0.0)
        out.append(f'<text x="4" y="{y + row_h * len(bars) / 2 + 4:.0f}" font-size="12">{html.escape(group)}</text>')
        for name, v, text in bars:
            w = 0.0 if not v or top <= 0 else bar_w * v / top
            out.append(f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row_h - 4}" '
                       f'fill="{color.get(name, "#999")}"><title>{html.escape(name)}: {html.escape(text)}</title></rect>')
            out.append(f'<text x="{label_w + w + 4:.1f}" y="{y + row_h - 4}" font-size="11">'
                       f'{html.escape(name)}: {html.escape(text)}</text>')
            y += row_h
        y += gap
    if note:
        out.append(f'<text x="4" y="{height - 8}" font-size="11" fill="#555">{html.escape(note)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _html_figures(results: Dict[str, Any]) -> List[str]:
    figs = []
    cpu = results.get("cpu") or {}
    if cpu.get("timing"):
        groups = []
        scaling: List[Tuple[str, Optional[float], str]] = []
        for r in cpu["timing"]:
            text = f"{_num(r['pypool']['median'])} {r['unit']}"
            if r["group"] == "scaling":
                # One block, so the bars show how the cost moves with the free-block count.
                scaling.append((f"{r['params'].get('n_free', '?')} free", r["pypool"]["median"], text))
                continue
            ratio = _pypool_over_glibc(r)
            if ratio is not None:
                text += f" ({_time_ratio(ratio)}x glibc's time)"
            bars = [("pypool", r["pypool"]["median"], text)]
            if r.get("glibc"):
                bars.append(("glibc", r["glibc"]["median"], f"{_num(r['glibc']['median'])} {r['unit']}"))
            groups.append((r["case"], bars))
        if scaling:
            groups.append(("pypool 4 KiB pair vs free blocks", scaling))
        figs.append(_svg_bars("CPU: time per operation (median; shorter is faster)", groups,
                              ["pypool", "glibc"] + [b[0] for b in scaling],
                              "each row scaled to its own maximum"))
    if cpu.get("replay"):
        by_workload: Dict[str, List[Tuple[str, Optional[float], str]]] = {}
        for r in cpu["replay"]:
            bars = by_workload.setdefault(r["workload"], [("floor (peak live)", r["floor"], _size(r["floor"]))])
            over = r.get("reserved_over_floor")
            bars.append((f"pypool {r['config']}", r["peak_reserved"],
                         f"{_size(r['peak_reserved'])}" + (f" ({over:.3f}x the floor)" if over else "")))
        series = ["floor (peak live)"] + sorted({f"pypool {r['config']}" for r in cpu["replay"]})
        figs.append(_svg_bars("Workload replays: peak reserved against the physical floor (x the floor: lower is better)",
                              list(by_workload.items()), series, "each row scaled to its own maximum"))
    if results.get("sim"):
        figs += sim_html_figures(results["sim"])
    gpu = results.get("gpu")
    if gpu:
        allocs, scenarios, cell = _gpu_index(gpu)
        tgroups, mgroups = [], []
        for sc in scenarios:
            tb, mb = [], []
            for a in allocs:
                r = cell.get((sc, a))
                if r is None or r.get("error") or r.get("skipped"):
                    continue
                s = r.get("step_ms") if r.get("metric") == "step_ms" else r.get("ns")
                if s and s.get("median") is not None:
                    tb.append((a, s["median"], f"{_num(s['median'])} {_gpu_unit([r])}"))
                if r.get("peak_reserved") is not None:
                    mb.append((a, r["peak_reserved"], _size(r["peak_reserved"])))
            if tb:
                tgroups.append((scenario_label(sc), tb))
            if mb:
                mgroups.append((scenario_label(sc), mb))
        if tgroups:
            figs.append(_svg_bars("GPU: time (median; shorter is faster)", tgroups, allocs,
                                  "each row scaled to its own maximum"))
        if mgroups:
            figs.append(_svg_bars("GPU: peak reserved memory (smaller is better)", mgroups, allocs,
                                  "each row scaled to its own maximum"))
    return figs


def _wrap_prose(text: str, width: int = 110) -> str:
    """The tables' text with its long prose lines (the definitions above each table: a
    table row has runs of spaces between columns, prose has none) wrapped at ``width``.
    In the page's scrolling box an unwrapped definition ran off to the right, hiding
    what the ratio column means."""
    out: List[str] = []
    for line in text.split("\n"):
        if len(line) > width and "  " not in line.strip():
            out.extend(textwrap.wrap(line, width, break_on_hyphens=False, subsequent_indent="  "))
        else:
            out.append(line)
    return "\n".join(out)


def render_html(results: Dict[str, Any]) -> str:
    """A self-contained page (inline SVG and CSS, no external reference) of the results."""
    env = results.get("environment", {})
    env_rows = "\n".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape('not installed' if v is None else str(v))}</td></tr>"
        if k in ("torch", "numpy", "rmm") else
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape('-' if v is None else str(v))}</td></tr>"
        for k, v in env.items() if not isinstance(v, (list, dict)))
    figs = "\n".join(f'<div class="fig">{f}</div>' for f in _html_figures(results))
    tables = html.escape(_wrap_prose(format_tables(results)))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pypool bench</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table.env th {{ text-align: left; padding-right: 1em; font-weight: normal; color: #555; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 12px; }}
.fig {{ margin: 1.5em 0; }}
</style></head>
<body>
<h1>pypool bench</h1>
<table class="env">
{env_rows}
</table>
{figs}
<h2>Tables</h2>
<pre>{tables}</pre>
</body></html>
"""


# ---------------------------------------------------------------------------- PNG
def render_png(results: Dict[str, Any], path: str) -> None:
    """Bar charts of the results as a PNG. Raises ``ImportError`` without matplotlib."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = []
    cpu = results.get("cpu") or {}
    if cpu.get("timing"):
        panels.append("cpu")
    if cpu.get("replay"):
        panels.append("replay")
    gpu = results.get("gpu")
    if gpu and gpu.get("scenarios"):
        panels += ["gpu_time", "gpu_mem"]
    if not panels:
        panels.append("empty")
    fig = Figure(figsize=(11, 4.5 * len(panels)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels):
        if panel == "cpu":
            rows = cpu["timing"]
            labels = [r["case"] for r in rows]
            y = list(range(len(rows)))
            ax.barh([v - 0.2 for v in y], [r["pypool"]["median"] for r in rows], height=0.4, label="pypool (C ABI)")
            ax.barh([v + 0.2 for v in y], [r["glibc"]["median"] if r.get("glibc") else 0 for r in rows],
                    height=0.4, label="glibc malloc/free")
            ax.set_yticks(y, labels)
            ax.invert_yaxis()
            ax.set_xscale("log")
            ax.set_xlabel("ns per operation (median, log scale)")
            ax.set_title("CPU: pypool vs glibc, time per operation (shorter is faster)")
            ax.legend()
        elif panel == "replay":
            rows = cpu["replay"]
            labels = [f"{r['workload']} ({r['config']})" for r in rows]
            y = list(range(len(rows)))
            gib = float(1 << 30)
            ax.barh([v - 0.2 for v in y], [r["floor"] / gib for r in rows], height=0.4, label="floor (peak live)")
            res = ax.barh([v + 0.2 for v in y], [r["peak_reserved"] / gib for r in rows], height=0.4,
                          label="pypool peak reserved")
            ax.bar_label(res, labels=[f"{r['reserved_over_floor']:.3f}x the floor" if r.get("reserved_over_floor")
                                      else "" for r in rows], fontsize=7, padding=2)
            ax.margins(x=0.12)
            ax.set_yticks(y, labels)
            ax.invert_yaxis()
            ax.set_xlabel("GiB")
            ax.set_title("Workload replays: peak reserved against the physical floor (lower is better)")
            ax.legend()
        elif panel in ("gpu_time", "gpu_mem"):
            allocs, scenarios, cell = _gpu_index(gpu)  # type: ignore[arg-type]
            n = max(1, len(allocs))
            h = 0.8 / n
            y = list(range(len(scenarios)))
            for i, a in enumerate(allocs):
                vals = []
                for sc in scenarios:
                    r = cell.get((sc, a)) or {}
                    if panel == "gpu_time":
                        s = r.get("step_ms") if r.get("metric") == "step_ms" else r.get("ns")
                        vals.append((s or {}).get("median") or 0)
                    else:
                        vals.append((r.get("peak_reserved") or 0) / float(1 << 30))
                ax.barh([v - 0.4 + h * (i + 0.5) for v in y], vals, height=h, label=a)
            ax.set_yticks(y, [scenario_label(sc) for sc in scenarios])
            ax.invert_yaxis()
            if panel == "gpu_time":
                ax.set_xscale("log")
                ax.set_xlabel("ns per op (ms per step for train:*), median, log scale")
                ax.set_title("GPU: time")
            else:
                ax.set_xlabel("peak reserved, GiB")
                ax.set_title("GPU: peak reserved memory")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no results", ha="center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------- simulated device
def _mib(v: Optional[int]) -> str:
    return "-" if v is None else f"{v / MiB:,.0f}"


def _ns(r: Optional[Dict[str, Any]], key: str = "ns") -> Optional[float]:
    if r is None or r.get("error") or r.get("skipped"):
        return None
    s = r.get(key) or {}
    v = s.get("median")
    return float(v) if v is not None else None


def _cell_ns(r: Optional[Dict[str, Any]], key: str = "ns") -> str:
    if r is None:
        return "-"
    if r.get("error"):
        return "error"
    if r.get("skipped"):
        return "n/a"
    v = _ns(r, key)
    if v is None:
        return "-"
    p99 = (r.get(key) or {}).get("p99")
    return f"{v:,.0f}" + (f" ({p99:,.0f})" if p99 is not None else "")


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return f"{a / b:.2f}" if (a is not None and b) else "-"


def _cell_wc(r: Optional[Dict[str, Any]]) -> str:
    """``wall / cpu`` medians of a timing row."""
    if r is None or r.get("error") or r.get("skipped"):
        return _cell_ns(r)
    w, c = _ns(r, "ns"), _ns(r, "cpu_ns")
    return ("-" if w is None else f"{w:,.0f}") + " / " + ("-" if c is None else f"{c:,.0f}")


def _ratio_wc(a: Optional[Dict[str, Any]], b: Optional[Dict[str, Any]]) -> str:
    return f"{_ratio(_ns(a, 'ns'), _ns(b, 'ns'))} / {_ratio(_ns(a, 'cpu_ns'), _ns(b, 'cpu_ns'))}"


def _index(sim: Dict[str, Any]) -> Tuple[List[str], Dict[Tuple[str, str], Dict[str, Any]]]:
    cell: Dict[Tuple[str, str], Dict[str, Any]] = {}
    for r in sim.get("scenarios", []):
        cell[(r["scenario"], r["allocator"])] = r
    return list(sim.get("allocators", [])), cell


def _top_calls(c: Optional[Dict[str, Any]], k: int = 3) -> str:
    if not c or not c.get("by_name"):
        return "-"
    interesting = {n: v for n, v in c["by_name"].items()
                   if any(w in n for w in ("Malloc", "Free", "cuMem", "MemGetInfo", "Synchronize"))}
    top = sorted(interesting.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    return ", ".join(f"{n} {v:,}" for n, v in top) or "-"


def memory_table(sim: Dict[str, Any]) -> str:
    allocs, cell = _index(sim)
    rows = []
    for sc in [s for s in sim.get("scenarios_run", []) if s.startswith("minmem:")]:
        for a in allocs:
            r = cell.get((sc, a))
            if r is None:
                continue
            if r.get("error"):
                rows.append([sc[7:], _mib(r.get("floor")), a, "error", "", "", "", "", ""])
                continue
            cap = r.get("min_capacity")
            c = r.get("confirm") or {}
            conf = "-" if not c else ("yes" if c.get("agrees") else "NO")
            rows.append([sc[7:], _mib(r.get("floor")), a, _mib(r.get("peak_reserved")),
                         _mib(r.get("sim_peak")), _mib(cap),
                         "-" if cap is None else f"{r.get('min_capacity_over_floor', 0):.3f}",
                         str(len(r.get("attempts") or [])), conf])
    return text_table(["workload", "floor MiB", "allocator", "peak reserved MiB", "device peak MiB",
                       "min capacity MiB", "x floor", "tries", "confirmed"], rows,
                      right=[False, True, False, True, True, True, True, True, False])


def side_by_side_table(sim: Dict[str, Any]) -> str:
    """The headline: smallest capacity (x floor) of every allocator per workload, side by
    side, and the synchronizing device calls per 1,000 allocations (whole device, cold /
    at the smallest capacity)."""
    allocs, cell = _index(sim)
    rows = []
    for sc in [s for s in sim.get("scenarios_run", []) if s.startswith("minmem:")]:
        got = [cell.get((sc, a)) for a in allocs]
        floor = next((r.get("floor") for r in got if r and r.get("floor")), None)
        line = [sc[7:], _mib(floor)]
        for r in got:
            if r is None or r.get("error") or r.get("min_capacity") is None:
                line.append("error" if r is not None and r.get("error") else "-")
            else:
                line.append(f"{_mib(r['min_capacity'])} ({r.get('min_capacity_over_floor', 0):.3f})")
        for r in got:
            if r is None or r.get("error"):
                line.append("-")
                continue
            cc, cm = r.get("calls_cold") or {}, r.get("calls_at_min") or {}
            line.append(f"{_per_k(cc.get('sync') if cc else None, r.get('allocations'))} / "
                        f"{_per_k(cm.get('sync') if cm else None, r.get('allocations'))}")
        rows.append(line)
    return text_table(["workload", "floor MiB"] + [f"{a} MiB (x floor)" for a in allocs]
                      + [f"{a} sync/1k" for a in allocs], rows,
                      right=[False] + [True] * (1 + 2 * len(allocs)))


def calls_table(sim: Dict[str, Any]) -> str:
    allocs, cell = _index(sim)
    rows = []
    for sc in [s for s in sim.get("scenarios_run", []) if s.startswith("minmem:")]:
        for a in allocs:
            r = cell.get((sc, a))
            if r is None or r.get("error"):
                continue
            cc, cw, cm = r.get("calls_cold") or {}, r.get("calls_warm") or {}, r.get("calls_at_min") or {}
            rows.append([sc[7:], a, f"{cc.get('total', 0):,}", f"{cc.get('sync', 0):,}",
                         f"{cw.get('total', 0):,}", f"{cw.get('sync', 0):,}",
                         f"{cm['total']:,}" if cm else "-", f"{cm['sync']:,}" if cm else "-",
                         _per_k(cc.get("sync") if cc else None, r.get("allocations")),
                         _per_k(cm.get("sync") if cm else None, r.get("allocations")),
                         _top_calls(cc), _top_calls(cm)])
    return text_table(["workload", "allocator", "cold", "sync", "warm", "sync", "at min cap", "sync",
                       "sync/1k allocs cold", "at min cap",
                       "memory calls, cold pass", "memory calls at min capacity"], rows,
                      right=[False, False, True, True, True, True, True, True, True, True, False, False])


def _per_k(sync: Optional[int], allocations: Optional[int]) -> str:
    """Synchronizing device calls per 1,000 allocations of the trace (the issue's measure:
    at most PyTorch native's + 1)."""
    if sync is None or not allocations:
        return "-"
    return f"{1000 * sync / allocations:.2f}"


def _pairs_table(sim: Dict[str, Any], kind: str) -> str:
    allocs, cell = _index(sim)
    scen = [s for s in sim.get("scenarios_run", []) if s.split(":")[0] == kind]
    headers = ["size", "threads", "meta (no allocator)"] + allocs
    ratios = [("pypool/native", "pypool", "native"),
              ("pypool-exp/native-exp", "pypool-expandable", "native-expandable")]
    ratios = [x for x in ratios if x[1] in allocs and x[2] in allocs]
    headers += [x[0] for x in ratios]
    rows = []
    for sc in scen:
        _, size, t = sc.split(":")
        line = [short_size(int(size)), t]
        metas = sorted(v for a in allocs for v in [_ns(cell.get((sc, a)), "meta_cpu_ns")] if v is not None)
        line.append(f"{metas[len(metas) // 2]:,.0f}" if metas else "-")
        for a in allocs:
            r = cell.get((sc, a))
            over = _ns(r, "over_meta_cpu_ns")
            line.append(_cell_wc(r) + ("" if over is None else f" / {over:+,.0f}"))
        for _, a, b in ratios:
            ra, rb = cell.get((sc, a)), cell.get((sc, b))
            line.append(f"{_ratio(_ns(ra, 'cpu_ns'), _ns(rb, 'cpu_ns'))} / "
                        f"{_ratio(_ns(ra, 'over_meta_cpu_ns'), _ns(rb, 'over_meta_cpu_ns'))}")
        rows.append(line)
    return text_table(headers, rows, right=[False] + [True] * (len(headers) - 1))


def calls_per_pair_table(sim: Dict[str, Any]) -> str:
    """Device calls per allocation + free pair in steady state (one thread)."""
    allocs, cell = _index(sim)
    rows = []
    for kind, label in (("tpairs", "torch.empty from Python"), ("tspairs", "torch.empty from TorchScript"),
                        ("cthreads", "pypool C ABI")):
        for sc in [x for x in sim.get("scenarios_run", []) if x.split(":")[0] == kind and x.endswith(":1")]:
            line = [label, short_size(int(sc.split(":")[1]))]
            for a in allocs:
                r = cell.get((sc, a))
                dc = (r or {}).get("device_calls") or {}
                pp = dc.get("per_pair")
                line.append("-" if pp is None else f"{pp:.2f}" + (f" ({dc['sync']} sync)" if dc.get("sync") else ""))
            rows.append(line)
    return text_table(["path", "size"] + allocs, rows, right=[False, True] + [True] * len(allocs))


def cthreads_table(sim: Dict[str, Any]) -> str:
    allocs, cell = _index(sim)
    pa = [a for a in allocs if a.startswith("pypool")]
    scen = [s for s in sim.get("scenarios_run", []) if s.startswith("cthreads:")]
    rows = []
    for sc in scen:
        _, size, t = sc.split(":")
        line = [short_size(int(size)), t]
        for a in pa:
            r = cell.get((sc, a))
            line += [_cell_wc(r), "-" if _ns(r, "thread_ns") is None else f"{_ns(r, 'thread_ns'):,.0f}"]
        rows.append(line)
    headers = ["size", "threads"]
    for a in pa:
        headers += [f"{a} wall / cpu", "per thread"]
    return text_table(headers, rows, right=[False] + [True] * (len(headers) - 1))


SIM_BANNER = ("SIMULATED CUDA DEVICE: no GPU was used. Device memory is host memory with a capacity, "
              "kernels do nothing, every CUDA call is counted. Memory figures and call counts are "
              "exact for this simulation; every time is HOST OVERHEAD ON A SIMULATED DEVICE "
              "(CPU time of the allocator paths, without driver latencies), never GPU time.")


def sim_tables(sim: Dict[str, Any]) -> str:
    """The simulated-device part of the text report."""
    parts = ["\n".join(textwrap.wrap(SIM_BANNER, 100))]
    info = next((c.get("device_info") for c in sim.get("children", {}).values() if c.get("device_info")), None)
    if info:
        parts.append(f"device: {info.get('name')} ({info.get('sim_version', '?')}), "
                     f"{_mib(info.get('total_memory'))} MiB; torch {info.get('torch')} "
                     f"(CUDA runtime {info.get('cuda_runtime')})")
    floor_note = (f"Workloads (pypool.workloads, replayed as torch.empty tensors; recorded_* = real "
                  f"models recorded on the simulated device, whole; the generated ones at scale "
                  f"{_scale(sim)} of their length): floor = peak live requested bytes; min capacity = smallest "
                  f"simulated device capacity (2 MiB steps) with no out-of-memory error, bisected in "
                  f"the child; confirmed = a fresh child passes at that capacity and runs out of "
                  f"memory 2 MiB below")
    parts.append("\n".join(textwrap.wrap(
        "Smallest simulated device capacity without out-of-memory, side by side (2 MiB steps; x floor = "
        "over peak live requested bytes); sync/1k = device calls that synchronize a real GPU per 1,000 "
        "allocations of the workload, cold on the whole device / in the passing replay at the smallest "
        "capacity", 100)) + "\n" + side_by_side_table(sim))
    parts.append("\n".join(textwrap.wrap(floor_note, 100)) + "\n" + memory_table(sim))
    calls_note = ("Device calls during one replay (every CUDA runtime and driver entry point, counted by "
                  "the simulation; most are torch's cudaGetDevice and context queries): cold = from an "
                  "empty cache on the whole device, warm = the second pass, at min cap = the passing "
                  "replay at the smallest capacity (from an empty cache); sync = calls that synchronize "
                  "a real device (cudaFree, cuMemUnmap, ...); sync/1k allocs = those per 1,000 allocations of the "
                  "workload")
    parts.append("\n".join(textwrap.wrap(calls_note, 100)) + "\n" + calls_table(sim))
    def wrap(text: str) -> str:
        return "\n".join(textwrap.wrap(text, 100))

    parts.append(wrap("Host overhead on a simulated device: ns per torch.empty(n, uint8, 'cuda') + del "
                      "from Python threads (the GIL serializes them), in batches alternating with the "
                      "same loop on torch's meta device (no allocator, no CUDA). Each cell: wall / CPU / "
                      "CPU above meta, medians over batches (p99 in the JSON). wall = batch wall time / "
                      "all pairs of all threads; CPU = the threads' CPU time / all pairs (other load on "
                      "the machine shows less); above meta = each batch's CPU time minus its "
                      "neighbouring meta batch's: what the allocator and torch's CUDA path add. Ratios: "
                      "CPU / above meta") + "\n" + _pairs_table(sim, "tpairs"))
    parts.append(wrap("Host overhead on a simulated device: the same pairs from C++ inter-op threads "
                      "(TorchScript fork, no GIL: torch's allocator has no C entry point to drive without "
                      "a torch extension); CPU = the whole process's CPU time / all pairs; cells and "
                      "ratios as above") + "\n" + _pairs_table(sim, "tspairs"))
    parts.append(wrap("Host overhead on a simulated device: pypool's C ABI (pypool_malloc + pypool_free) "
                      "from C++ threads released together. wall / CPU per pair over all threads' pairs "
                      "(medians over repeats); per thread = each thread's own wall time per pair")
                 + "\n" + cthreads_table(sim))
    parts.append("Device calls per allocation + free pair, one thread, cache warm (CUDA entry points "
                 "counted by the simulation; part of the host overhead above)\n" + calls_per_pair_table(sim))
    notes = []
    allocs, cell = _index(sim)
    for name, child in sim.get("children", {}).items():
        if child.get("error"):
            notes.append(f"  {name}: {str(child['error']).splitlines()[0][:200]}")
    for (sc, a), r in cell.items():
        if r.get("error"):
            notes.append(f"  {a} {sc}: {str(r['error']).splitlines()[0][:200]}")
        c = r.get("confirm") or {}
        if c and not c.get("agrees"):
            notes.append(f"  {a} {sc}: confirmation disagrees: {c.get('disagreement')}")
        if r.get("min_capacity_note"):
            notes.append(f"  {a} {sc}: {r['min_capacity_note']}")
    if notes:
        parts.append("Simulated-device errors and disagreements:\n" + "\n".join(notes))
    t = sim.get("timed_seconds")
    if t is not None:
        parts.append(f"simulated-device suite: timing in {sim.get('rounds', 1)} interleaved round(s) of one "
                     f"child per allocator (batches of all rounds pooled); {t:.0f} s in the allocator children, "
                     f"{sim.get('confirm_seconds', 0):.0f} s for {sim.get('confirm_runs', 0)} confirmation runs")
    return "\n\n".join(parts)


def _scale(sim: Dict[str, Any]) -> str:
    for r in sim.get("scenarios", []):
        if r.get("scale") is not None and not str(r.get("workload", "")).startswith("recorded_"):
            return f"{r['scale']:g}"
    return "?"


def sim_html_figures(sim: Dict[str, Any]) -> List[str]:
    """Bar charts of the simulated-device results for the HTML page."""
    allocs, cell = _index(sim)
    figs = []
    groups = []
    for sc in [s for s in sim.get("scenarios_run", []) if s.startswith("minmem:")]:
        bars: List[Tuple[str, Optional[float], str]] = []
        for a in allocs:
            r = cell.get((sc, a))
            if r and r.get("min_capacity") and r.get("min_capacity_over_floor"):
                bars.append((a, float(r["min_capacity_over_floor"]),
                             f"{_mib(r['min_capacity'])} MiB = {r['min_capacity_over_floor']:.3f}x floor"))
        if bars:
            groups.append((sc[7:], bars))
    if groups:
        figs.append(_svg_bars("Simulated device: smallest capacity without OOM, x floor (smaller is better)",
                              groups, allocs, "each row scaled to its own maximum"))
    tg = []
    for sc in [s for s in sim.get("scenarios_run", []) if s.startswith("tpairs:")]:
        _, size, t = sc.split(":")
        bars = []
        for a in allocs:
            v = _ns(cell.get((sc, a)), "cpu_ns")
            if v is not None:
                bars.append((a, v, f"{v:,.0f} ns CPU"))
        if bars:
            tg.append((f"{short_size(int(size))}, {t} thread(s)", bars))
    if tg:
        figs.append(_svg_bars("Host overhead on a simulated device: CPU ns per torch.empty+del (not GPU time)",
                              tg, allocs, "each row scaled to its own maximum"))
    return figs
