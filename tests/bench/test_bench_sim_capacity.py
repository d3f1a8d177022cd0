"""The simulated-device bench's side-by-side capacity table and sync calls per 1,000
allocations, from a canned result (no simulation needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

from pypool.bench import report as bench_report
from pypool.bench import settings as bench_settings

MiB = 1 << 20


def _row(a: str, cap: int, sync_cold: int, sync_min: int) -> Dict[str, Any]:
    return {"scenario": "minmem:kv_cache", "allocator": a, "metric": "min_capacity", "workload": "kv_cache",
            "floor": 1000 * MiB, "allocations": 4000, "peak_reserved": cap, "sim_peak": cap,
            "min_capacity": cap, "min_capacity_over_floor": cap / (1000 * MiB), "attempts": [],
            "calls_cold": {"total": 100, "sync": sync_cold, "by_name": {}},
            "calls_at_min": {"total": 100, "sync": sync_min, "by_name": {}}}


def test_side_by_side_capacities_and_sync_per_thousand() -> None:
    allocs = list(bench_settings.SIM_ALLOCATORS)
    rows: List[Dict[str, Any]] = [_row(a, (1200 - 40 * k) * MiB, k, 2 * k + 1) for k, a in enumerate(allocs)]
    sim = {"allocators": allocs, "scenarios": rows, "children": {}, "scenarios_run": ["minmem:kv_cache"]}
    table = bench_report.side_by_side_table(sim)
    head, _, line = table.splitlines()[:3]
    assert [f"{a} MiB (x floor)" in head for a in allocs] == [True] * 4
    assert line.startswith("kv_cache") and "1,000" in line
    for k in range(4):
        cap = 1200 - 40 * k
        assert f"{cap:,} ({cap / 1000:.3f})" in line
        assert f"{1000 * k / 4000:.2f} / {1000 * (2 * k + 1) / 4000:.2f}" in line
    text = bench_report.sim_tables(sim)
    assert table in text and text.index(table) < text.index("min capacity MiB")
    assert "sync/1k allocs cold" in bench_report.calls_table(sim)



def test_readme_simulated_device_floors_say_their_scale() -> None:
    # The README showed kv_cache's floor as 16.48 GiB in one table and 16,018 MiB in the
    # next without saying why: the simulated-device run replays generated workloads at
    # --scale 0.5. Each floor there must be that scale's, and the text must say so.
    import re

    from pypool.workloads import generate

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    part = readme[readme.index("**Simulated-device figures**"):]
    part = part[:part.index("What the counts show")]
    assert "`--scale 0.5`" in part
    rows = dict(re.findall(r"^\| (transformer|growing_batch|kv_cache|random) \| ([\d,]+) MiB \|", part, re.M))
    assert sorted(rows) == ["growing_batch", "kv_cache", "random", "transformer"], rows
    for name, floor in rows.items():
        assert int(floor.replace(",", "")) == round(generate(name, seed=0, scale=0.5).peak_live() / (1 << 20)), name
