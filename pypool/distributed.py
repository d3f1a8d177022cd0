"""Memory figures of every rank of a ``torch.distributed`` job in one table.

Every rank calls :func:`gather_reports` (a collective, like any ``all_gather``); each
gets the list of all ranks' reports. :func:`print_rank_table` prints it once, on rank
0. A rank that reserves much more than the others, or fragments more, stands out::

    from pypool import distributed
    distributed.print_rank_table()

For NCCL groups, ``all_gather_object`` runs on the current CUDA device: set it
(``torch.cuda.set_device(local_rank)``) before calling, as for any object collective.
"""

from __future__ import annotations

import socket
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ._registry import resolve_pool
from .config import format_size
from .fragmentation import fragmentation

__all__ = ["gather_reports", "format_rank_table", "print_rank_table", "local_report"]


def local_report(device: Optional[int] = None, pool: Any = None) -> Dict[str, Any]:
    """This process's entry of :func:`gather_reports`: ``{"rank", "world_size",
    "host", "device", "memory_stats", "fragmentation"}`` (rank 0 of 1 without
    ``torch.distributed``)."""
    target, d = resolve_pool(device, pool, create=False, what="gather_reports")
    stats: Dict[str, Any] = {} if target is None else dict(target.memory_stats())
    rep = fragmentation(d, pool=target)
    rank, world = 0, 1
    dist = _dist()
    if dist is not None:
        rank, world = dist.get_rank(), dist.get_world_size()
    return {
        "rank": rank,
        "world_size": world,
        "host": socket.gethostname(),
        "device": d,
        "memory_stats": stats,
        "fragmentation": rep.to_dict(),
    }


def _dist() -> Any:
    """``torch.distributed`` when it is available and initialized, else None."""
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    if not dist.is_available() or not dist.is_initialized():
        return None
    return dist


def gather_reports(group: Any = None, device: Optional[int] = None, pool: Any = None) -> Optional[List[Dict[str, Any]]]:
    """Collect every rank's :func:`local_report` with ``all_gather_object``.

    A collective: every rank of ``group`` must call it. Returns the list ordered by
    rank within the group, on every rank; None when ``torch.distributed`` is not
    initialized (nothing to gather). ``device`` / ``pool`` pick this rank's pool as in
    :func:`pypool.fragmentation` (default: the registry pool of the current device).
    """
    dist = _dist()
    if dist is None:
        return None
    mine = local_report(device=device, pool=pool)
    n = dist.get_world_size(group)
    out: List[Any] = [None] * n
    dist.all_gather_object(out, mine, group=group)
    return out


_COLUMNS = (
    # header, getter of the fragmentation dict / report, formatter
    ("reserved", "reserved", format_size),
    ("allocated", "allocated", format_size),
    ("requested", "requested", format_size),
    ("free", "free", format_size),
    ("largest free", "largest_free", format_size),
    ("ext frag", "external_fragmentation", lambda v: f"{100.0 * v:.1f}%"),
    ("util", "utilization", lambda v: f"{100.0 * v:.1f}%"),
    ("peak alloc", "peak_allocated", format_size),
    ("peak resv", "peak_reserved", format_size),
    ("peak util", "peak_utilization", lambda v: f"{100.0 * v:.1f}%"),
    ("segments", "segments", str),
)


def format_rank_table(reports: Sequence[Mapping[str, Any]]) -> str:
    """One aligned table, a row per rank (sorted by rank), then the spread of reserved
    bytes across ranks (the rank that runs out first is the one with the most)."""
    if not reports:
        return "no ranks\n"
    rows = sorted(reports, key=lambda r: r.get("rank", 0))
    header = ["rank", "host", "dev"] + [c[0] for c in _COLUMNS] + ["ooms"]
    table: List[List[str]] = []
    for r in rows:
        frag = r.get("fragmentation") or {}
        cells = [str(r.get("rank", "?")), str(r.get("host", "?")), str(r.get("device", "?"))]
        for _, key, fmt in _COLUMNS:
            v = frag.get(key)
            cells.append("-" if v is None else fmt(v))
        ooms = (r.get("memory_stats") or {}).get("num_ooms")
        cells.append("-" if ooms is None else str(ooms))
        table.append(cells)
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(header)]

    def line(cells: List[str]) -> str:
        # rank/host/dev left-aligned, figures right-aligned
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(row) for row in table]
    reserved = [((r.get("fragmentation") or {}).get("reserved", 0), r.get("rank")) for r in rows]
    if len(reserved) > 1:
        hi, lo = max(reserved), min(reserved)
        out.append("")
        out.append(f"reserved: max {format_size(hi[0])} (rank {hi[1]}), min {format_size(lo[0])} "
                   f"(rank {lo[1]}), spread {format_size(hi[0] - lo[0])}")
    return "\n".join(out) + "\n"


def print_rank_table(group: Any = None, device: Optional[int] = None, pool: Any = None) -> Optional[str]:
    """Gather every rank's report and print the table on rank 0 of ``group`` (a
    collective: every rank calls it). Returns the table on that rank, None elsewhere.
    Without ``torch.distributed`` it prints this process's row."""
    dist = _dist()
    reports = gather_reports(group=group, device=device, pool=pool)
    if reports is None:
        reports = [local_report(device=device, pool=pool)]
    if dist is not None and dist.get_rank(group) != 0:
        return None
    text = format_rank_table(reports)
    print(text, end="")
    return text
