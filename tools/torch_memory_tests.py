#!/usr/bin/env python3
"""Run PyTorch's own allocator and memory tests natively and under pypool, side by side.

PyTorch's ``test/test_cuda.py`` (and its expandable-segments variant,
``test/test_cuda_expandable_segments.py``) hold the tests PyTorch runs against its own
caching allocator. This tool runs a selection of them on pypool's simulated CUDA device
(``python -m pypool simdevice``), each test id in its own process, twice: once with
PyTorch's native allocator and once with ``pypool.install()`` called first, and writes
which pass where.

Getting the test files (they are not part of the torch wheel and are not copied into this
repository): a checkout of pytorch/pytorch at the revision of the installed torch, e.g.

    git clone --depth 1 --branch v2.14.1 https://github.com/pytorch/pytorch /tmp/pytorch
    .venv-sim/bin/python tools/torch_memory_tests.py --tests /tmp/pytorch/test \\
        --revision v2.14.1 --out benchmarks/results/DATE-torch-memory-tests

``--tests`` is the folder holding ``test_cuda.py`` (and, if present,
``test_cuda_expandable_segments.py``). ``torch.testing._internal`` comes with the torch
wheel, and ``psutil`` must be installed. Run it with the interpreter whose torch is the
CUDA build and whose pypool is the installed wheel (``.venv-sim``); it sets up the
simulated device for every child itself.

Selection rule (Note [Memory test selection]): from ``test_cuda.py``, every test of the
allocator classes ``TestCudaMallocAsync`` (torch's name for the snapshot, history,
settings and OOM tests; ``TestCudaAllocator`` in later revisions), ``TestMemPool`` and
``TestBlockStateAbsorption``, and every test of ``TestCuda`` whose name contains one of
``memory``, ``mem_``, ``alloc``, ``caching``, ``snapshot``, ``history``, ``oom``,
``fraction``, ``stats``, ``expandable``, ``record_stream`` or ``leak``, except tests of the
pinned host allocator (``pinned`` or ``host`` in the name), which pypool does not replace.
From the expandable-segments variant, the same rule over the classes that file imports
from ``test_cuda``, run as that file runs them: ``PYTORCH_CUDA_ALLOC_CONF`` set to
``expandable_segments:True`` while ``test_cuda`` is imported, then restored, and
``torch.cuda.memory._set_allocator_settings("expandable_segments:True")`` before the test.
A class the variant names that ``test_cuda.py`` lacks (the two files from different
revisions) is reported and skipped.

Outcome per run: ``pass``, ``skip`` (unittest skipped it), ``fail`` (a failure, an error,
a crash or the timeout). A test that skips both ways counts as passing both ways (it is
listed as skipped). The table: pass-both, fail-both, native-only (passes natively, fails
under pypool: each with its failure line), pypool-only.

Output: ``OUT.json`` (every run with its outcome, failure line and seconds, plus the
provenance: torch version, test revision, date, command) and ``OUT.txt`` (the table).
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

# Note [Memory test selection]: which test ids count as allocator and memory tests. The
# classes are torch's allocator test classes; in TestCuda (which holds everything else
# about CUDA too) a name must say memory. Kept in one place so the rule printed in the
# results and the rule applied are the same.
ALLOCATOR_CLASSES = ("TestCudaMallocAsync", "TestCudaAllocator", "TestMemPool", "TestBlockStateAbsorption")
NAME_CLASSES = ("TestCuda",)
NAME_WORDS = ("memory", "mem_", "alloc", "caching", "snapshot", "history", "oom", "fraction", "stats",
              "expandable", "record_stream", "leak")
NAME_EXCLUDED = ("pinned", "host")

RULE = (
    f"test_cuda.py: all of {', '.join(ALLOCATOR_CLASSES)}; tests of {', '.join(NAME_CLASSES)} whose name "
    f"contains one of {', '.join(NAME_WORDS)} and none of {', '.join(NAME_EXCLUDED)}. "
    "test_cuda_expandable_segments.py: the same rule over the classes it imports from test_cuda."
)

MARK = "@@PYPOOL-HARNESS"

# The driver. `list` mode prints the test ids of the named classes; `serve` mode is a fork
# server. Note [Fork server]: importing torch and torch.testing costs seconds of CPU per
# process, so a server imports torch and the parts of torch.testing that do not initialize
# CUDA once, then for each line "MODE TEST_ID OUTFILE TIMEOUT" on stdin forks a process
# that runs that one test (output to OUTFILE) and answers "done" when it has exited or
# been killed at the timeout. Each test still runs in a process of its own that ran
# nothing else and in which CUDA, pypool.install() and test_cuda start fresh; only the
# imports are shared. argv: TESTS_DIR VARIANT MODE ...
DRIVER = r"""
import os, re, signal, sys, time, traceback, unittest
tests_dir, variant, mode = sys.argv[1:4]
MARK = "@@PYPOOL-HARNESS"
SITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "site")
sys.path.insert(0, tests_dir)
prior = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
if variant == "expandable":  # as test_cuda_expandable_segments.py does around its import
    os.environ["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
import torch
# Note [Test file shim]: a test file older than the installed torch imports
# TEST_CUDAMALLOCASYNC, which newer torch.testing no longer defines: its value for the
# native backend.
import torch.testing._internal.common_utils as _cu
if not hasattr(_cu, "TEST_CUDAMALLOCASYNC"):
    _cu.TEST_CUDAMALLOCASYNC = False
import torch.testing._internal.common_cuda
import torch.optim, torch.utils.checkpoint, torch.cuda._memory_viz
assert not torch.cuda.is_initialized(), "the fork server must not initialize CUDA"


def restore_env():
    if variant == "expandable":
        if prior is None:
            os.environ.pop("PYTORCH_CUDA_ALLOC_CONF", None)
        else:
            os.environ["PYTORCH_CUDA_ALLOC_CONF"] = prior


def run_one(how, test_id, names):
    if how == "pypool":
        import pypool
        pypool.install()
        # Python processes the test starts get pypool too (a sitecustomize that installs it).
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (SITE, os.environ.get("PYTHONPATH")) if p)
    import test_cuda
    restore_env()
    if variant == "expandable":
        torch.cuda.memory._set_allocator_settings("expandable_segments:True")
    if how == "list":
        loader = unittest.TestLoader()
        for name in names:
            cls = getattr(test_cuda, name, None)
            if cls is None:
                print(MARK, "missing", name, flush=True)
                continue
            for t in loader.getTestCaseNames(cls):
                print(MARK, "id", name + "." + t, flush=True)
        return
    suite = unittest.defaultTestLoader.loadTestsFromName(test_id, test_cuda)
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=2).run(suite)
    problems = result.failures + result.errors + [(t, "unexpected success") for t in result.unexpectedSuccesses]
    for _, tb in problems:
        lines = [l for l in tb.strip().splitlines() if l.strip() and "PYTORCH_PRINT_REPRO" not in l
                 and not l.startswith("To execute this test")]
        # The exception's own line: CUDA errors add advice lines after it.
        heads = [l for l in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Failure)\b", l)]
        print(MARK, "failline", (heads or lines or ["?"])[-1], flush=True)
    if problems or result.testsRun == 0:
        print(MARK, "outcome", "fail", flush=True)
    elif result.skipped and len(result.skipped) == result.testsRun:
        print(MARK, "outcome", "skip", result.skipped[0][1].replace("\n", " "), flush=True)
    else:
        print(MARK, "outcome", "pass", flush=True)


