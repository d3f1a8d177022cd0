"""``python -m pypool size``: suggest pool settings for a trace (the sizing advisor).

Examples::

    python -m pypool size --workload growing_batch
    python -m pypool size snapshot.pickle --objective pool_size --json
    python -m pypool size my.trace.gz --no-expandable --candidates round_up_divisions:4 growth:exact
"""

from __future__ import annotations

import argparse
import json
import sys

from ..config import PoolConfig
from ..replay import default_capacity
from ..sizing import OBJECTIVES, suggest_config
from .compare import add_torch_arguments, torch_rows_or_note
from .trace_options import RC_DID_NOT_FIT, CliError, add_trace_arguments, capacity_arg, check_config_fits, load_trace

HELP = "suggest pool settings (PYPOOL_CONF) and the smallest max_pool_size for a trace"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_trace_arguments(parser)
    parser.epilog = (f"exit status: 0 when a setting runs the trace within the capacity; {RC_DID_NOT_FIT} when "
                     "none tried does (the trace does not fit); 2 for bad input")
    parser.add_argument("--objective", choices=OBJECTIVES, default="pool_size",
                        help="minimize the smallest OOM-free max_pool_size (pool_size, default: the smallest "
                             "device the trace fits on) or peak reserved memory on a roomy device (reserved)")
    parser.add_argument("--base", default="", help="settings to start from and compare against (PYPOOL_CONF string)")
    parser.add_argument("--candidates", nargs="+", metavar="CONF",
                        help="compare these PYPOOL_CONF strings (plus the base) instead of searching")
    parser.add_argument("--no-expandable", action="store_true",
                        help="do not suggest expandable_segments (for GPUs or drivers without virtual memory management)")
    parser.add_argument("--jobs", type=int, default=None, help="parallel replays (default: min(4, CPUs))")
    parser.add_argument("--top", type=int, default=10, help="rows of the candidate table to print (default 10)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip PyTorch's rows (by default, when a CUDA build of torch is available, its "
                             "own allocator runs on the simulated device beside pypool)")
    parser.add_argument("--no-torch-search", action="store_true",
                        help="PyTorch's two modes only: do not search PYTORCH_CUDA_ALLOC_CONF settings")
    add_torch_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        # Options first, so that a typo fails before a long load.
        cap = capacity_arg(args)
        if args.torch_jobs < 1:
            raise CliError(f"--torch-jobs: must be >= 1, got {args.torch_jobs}")
        if args.jobs is not None and args.jobs < 1:
            raise CliError(f"--jobs: must be >= 1, got {args.jobs}")
        if args.top < 1:
            raise CliError(f"--top: must be >= 1, got {args.top}")
        try:
            base = PoolConfig.from_string(args.base)
        except (TypeError, ValueError) as e:
            raise CliError(f"--base: {e}") from None
        if base.max_pool_size is not None or base.memory_fraction is not None:
            # The cap is what size searches for: a cap in the base was silently replaced.
            raise CliError("--base: max_pool_size / memory_fraction is what size finds (the smallest cap that "
                           "runs the trace); give the device's size with --capacity instead")
        cands = None
        if args.candidates:
            cands = []
            for c in args.candidates:
                try:
                    cands.append(PoolConfig.from_string(c, base))
                except (TypeError, ValueError) as e:
                    raise CliError(f"--candidates {c!r}: {e}") from None
        trace = load_trace(args)
        capacity = cap if cap is not None else default_capacity(trace)
        for flag, c in [("--base", base)] + [("--candidates", c) for c in cands or []]:
            check_config_fits(c, capacity, flag)
        advice = suggest_config(trace, capacity=cap, objective=args.objective, candidates=cands,
                                jobs=args.jobs, base=base, allow_expandable=not args.no_expandable)
        if not args.no_torch:
            advice.torch, advice.torch_note = torch_rows_or_note(trace, args, search=not args.no_torch_search,
                                                                 capacity=cap)
    except CliError as e:
        print(f"pypool size: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(advice.to_dict()))
    else:
        print(advice.to_text(top=args.top))
    # As replay: 3 when the trace does not fit in the capacity with any setting tried.
    return RC_DID_NOT_FIT if advice.best.ooms else 0
