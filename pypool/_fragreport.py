"""The fragmentation report itself: :class:`FragmentationReport`, its figures and its
renderings (dict, JSON, text, HTML, PNG), built from segments alone.

It sits below :class:`pypool.Pool` (whose :meth:`~pypool.Pool.fragmentation` returns one)
and needs nothing above it; :mod:`pypool.fragmentation` adds the functions that pick a
pool (:func:`pypool.fragmentation`) and explain an out-of-memory failure, and is the
public home of every name here. What the figures mean: that module's docstring.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from .config import format_size

__all__ = ["Figures", "FragmentationReport", "PoolBase", "EXTERNAL_FRAGMENTATION_DEFINITION"]

# Printed wherever the figure is shown: alone, "74.7%" alarms more than it should.
EXTERNAL_FRAGMENTATION_DEFINITION = (
    "external fragmentation = 1 - largest free block / free bytes: the share of the pool's "
    "free (cached) bytes that one request could not get at once; 0% when nothing is free")

_STATES = ("active_allocated", "active_pending_free", "inactive")
_POOL_KINDS = ("small", "large")
_COUNTER_KEYS = ("num_ooms", "num_alloc_retries", "num_device_alloc", "num_device_free",
                 "num_segment_map", "num_segment_unmap")

PathLike = Union[str, "os.PathLike[str]"]


class PoolBase:
    """The base class of :class:`pypool.Pool`: what :meth:`FragmentationReport.from_pool`
    accepts. It lives here so that this module needs nothing above it (``Pool`` returns
    these reports, so the report cannot import ``Pool``)."""

    @property
    def device(self) -> int:
        raise NotImplementedError

    @property
    def backend_name(self) -> str:
        raise NotImplementedError

    def segments(self) -> List[Dict[str, Any]]:
        raise NotImplementedError

    def memory_stats(self) -> Dict[str, int]:
        raise NotImplementedError


@dataclass
class Figures:
    """Byte and block counts of a set of segments, with the ratios derived from them."""

    reserved: int = 0
    allocated: int = 0
    requested: int = 0
    pending_free: int = 0
    free: int = 0
    largest_free: int = 0
    segments: int = 0
    allocated_blocks: int = 0
    pending_blocks: int = 0
    free_blocks: int = 0

    @property
    def internal_waste(self) -> int:
        """Bytes lost to rounding inside live blocks (allocated − requested)."""
        return self.allocated - self.requested

    @property
    def external_fragmentation(self) -> float:
        """1 − largest free block / free bytes; 0.0 when nothing is free."""
        return 0.0 if self.free == 0 else 1.0 - self.largest_free / self.free

    @property
    def utilization(self) -> float:
        """allocated / reserved; 0.0 when nothing is reserved."""
        return 0.0 if self.reserved == 0 else self.allocated / self.reserved

    def _add_segment(self, seg: Mapping[str, Any]) -> None:
        self.segments += 1
        self.reserved += seg["total_size"]
        for b in seg["blocks"]:
            state, size = b["state"], b["size"]
            if state == "active_allocated":
                self.allocated += size
                self.requested += b["requested_size"]
                self.allocated_blocks += 1
            elif state == "active_pending_free":
                self.pending_free += size
                self.pending_blocks += 1
            else:
                self.free += size
                self.free_blocks += 1
                if size > self.largest_free:
                    self.largest_free = size

    def figures_dict(self) -> Dict[str, Any]:
        """The counts and the derived figures as one flat dict."""
        d: Dict[str, Any] = {f.name: getattr(self, f.name) for f in dataclasses.fields(Figures)}
        d["internal_waste"] = self.internal_waste
        d["external_fragmentation"] = self.external_fragmentation
        d["utilization"] = self.utilization
        return d


@dataclass
class FragmentationReport(Figures):
    """Fragmentation figures of one pool (totals are the inherited :class:`Figures`).

    Attributes:
        device: the device index, or None when unknown or several devices are mixed.
        backend: the pool's backend name ("cuda", "host", "null"), when known.
        source: where the figures came from: "pool", "segments" or "snapshot".
        pools: figures per pool kind, keys "small" and "large" (always both), and
            "unknown" for snapshot segments without a type.
        streams: figures per stream (the stream segments were made for).
        free_histogram: free blocks by size in power-of-two buckets, smallest first:
            ``{"low": 2**k, "high": 2**(k+1), "count": n, "bytes": b}`` for sizes in
            ``[low, high)``; only buckets holding a block are listed.
        peak_allocated, peak_reserved, peak_requested: from statistics, else None.
        counters: ``num_ooms``, ``num_alloc_retries``, ... from statistics (empty without).
        layout: the segments the report was made from, normalized (for the pictures).
    """

    device: Optional[int] = None
    backend: Optional[str] = None
    source: str = "segments"
    pools: Dict[str, Figures] = field(default_factory=dict)
    streams: Dict[int, Figures] = field(default_factory=dict)
    free_histogram: List[Dict[str, int]] = field(default_factory=list)
    peak_allocated: Optional[int] = None
    peak_reserved: Optional[int] = None
    peak_requested: Optional[int] = None
    counters: Dict[str, int] = field(default_factory=dict)
    layout: List[Dict[str, Any]] = field(default_factory=list, repr=False, compare=False)

    # ------------------------------------------------------------------ derived
    @property
    def peak_utilization(self) -> Optional[float]:
        """peak allocated / peak reserved; None without statistics, 0.0 when nothing was
        ever reserved."""
        if self.peak_allocated is None or self.peak_reserved is None:
            return None
        return 0.0 if self.peak_reserved == 0 else self.peak_allocated / self.peak_reserved

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_pool(cls, pool: Any) -> "FragmentationReport":
        """Report on a live :class:`~pypool.Pool` (its segments and its statistics).

        The segments and the statistics are read one after the other: with other threads
        allocating meanwhile, the peaks may be from a slightly later moment.
        """
        if not isinstance(pool, PoolBase):
            raise TypeError(f"pool: expected a pypool.Pool, got {type(pool).__name__}")
        rep = cls.from_segments(pool.segments(), stats=pool.memory_stats(), device=pool.device)
        rep.backend = pool.backend_name
        rep.source = "pool"
        return rep

    @classmethod
    def from_segments(
        cls,
        segments: Iterable[Mapping[str, Any]],
        stats: Optional[Mapping[str, Any]] = None,
        device: Optional[int] = None,
    ) -> "FragmentationReport":
        """Report on segments laid out as ``Pool.segments()`` or a torch snapshot's
        ``segments`` (``address``, ``total_size``, ``segment_type``, ``stream``,
        ``blocks`` with ``size``, ``state`` and, for live blocks, ``requested_size``).

        ``stats`` is a ``memory_stats()`` dict (pypool's or torch's keys) for the peaks.
        """
        if isinstance(segments, (str, bytes, Mapping)):
            raise TypeError("segments: expected a list of segment dicts "
                            "(use from_snapshot for a whole snapshot)")
        layout = [_normalize_segment(s, i) for i, s in enumerate(segments)]
        layout.sort(key=lambda s: (s["device"] if s["device"] is not None else -1, s["address"]))
        rep = cls(device=device, source="segments", layout=layout)
        rep.pools = {k: Figures() for k in _POOL_KINDS}
        hist: Dict[int, List[int]] = {}
        for seg in layout:
            rep._add_segment(seg)
            rep.pools.setdefault(seg["segment_type"], Figures())._add_segment(seg)
            rep.streams.setdefault(seg["stream"], Figures())._add_segment(seg)
            for b in seg["blocks"]:
                if b["state"] == "inactive" and b["size"] > 0:
                    k = b["size"].bit_length() - 1
                    slot = hist.setdefault(k, [0, 0])
                    slot[0] += 1
                    slot[1] += b["size"]
        rep.streams = dict(sorted(rep.streams.items()))
        rep.free_histogram = [
            {"low": 1 << k, "high": 1 << (k + 1), "count": c, "bytes": n}
            for k, (c, n) in sorted(hist.items())
        ]
        if rep.device is None:
            devices = {s["device"] for s in layout if s["device"] is not None}
            if len(devices) == 1:
                rep.device = devices.pop()
        if stats is not None:
            rep._take_stats(stats)
        return rep

    @classmethod
    def from_snapshot(
        cls, snapshot: Union[Mapping[str, Any], Sequence[Mapping[str, Any]]], device: Optional[int] = None
    ) -> "FragmentationReport":
        """Report on a memory snapshot in torch's schema: the dict of
        :func:`pypool.snapshot` or of ``torch.cuda.memory._snapshot()`` (or the bare
        segment list of older torch versions).

        ``device`` keeps only that device's segments (default: all). The peaks are
        known only for pypool snapshots, which carry the pool's statistics.
        """
        if isinstance(snapshot, Mapping):
            if "segments" not in snapshot:
                raise ValueError("snapshot: no 'segments' key; is this a torch memory snapshot?")
            segments = snapshot["segments"]
            if not isinstance(segments, (list, tuple)):
                raise TypeError(f"snapshot: 'segments' must be a list, got {type(segments).__name__}")
            extra = snapshot.get("pypool") or {}
        elif isinstance(snapshot, (list, tuple)):
            segments, extra = snapshot, {}
        else:
            raise TypeError(f"snapshot: expected a snapshot dict, got {type(snapshot).__name__}")
        if device is not None:
            segments = [s for s in segments if s.get("device", 0) == device]
        stats = extra.get("memory_stats") if isinstance(extra, Mapping) else None
        if stats is not None and device is not None and extra.get("device") != device:
            stats = None
        rep = cls.from_segments(segments, stats=stats, device=device)
        rep.source = "snapshot"
        if isinstance(extra, Mapping):
            rep.backend = extra.get("backend")
        return rep

    def _take_stats(self, stats: Mapping[str, Any]) -> None:
        def get(key: str) -> Optional[int]:
            v = stats.get(key)
            return None if v is None else int(v)

        self.peak_allocated = get("allocated_bytes.all.peak")
        self.peak_reserved = get("reserved_bytes.all.peak")
        self.peak_requested = get("requested_bytes.all.peak")
        self.counters = {k: int(stats[k]) for k in _COUNTER_KEYS if k in stats}

    # ------------------------------------------------------------------ renderers
    def to_dict(self, include_segments: bool = False) -> Dict[str, Any]:
        """Every figure as plain Python values (JSON-ready but for the int stream keys).

        ``include_segments`` adds the normalized segment layout (large for big pools).
        """
        d: Dict[str, Any] = {"device": self.device, "backend": self.backend, "source": self.source}
        d.update(self.figures_dict())
        d["pools"] = {k: v.figures_dict() for k, v in self.pools.items()}
        d["streams"] = {k: v.figures_dict() for k, v in self.streams.items()}
        d["free_histogram"] = [dict(b) for b in self.free_histogram]
        d["peak_allocated"] = self.peak_allocated
        d["peak_reserved"] = self.peak_reserved
        d["peak_requested"] = self.peak_requested
        d["peak_utilization"] = self.peak_utilization
        d["counters"] = dict(self.counters)
        if include_segments:
            d["segments"] = [
                dict(s, blocks=[dict(b) for b in s["blocks"]]) for s in self.layout
            ]
        return d

    def to_json(self, indent: Optional[int] = 2, include_segments: bool = False) -> str:
        """:meth:`to_dict` as JSON (stream keys become strings)."""
        return json.dumps(self.to_dict(include_segments=include_segments), indent=indent)

    def title(self) -> str:
        """One line naming what the report is about."""
        parts = ["pypool memory report"]
        if self.device is not None:
            parts.append(f"device {self.device}")
        if self.backend:
            parts.append(f"backend {self.backend}")
        parts.append(f"from {self.source}")
        return " - ".join(parts)

    def _columns(self) -> List[Tuple[str, Figures]]:
        cols: List[Tuple[str, Figures]] = [("all", self)]
        cols += [(f"{k} pool", self.pools[k]) for k in _POOL_KINDS if k in self.pools]
        cols += [(f"{k} pool", v) for k, v in self.pools.items() if k not in _POOL_KINDS]
        if len(self.streams) > 1:
            cols += [(f"stream {_stream_name(s)}", f) for s, f in self.streams.items()]
        return cols

    def table_rows(self) -> List[Tuple[str, List[str]]]:
        """The summary table: (row label, one formatted cell per column of
        :meth:`column_names`)."""
        cols = [f for _, f in self._columns()]

        def row(label: str, fn: Any) -> Tuple[str, List[str]]:
            return label, [fn(f) for f in cols]

        pct = _pct
        return [
            row("reserved", lambda f: format_size(f.reserved)),
            row("allocated", lambda f: format_size(f.allocated)),
            row("requested", lambda f: format_size(f.requested)),
            row("internal waste", lambda f: format_size(f.internal_waste)),
            row("pending free", lambda f: format_size(f.pending_free)),
            row("free in pool", lambda f: format_size(f.free)),
            row("largest free block", lambda f: format_size(f.largest_free)),
            row("external fragmentation", _frag_cell),
            row("utilization", lambda f: pct(f.utilization)),
            row("segments", lambda f: str(f.segments)),
            row("allocated blocks", lambda f: str(f.allocated_blocks)),
            row("pending blocks", lambda f: str(f.pending_blocks)),
            row("free blocks", lambda f: str(f.free_blocks)),
        ]

    def column_names(self) -> List[str]:
        """Headers of the summary table's value columns."""
        return [name for name, _ in self._columns()]

    def peak_line(self) -> Optional[str]:
        """The peaks in one line, or None without statistics."""
        if self.peak_allocated is None and self.peak_reserved is None:
            return None
        parts = []
        if self.peak_allocated is not None:
            parts.append(f"allocated {format_size(self.peak_allocated)}")
        if self.peak_reserved is not None:
            parts.append(f"reserved {format_size(self.peak_reserved)}")
        if self.peak_requested is not None:
            parts.append(f"requested {format_size(self.peak_requested)}")
        pu = self.peak_utilization
        if pu is not None:
            parts.append(f"peak utilization {_pct(pu)}")
        return "peaks: " + ", ".join(parts)

    def to_text(self) -> str:
        """An aligned table for terminals: the figures per column (all, small pool, large
        pool, and each stream when there are several), the peaks, and the histogram of
        free-block sizes."""
        names = self.column_names()
        rows = self.table_rows()
        label_w = max(len(r[0]) for r in rows)
        widths = [max(len(n), *(len(r[1][i]) for r in rows)) for i, n in enumerate(names)]
        lines = [self.title(), ""]
        lines.append(" " * label_w + "  " + "  ".join(n.rjust(w) for n, w in zip(names, widths)))
        for label, cells in rows:
            lines.append(label.ljust(label_w) + "  " + "  ".join(c.rjust(w) for c, w in zip(cells, widths)))
        lines += ["", EXTERNAL_FRAGMENTATION_DEFINITION]
        peak = self.peak_line()
        if peak:
            lines += ["", peak]
        if self.counters:
            lines.append("counters: " + ", ".join(f"{k} {v}" for k, v in self.counters.items()))
        lines.append("")
        if not self.free_histogram:
            lines.append("free blocks by size: none")
        else:
            lines.append("free blocks by size:")
            ranges = [_bucket_label(b) for b in self.free_histogram]
            rw = max(len(r) for r in ranges)
            cw = max(len(str(b["count"])) for b in self.free_histogram)
            bw = max(len(format_size(b["bytes"])) for b in self.free_histogram)
            top = max(b["bytes"] for b in self.free_histogram)
            for r, b in zip(ranges, self.free_histogram):
                bar = "#" * max(1, round(30 * b["bytes"] / top)) if top else ""
                noun = "block " if b["count"] == 1 else "blocks"
                lines.append(f"  {r.ljust(rw)}  {str(b['count']).rjust(cw)} {noun}  "
                             f"{format_size(b['bytes']).rjust(bw)}  {bar}")
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        return self.to_text()

    def to_html(self, preamble: Optional[str] = None) -> str:
        """The HTML page of :meth:`save_html`, as a string."""
        return _render_html(self, preamble)

    def save_html(self, path: PathLike, preamble: Optional[str] = None) -> str:
        """Write a self-contained HTML page: the summary table, the free-block histogram
        and every segment drawn as a bar of its blocks to scale (hover a block for its
        address, size, requested size, state and stream). Inline CSS and SVG only: it
        opens offline and references no other file or site. ``preamble``: text shown
        first, preformatted (e.g. :func:`explain_oom`'s). Returns the path."""
        text = self.to_html(preamble)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return os.fspath(path)

    def save_png(self, path: PathLike, max_segments: int = 64, dpi: int = 100,
                 caption: Optional[str] = None) -> str:
        """Draw the segments (up to ``max_segments``, largest first), the free-block
        histogram and the summary into a PNG with matplotlib's Agg canvas (the global
        pyplot backend is left alone). Returns the path.

        ``caption``: a second title line saying what the picture shows (e.g. "the pool at
        peak reserved").

        Raises ImportError when matplotlib is missing (``pip install matplotlib``).
        """
        if isinstance(max_segments, bool) or not isinstance(max_segments, int) or max_segments < 1:
            raise ValueError(f"max_segments: expected an int >= 1, got {max_segments!r}")
        # The figure is 12 inches wide: 1000 dpi is already 12,000 pixels; dpi=10**5 ended in
        # std::bad_alloc inside matplotlib.
        if isinstance(dpi, bool) or not isinstance(dpi, int) or not 1 <= dpi <= 1000:
            raise ValueError(f"dpi: expected an int in 1..1000, got {dpi!r}")
        _render_png(self, path, max_segments, dpi, caption)
        return os.fspath(path)


