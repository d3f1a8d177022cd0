"""``python -m pypool replay``: replay an allocation trace offline and measure the pool.

Examples::

    python -m pypool replay --workload transformer --report out/fragmentation
    python -m pypool replay snapshot.pickle --config expandable_segments:true --json
    python -m pypool replay my.trace.gz --capacity 40GiB
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional

from .config import PoolConfig, format_size, parse_size
from .replay import DEFAULT_CAPACITY, ReplayResult, default_capacity, replay
from .trace import Trace
from .workloads import ALL_WORKLOADS, generate

HELP = "replay an allocation trace (file, torch snapshot or bundled workload) and report memory use"


def add_trace_arguments(parser: argparse.ArgumentParser) -> None:
    """The trace source options shared by ``replay`` and ``size``."""
    parser.add_argument("trace", nargs="?", metavar="TRACE",
                        help="a pypool trace file (.trace, .trace.gz) or a torch memory snapshot "
                             "pickle (torch.cuda.memory._dump_snapshot)")
    parser.add_argument("--workload", choices=sorted(ALL_WORKLOADS), metavar="NAME",
                        help=f"a bundled workload instead of a file: {', '.join(ALL_WORKLOADS)}")
    parser.add_argument("--seed", type=int, default=0, help="workload seed (default 0; recorded_* ignore it)")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="workload length multiplier (default 1.0; recorded_*: a fraction in (0, 1])")
    parser.add_argument("--device", type=int, default=None,
                        help="device of a torch snapshot (default: the busiest)")
    parser.add_argument("--capacity", default=None,
                        help=f"device memory assumed by the replay (default {DEFAULT_CAPACITY}, "
                             "or twice the trace's peak live bytes when that is more)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trace_arguments(parser)
    parser.add_argument("--config", default="",
                        help="pool settings as a PYPOOL_CONF string, e.g. 'expandable_segments:true,round_up_divisions:4'")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--report", metavar="DIR",
                        help="write fragmentation reports (text, HTML, PNG) of the pool at peak reserved and at the end")
    parser.add_argument("--save-trace", metavar="PATH", help="also save the trace in pypool format (.gz to compress)")
    from ._cli_compare import add_compare_arguments

    add_compare_arguments(parser)


class CliError(Exception):
    """A user error: printed without a traceback, exit status 2."""


def load_trace(args: argparse.Namespace) -> Trace:
    """The trace named by ``TRACE`` or ``--workload`` (exactly one)."""
    if bool(args.trace) == bool(args.workload):
        raise CliError("give a TRACE file or --workload NAME (one of them; bundled workloads: "
                       + ", ".join(ALL_WORKLOADS) + ")")
    if args.workload:
        if not args.scale > 0:
            raise CliError(f"--scale: must be > 0, got {args.scale}")
        try:
            return generate(args.workload, seed=args.seed, scale=args.scale)
        except (ValueError, FileNotFoundError) as e:
            raise CliError(str(e)) from None
    if not os.path.exists(args.trace):
        raise CliError(f"{args.trace}: no such file")
    try:
        return Trace.load(args.trace, device=args.device)
    except ValueError as e:
        raise CliError(str(e)) from None


def capacity_arg(args: argparse.Namespace) -> Optional[int]:
    if args.capacity is None:
        return None
    try:
        cap = parse_size(args.capacity, "--capacity")
    except (TypeError, ValueError) as e:
        raise CliError(str(e)) from None
    if cap == 0:
        raise CliError("--capacity: must be > 0")
    return cap


def _torch_lines(trace: Trace, result: ReplayResult) -> List[str]:
    t = trace.meta.get("torch")
    if not isinstance(t, dict) or "peak_reserved" not in t:
        return []
    peak = int(t["peak_reserved"])
    lines = [f"PyTorch reserved   {format_size(peak)} at peak in the recorded run "
             f"({format_size(int(t['initial_reserved']))} when recording began)"]
    if peak:
        lines.append(f"pypool vs PyTorch {result.peak_reserved / peak:.3f}x PyTorch's peak reserved"
                     + ("" if t.get("consistent", True) else " (snapshot segments and trace disagree; approximate)"))
    if trace.meta.get("skipped_unknown_frees"):
        lines.append(f"note               {trace.meta['skipped_unknown_frees']} frees of blocks allocated before "
                     "the recording began were skipped (those blocks are not in the replay)")
    return lines


def write_reports(result: ReplayResult, directory: str) -> Dict[str, Any]:
    """Fragmentation reports of the pool at peak reserved and at the end of the replay.
    Returns {"files": [...], "error": str or None}."""
    try:
        from .fragmentation import FragmentationReport
    except ImportError as e:
        return {"files": [], "error": f"fragmentation reports are not available in this build ({e})"}
    os.makedirs(directory, exist_ok=True)
    files: List[str] = []
    problems: List[str] = []
    name = result.name or "trace"
    pools = [
        ("peak", result.peak_pool,
         f"{name}: the pool at peak reserved (after event {result.peak_event} of {result.events})"),
        ("end", result.pool, f"{name}: the pool at the end of the replay ({result.events} events)"),
    ]
    for label, pool, what in pools:
        if pool is None:
            continue
        report = FragmentationReport.from_pool(pool)
        path = os.path.join(directory, f"{label}.txt")
        with open(path, "w") as f:
            f.write(f"# {what}; settings: {result.config or '(defaults)'}\n")
            f.write(report.to_text())
            f.write("\n")
        files.append(path)
        for ext, save in (("html", report.save_html), ("png", report.save_png)):
            path = os.path.join(directory, f"{label}.{ext}")
            try:
                save(path)
                files.append(path)
            except (ImportError, RuntimeError, OSError) as e:  # e.g. no matplotlib for PNG
                problems.append(f"{label}.{ext}: {e}")
    return {"files": files, "error": "; ".join(problems) or None}


def run(args: argparse.Namespace) -> int:
    try:
        trace = load_trace(args)
        cap = capacity_arg(args)
        try:
            cfg = PoolConfig.from_string(args.config)
        except (TypeError, ValueError) as e:
            raise CliError(f"--config: {e}") from None
        if args.save_trace:
            trace.save(args.save_trace)
        result = replay(trace, cfg, capacity=cap if cap is not None else default_capacity(trace),
                        at_peak=True)
    except CliError as e:
        print(f"pypool replay: error: {e}", file=sys.stderr)
        return 2
    reports = write_reports(result, args.report) if args.report else None
    from ._cli_compare import replay_capacity

    cap_lines, cap_json, cap_rc = replay_capacity(trace, cfg, cap, args)
    if args.json:
        d = result.to_dict()
        if "torch" in trace.meta:
            d["torch"] = trace.meta["torch"]
        if reports is not None:
            d["report"] = reports
        d.update(cap_json)
        print(json.dumps(d))
    else:
        print(result.to_text())
        for line in _torch_lines(trace, result):
            print(line)
        for line in cap_lines:
            print(line)
        if reports is not None:
            if reports["files"]:
                print(f"reports            {', '.join(reports['files'])}")
            if reports["error"]:
                print(f"report problem     {reports['error']}", file=sys.stderr)
    if reports is not None and not reports["files"]:
        return 1
    return cap_rc
