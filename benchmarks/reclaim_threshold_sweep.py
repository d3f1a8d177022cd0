"""Smallest capacity and synchronizing calls of pypool's settings over the workloads of
benchmarks/mincap_table.py, offline (null backend), without the advisor's search.

For each workload (at the table's scale) and each setting: the smallest max_pool_size
without out-of-memory (pypool.sizing.min_pool_size, 2 MiB steps), checked by fresh
replays at that cap (must pass) and 2 MiB below (must fail), and synchronizing device
calls (device frees + expandable-segment unmaps) per 1,000 allocations on the whole
device and at the smallest cap. Usage (from the repository root, pypool installed)::

    .venv/bin/python -P benchmarks/reclaim_threshold_sweep.py [EXTRA_CONF] [WORKLOADS] [default,suggested]

EXTRA_CONF is appended to every setting (e.g. ``reclaim_threshold:0.8``); "suggested" is
the pypool suggested setting of benchmarks/results/2026-12-01-simdevice-mincap.txt.
Wrote the sweep of benchmarks/results/2026-12-02-cpu-reclaim-threshold.txt.
"""

from __future__ import annotations

import sys
import time

from pypool.config import PoolConfig
from pypool.replay import default_capacity, replay
from pypool.sizing import _Evaluator, min_pool_size
from pypool.workloads import generate

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from mincap_table import WORKLOADS  # noqa: E402

MiB = 1 << 20
#: The suggested settings of the 2026-12-01 table (before reclaim_threshold).
SUGGESTED_2026_12_01 = {
    "transformer": "round_up_divisions:2,max_split_size:1GiB,garbage_collection_threshold:0.8",
    "growing_batch": "max_split_size:256MiB,growth:exact,garbage_collection_threshold:0.6",
    "kv_cache": "expandable_segments:true",
    "random": "expandable_segments:true,garbage_collection_threshold:0.6",
    "recorded_gpt_train": "large_segment_size:64MiB,min_large_alloc:64MiB,max_split_size:256MiB,growth:fixed,"
                          "growth_step:256MiB",
    "recorded_cnn_growing_batch": "expandable_segments:true",
    "recorded_gpt_decode": "expandable_segments:true",
}


def main(extra: str, which: list, kinds: list) -> int:
    for w, scale in WORKLOADS:
        if w not in which:
            continue
        tr = generate(w, seed=0, scale=scale)
        allocs = int((tr.actions == 0).sum())
        floor, cap = tr.peak_live(), default_capacity(tr)
        for kind in kinds:
            t0 = time.time()
            conf = ",".join(x for x in (SUGGESTED_2026_12_01[w] if kind == "suggested" else "", extra) if x)
            cfg = PoolConfig.from_string(conf)
            ev = _Evaluator(tr, cap, 2)
            whole = ev.run([cfg])[0]
            m = min_pool_size(tr, cfg, cap, _evaluator=ev)
            ev.close()
            if m is None:
                print(f"{w:28s} {kind:9s} does not fit in {cap // MiB} MiB  {conf}")
                continue
            at_min = replay(tr, cfg.replace(max_pool_size=m), capacity=cap)
            ok = at_min.ooms == 0 and replay(tr, cfg.replace(max_pool_size=m - 2 * MiB), capacity=cap).ooms > 0
            spk_whole = 1000.0 * whole.syncs / allocs
            fm = at_min.num_device_free + int(at_min.pool.memory_stats().get("num_segment_unmap", 0))
            print(f"{w:28s} {kind:9s} {m // MiB:>7} {m / floor:.3f}  sync {spk_whole:6.2f} / {1000.0 * fm / allocs:6.2f}"
                  f"  {'checked' if ok else 'NOT CONFIRMED'} ({time.time() - t0:.0f} s)  {conf or '(defaults)'}",
                  flush=True)
    return 0


if __name__ == "__main__":
    a = sys.argv[1:]
    names = [w for w, _ in WORKLOADS]
    sys.exit(main(a[0] if a else "", a[1].split(",") if len(a) > 1 and a[1] else names,
                  a[2].split(",") if len(a) > 2 else ["default", "suggested"]))