# ============================================================================ helpers


def _stream_name(s: int) -> str:
    return "0" if s == 0 else hex(s)


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f}%"


def _frag_cell(f: Figures) -> str:
    """External fragmentation beside the free bytes it is a share of."""
    return f"{_pct(f.external_fragmentation)} of {format_size(f.free)}"


def _bucket_label(b: Mapping[str, int]) -> str:
    return f"[{format_size(b['low'])}, {format_size(b['high'])})"


_U64_MAX = (1 << 64) - 1


def _field(d: Mapping[str, Any], key: str, at: str, default: Any = None) -> int:
    """``d[key]`` as a byte count or address: an int in 0..2**64-1 (what a 64-bit
    allocator can report), or ValueError naming where. A snapshot is user input: a damaged
    one used to give negative sizes in the report, or int()'s own message."""
    v = d.get(key, default)
    if v is None:
        v = 0
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _U64_MAX:
        shown = repr(v) if not isinstance(v, int) or v.bit_length() < 200 else f"an int of {v.bit_length()} bits"
        raise ValueError(f"{at}: {key!r} must be a non-negative int of at most 64 bits, got {shown[:80]}")
    return v


def _normalize_segment(seg: Mapping[str, Any], index: int) -> Dict[str, Any]:
    """A segment dict from pypool or torch, reduced to the keys the report uses, with
    block addresses filled in when a snapshot left them out."""
    at = f"segments[{index}]"
    if not isinstance(seg, Mapping):
        raise TypeError(f"{at}: expected a dict, got {type(seg).__name__}")
    for key in ("total_size", "blocks"):
        if key not in seg:
            raise ValueError(f"{at}: missing key {key!r}")
    if not isinstance(seg["blocks"], (list, tuple)):
        raise TypeError(f"{at}.blocks: expected a list, got {type(seg['blocks']).__name__}")
    address = _field(seg, "address", at)
    # Snapshots torch builds from a profile have no segment type: say so rather than guess.
    kind = seg.get("segment_type") or "unknown"
    if not isinstance(kind, str):
        raise TypeError(f"{at}: 'segment_type' must be a str, got {type(kind).__name__}")
    stream = _field(seg, "stream", at)
    blocks = []
    offset = address
    for j, b in enumerate(seg["blocks"]):
        bat = f"{at}.blocks[{j}]"
        if not isinstance(b, Mapping):
            raise TypeError(f"{bat}: expected a dict, got {type(b).__name__}")
        state = b.get("state")
        if state not in _STATES:
            raise ValueError(f"{bat}: unknown state {state!r} "
                             f"(expected one of {_STATES})"[:300])
        if "size" not in b:
            raise ValueError(f"{bat}: missing key 'size'")
        size = _field(b, "size", bat)
        addr = _field(b, "address", bat) if b.get("address") is not None else offset
        if state == "active_allocated":
            # Old torch snapshots keep the requested size in the block's history.
            if "requested_size" in b:
                req = _field(b, "requested_size", bat)
            elif b.get("history") and isinstance(b["history"], list) and isinstance(b["history"][0], Mapping):
                req = _field(b["history"][0], "real_size", f"{bat}.history[0]", size)
            else:
                req = size
        else:
            req = 0
        blocks.append({"address": addr, "size": size, "requested_size": req, "state": state,
                       "stream": _field(b, "stream", bat, stream)})
        offset = addr + size
    return {
        "device": seg.get("device"),
        "address": address,
        "total_size": _field(seg, "total_size", at),
        "segment_type": kind,
        "stream": stream,
        "is_expandable": bool(seg.get("is_expandable", False)),
        "blocks": blocks,
    }


