"""Options and checks shared by the commands that read a trace or a snapshot file
(``replay``, ``size``; ``report`` shares the file checks): which trace (``TRACE`` or
``--workload``), the device capacity assumed, and the one-line errors (status 2) for bad
input (Note [CLI errors] in :mod:`pypool.cli`).
"""

from __future__ import annotations

import argparse
import os
import stat
from typing import Optional

from .. import _core
from .._pool import MAX_CAPACITY, Pool
from ..config import PoolConfig, format_size, parse_size
from ..replay import DEFAULT_CAPACITY
from ..trace import Trace
from ..workloads import ALL_WORKLOADS, generate

__all__ = ["RC_DID_NOT_FIT", "CliError", "add_trace_arguments", "load_trace", "check_readable_kind",
           "capacity_arg", "check_config_fits"]

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
