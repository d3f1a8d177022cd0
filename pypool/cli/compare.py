"""The minimum-capacity rows of ``pypool replay`` (always) and ``--compare`` (PyTorch beside),
and the ``--torch-python`` options ``replay`` and ``size`` share.

Kept apart from the replay command (:mod:`.replay`) so that it only adds the options and
prints what this module returns.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, List, Optional, Tuple

from ..config import PoolConfig
from ..replay import default_capacity, replay
from ..sizing import Candidate, capacity_table, min_pool_size, pypool_row, torch_row_dict
from ..torch_compare import (TORCH_BASELINES, TORCH_GRID, TORCH_PYTHON_ENV, TorchUnavailable,
                             find_torch_python, suggest_torch_conf, torch_rows)
from ..trace import Trace

MiB = 1 << 20


def _positive_jobs(text: str) -> int:
    # A type, not a clamp: replay used to take 0 or -3 as 1 where size refused them.
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return n


def add_torch_arguments(parser: argparse.ArgumentParser) -> None:
    """``--torch-python``: the Python with a CUDA build of torch for PyTorch's rows."""
    parser.add_argument("--torch-python", metavar="PYTHON", default=None,
                        help="a Python with a CUDA build of torch (a separate venv is fine; pypool need not "
                             f"be installed there) for PyTorch's rows; default ${TORCH_PYTHON_ENV}, else this "
                             "Python if its torch is a CUDA build")
    parser.add_argument("--torch-jobs", type=_positive_jobs, default=2, metavar="N",
                        help="PyTorch children run at once (default 2)")


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--compare", action="store_true",
                        help="also measure pypool with expandable segments and PyTorch's own allocator "
                             "(native and expandable segments, on the simulated device in child "
                             "processes): smallest capacity without OOM, peak reserved, device calls")
    add_torch_arguments(parser)


def torch_rows_or_note(trace: Trace, args: argparse.Namespace, search: bool,
                       capacity: Optional[int] = None) -> Tuple[List[Any], Optional[str]]:
    """PyTorch's rows (baselines, plus the PYTORCH_CUDA_ALLOC_CONF search if ``search``),
    or why they cannot run (what to install)."""
    jobs = max(1, int(getattr(args, "torch_jobs", 2) or 1))
    # The simulated device has the replay's capacity (the bisection never needs more).
    memory: Any = capacity if capacity is not None else "80GiB"
    try:
        py = find_torch_python(args.torch_python)
        # Minutes on a long trace: say what is running (stderr, so --json stays clean).
        n = len(TORCH_BASELINES) + (len(TORCH_GRID) if search else 0)
        print(f"pypool: running PyTorch's allocator on the simulated device ({n} settings, {jobs} at a time, "
              f"{py})...", file=sys.stderr, flush=True)
        rows = torch_rows(trace, TORCH_BASELINES, python=args.torch_python, jobs=jobs, memory=memory)
        if search and not any(r.error for r in rows):
            rest = suggest_torch_conf(trace, python=args.torch_python, baselines=rows, jobs=jobs, memory=memory)
            rows = rows + [r for r in rest if r not in rows]
    except TorchUnavailable as e:
        return [], str(e)
    return rows, None


def replay_capacity(trace: Trace, cfg: PoolConfig, cap: Optional[int], args: argparse.Namespace
                    ) -> Tuple[List[str], Dict[str, Any], int]:
    """The lines, JSON fields and exit status of the capacity rows of ``pypool replay``."""
    capacity = cap if cap is not None else default_capacity(trace)
    floor = trace.peak_live()
    allocations = int((trace.actions == 0).sum())
    base = cfg.replace(max_pool_size=None)
    configs = [("pypool" if not base.to_string() else "pypool --config", base)]
    compare = bool(getattr(args, "compare", False))
    if compare and not base.expandable_segments:
        configs.append(("pypool expandable", base.replace(expandable_segments=True)))
    rows = []
    for label, c in configs:
        r = replay(trace, c, capacity=capacity)
        m = min_pool_size(trace, c, capacity) if len(trace) else None
        at_min = Candidate.from_result(c, replay(trace, c.replace(max_pool_size=m), capacity=capacity)) if m else None
        rows.append(pypool_row(label, Candidate.from_result(c, r), m, floor, allocations, at_min))
    note = None
    if compare:
        trows, note = torch_rows_or_note(trace, args, search=False, capacity=cap)
        rows += [torch_row_dict(t) for t in trows]
    lines = ["", capacity_table(rows, floor)]
    rc = 0
    if note:
        print(f"pypool replay: --compare: PyTorch's rows were not measured: {note}", file=sys.stderr)
        rc = 1
    return lines, {"min_capacity": rows, "torch_note": note}, rc
