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
    """Bad input (a file, an option): one line, status 2 (Note [CLI errors] in __main__)."""
    print(f"pypool report: error: {msg}", file=sys.stderr)
    return 2


def _load(path: str) -> Dict[str, Any]:
    """The snapshot dict in ``path`` (gzip or not); ValueError/OSError naming the file."""
    from .trace import FORMAT_HEADER, _read_maybe_gzipped, _safe_unpickle

    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory; expected a snapshot pickle")
    from ._cli_replay import CliError, check_readable_kind

    try:
        check_readable_kind(path)
    except CliError as e:
        raise ValueError(str(e)) from None
    data = _read_maybe_gzipped(path)
    if data.lstrip().startswith(FORMAT_HEADER.encode()):
        raise ValueError(f"{path}: is a pypool trace (allocation events), not a memory snapshot; "
                         f"`python -m pypool replay {path} --report DIR` writes its reports")
    if data[:1] != b"\x80":
        raise ValueError(f"{path}: not a memory snapshot: expected a pickle from pypool.dump_snapshot "
                         "or torch.cuda.memory._dump_snapshot")
    snap = _safe_unpickle(data, path)
    if isinstance(snap, list):  # older torch: the bare segment list
        snap = {"segments": snap, "device_traces": []}
    if not isinstance(snap, dict) or "segments" not in snap:
        raise ValueError(f"{path}: not a memory snapshot: expected a pickled dict with 'segments', "
                         f"found a pickled {type(snap).__name__}")
    if not isinstance(snap["segments"], list):
        raise ValueError(f"{path}: not a memory snapshot: 'segments' must be a list, got "
                         f"{type(snap['segments']).__name__}")
    for i, seg in enumerate(snap["segments"]):
        _check_fields(seg, f"{path}: segments[{i}]", _SEGMENT_INTS)
        blocks = seg.get("blocks", [])
        if not isinstance(blocks, list):
            raise ValueError(f"{path}: segments[{i}].blocks: expected a list, got {type(blocks).__name__}")
        for j, b in enumerate(blocks):
            _check_fields(b, f"{path}: segments[{i}].blocks[{j}]", _BLOCK_INTS)
    return snap


_U64_MAX = (1 << 64) - 1
_SEGMENT_INTS = ("device", "address", "total_size", "allocated_size", "active_size", "requested_size", "stream")
_BLOCK_INTS = ("address", "size", "requested_size")


def _check_fields(d: Any, at: str, ints: Any) -> None:
    """Byte counts and addresses in a snapshot must be non-negative ints: a hand-made or
    damaged file would otherwise give negative sizes in the report."""
    if not isinstance(d, dict):
        raise ValueError(f"{at}: expected a dict, got {type(d).__name__}")
    for key in ints:
        v = d.get(key)
        # At most 2**64 - 1: what a 64-bit allocator can report. A damaged file's 2**70
        # used to be printed as "1073741824.00 TiB reserved".
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= _U64_MAX):
            from .trace import _show

            raise ValueError(f"{at}: {key!r} must be a non-negative int of at most 64 bits, got {_show(v)}")


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
    from .fragmentation import FragmentationReport, fragmentation

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