if mode == "list":
    run_one("list", None, sys.argv[4:])
    sys.stdout.flush()
    os._exit(0)

print(MARK, "ready", flush=True)
for line in sys.stdin:
    how, test_id, out, timeout = line.split()
    pid = os.fork()
    if pid == 0:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdin.close()
        os.setpgid(0, 0)  # the test's own subprocesses go with it on a timeout
        code = 0
        try:
            run_one(how, test_id, [])
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    deadline = time.monotonic() + float(timeout)
    status = None
    while status is None:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = os.waitstatus_to_exitcode(st)
        elif time.monotonic() > deadline:
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            status = "timeout"
        else:
            time.sleep(0.05)
    print(MARK, "done", status, flush=True)
"""

# A child whose install fails must not carry on under torch's own allocator and be
# counted as a pypool run: site.py reports an Exception from sitecustomize and goes on,
# so the error is printed and the child ends here.
SITECUSTOMIZE = """\
import os
import sys
import traceback
try:
    import pypool
    pypool.install()
except Exception:
    traceback.print_exc()
    print("pypool: install() failed in this child (tools/torch_memory_tests.py sitecustomize)", file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)
"""


def selected(cls: str, test: str) -> bool:
    if cls in ALLOCATOR_CLASSES:
        return True
    if cls in NAME_CLASSES:
        return any(w in test for w in NAME_WORDS) and not any(w in test for w in NAME_EXCLUDED)
    return False


def variant_classes(tests_dir: Path) -> Optional[List[str]]:
    """The classes test_cuda_expandable_segments.py imports from test_cuda (None: no file)."""
    path = tests_dir / "test_cuda_expandable_segments.py"
    if not path.exists():
        return None
    names: List[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "test_cuda":
            names.extend(a.name for a in node.names)
    return names


def parse(out: str, err: str = "") -> Dict[str, object]:
    outcome = "fail"
    lines: List[str] = []
    skip_reason = ""
    ids: List[str] = []
    missing: List[str] = []
    seen = False
    for line in out.splitlines():
        if not line.startswith(MARK + " "):
            continue
        _, kind, *rest = line.split(" ", 2)
        value = rest[0] if rest else ""
        if kind == "outcome":
            seen = True
            outcome, _, skip_reason = value.partition(" ")
        elif kind == "failline":
            lines.append(value)
        elif kind == "id":
            ids.append(value)
        elif kind == "missing":
            missing.append(value)
    tail = [ln for ln in (err or out).strip().splitlines() if ln.strip() and not ln.startswith(MARK)]
    return {"outcome": outcome, "failure": lines[0] if lines else "", "skip_reason": skip_reason, "seen": seen,
            "ids": ids, "missing": missing, "tail": "\n".join(tail[-15:])}


def list_ids(python: str, driver: Path, tests_dir: Path, variant: str, names: Sequence[str],
             env: Dict[str, str]) -> Dict[str, object]:
    p = subprocess.run([python, str(driver), str(tests_dir), variant, "list", *names], cwd=tests_dir, env=env,
                       capture_output=True, text=True, timeout=900)
    return parse(p.stdout, p.stderr)


class Server:
    """One fork server for one variant (Note [Fork server])."""

    def __init__(self, python: str, driver: Path, tests_dir: Path, variant: str, env: Dict[str, str]):
        self.proc = subprocess.Popen([python, str(driver), str(tests_dir), variant, "serve"], cwd=tests_dir, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self._expect("ready")

    def _expect(self, what: str) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith(f"{MARK} {what}"):
                return line.split(" ", 2)[2].strip() if line.count(" ") >= 2 else ""
        raise RuntimeError(f"fork server exited (code {self.proc.wait()}) before '{what}'")

    def run(self, mode: str, test_id: str, out: Path, timeout: float) -> Dict[str, object]:
        assert self.proc.stdin is not None
        t0 = time.monotonic()
        self.proc.stdin.write(f"{mode} {test_id} {out} {timeout}\n")
        self.proc.stdin.flush()
        status = self._expect("done")
        text = out.read_text(errors="replace") if out.exists() else ""
        r = parse(text)
        r["seconds"] = round(time.monotonic() - t0, 1)
        if status == "timeout":
            r["outcome"], r["failure"] = "fail", f"timeout after {timeout:.0f} s"
        elif not r["seen"]:
            r["outcome"] = "fail"
            last = str(r["tail"]).splitlines()[-1:] or ["no output"]
            r["failure"] = f"crashed (exit status {status}): {last[0]}"
        return r

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait()


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tests", required=True, type=Path, help="folder with PyTorch's test_cuda.py")
    ap.add_argument("--revision", required=True, help="the pytorch/pytorch revision of those files (recorded)")
    ap.add_argument("--out", required=True, type=Path, help="output prefix: writes OUT.json and OUT.txt")
    ap.add_argument("--python", default=sys.executable, help="interpreter with torch (CUDA build) and pypool")
    ap.add_argument("--jobs", type=int, default=2, help="tests run at once (default 2)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per test run (default 600)")
    ap.add_argument("--only", default=None, help="regex: run only ids matching it (for a re-run)")
    ap.add_argument("--note", default="", help="a line of provenance to record (e.g. how the files were got)")
    ap.add_argument("--modes", default="native,pypool",
                    help="which runs to make: native, pypool or both (default)")
    ap.add_argument("--import-log", type=Path, action="append", default=[],
                    help="the printed progress of an earlier, interrupted run (its '[i/N] ...' lines): "
                         "those runs are kept as with --merge (skip reasons are not in the log); repeatable")
    ap.add_argument("--merge", type=Path, default=None,
                    help="an earlier OUT.json: its runs that are not made again now are kept")
    args = ap.parse_args(argv)

    import pypool.simdevice as sim

    tests_dir = args.tests.resolve()
    if not (tests_dir / "test_cuda.py").exists():
        ap.error(f"{tests_dir}/test_cuda.py not found")
    # One simulated device of the default size; children that spawn children inherit it.
    env = sim.environ(devices=1)
    env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    env.pop("PYTORCH_ALLOC_CONF", None)
    # torch.cuda.is_available() through NVML: the CUDA runtime's device count would mark the
    # fork server's children as forked after CUDA use ("Cannot re-initialize CUDA in forked
    # subprocess"); nothing is initialized before the fork either way.
    env["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"
    env["PYTORCH_PRINT_REPRO_ON_FAILURE"] = "0"
    modes = [m for m in args.modes.split(",") if m]
    if not set(modes) <= {"native", "pypool"} or not modes:
        ap.error("--modes: native, pypool or native,pypool")
    earlier: Dict[Tuple[str, str, str], Dict[str, object]] = {}
    earlier_prov: Dict[str, object] = {}
    earlier_ids: List[Tuple[str, str]] = []
    progress = re.compile(r"^\[\d+/\d+\] (\S+?):(\S+) (native|pypool): (pass|fail|skip) \(([\d.]+) s\) ?(.*)$")
    for log in args.import_log:
        for line in log.read_text(errors="replace").splitlines():
            m = progress.match(line)
            if m is None:
                continue
            v, tid, mode, outcome, secs, failure = m.groups()
            if (v, tid) not in earlier_ids:
                earlier_ids.append((v, tid))
            earlier[(v, tid, mode)] = {"outcome": outcome, "failure": failure.strip(), "skip_reason": "",
                                       "seconds": float(secs)}
        earlier_prov.setdefault("imported_logs", []).append(str(log))  # type: ignore[union-attr]
    if args.merge is not None:
        old = json.loads(args.merge.read_text())
        earlier_prov = old["provenance"]
        for r in old["runs"]:
            earlier_ids.append((r["variant"], r["id"]))
            for m in ("native", "pypool"):
                if r[m]["outcome"] != "not run":
                    earlier[(r["variant"], r["id"], m)] = r[m]
    with tempfile.TemporaryDirectory(prefix="pypool-torchtests-") as tmp:
        driver = Path(tmp) / "pypool_torch_test_driver.py"
        driver.write_text(DRIVER)
        (Path(tmp) / "site").mkdir()
        (Path(tmp) / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        classes = sorted(set(ALLOCATOR_CLASSES + NAME_CLASSES))
        variants: List[Tuple[str, List[str]]] = [("test_cuda", classes)]
        imported = variant_classes(tests_dir)
        notes: List[str] = []
        if imported is not None:
            variants.append(("expandable", [c for c in imported if c in classes]))
        runs: List[Tuple[str, str]] = []
        for variant, names in variants:
            listing = list_ids(args.python, driver, tests_dir, variant, names, env)
            if not listing["ids"]:
                print(f"could not list the tests of {variant}:\n{listing['tail']}", file=sys.stderr)
                return 2
            for m in listing["missing"]:  # type: ignore[union-attr]
                notes.append(f"{variant}: class {m} is not in this test_cuda.py")
            for tid in listing["ids"]:  # type: ignore[union-attr]
                cls, test = tid.split(".", 1)
                if selected(cls, test) and (args.only is None or re.search(args.only, f"{variant}:{tid}")):
                    runs.append((variant, tid))
        # With --merge: runs made now replace the earlier ones; the earlier ids stay in the table.
        work = [(v, tid, mode) for v, tid in runs for mode in modes]
        runs += [k for k in earlier_ids if k not in runs]
        print(f"{len(runs)} test ids selected; {len(work)} runs, {args.jobs} at a time", flush=True)
        results: Dict[Tuple[str, str, str], Dict[str, object]] = {}
        queue = list(enumerate(work))
        done = [0]

        def worker(w: int) -> None:
            servers: Dict[str, Server] = {}
            try:
                while True:
                    try:
                        i, key = queue.pop(0)
                    except IndexError:
                        return
                    v, tid, mode = key
                    if v not in servers:
                        servers[v] = Server(args.python, driver, tests_dir, v, env)
                    r = servers[v].run(mode, tid, Path(tmp) / f"run{i}.log", args.timeout)
                    results[key] = r
                    done[0] += 1
                    print(f"[{done[0]}/{len(work)}] {v}:{tid} {mode}: {r['outcome']} ({r['seconds']} s) "
                          f"{r['failure']}", flush=True)
            finally:
                for srv in servers.values():
                    srv.close()

        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as ex:
            for f in [ex.submit(worker, w) for w in range(max(1, args.jobs))]:
                f.result()

    torch_version = subprocess.run([args.python, "-c", "import torch; print(torch.__version__, torch.version.git_version)"],
                                   capture_output=True, text=True, env=env).stdout.strip()
    pypool_version = subprocess.run([args.python, "-c", "import pypool; print(pypool.__version__)"],
                                    capture_output=True, text=True).stdout.strip()
    results.update({k: v for k, v in earlier.items() if k not in results})
    missing_runs = [k for v, tid in runs for k in ((v, tid, "native"), (v, tid, "pypool")) if k not in results]
    for k in missing_runs:
        results[k] = {"outcome": "not run", "failure": "", "skip_reason": "", "seconds": 0}
    rows = []
    for v, tid in runs:
        n, p = results[(v, tid, "native")], results[(v, tid, "pypool")]
        if "not run" in (n["outcome"], p["outcome"]):
            rows.append({"variant": v, "id": tid, "group": "incomplete", "native": n, "pypool": p})
            continue
        ok_n, ok_p = n["outcome"] != "fail", p["outcome"] != "fail"
        group = {(True, True): "pass-both", (False, False): "fail-both", (True, False): "native-only",
                 (False, True): "pypool-only"}[(ok_n, ok_p)]
        rows.append({"variant": v, "id": tid, "group": group,
                     "native": {k: n[k] for k in ("outcome", "failure", "skip_reason", "seconds")},
                     "pypool": {k: p[k] for k in ("outcome", "failure", "skip_reason", "seconds")}})
    counts = {g: sum(r["group"] == g for r in rows) for g in ("pass-both", "fail-both", "native-only", "pypool-only")}
    provenance = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch_version,
        "pypool": pypool_version,
        "pytorch_test_revision": args.revision,
        "note": args.note,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, simulated CUDA device (python -m pypool simdevice)",
        "rule": RULE,
        "notes": notes,
        "timeout_s": args.timeout,
        "modes_run_now": modes,
        "merged_from": ({"file": str(args.merge), "date": earlier_prov.get("date"),
                         "command": earlier_prov.get("command"), "pypool": earlier_prov.get("pypool")}
                        if args.merge is not None else None),
        "imported_logs": [str(p) for p in args.import_log] or None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # The five facts benchmarks/results/README.md asks of every results file.
    environment = {"date": provenance["date"], "gpu": "none: simulated CUDA device (python -m pypool simdevice)",
                   "driver": None, "torch": torch_version, "command": provenance["command"]}
    Path(str(args.out) + ".json").write_text(json.dumps(
        {"environment": environment, "provenance": provenance, "counts": counts, "runs": rows}, indent=1) + "\n")
    text = [f"date: {provenance['date']}", f"GPU: {environment['gpu']}", f"torch {torch_version}",
            f"command: {provenance['command']}", "",
            "PyTorch's allocator and memory tests, native vs pypool.install() (tools/torch_memory_tests.py)", ""]
    for k in ("pypool", "pytorch_test_revision", "note", "machine", "rule",
              "modes_run_now", "merged_from", "imported_logs"):
        if provenance[k]:
            text.append(f"{k}: {provenance[k]}")
    text.extend(f"note: {n}" for n in notes)
    text.append("")
    text.append(f"{len(rows)} test ids: " + ", ".join(f"{counts[g]} {g}" for g in counts)
                + (f", {len(rows) - sum(counts.values())} incomplete" if len(rows) > sum(counts.values()) else ""))
    for g in ("native-only", "pypool-only", "fail-both", "pass-both"):
        text.append("")
        text.append(f"## {g} ({counts[g]})")
        for r in rows:
            if r["group"] != g:
                continue
            line = f"{r['variant']}:{r['id']}"
            n, p = r["native"], r["pypool"]
            if g == "native-only":
                line += f"\n    pypool: {p['failure']}"
            elif g == "pypool-only":
                line += f"\n    native: {n['failure']}"
            elif g == "fail-both":
                line += f"\n    native: {n['failure']}\n    pypool: {p['failure']}"
            elif n["outcome"] == "skip" and p["outcome"] == "skip":
                line += f"  (skipped both: {n['skip_reason']})"
            elif n["outcome"] == "skip" or p["outcome"] == "skip":
                line += f"  (native {n['outcome']}, pypool {p['outcome']})"
            text.append(line)
    Path(str(args.out) + ".txt").write_text("\n".join(text) + "\n")
    print("\n".join(text[:12]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
