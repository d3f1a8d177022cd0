"""Replay speed and memory efficiency of the bundled workloads (CPU, null backend).

pytest-benchmark times ``replay(trace, config)`` (the C++ event loop plus pool set-up);
extra_info carries the loop's own events/s and the memory figures: peak reserved against
the trace's physical floor (peak live requested bytes) and utilization.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import pytest

from pypool import PoolConfig
from pypool.replay import replay
from pypool.trace import Trace
from pypool.workloads import WORKLOADS

CONFIGS = {"default": PoolConfig(), "expandable": PoolConfig(expandable_segments=True)}
_traces: Dict[Tuple[str, float], Trace] = {}


def _trace(name: str, scale: float = 1.0) -> Trace:
    # Generating a workload takes up to a second: once per session, shared by configs.
    key = (name, scale)
    if key not in _traces:
        _traces[key] = WORKLOADS[name](seed=0, scale=scale)
    return _traces[key]


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("workload", sorted(WORKLOADS))
def test_replay(benchmark: Any, workload: str, config: str) -> None:
    benchmark.group = f"replay {workload}"
    trace = _trace(workload)
    result = benchmark.pedantic(replay, args=(trace,), kwargs={"config": CONFIGS[config]},
                                rounds=3, iterations=1, warmup_rounds=0)
    floor = trace.peak_live()
    benchmark.extra_info.update(
        events=result.events, events_per_second=result.events_per_second, floor=floor,
        peak_reserved=result.peak_reserved, peak_allocated=result.peak_allocated,
        utilization=result.utilization, reserved_over_floor=result.peak_reserved / floor)
    assert result.events == len(trace)
    assert result.ooms == 0, f"{workload} ({config}) ran out of the default 80 GiB"
    # No allocator holds less than what is live at the peak.
    assert result.peak_allocated >= floor
    assert result.peak_reserved >= result.peak_allocated
    assert 0 < result.utilization <= 1
