"""Fragmentation reports: how well a pool's reserved memory is used, and where it is lost.

A :class:`FragmentationReport` is built from a live :class:`~pypool.Pool`
(:meth:`FragmentationReport.from_pool`), from a list of segments in the layout of
``Pool.segments()`` (:meth:`~FragmentationReport.from_segments`) or from a memory
snapshot in torch's schema, pypool's or ``torch.cuda.memory._snapshot()``'s
(:meth:`~FragmentationReport.from_snapshot`). It renders as a dict, JSON, an aligned text
table, a self-contained HTML page and a PNG.

The figures, for the whole pool, for each pool kind (small / large) and
for each stream:

* ``reserved``: bytes held from the device (sum of segment sizes);
* ``allocated``: bytes in live blocks (rounded sizes, as ``memory_allocated()``);
* ``requested``: bytes the live allocations asked for;
* ``internal_waste`` = allocated − requested (rounding);
* ``pending_free``: freed blocks still waiting for another stream's work
  (``record_stream``): neither usable nor in use;
* ``free``: bytes in free blocks, cached by the pool;
* ``largest_free``: the largest single free block;
* ``external_fragmentation`` = 1 − largest_free / free (0 when nothing is free): the
  share of the cache that a single request could not use at once;
* ``utilization`` = allocated / reserved (0 for an empty pool).

With statistics (a live pool, or a pypool snapshot) the report also has the peaks and
``peak_utilization`` = peak allocated / peak reserved (GMLake's measure; the two peaks
need not fall at the same moment).
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from . import _core
from ._fragreport import EXTERNAL_FRAGMENTATION_DEFINITION, Figures, FragmentationReport, _stream_name
from ._pool import Pool, _check_int, _check_stream
from ._registry import resolve_pool
from .config import format_size

__all__ = ["Figures", "FragmentationReport", "fragmentation", "explain_oom", "pool_limit", "expandable_bound",
           "EXTERNAL_FRAGMENTATION_DEFINITION"]


def fragmentation(device: Optional[int] = None, pool: Optional[Pool] = None) -> FragmentationReport:
    """Fragmentation report of the pool pypool's registry holds for ``device`` (what
    torch allocates from once pypool is installed); default: torch's current device if
    CUDA is initialized, else 0. A device with no pool yet gets an empty report, and no
    pool is created (Note [Reports never create pools] in ``_registry.py``); a device that
    does not exist raises ``ValueError`` (Note [Pools before install] in
    :mod:`pypool.memory`). ``pool``: a :class:`~pypool.Pool` of your own instead (as in
    :func:`pypool.snapshot`)."""
    target, d = resolve_pool(device, pool, create=False, what="fragmentation")
    if target is None:
        rep = FragmentationReport.from_segments([], device=d)
        rep.source = "pool"
        return rep
    return FragmentationReport.from_pool(target)


# ============================================================================ out of memory


def pool_limit(pool: Any) -> Tuple[int, str]:
    """(bytes, what sets them): the most this pool may reserve, and the setting that binds:
    ``"max_pool_size"``, ``"memory_fraction"`` or ``"device capacity"``."""
    total = int(pool.mem_info()[1])
    cap = pool.cap
    if cap is not None and cap < total:
        core_cfg = pool._pool.config
        return int(cap), ("max_pool_size" if cap == core_cfg.max_pool_size else "memory_fraction")
    return total, "device capacity"


def expandable_bound(cfg: Any, segments: Sequence[Mapping[str, Any]], rounded: int,
                     stream: int) -> Optional[Dict[str, int]]:
    """With expandable segments, how a large request of ``rounded`` bytes on ``stream``
    would grow that stream's expandable segment: ``grow`` (bytes to map beyond its free
    tail), ``mapped``, ``range`` (its virtual range, ``expandable_reserve``) and
    ``blocked`` (1 when the growth passes the end of the range; growth is in whole
    granules, so a growth within a granule of the end may be blocked too). None when
    expandable segments are off."""
    if not cfg.expandable_segments:
        return None
    # A segment with unmapped holes is listed once per mapped run (Note [VMM holes]): the
    # last run holds the tail.
    runs = [s for s in segments if s.get("is_expandable") and s.get("segment_type") == "large"
            and s.get("stream") == stream]
    if not runs:
        rng = int(cfg.expandable_reserve)
        return {"grow": rounded, "mapped": 0, "range": rng, "blocked": int(rounded > rng)}
    seg = max(runs, key=lambda s: int(s["address"]))
    blocks = seg.get("blocks") or []
    tail = blocks[-1] if blocks else None
    tail_free = int(tail["size"]) if tail is not None and tail.get("state") == "inactive" else 0
    grow = rounded - min(tail_free, rounded)
    mapped = sum(int(s["total_size"]) for s in runs)
    # The tail grows past the segment's extent (holes included), not past its mapped bytes.
    extent = int(seg["address"]) + int(seg["total_size"]) - min(int(s["address"]) for s in runs)
    rng = int(seg.get("reserved_va") or cfg.expandable_reserve)
    return {"grow": grow, "mapped": mapped, "range": rng, "blocked": int(extent + grow > rng)}


def explain_oom(pool: Any, size: int, stream: int = 0, error: Optional[str] = None,
                max_blocks: int = 10) -> str:
    """Why a request of ``size`` bytes on ``stream`` finds no memory in ``pool``: the limit
    that binds and the headroom under it, then every free block sorted by the reason it
    cannot serve the request (too small, another stream, the other pool kind, kept for
    requests of ``max_split_size`` or more), with the largest ones listed.

    Call it on the pool right after the failed ``malloc`` (the pool has by then released
    its wholly free cached segments and retried), and append
    ``FragmentationReport.from_pool(pool).to_text()`` for the whole picture.
    ``error`` is the pool's own out-of-memory message, quoted at the end. Used by
    ``python -m pypool replay`` for ``first_oom.txt`` in ``--report`` directories.

    Raises ``TypeError`` / ``ValueError`` naming the argument for a ``pool`` that is not a
    :class:`pypool.Pool`, a ``size`` outside 1 byte .. 1 PiB or a ``stream`` outside
    0 .. 2**64 - 1.
    """
    if not isinstance(pool, Pool):
        raise TypeError(f"pool: expected a pypool.Pool, got {type(pool).__name__}")
    # Note [Ranges before the binding] (in _pool.py): checked here, so that a bad size names
    # the argument instead of failing in pybind11; a request of 0 bytes never fails.
    _check_int(size, "size", 1, int(_core.MAX_REQUEST), "(bytes; 1 PiB at most)")
    _check_stream(stream)
    if isinstance(max_blocks, bool) or not isinstance(max_blocks, int) or max_blocks < 0:
        raise ValueError(f"max_blocks: expected an int >= 0, got {max_blocks!r}")
    cfg = pool._pool.config
    rounded = int(_core.round_size(cfg, size))
    kind = _core.pool_for(cfg, rounded)
    need = int(_core.min_segment_size(cfg, rounded))
    limit, limit_name = pool_limit(pool)
    raw_segments = pool.segments()
    rep = FragmentationReport.from_segments(raw_segments)
    headroom = max(0, limit - rep.reserved)
    vmm = expandable_bound(cfg, raw_segments, rounded, stream) if kind == "large" else None
    if vmm is not None:
        need = vmm["grow"]
        grows = f"growing stream {_stream_name(stream)}'s expandable segment needs {format_size(need)} more"
    else:
        grows = f"a new segment for it needs at least {format_size(need)}"
    lines = [
        f"out of memory: a request for {format_size(size)} ({size:,} B) on stream "
        f"{_stream_name(stream)} could not be served",
        f"  rounded to {format_size(rounded)}, {kind} pool; {grows}",
        f"limit        {format_size(limit)} ({limit_name})",
        f"reserved     {format_size(rep.reserved)} in {rep.segments} segments; "
        f"{format_size(headroom)} left under the limit"
        + (f", less than the {format_size(need)} "
           + ("the growth" if vmm is not None else "a new segment") + " needs" if headroom < need else ""),
    ]
    if vmm is not None and vmm["blocked"]:
        # Note [Expandable reserve]: each (stream, large pool) has one expandable segment,
        # a virtual range of expandable_reserve bytes that cannot grow past its end: that
        # binds before the device or the cap when they are larger.
        lines.append(f"expandable   stream {_stream_name(stream)}'s expandable segment has "
                     f"{format_size(vmm['mapped'])} mapped of its {format_size(vmm['range'])} virtual range "
                     f"(expandable_reserve): {format_size(need)} more does not fit in it, whatever "
                     "the limit above; raise expandable_reserve")
    lines.append(f"allocated    {format_size(rep.allocated)} in {rep.allocated_blocks} live blocks "
                 f"(requested {format_size(rep.requested)})")
    if rep.pending_free:
        lines.append(f"pending free {format_size(rep.pending_free)} in {rep.pending_blocks} blocks "
                     "(freed, waiting for another stream's work; not usable yet)")
    # Classify each free block by the first reason it cannot serve the request.
    reasons = (
        ("too small", f"smaller than the {format_size(rounded)} needed"),
        ("other pool", f"in the {'large' if kind == 'small' else 'small'} pool "
                       f"(a {format_size(rounded)} block comes from the {kind} pool)"),
        ("other stream", f"cached for another stream than {_stream_name(stream)}"),
        ("kept whole", "of max_split_size or more, kept whole for requests that large"),
        ("usable", "large enough and usable (the request failed before they were freed?)"),
    )
    groups: Dict[str, List[Tuple[int, Dict[str, Any], Dict[str, Any]]]] = {k: [] for k, _ in reasons}
    for seg in rep.layout:
        for b in seg["blocks"]:
            if b["state"] != "inactive":
                continue
            if seg["segment_type"] not in (kind, "unknown"):
                why = "other pool"
            elif seg["stream"] != stream:
                why = "other stream"
            elif b["size"] < rounded:
                why = "too small"
            elif not _core.can_use(cfg, b["size"], rounded):
                why = "kept whole"
            else:
                why = "usable"
            groups[why].append((b["size"], b, seg))
    if rep.free_blocks == 0:
        lines.append("free         none: every reserved byte is in use")
    else:
        lines.append(f"free         {format_size(rep.free)} in {rep.free_blocks} "
                     f"{'block' if rep.free_blocks == 1 else 'blocks'} "
                     f"(largest {format_size(rep.largest_free)})"
                     + (", none of which can serve it:" if not groups["usable"] else ":"))
        for key, text in reasons:
            g = groups[key]
            if g:
                n = len(g)
                lines.append(f"  {n:>6} {'block ' if n == 1 else 'blocks'} "
                             f"{format_size(sum(s for s, _, _ in g)):>11}  {text}")
        ranked = sorted(((s, b, seg, key) for key, g in groups.items() for s, b, seg in g),
                        key=lambda t: -t[0])[:max_blocks]
        if ranked:
            lines.append(f"largest free blocks (up to {max_blocks}):")
            lines.append(f"  {'block address':>18}  {'size':>11}  {'in segment':>18}  {'pool':5}  "
                         f"{'segment size':>12}  {'stream':>6}  why not")
            for s, b, seg, key in ranked:
                lines.append(f"  {b['address']:#18x}  {format_size(s):>11}  {seg['address']:#18x}  "
                             f"{seg['segment_type']:5}  {format_size(seg['total_size']):>12}  "
                             f"{_stream_name(seg['stream']):>6}  {key}")
    if error:
        lines.append(f"the pool said: {error}")
    return "\n".join(lines) + "\n"
