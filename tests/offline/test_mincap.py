"""The shared smallest-capacity bisection (pypool.mincap): pure Python, no pool needed."""

from __future__ import annotations

import importlib.util
import pathlib
import random

import pytest

from pypool.mincap import STEP, MinCapacity, min_capacity

MiB = 1 << 20


def _threshold(t: int, calls: list):
    def probe(caps):
        calls.append(list(caps))
        return [c >= t for c in caps]
    return probe


@pytest.mark.parametrize("width", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("start_passes", [False, True])
def test_finds_the_threshold_exactly(width, start_passes):
    rng = random.Random(width * 2 + start_passes)
    for _ in range(60):
        floor = rng.randrange(1, 400) * MiB + rng.randrange(0, MiB)
        t = (-(-floor // STEP) + rng.randrange(0, 60)) * STEP  # the true minimum
        start = t + rng.randrange(0, 100) * STEP if start_passes else rng.randrange(1, 2 * t)
        calls: list = []
        r = min_capacity(_threshold(t, calls), floor=floor, start=start, width=width, start_passes=start_passes)
        assert r.capacity == t, (floor, t, start, width)
        assert all(len(c) <= width for c in calls)
        assert (t, True) in r.attempts or (start_passes and -(-start // STEP) * STEP == t)
        # The guarantee: one step below failed, or lies below the floor.
        assert (t - STEP, False) in r.attempts or t - STEP < floor


def test_result_at_the_floor_needs_no_probe_below():
    calls: list = []
    r = min_capacity(_threshold(0, calls), floor=10 * MiB, start=100 * MiB)
    assert r.capacity == 10 * MiB
    assert r.over_floor == 1.0
    assert all(c >= 10 * MiB for batch in calls for c in batch)


def test_doubles_up_from_a_start_that_fails():
    calls: list = []
    r = min_capacity(_threshold(1000 * MiB, calls), floor=MiB, start=4 * MiB)
    assert r.capacity == 1000 * MiB
    assert [c for c, ok in r.attempts[:4]] == [4 * MiB, 8 * MiB, 16 * MiB, 32 * MiB]


def test_top_bounds_the_search():
    calls: list = []
    r = min_capacity(_threshold(1 << 40, calls), floor=MiB, start=4 * MiB, top=64 * MiB)
    assert r.capacity is None and "out of memory" in (r.note or "")
    assert max(c for c, _ in r.attempts) == 64 * MiB
    assert r.to_dict()["capacity"] is None


def test_width_one_is_a_plain_bisection():
    calls: list = []
    min_capacity(_threshold(300 * MiB, calls), floor=2 * MiB, start=512 * MiB, start_passes=True)
    assert len(calls) <= 8  # 255 candidates: log2 -> 8 probes


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="step"):
        min_capacity(lambda c: [True] * len(c), floor=0, start=1, step=0)
    with pytest.raises(ValueError, match="width"):
        min_capacity(lambda c: [True] * len(c), floor=0, start=1, width=0)
    with pytest.raises(RuntimeError, match="results"):
        min_capacity(lambda c: [], floor=0, start=STEP)


def test_loads_by_path_without_pypool():
    # Note [mincap is stdlib only]: the PyTorch child loads the file by path.
    import pypool.mincap as m

    spec = importlib.util.spec_from_file_location("_mincap_copy", pathlib.Path(m.__file__))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    r = mod.min_capacity(lambda caps: [c >= 6 * MiB for c in caps], floor=MiB, start=64 * MiB)
    assert r.capacity == 6 * MiB
    src = pathlib.Path(m.__file__).read_text()
    assert "from ." not in src and "import pypool" not in src
    assert isinstance(r, mod.MinCapacity) and not isinstance(r, MinCapacity)