# ============================================================================ HTML

# Note [Offline HTML]: the page must open on an air-gapped machine and leak nothing when
# opened, so everything is inline (CSS in <style>, pictures as inline <svg> without an
# xmlns attribute, which HTML5 does not need) and no address of any site appears; the
# tests search the page for "http://" and "https://". Hover titles use SVG <title>
# elements, which every browser shows without script.

_COLORS = {
    "requested": "#2f6db5",
    "waste": "#9cc1ea",
    "active_pending_free": "#e8912d",
    "inactive": "#d9dde3",
}

# Blocks narrower than this (in 1/1000 of their segment) also get a tick mark.
_TICK_BELOW = 2.0
# In the PNG, live blocks narrower than this fraction of their segment are drawn this wide.
_PNG_MIN_WIDTH = 0.006

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px;color:#1d2430;background:#fff}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.sub{color:#5b6574;margin-bottom:16px}
table.sum{border-collapse:collapse} table.sum td,table.sum th{padding:3px 10px;text-align:right;border-bottom:1px solid #e6e8ec}
table.sum th:first-child,table.sum td:first-child{text-align:left}
table.sum thead th{background:#f3f5f8}
.legend span{display:inline-block;margin-right:16px} .sw{display:inline-block;width:12px;height:12px;vertical-align:-1px;margin-right:5px;border:1px solid #9aa3ae}
.seg{margin:6px 0 10px} .seglabel{font:12px/1.3 ui-monospace,Menlo,Consolas,monospace;color:#38414d;white-space:pre}
svg.bar{display:block;width:100%;height:22px;border:1px solid #9aa3ae;box-sizing:border-box;background:#d9dde3}
svg.bar rect{stroke:#ffffff;stroke-width:0.6;vector-effect:non-scaling-stroke}
svg.bar rect:hover{stroke:#000;stroke-width:1.5}
.hist td{padding:2px 8px;font-variant-numeric:tabular-nums} .hbar{height:12px;background:#6b7a8c}
.muted{color:#7a8594} .segs{max-height:440px;overflow:auto;padding-right:6px}
pre.pre{font:12px/1.35 ui-monospace,Menlo,Consolas,monospace;background:#f6f7f9;border:1px solid #c9ced6;padding:10px;white-space:pre-wrap;overflow-wrap:anywhere}
"""


def _render_html(rep: FragmentationReport, preamble: Optional[str] = None) -> str:
    e = html.escape
    out: List[str] = []
    out.append("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
    out.append(f"<title>{e(rep.title())}</title><style>{_CSS}</style></head><body>")
    out.append(f"<h1>{e(rep.title())}</h1>")
    sub = (f"{rep.segments} segments, {format_size(rep.reserved)} reserved, "
           f"{format_size(rep.allocated)} allocated, {_pct(rep.utilization)} utilization, "
           f"{format_size(rep.free)} free in the pool with "
           f"{_pct(rep.external_fragmentation)} external fragmentation (the share of those free "
           f"bytes one request could not get at once)")
    out.append(f"<div class=\"sub\">{e(sub)}</div>")
    if preamble:
        out.append(f"<pre class=\"pre\">{e(preamble)}</pre>")

    # Segments first (the picture is the point of the page), in a box of bounded height
    # so that the summary below stays in reach with thousands of segments.
    out.append("<h2>Segments</h2><div class=\"legend\">")
    for key, name in (("requested", "allocated (requested)"), ("waste", "allocated (rounding waste)"),
                      ("active_pending_free", "pending free (other stream)"), ("inactive", "free")):
        out.append(f"<span><i class=\"sw\" style=\"background:{_COLORS[key]}\"></i>{e(name)}</span>")
    out.append("</div><p class=\"muted\">Each bar is one segment, its blocks to scale within it "
               "(a live block too narrow to see is marked by a thin line); hover a block for "
               "its details.</p>")
    out.append("<div class=\"segs\">")
    if not rep.layout:
        out.append("<p class=\"muted\">no segments</p>")
    for seg in rep.layout:
        out.append(_segment_html(seg))
    out.append("</div>")

    # Summary table.
    out.append("<h2>Summary</h2><table class=\"sum\"><thead><tr><th></th>")
    out += [f"<th>{e(n)}</th>" for n in rep.column_names()]
    out.append("</tr></thead><tbody>")
    for label, cells in rep.table_rows():
        out.append(f"<tr><td>{e(label)}</td>" + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    out.append(f"<p class=\"muted\">{e(EXTERNAL_FRAGMENTATION_DEFINITION)}.</p>")
    peak = rep.peak_line()
    if peak:
        out.append(f"<p>{e(peak)}</p>")
    if rep.counters:
        out.append("<p class=\"muted\">" + e(", ".join(f"{k} {v}" for k, v in rep.counters.items())) + "</p>")

    # Histogram of free blocks.
    out.append("<h2>Free blocks by size</h2>")
    if not rep.free_histogram:
        out.append("<p class=\"muted\">no free blocks</p>")
    else:
        top = max(b["bytes"] for b in rep.free_histogram) or 1
        out.append("<table class=\"hist\"><tr><th>size</th><th>blocks</th><th>bytes</th><th style=\"width:320px\"></th></tr>")
        for b in rep.free_histogram:
            w = max(1.0, 300.0 * b["bytes"] / top)
            out.append(f"<tr><td>{e(_bucket_label(b))}</td><td>{b['count']}</td>"
                       f"<td>{e(format_size(b['bytes']))}</td>"
                       f"<td><div class=\"hbar\" style=\"width:{w:.1f}px\"></div></td></tr>")
        out.append("</table>")

    out.append("</body></html>\n")
    return "".join(out)


def _segment_html(seg: Mapping[str, Any]) -> str:
    e = html.escape
    total = seg["total_size"] or 1
    f = Figures()
    f._add_segment(seg)
    label = (f"{seg['address']:#x}  {seg['segment_type']:5}  {format_size(seg['total_size']):>11}  "
             f"stream {_stream_name(seg['stream'])}"
             + ("  expandable" if seg["is_expandable"] else "")
             + f"  | allocated {format_size(f.allocated)}, free {format_size(f.free)}"
             f" (largest {format_size(f.largest_free)}), {len(seg['blocks'])} "
             + ("block" if len(seg["blocks"]) == 1 else "blocks"))
    parts = [f"<div class=\"seg\"><div class=\"seglabel\">{e(label)}</div>"
             "<svg class=\"bar\" viewBox=\"0 0 1000 10\" preserveAspectRatio=\"none\" role=\"img\">"]
    base = seg["address"]
    ticks: List[str] = []
    for b in seg["blocks"]:
        x = 1000.0 * (b["address"] - base) / total
        w = 1000.0 * b["size"] / total
        tip = (f"address {b['address']:#x} (offset {b['address'] - base})\n"
               f"size {format_size(b['size'])} ({b['size']} B)\n")
        if b["state"] == "active_allocated":
            tip += f"requested {format_size(b['requested_size'])} ({b['requested_size']} B)\n"
        tip += f"state {b['state']}\nstream {_stream_name(b['stream'])}"
        title = f"<title>{e(tip)}</title>"
        if b["state"] == "active_allocated":
            wr = 1000.0 * b["requested_size"] / total
            parts.append(f"<g>{title}<rect x=\"{x:.4f}\" y=\"0\" width=\"{wr:.4f}\" height=\"10\" "
                         f"fill=\"{_COLORS['requested']}\"/>")
            if w > wr:
                parts.append(f"<rect x=\"{x + wr:.4f}\" y=\"0\" width=\"{w - wr:.4f}\" height=\"10\" "
                             f"fill=\"{_COLORS['waste']}\"/>")
            parts.append("</g>")
        else:
            parts.append(f"<rect x=\"{x:.4f}\" y=\"0\" width=\"{w:.4f}\" height=\"10\" "
                         f"fill=\"{_COLORS[b['state']]}\">{title}</rect>")
        if b["state"] != "inactive" and w < _TICK_BELOW:
            # Note [Ticks for tiny blocks]: blocks stay to scale, so a 512 B block in a
            # 20 MiB segment would be invisible; a line of constant pixel width marks it.
            color = _COLORS["requested" if b["state"] == "active_allocated" else b["state"]]
            ticks.append(f"<line x1=\"{x + w / 2:.4f}\" x2=\"{x + w / 2:.4f}\" y1=\"0\" y2=\"10\" "
                         f"stroke=\"{color}\" stroke-width=\"2\" vector-effect=\"non-scaling-stroke\">"
                         f"{title}</line>")
    parts += ticks  # last, so that no neighbouring rectangle covers them
    parts.append("</svg></div>")
    return "".join(parts)


# ============================================================================ PNG


def _render_png(rep: FragmentationReport, path: PathLike, max_segments: int, dpi: int,
                caption: Optional[str] = None) -> None:
    fig = _png_figure(rep, max_segments, dpi, caption)
    fig.savefig(os.fspath(path), format="png")


def _png_figure(rep: FragmentationReport, max_segments: int, dpi: int, caption: Optional[str] = None) -> Any:
    """The matplotlib Figure of :meth:`FragmentationReport.save_png`."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "FragmentationReport.save_png needs matplotlib: pip install matplotlib") from exc

    # Largest segments first (they hold most memory), then drawn in address order.
    shown = sorted(rep.layout, key=lambda s: -s["total_size"])[:max_segments]
    shown.sort(key=lambda s: s["address"])
    hidden = len(rep.layout) - len(shown)
    rows = max(1, len(shown))
    top_h = 0.3 * rows + 1.6
    fig = Figure(figsize=(12, top_h + 4.0), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    # The title (suptitle) and the legend (a row of its own) each get their own line above
    # the segments, so a long title never runs into the legend.
    fig.suptitle(rep.title() + (f" ({hidden} smaller segments not drawn)" if hidden else "")
                 + (f"\n{caption}" if caption else ""), fontsize=10, x=0.01, ha="left")
    gs = fig.add_gridspec(3, 2, height_ratios=[0.25, top_h, 3.6], width_ratios=[3, 2])
    lx = fig.add_subplot(gs[0, :])
    lx.axis("off")
    ax = fig.add_subplot(gs[1, :])
    labels = []
    for i, seg in enumerate(shown):
        total = seg["total_size"] or 1
        y = rows - 1 - i
        spans: Dict[str, List[Tuple[float, float]]] = {k: [] for k in _COLORS}
        for b in seg["blocks"]:
            x = (b["address"] - seg["address"]) / total
            w = b["size"] / total
            if b["state"] == "active_allocated":
                wr = b["requested_size"] / total
                if w < _PNG_MIN_WIDTH:
                    # Note [Ticks for tiny blocks], for pixels: a 1 KiB block in a 2 MiB
                    # segment is 1/2048 of the bar; drawn to scale it would vanish and the
                    # segment would look empty.
                    spans["requested"].append((min(x, 1.0 - _PNG_MIN_WIDTH), _PNG_MIN_WIDTH))
                    continue
                spans["requested"].append((x, wr))
                if w > wr:
                    spans["waste"].append((x + wr, w - wr))
            elif b["state"] == "active_pending_free" and w < _PNG_MIN_WIDTH:
                spans[b["state"]].append((min(x, 1.0 - _PNG_MIN_WIDTH), _PNG_MIN_WIDTH))
            else:
                spans[b["state"]].append((x, w))
        # Free first, so that a widened live block is drawn over its free neighbours.
        for key in ("inactive", "waste", "requested", "active_pending_free"):
            if spans[key]:
                ax.broken_barh(spans[key], (y - 0.4, 0.8), facecolors=_COLORS[key], edgecolor="white",
                               linewidth=0.3)
        labels.append((y, f"{seg['segment_type']} {format_size(seg['total_size'])}, "
                          f"stream {_stream_name(seg['stream'])}"
                          + (", expandable" if seg["is_expandable"] else "")))
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.6, rows - 0.4)
    ax.set_yticks([y for y, _ in labels], [t for _, t in labels], fontsize=7)
    ax.set_ylabel("segment: pool, size, stream", fontsize=8)
    ax.set_xlabel("offset in segment (fraction of its size); blocks narrower than "
                  f"{100 * _PNG_MIN_WIDTH:.1f}% of their segment are drawn that wide", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    if not shown:
        ax.text(0.5, 0.0, "no segments", ha="center", va="center", color="#7a8594")
    lx.legend(handles=[Patch(color=_COLORS["requested"], label="allocated (requested bytes)"),
                       Patch(color=_COLORS["waste"], label="allocated (rounding waste)"),
                       Patch(color=_COLORS["active_pending_free"], label="pending free (other stream)"),
                       Patch(color=_COLORS["inactive"], label="free (cached)")],
              loc="center left", ncol=4, fontsize=8, frameon=False, borderaxespad=0)

    hx = fig.add_subplot(gs[2, 0])
    if rep.free_histogram:
        xs = list(range(len(rep.free_histogram)))
        bars = hx.bar(xs, [b["bytes"] / 2**20 for b in rep.free_histogram], color="#6b7a8c")
        # Byte bars hide buckets of small blocks: the count on top keeps them visible.
        hx.bar_label(bars, labels=[f"{b['count']}x" for b in rep.free_histogram], fontsize=7)
        hx.set_xticks(xs, [_bucket_label(b).replace(".00", "") for b in rep.free_histogram],
                      rotation=45, ha="right", fontsize=7)
    else:
        hx.text(0.5, 0.5, "no free blocks", ha="center", va="center", color="#7a8594",
                transform=hx.transAxes)
    hx.set_title("free bytes by block size (power-of-two buckets)", fontsize=9)
    hx.set_ylabel("MiB", fontsize=8)
    hx.tick_params(axis="y", labelsize=7)

    tx = fig.add_subplot(gs[2, 1])
    tx.axis("off")
    lines = [f"{label:<24}{cells[0]:>18}" for label, cells in rep.table_rows()]
    lines += ["", "external fragmentation = 1 - largest free", "  block / free bytes (share of the free",
              "  bytes one request could not get at once)"]
    peak = rep.peak_line()
    if peak:
        lines += ["", "peaks:"] + ["  " + part for part in peak[len("peaks: "):].split(", ")]
    tx.text(0.0, 1.0, "\n".join(lines), va="top", ha="left", family="monospace", fontsize=7.5,
            transform=tx.transAxes)
    return fig
