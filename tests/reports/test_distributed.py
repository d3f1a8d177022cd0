"""Cross-rank memory reports over torch.distributed (two CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import pypool
from pypool.distributed import format_rank_table, gather_reports, local_report

MiB = 1 << 20

WORKER = textwrap.dedent("""
    import datetime, json, os, sys
    import torch.distributed as dist
    import pypool
    from pypool import _core
    from pypool import distributed

    rank, world, init_file, out_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    # Each rank is its own process, hence its own registry.
    _core.registry_configure("host", pypool.PoolConfig().to_core(), 1 << 30)
    core = _core.registry_pool(0)
    ptrs = [core.malloc((rank + 1) * 3 * (1 << 20), 0) for _ in range(rank + 1)]
    core.free(ptrs[0])
    dist.init_process_group("gloo", init_method="file://" + init_file, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    reports = distributed.gather_reports()
    table = distributed.print_rank_table()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"reports": reports, "table": table}, f)
    dist.barrier()
    dist.destroy_process_group()
""")


def test_two_ranks_on_gloo(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    init_file = tmp_path / "init"
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", PYTHONWARNINGS="ignore",
               PYTHONPATH=os.path.dirname(os.path.dirname(pypool.__file__)))
    procs = [subprocess.Popen([sys.executable, str(script), str(r), "2", str(init_file), str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for r in range(2)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=120))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for r, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {r} failed:\n{err[-3000:]}"

    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    # Every rank holds every rank's report, in rank order.
    assert results[0]["reports"] == results[1]["reports"]
    reports = results[0]["reports"]
    assert [r["rank"] for r in reports] == [0, 1]
    assert all(r["world_size"] == 2 and r["device"] == 0 for r in reports)
    # rank 0: one 3 MiB block, freed; rank 1: two 6 MiB blocks, one freed.
    f0, f1 = reports[0]["fragmentation"], reports[1]["fragmentation"]
    assert (f0["reserved"], f0["allocated"], f0["segments"]) == (20 * MiB, 0, 1)
    assert (f1["reserved"], f1["allocated"], f1["segments"]) == (20 * MiB, 6 * MiB, 1)
    assert f1["peak_allocated"] == 12 * MiB
    assert reports[1]["memory_stats"]["allocated_bytes.all.current"] == 6 * MiB
    # The table is printed (and returned) on rank 0 only.
    assert results[1]["table"] is None
    table = results[0]["table"]
    assert table in outs[0][0] and "rank" not in outs[1][0]
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["rank", "host", "dev"]
    assert lines[2].split()[0] == "0" and lines[3].split()[0] == "1"
    assert "6.00 MiB" in lines[3]


def test_gather_without_process_group_returns_none():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is initialized in this test process")
    assert gather_reports() is None
    p = pypool.Pool("host", capacity="64MiB")
    p.malloc(4096)
    mine = local_report(pool=p)
    assert (mine["rank"], mine["world_size"], mine["device"]) == (0, 1, 0)
    assert mine["fragmentation"]["allocated"] == 4096
    assert mine["memory_stats"]["allocated_bytes.all.current"] == 4096


def test_format_rank_table():
    def rep(rank, reserved, allocated, ooms):
        return {"rank": rank, "host": f"node{rank // 2}", "device": rank % 2,
                "memory_stats": {"num_ooms": ooms},
                "fragmentation": {"reserved": reserved, "allocated": allocated, "requested": allocated,
                                  "free": reserved - allocated, "largest_free": reserved - allocated,
                                  "external_fragmentation": 0.0, "utilization": allocated / reserved,
                                  "peak_allocated": allocated, "peak_reserved": reserved,
                                  "peak_utilization": allocated / reserved, "segments": 2}}

    text = format_rank_table([rep(1, 40 * MiB, 10 * MiB, 1), rep(0, 20 * MiB, 10 * MiB, 0)])
    lines = text.splitlines()
    assert [ln.split()[0] for ln in lines[2:4]] == ["0", "1"]  # sorted by rank
    assert len({len(ln) for ln in lines[:4]}) == 1  # aligned
    assert "25.0%" in lines[3] and "40.00 MiB" in lines[3] and lines[3].split()[-1] == "1"
    assert lines[-1] == "reserved: max 40.00 MiB (rank 1), min 20.00 MiB (rank 0), spread 20.00 MiB"
    assert format_rank_table([]) == "no ranks\n"
    # missing figures (a rank with no statistics) print as "-"
    partial = format_rank_table([{"rank": 0, "fragmentation": {"reserved": 0}}])
    assert "-" in partial.splitlines()[2]
