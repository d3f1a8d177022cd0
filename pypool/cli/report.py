"""``python -m pypool report [SNAPSHOT]``: the fragmentation report, in the terminal and
as HTML / PNG / JSON.

With a snapshot pickle (:func:`pypool.dump_snapshot`'s or
``torch.cuda.memory._dump_snapshot()``'s) the report is about that snapshot; without
one, about the registry pool of ``--device`` in this process (useful when the command
is run in-process through ``pypool.__main__.main([...])``; a fresh process has no pool
yet and reports an empty one).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, Set

from ..fragmentation import FragmentationReport, fragmentation
from ..snapshot import load_snapshot
from .trace_options import CliError, check_readable_kind

HELP = "fragmentation report of a memory snapshot file (pypool's or torch's) or of a device's pool"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("snapshot", nargs="?", metavar="SNAPSHOT",
                        help="snapshot pickle from pypool.dump_snapshot or torch.cuda.memory._dump_snapshot")
    parser.add_argument("--device", type=int, default=None, metavar="N",
                        help="device to report (default: every device of the snapshot; device 0 without one)")
    parser.add_argument("--html", metavar="PATH", help="also write a self-contained HTML report")
    parser.add_argument("--png", metavar="PATH", help="also write a PNG picture (needs matplotlib)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the text table")


def _fail(msg: str) -> int:
    """Bad input (a file, an option): one line, status 2 (Note [CLI errors] in pypool.cli)."""
    print(f"pypool report: error: {msg}", file=sys.stderr)
    return 2


def _load(path: str) -> Dict[str, Any]:
    """The snapshot dict in ``path`` (:func:`pypool.snapshot.load_snapshot`, the one
    loader); ValueError/OSError naming the file."""
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory; expected a snapshot pickle")
    try:
        check_readable_kind(path)
    except CliError as e:
        raise ValueError(str(e)) from None
    return load_snapshot(path)


def _snapshot_devices(snap: Dict[str, Any]) -> Set[int]:
    """The devices a snapshot describes: those of its segments, one per entry of torch's
    ``device_traces`` (a device may have a trace but no segment), and a pypool snapshot's
    own device."""
    devices = {seg.get("device", 0) for seg in snap["segments"]}
    traces = snap.get("device_traces")
    if isinstance(traces, list):
        devices.update(range(len(traces)))
    extra = snap.get("pypool")
    if isinstance(extra, dict) and isinstance(extra.get("device"), int):
        devices.add(extra["device"])
    return {d for d in devices if isinstance(d, int) and not isinstance(d, bool)}


def run(args: argparse.Namespace) -> int:
    if args.device is not None and args.device < 0:
        return _fail(f"--device: must be >= 0, got {args.device}")
    if args.snapshot:
        if not os.path.exists(args.snapshot):
            return _fail(f"{args.snapshot}: no such file")
        try:
            data = _load(args.snapshot)
        except ValueError as exc:
            return _fail(str(exc))
        except OSError as exc:
            return _fail(f"{args.snapshot}: cannot read: {exc.strerror or exc}")
        if args.device is not None:
            known = _snapshot_devices(data)
            if args.device not in known:
                # An empty report for a device the file does not have would read as
                # "0 B reserved" on that device: refuse, as replay --device does.
                have = ", ".join(str(d) for d in sorted(known)) or "none"
                return _fail(f"--device {args.device}: {args.snapshot} has no device {args.device} "
                             f"(its devices: {have})")
        try:
            report = FragmentationReport.from_snapshot(data, device=args.device)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError, OverflowError) as exc:
            # A hand-made or damaged snapshot: segments or blocks lack fields or have the
            # wrong types.
            return _fail(f"{args.snapshot}: cannot read a memory snapshot ({type(exc).__name__}: {exc})"[:400])
    else:
        try:
            report = fragmentation(args.device)
        except ValueError as exc:
            return _fail(str(exc))
    if args.json:
        print(report.to_json())
    else:
        sys.stdout.write(report.to_text())
    # File notices go to stderr so that --json output stays one JSON document.
    if args.html:
        try:
            report.save_html(args.html)
        except OSError as exc:  # named here: a write error (a full disk) carries no file name
            return _fail(f"--html {args.html}: cannot write: {exc.strerror or exc}")
        print(f"wrote {args.html}", file=sys.stderr)
    if args.png:
        try:
            report.save_png(args.png)
        except ImportError as exc:  # a missing extra, not bad input: status 1
            print(f"pypool report: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:
            return _fail(f"--png {args.png}: cannot write: {exc.strerror or exc}")
        print(f"wrote {args.png}", file=sys.stderr)
    return 0
