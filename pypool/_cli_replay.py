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
import stat
import sys
from typing import Any, Dict, List, Optional

from ._pool import MAX_CAPACITY
from .config import PoolConfig, format_size, parse_size
from .replay import DEFAULT_CAPACITY, ReplayResult, default_capacity, first_oom_text, replay
from .trace import Trace
from .workloads import ALL_WORKLOADS, generate

HELP = "replay an allocation trace (file, torch snapshot or bundled workload) and report memory use"

# Exit status of a replay that ran out of memory (the trace does not fit); 2 is bad input.
RC_DID_NOT_FIT = 3


def add_trace_arguments(parser: argparse.ArgumentParser) -> None:
    """The trace source options shared by ``replay`` and ``size``."""
    parser.add_argument("trace", nargs="?", metavar="TRACE",
                        help="a pypool trace file (.trace, .trace.gz) or a torch memory snapshot "
                             "pickle (torch.cuda.memory._dump_snapshot)")
    parser.add_argument("--workload", choices=sorted(ALL_WORKLOADS), metavar="NAME",
                        help=f"a bundled workload instead of a file: {', '.join(ALL_WORKLOADS)}")
    # Defaults None: given with a TRACE file they are refused rather than ignored.
    parser.add_argument("--seed", type=int, default=None, help="workload seed (default 0; recorded_* ignore it)")
    parser.add_argument("--scale", type=float, default=None,
                        help="workload length multiplier (default 1.0; recorded_*: a fraction in (0, 1])")
    parser.add_argument("--device", type=int, default=None,
                        help="device of a torch snapshot (default: the busiest)")
    parser.add_argument("--capacity", default=None,
                        help=f"device memory assumed by the replay (default {DEFAULT_CAPACITY}, "
                             "or twice the trace's peak live bytes when that is more)")


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
        seed = 0 if args.seed is None else args.seed
        scale = 1.0 if args.scale is None else args.scale
        if not scale > 0:
            raise CliError(f"--scale: must be > 0, got {scale}")
        if args.device is not None:
            raise CliError("--device: picks the device of a torch snapshot TRACE; a bundled "
                           "workload has one device")
        try:
            return generate(args.workload, seed=seed, scale=scale)
        except (ValueError, TypeError, FileNotFoundError) as e:
            raise CliError(f"--workload {args.workload}: {e}") from None
        except MemoryError:
            raise CliError(f"--scale {scale}: the workload does not fit in this machine's "
                           "memory") from None
    for flag, value in (("--seed", args.seed), ("--scale", args.scale)):
        if value is not None:
            raise CliError(f"{flag}: only for --workload (a TRACE file is replayed as it is)")
    if args.device is not None and args.device < 0:
        raise CliError(f"--device: must be >= 0, got {args.device}")
    trace = _load_file(args.trace, args.device)
    if args.device is not None and trace.meta.get("source") != "torch_snapshot":
        raise CliError(f"--device: picks the device of a torch snapshot; {args.trace} is a pypool "
                       "trace (one device)")
    return trace


def _load_file(path: str, device: Optional[int]) -> Trace:
    """Trace.load with every way a file can be wrong turned into a one-line CliError
    naming the file (a trace is user input: Note [Trace limits] in trace.py)."""
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CliError(f"{path}: is a directory; expected a trace file (.trace, .trace.gz) or a "
                       "torch memory snapshot pickle")
    check_readable_kind(path)
    try:
        trace = Trace.load(path, device=device)
    except ValueError as e:
        raise CliError(str(e)) from None
    except OSError as e:
        raise CliError(f"{path}: cannot read: {e.strerror or e}") from None
    except MemoryError:
        raise CliError(f"{path}: too large to load into memory") from None
    if len(trace) == 0:
        raise CliError(f"{path}: the trace has no events")
    return trace


def check_readable_kind(path: str) -> None:
    """Refuse devices and sockets (``/dev/zero`` would be read until memory runs out);
    regular files and pipes (``/dev/stdin``) are read."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # open() will say what is wrong
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        raise CliError(f"{path}: not a regular file or a pipe; expected a trace or snapshot file")


def capacity_arg(args: argparse.Namespace) -> Optional[int]:
    if args.capacity is None:
        return None
    try:
        cap = parse_size(args.capacity, "--capacity")
    except (TypeError, ValueError) as e:
        raise CliError(str(e)) from None
    if cap == 0:
        raise CliError("--capacity: must be > 0")
    if cap > MAX_CAPACITY:
        raise CliError(f"--capacity: must be <= 4096 PiB (2**62 bytes), got {args.capacity}")
    return cap


def check_config_fits(cfg: PoolConfig, capacity: int, flag: str) -> None:
    """Settings a pool of ``capacity`` bytes cannot even start with."""
    initial = int(cfg.initial_pool_size)  # an int once PoolConfig has validated it
    if initial > capacity:
        raise CliError(f"{flag}: initial_pool_size ({format_size(initial)}) is more than "
                       f"the replay's device capacity ({format_size(capacity)}); lower it or raise --capacity")
    if not initial:
        return
    # The pool reserves initial_pool_size when it is made, under every limit: the cap,
    # memory_fraction of the capacity, expandable_reserve. Making it once on the null
    # backend (no memory touched) is the exact test; an OutOfMemoryError here used to
    # escape the replay as a traceback.
    from . import _core
    from ._pool import Pool

    try:
        Pool(backend="null", capacity=capacity, config=cfg)
    except _core.OutOfMemoryError:
        limits = [(capacity, "the replay's device capacity")]
        if cfg.max_pool_size is not None:
            limits.append((int(cfg.max_pool_size), "max_pool_size"))
        if cfg.memory_fraction is not None:
            limits.append((int(cfg.memory_fraction * capacity), f"memory_fraction {cfg.memory_fraction:g} "
                                                                f"of {format_size(capacity)}"))
        if cfg.expandable_segments:
            limits.append((int(cfg.expandable_reserve), "expandable_reserve, the most one expandable "
                                                        "segment can hold"))
        low, what = min(limits)
        raise CliError(f"{flag}: initial_pool_size ({format_size(initial)}) cannot be reserved when the "
                       f"pool is made: the limit is {format_size(low)} ({what}), less than it needs "
                       "once rounded; lower initial_pool_size") from None


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
    try:
        from .fragmentation import FragmentationReport, explain_oom
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
    from ._cli_compare import replay_capacity

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
