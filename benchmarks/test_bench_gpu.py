"""GPU scenarios: pypool installed as torch's allocator against PyTorch's own allocators.

Each case starts one child process per allocator (torch fixes its allocator once per
process) and runs a reduced scenario set of ``python -m pypool bench``; the figures the
child measured (ns per op, step time, peak reserved, utilization) go to extra_info.
Skipped without a CUDA GPU.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List

import pytest

from pypool.bench import BenchSettings, gpu_allocators, run_gpu

pytestmark = pytest.mark.gpu

SCENARIOS = ["pairs:512", "pairs:1048576", "pairs:268435456", "random:64", "streams",
             "trace:transformer", "train:gpt"]


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _settings() -> BenchSettings:
    s = BenchSettings.for_mode("quick")
    g = dict(s.gpu, pair_batches=20, rmm_allocations=500, rmm_passes=1, stream_ops=2000,
             trace_scale=0.25, trace_passes=1, train_steps=12, train_warmup=2)
    return dataclasses.replace(s, gpu=g)


def _allocators() -> List[str]:
    try:
        return gpu_allocators()
    except Exception:  # collection must not fail where torch or rmm are broken
        return ["native", "pypool"]


@pytest.mark.parametrize("allocator", _allocators())
def test_gpu_allocator(benchmark: Any, allocator: str) -> None:
    if not _cuda():
        pytest.skip("needs a CUDA GPU")
    s = _settings()
    benchmark.group = "gpu scenarios"
    out: Dict[str, Any] = benchmark.pedantic(run_gpu, args=(s,), kwargs={"allocators": [allocator], "scenarios": SCENARIOS},
                                             rounds=1, iterations=1, warmup_rounds=0)
    child = out["children"][allocator]
    assert not child.get("error"), child.get("error")
    rows = {r["scenario"]: r for r in out["scenarios"]}
    assert sorted(rows) == sorted(SCENARIOS)
    for name, r in rows.items():
        assert not r.get("error"), f"{allocator} {name}: {r['error']}"
        key = "step_ms" if r.get("metric") == "step_ms" else "ns"
        if not r.get("skipped"):
            benchmark.extra_info[f"{name} {key} median"] = r[key]["median"]
            benchmark.extra_info[f"{name} peak_reserved"] = r.get("peak_reserved")
            benchmark.extra_info[f"{name} utilization"] = r.get("utilization")
            assert r[key]["median"] > 0
            if allocator != "rmm":  # RMM's pool size is not always readable
                assert r["peak_reserved"] is not None and r["peak_reserved"] >= r["peak_allocated"]
    benchmark.extra_info["device"] = child.get("device_info")
