"""The bundled recorded workloads (pypool/workloads_data): real models' allocation
sequences recorded on the simulated device with torch's memory history
(tools/record_sim_workloads.py). CPU only: they are loaded from the installed package
(so these tests also check that the wheel carries the data) and replayed on the null
backend.
"""

from __future__ import annotations

import json
from typing import Dict

import numpy as np
import pytest

from pypool.__main__ import main
from pypool.replay import replay, replay_workload
from pypool.trace import Trace, torch_reserved_profile
from pypool.workloads import ALL_WORKLOADS, RECORDED_WORKLOADS, WORKLOADS, generate, recorded, recorded_path

# The floor (peak live requested bytes) of each recording, and the number of allocations
# it makes: fixed by the committed files, so a loader change that alters them shows here.
FLOORS: Dict[str, int] = {
    "recorded_gpt_train": 6_214_125_768,
    "recorded_cnn_growing_batch": 2_023_690_504,
    "recorded_gpt_decode": 595_371_208,
}
ALLOCS: Dict[str, int] = {
    "recorded_gpt_train": 14_512,
    "recorded_cnn_growing_batch": 8_994,
    "recorded_gpt_decode": 41_475,
}


def test_registry() -> None:
    assert set(RECORDED_WORKLOADS) == set(FLOORS)
    assert set(ALL_WORKLOADS) == set(WORKLOADS) | set(RECORDED_WORKLOADS)
    assert not set(WORKLOADS) & set(RECORDED_WORKLOADS)  # WORKLOADS: the seeded generators only


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_loads_validates_and_replays_with_its_floor(name: str) -> None:
    path = recorded_path(name)
    assert path.is_file(), f"{path}: missing from the installed package (package data)"
    assert path.stat().st_size < 300 * 1024
    t = generate(name)
    t.validate()
    assert t.name == name and t.num_allocs == ALLOCS[name]
    assert t.peak_live() == FLOORS[name]
    assert t.meta["recorded"] == name and t.meta["recording"]["workload"] == name
    assert t.meta["recording"]["parameters"] > 10_000_000
    assert t.meta.get("skipped_unknown_frees", 0) == 0 and t.meta.get("implicit_frees", 0) == 0
    prof = t.meta["torch"]
    assert prof["consistent"] and prof["initial_reserved"] == 0
    assert prof["peak_reserved"] == t.meta["recording"]["max_memory_reserved"] >= t.peak_live()
    assert t.meta["recording"]["max_memory_allocated"] >= t.peak_live()
    # Recorded on a GPU-like device: sizes as PyTorch asks for them, everything on one stream.
    assert (t.streams == 0).all() and t.sizes.min() >= 1
    json.dumps(t.meta)  # savable as a pypool trace
    r = replay(t)
    assert r.ooms == 0 and r.skipped_events == 0
    assert r.peak_live == FLOORS[name]
    assert r.peak_reserved >= r.peak_allocated >= r.peak_live
    assert r.pool is not None
    r.pool.check_invariants()


def test_same_as_loading_the_snapshot_file() -> None:
    name = "recorded_gpt_decode"
    a, b = generate(name), Trace.load(recorded_path(name))
    for k in ("actions", "ids", "sizes", "streams"):
        assert np.array_equal(getattr(a, k), getattr(b, k)), k
    assert torch_reserved_profile(recorded_path(name)).to_dict() == a.meta["torch"]


def test_scale_is_a_prefix_and_seed_is_ignored() -> None:
    full = recorded("recorded_cnn_growing_batch")
    half = generate("recorded_cnn_growing_batch", seed=7, scale=0.5)
    n = round(len(full) * 0.5)
    assert len(half) == n and np.array_equal(half.sizes, full.sizes[:n])
    half.validate()
    assert replay(half).ooms == 0
    assert replay_workload("recorded_cnn_growing_batch", scale=0.1).events == round(len(full) * 0.1)
    with pytest.raises(ValueError, match="one length"):
        generate("recorded_gpt_train", scale=2.0)
    with pytest.raises(ValueError, match="scale"):
        generate("recorded_gpt_train", scale=0.0)
    with pytest.raises(ValueError, match="unknown"):
        recorded("recorded_nothing")
    with pytest.raises(TypeError):
        generate("recorded_gpt_train", steps=3)  # no generator parameters


def test_cli_replays_a_recorded_workload(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", "--workload", "recorded_gpt_decode", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["peak_live"] == FLOORS["recorded_gpt_decode"] and d["ooms"] == 0
    assert d["torch"]["peak_reserved"] > 0
    assert main(["replay", "--workload", "recorded_cnn_growing_batch"]) == 0
    out = capsys.readouterr().out
    assert "peak live (floor)" in out and "PyTorch reserved" in out
    assert main(["replay", "--workload", "recorded_gpt_train", "--scale", "3"]) == 2
    assert "one length" in capsys.readouterr().err
