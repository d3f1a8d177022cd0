"""Presenting ``pypool bench`` results: aligned text tables, an offline HTML page with
inline SVG bars, and a PNG through matplotlib when it is installed.

Everything here reads the JSON-ready dict of :func:`pypool.bench.run_benchmarks` (or a
saved ``--json`` file), so a result can be re-rendered later without re-running it.
"""

from __future__ import annotations

import html
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .config import format_size

__all__ = ["format_tables", "render_html", "render_png", "text_table", "scenario_label"]


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
            import shlex

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
    from .bench import _short_size

    kind, _, param = name.partition(":")
    try:
        if kind == "pairs":
            return f"pair {_short_size(int(param))}"
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
        from ._bench_sim import sim_tables

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
        from ._bench_sim import html_figures

        figs += html_figures(results["sim"])
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
    import textwrap

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
