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
import pickle
import sys

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
    print(f"pypool report: {msg}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    from .fragmentation import FragmentationReport, fragmentation
    from .snapshot import load_snapshot

    if args.device is not None and args.device < 0:
        return _fail(f"--device: must be >= 0, got {args.device}")
    if args.snapshot:
        try:
            data = load_snapshot(args.snapshot)
            report = FragmentationReport.from_snapshot(data, device=args.device)
        except FileNotFoundError:
            return _fail(f"{args.snapshot}: no such file")
        except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError) as exc:
            return _fail(f"{args.snapshot}: cannot read a memory snapshot ({exc})")
    else:
        report = fragmentation(args.device)
    if args.json:
        print(report.to_json())
    else:
        sys.stdout.write(report.to_text())
    # File notices go to stderr so that --json output stays one JSON document.
    if args.html:
        report.save_html(args.html)
        print(f"wrote {args.html}", file=sys.stderr)
    if args.png:
        try:
            report.save_png(args.png)
        except ImportError as exc:
            return _fail(str(exc))
        print(f"wrote {args.png}", file=sys.stderr)
    return 0
