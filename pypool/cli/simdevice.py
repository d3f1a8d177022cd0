"""``python -m pypool simdevice [options] -- CMD ...``: run CMD on the simulated CUDA device."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import sys

from .. import simdevice

HELP = "run a command on the simulated CUDA device (real PyTorch CUDA build, no GPU needed)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--devices", type=int, default=1, help="number of simulated devices (1..16, default 1)")
    parser.add_argument("--memory", default="80GiB", help="memory per device (default 80GiB)")
    parser.add_argument(
        "--event-delay-us",
        type=int,
        default=0,
        help="work that no test holds completes this long after it is enqueued (default 0)",
    )
    parser.add_argument("--verbose", action="store_true", help="name each CUDA function that is not simulated, once")
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")


def run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print("pypool simdevice: no command given (usage: python -m pypool simdevice [options] -- CMD ...)", file=sys.stderr)
        return 2
    try:
        env = simdevice.environ(
            devices=args.devices, memory=args.memory, event_delay_us=args.event_delay_us, quiet=not args.verbose
        )
    except (ValueError, simdevice.SimDeviceError) as e:
        print(f"pypool simdevice: {e}", file=sys.stderr)
        return 2
    exe = shutil.which(cmd[0], path=env.get("PATH"))
    if exe is None:
        # As a shell says it: 126 for a file that is there but cannot run, 127 for none.
        if os.sep in cmd[0] and os.path.exists(cmd[0]):
            what = "is a directory" if os.path.isdir(cmd[0]) else "is not executable"
            print(f"pypool simdevice: cannot run {cmd[0]}: {what}", file=sys.stderr)
            return 126
        print(f"pypool simdevice: command not found: {cmd[0]}", file=sys.stderr)
        return 127
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(exe, cmd, env)  # LD_AUDIT only takes effect in a new process image
    except OSError as e:  # e.g. a script without "#!" (ENOEXEC), or a missing interpreter
        why = e.strerror or str(e)
        if e.errno == errno.ENOENT:  # the file is there (which() found it): its "#!" is not
            why = "its interpreter (the #! line) was not found"
        print(f"pypool simdevice: cannot run {cmd[0]}: {why}", file=sys.stderr)
        return 126
    return 0  # not reached
