"""``python -m pypool replay``: replay an allocation trace offline and measure the pool.

Examples::

    python -m pypool replay --workload transformer --report out/fragmentation
    python -m pypool replay snapshot.pickle --config expandable_segments:true --json
    python -m pypool replay my.trace.gz --capacity 40GiB

Exit status: 0 when the whole trace replayed; 3 when some allocation ran out of memory
(the trace does not fit under the capacity or max_pool_size: the output says where it
failed, and ``--report DIR`` adds ``first_oom.txt``); 2 for bad input; 1 when
``--report`` could write no file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List

from ..config import PoolConfig, format_size
from ..fragmentation import FragmentationReport, explain_oom
from ..replay import ReplayResult, default_capacity, first_oom_text, replay
from ..trace import Trace
from .compare import add_compare_arguments, replay_capacity
from .trace_options import RC_DID_NOT_FIT, CliError, add_trace_arguments, capacity_arg, check_config_fits, load_trace

HELP = "replay an allocation trace (file, torch snapshot or bundled workload) and report memory use"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (f"exit status: 0 when the whole trace replayed; {RC_DID_NOT_FIT} when an allocation ran "
                     "out of memory (the trace does not fit under the capacity or max_pool_size; --report "
                     "adds first_oom.txt); 2 for bad input; 1 when --report could write no file")
    add_trace_arguments(parser)
    parser.add_argument("--config", default="",
                        help="pool settings as a PYPOOL_CONF string, e.g. 'expandable_segments:true,round_up_divisions:4'")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--report", metavar="DIR",
                        help="write fragmentation reports (text, HTML, PNG) of the pool at peak reserved and at the "
                             "end, and first_oom.* at the first out-of-memory failure if there was one")
    parser.add_argument("--save-trace", metavar="PATH", help="also save the trace in pypool format (.gz to compress)")
    add_compare_arguments(parser)


def _torch_lines(trace: Trace, result: ReplayResult) -> List[str]:
    """The recorded run's reserved memory beside the replay's, labelled by the allocator
    that recorded the snapshot: "PyTorch" only for PyTorch's own."""
    t = trace.meta.get("torch")
    if not isinstance(t, dict) or "peak_reserved" not in t:
        return []
    who = trace.meta.get("allocator")
    peak = int(t["peak_reserved"])
    began = format_size(int(t["initial_reserved"]))
    approx = "" if t.get("consistent", True) else " (snapshot segments and trace disagree; approximate)"
    if who == "PyTorch":
        lines = [f"PyTorch reserved   {format_size(peak)} at peak in the recorded run ({began} when recording began)"]
        if peak:
            lines.append(f"pypool vs PyTorch {result.peak_reserved / peak:.3f}x PyTorch's peak reserved" + approx)
        return lines + _skipped_line(trace)
    by = "pypool (the snapshot is pypool's own)" if who == "pypool" else "the allocator that recorded it"
    lines = [f"recorded reserved  {format_size(peak)} at peak in the recorded run, by {by} "
             f"({began} when recording began)"]
    if peak:
        lines.append(f"replay vs recorded {result.peak_reserved / peak:.3f}x the recorded run's peak reserved"
                     + (" (pypool against itself)" if who == "pypool" else "") + approx)
    return lines + _skipped_line(trace)


def _skipped_line(trace: Trace) -> List[str]:
    lines: List[str] = []
    if trace.meta.get("skipped_unknown_frees"):
        lines.append(f"note               {trace.meta['skipped_unknown_frees']} frees of blocks allocated before "
                     "the recording began were skipped (those blocks are not in the replay)")
    return lines


def write_reports(result: ReplayResult, directory: str) -> Dict[str, Any]:
    """Fragmentation reports of the pool at peak reserved and at the end of the replay.
    Returns {"files": [...], "error": str or None}."""
    os.makedirs(directory, exist_ok=True)
    files: List[str] = []
    problems: List[str] = []
    name = result.name or "trace"
    pools = [
        ("peak", result.peak_pool,
         f"{name}: the pool at peak reserved (after event {result.peak_event} of {result.events})"),
        ("end", result.pool, f"{name}: the pool at the end of the replay ({result.events} events)"),
    ]
    if result.first_oom_pool is not None and result.first_oom is not None:
        fo = result.first_oom
        # The picture has no other text saying what failed: the caption does.
        pools.append(("first_oom", result.first_oom_pool,
                      f"{name}: the pool at the first out-of-memory failure, after {fo['event']:,} of "
                      f"{result.events:,} events: a request for {format_size(fo['size'])} on stream "
                      f"{fo['stream']} failed under the {result.limit_text()}"))
    for label, pool, what in pools:
        if pool is None:
            continue
        report = FragmentationReport.from_pool(pool)
        path = os.path.join(directory, f"{label}.txt")
        with open(path, "w") as f:
            if label == "first_oom":
                f.write(first_oom_text(result) or "")
            else:
                f.write(f"# {what}; settings: {result.config or '(defaults)'}\n")
                f.write(report.to_text())
            f.write("\n")
        files.append(path)
        oom = result.first_oom
        for ext in ("html", "png"):
            path = os.path.join(directory, f"{label}.{ext}")
            try:
                if ext == "png":
                    report.save_png(path, caption=what)
                elif label == "first_oom" and oom is not None:
                    report.save_html(path, preamble=what + "\n\n" + explain_oom(
                        pool, oom["size"], oom["stream"], error=oom["error"]))
                else:
                    report.save_html(path, preamble=f"{what}; settings: {result.config or '(defaults)'}")
                files.append(path)
            except (ImportError, RuntimeError, OSError) as e:  # e.g. no matplotlib for PNG
                problems.append(f"{label}.{ext}: {e}")
    return {"files": files, "error": "; ".join(problems) or None}


def run(args: argparse.Namespace) -> int:
    try:
        # Options first, so that a typo fails before a long load.
        cap = capacity_arg(args)
        try:
            cfg = PoolConfig.from_string(args.config)
        except (TypeError, ValueError) as e:
            raise CliError(f"--config: {e}") from None
        trace = load_trace(args)
        if args.save_trace:
            try:
                trace.save(args.save_trace)
            except OSError as e:  # a write error (a full disk) carries no file name
                raise CliError(f"--save-trace {args.save_trace}: cannot write: {e.strerror or e}") from None
        capacity = cap if cap is not None else default_capacity(trace)
        check_config_fits(cfg, capacity, "--config")
        result = replay(trace, cfg, capacity=capacity, at_peak=True)
    except CliError as e:
        print(f"pypool replay: error: {e}", file=sys.stderr)
        return 2
    reports = write_reports(result, args.report) if args.report else None
    cap_lines, cap_json, cap_rc = replay_capacity(trace, cfg, cap, args)
    if args.json:
        d = result.to_dict()
        if "torch" in trace.meta:
            d["torch"] = trace.meta["torch"]  # the recorded run's figures (key kept for readers)
            d["recorded_by"] = trace.meta.get("allocator")
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
    if not result.completed:
        if not args.json:
            print(f"pypool replay: the trace did not complete: {result.ooms:,} "
                  f"{'allocation' if result.ooms == 1 else 'allocations'} ran out of "
                  f"memory under the {result.limit_text()}; "
                  f"exit status {RC_DID_NOT_FIT}", file=sys.stderr)
        return RC_DID_NOT_FIT
    return cap_rc
