"""``python -m pypool bench``: pypool against the default allocator (glibc on CPU,
PyTorch's own allocators on a GPU); see :mod:`pypool.bench`."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

from ..bench import report as _bench_report
from ..bench.child import ALLOCATORS
from ..bench.runner import dumps, run_benchmarks

HELP = "benchmark pypool against glibc (CPU) or PyTorch's allocators (GPU, or the simulated device)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["cuda", "cpu", "sim"], default=None,
                        help="cuda runs the GPU suite (and the CPU one); sim runs the allocators "
                             "on pypool's simulated CUDA device (needs torch's CUDA build, no GPU; "
                             "times are host overhead); default: cuda when torch sees a GPU, else cpu")
    parser.add_argument("--sim-memory", metavar="SIZE", default=None,
                        help="--device sim: memory of the simulated device (default 80GiB)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and smaller runs (10-30 s of CPU suite on 2 cores)")
    parser.add_argument("--repeats", type=int, default=None, metavar="N",
                        help="measurements per case (default: 7 quick, 15 full)")
    parser.add_argument("--json", metavar="PATH", help="write every figure and the environment as JSON")
    parser.add_argument("--html", metavar="PATH", help="write a self-contained HTML page with bar charts")
    parser.add_argument("--png", metavar="PATH", help="write bar charts as PNG (needs matplotlib)")
    parser.add_argument("--allocators", metavar="LIST", default=None,
                        help="GPU: comma-separated subset of native,native-expandable,"
                             "cudaMallocAsync,pypool,pypool-expandable,rmm (sim: the first, "
                             "second, fourth and fifth)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    # Seconds-long run exercising every path; its figures mean nothing (tests only).
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)


def _write(path: str, text: str) -> None:
    d = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(d, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        # A failed write (a full disk) carries no file name; Note [CLI errors] prints it.
        if not e.filename:
            e.filename = path
        raise


def _output_problem(flag: str, path: str) -> Optional[str]:
    """Why ``path`` cannot take an output file, or None. Checked before the benchmarks
    run: they take minutes, and a bad path found only afterwards throws their figures away.
    """
    if os.path.isdir(path):
        return f"{flag} {path}: is a directory; give a file name"
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)  # what _write does afterwards anyway
    except OSError as e:
        return f"{flag} {path}: cannot create its directory: {e.strerror or e}"
    if not os.access(parent, os.W_OK):
        return f"{flag} {path}: its directory {parent} is not writable"
    return None


def run(args: argparse.Namespace) -> int:
    mode = "smoke" if args.smoke else ("quick" if args.quick else "full")
    for flag, path in (("--json", args.json), ("--html", args.html), ("--png", args.png)):
        problem = _output_problem(flag, path) if path else None
        if problem:
            print(f"pypool bench: error: {problem}", file=sys.stderr)
            return 2
    if args.sim_memory is not None and args.device != "sim":
        print("pypool bench: --sim-memory goes with --device sim", file=sys.stderr)
        return 2
    allocators = None
    if args.allocators:
        allocators = [a.strip() for a in args.allocators.split(",") if a.strip()]
        unknown = [a for a in allocators if a not in ALLOCATORS]
        if unknown:
            print(f"pypool bench: --allocators: unknown {', '.join(unknown)} "
                  f"(known: {', '.join(ALLOCATORS)})", file=sys.stderr)
            return 2
    try:
        results = run_benchmarks(device=args.device, mode=mode, repeats=args.repeats,
                                       progress=not args.no_progress, allocators=allocators,
                                       sim_memory=args.sim_memory)
    except (RuntimeError, ValueError) as e:
        print(f"pypool bench: {e}", file=sys.stderr)
        return 2
    print(_bench_report.format_tables(results), end="")
    if args.json:
        _write(args.json, dumps(results) + "\n")
    if args.html:
        _write(args.html, _bench_report.render_html(results))
    if args.png:
        try:
            _bench_report.render_png(results, args.png)
        except ImportError:
            print("pypool bench: --png needs matplotlib (pip install matplotlib); skipped",
                  file=sys.stderr)
    for p in (args.json, args.html, args.png):
        if p and os.path.exists(p):
            print(f"wrote {p}", file=sys.stderr)
    return 0
