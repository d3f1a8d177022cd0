"""Size policy tables: ``_core.round_size / pool_for / segment_size / min_segment_size /
can_use / should_split``. Every expected value below is worked out by hand from the
documented policy (PyTorch's: 512 B rounding, 1 MiB small/large boundary, 2 MiB small
segments, 20 MiB large segments, own segment rounded to 2 MiB from 10 MiB)."""

from __future__ import annotations

import pytest

from pypool import _core

KiB = 1 << 10
MiB = 1 << 20
PiB = 1 << 50


def config(**fields: int) -> _core.Config:
    c = _core.Config()
    for name, value in fields.items():
        setattr(c, name, value)
    c.validate()
    return c


DEFAULT = config()
DIV4 = config(round_up_divisions=4)
SPLIT32 = config(max_split_size=32 * MiB)


def test_config_defaults() -> None:
    c = _core.Config()
    assert c.min_block_size == 512
    assert c.small_size == 1 * MiB
    assert c.small_segment_size == 2 * MiB
    assert c.large_segment_size == 20 * MiB
    assert c.min_large_alloc == 10 * MiB
    assert c.round_large == 2 * MiB
    assert c.round_up_divisions == 0
    assert c.max_split_size == _core.UNLIMITED
    assert c.max_pool_size == _core.UNLIMITED
    assert c.expandable_segments is False
    assert _core.MAX_REQUEST == PiB


# ---------------------------------------------------------------------------- round_size

ROUND_DEFAULT = [
    (1, 512),
    (511, 512),
    (512, 512),
    (513, 1024),
    (1000, 1024),
    (1024, 1024),
    (1025, 1536),
    (4096, 4096),
    (1 * MiB - 1, 1 * MiB),
    (1 * MiB, 1 * MiB),
    (1 * MiB + 1, 1 * MiB + 512),
    (10 * MiB, 10 * MiB),
    (10 * MiB + 1, 10 * MiB + 512),
    (20 * MiB, 20 * MiB),
    (20 * MiB + 1, 20 * MiB + 512),
    (PiB - 1, PiB),
    (PiB, PiB),
]


@pytest.mark.parametrize(("size", "expected"), ROUND_DEFAULT)
def test_round_size_default(size: int, expected: int) -> None:
    assert _core.round_size(DEFAULT, size) == expected


ROUND_DIV4 = [
    # at or below small_size: plain 512 B rounding
    (1, 512),
    (513, 1024),
    (700_000, 1368 * 512),  # 700000 / 512 = 1367.19 -> 1368 * 512 = 700416
    (1 * MiB, 1 * MiB),
    # (1 MiB, 2 MiB): steps of 256 KiB
    (1 * MiB + 1, 1 * MiB + 256 * KiB),
    (1 * MiB + 256 * KiB, 1 * MiB + 256 * KiB),
    (1 * MiB + 256 * KiB + 1, 1 * MiB + 512 * KiB),
    (2 * MiB - 1, 2 * MiB),
    # a power of two stays itself
    (2 * MiB, 2 * MiB),
    # [2 MiB, 4 MiB): steps of 512 KiB
    (2 * MiB + 1, 2 * MiB + 512 * KiB),
    (3 * MiB, 3 * MiB),
    (3 * MiB + 1, 3 * MiB + 512 * KiB),
    # [8 MiB, 16 MiB): steps of 2 MiB
    (10 * MiB, 10 * MiB),
    (10 * MiB + 1, 12 * MiB),
    (15 * MiB, 16 * MiB),
    # [16 MiB, 32 MiB): steps of 4 MiB
    (16 * MiB, 16 * MiB),
    (20 * MiB, 20 * MiB),
    (20 * MiB + 1, 24 * MiB),
    # top of the range: [2^49, 2^50) in steps of 2^47
    (PiB - 1, PiB),
    (PiB // 2 + 1, PiB // 2 + PiB // 8),
]


@pytest.mark.parametrize(("size", "expected"), ROUND_DIV4)
def test_round_size_divisions_4(size: int, expected: int) -> None:
    assert _core.round_size(DIV4, size) == expected


@pytest.mark.parametrize(
    ("divisions", "size", "expected"),
    [
        (0, 1 * MiB + 1, 1 * MiB + 512),  # off
        (1, 1 * MiB + 1, 1 * MiB + 512),  # one division = off
        (2, 1 * MiB + 1, 1 * MiB + 512 * KiB),
        (2, 3 * MiB + 1, 4 * MiB),
        (8, 1 * MiB + 1, 1 * MiB + 128 * KiB),
        (64, 1 * MiB + 1, 1 * MiB + 16 * KiB),
        (64, 5 * MiB + 1, 5 * MiB + 64 * KiB),  # [4, 8) MiB in steps of 64 KiB
    ],
)
def test_round_size_other_divisions(divisions: int, size: int, expected: int) -> None:
    assert _core.round_size(config(round_up_divisions=divisions), size) == expected


def test_round_size_division_finer_than_min_block_falls_back() -> None:
    # small_size 4 KiB and 64 divisions: [4 KiB, 8 KiB) would step by 64 B, finer than
    # the 512 B minimum, so plain 512 B rounding applies.
    c = config(small_size=4 * KiB, round_up_divisions=64)
    assert _core.round_size(c, 4 * KiB + 1) == 4 * KiB + 512
    # [64 KiB, 128 KiB) steps by 1 KiB >= 512 B: divisions apply again.
    assert _core.round_size(c, 64 * KiB + 1) == 65 * KiB
    assert _core.round_size(c, 4 * KiB) == 4 * KiB


def test_round_size_with_other_min_block() -> None:
    c = config(min_block_size=4096)
    assert _core.round_size(c, 1) == 4096
    assert _core.round_size(c, 4097) == 8192
    assert _core.round_size(c, 1 * MiB + 1) == 1 * MiB + 4096


@pytest.mark.parametrize("size", [0, PiB + 1])
def test_round_size_rejects_out_of_range(size: int) -> None:
    with pytest.raises(ValueError, match="size"):
        _core.round_size(DEFAULT, size)


def test_round_size_is_monotone_and_a_multiple_of_512() -> None:
    sizes = list(range(1, 5000, 7)) + [MiB + d for d in range(-2048, 2048, 97)] + [
        k * MiB + d for k in range(2, 64) for d in (-1, 0, 1)
    ]
    for c in (DEFAULT, DIV4, config(round_up_divisions=16)):
        prev = 0
        for s in sorted(sizes):
            r = _core.round_size(c, s)
            assert r >= s and r % 512 == 0 and r >= prev, (s, r)
            prev = r


# ---------------------------------------------------------------------------- pool_for


@pytest.mark.parametrize(
    ("rounded", "pool"),
    [
        (512, "small"),
        (1 * MiB - 512, "small"),
        (1 * MiB, "small"),
        (1 * MiB + 512, "large"),
        (10 * MiB, "large"),
        (PiB, "large"),
    ],
)
def test_pool_for(rounded: int, pool: str) -> None:
    assert _core.pool_for(DEFAULT, rounded) == pool


def test_pool_for_follows_small_size() -> None:
    c = config(small_size=256 * KiB)
    assert _core.pool_for(c, 256 * KiB) == "small"
    assert _core.pool_for(c, 256 * KiB + 512) == "large"


# ---------------------------------------------------------------------------- segment sizes


@pytest.mark.parametrize(
    ("rounded", "segment"),
    [
        (512, 2 * MiB),
        (1 * MiB, 2 * MiB),
        (1 * MiB + 512, 20 * MiB),
        (5 * MiB, 20 * MiB),
        (10 * MiB - 512, 20 * MiB),
        (10 * MiB, 10 * MiB),  # from min_large_alloc on: own segment, rounded to 2 MiB
        (10 * MiB + 512, 12 * MiB),
        (11 * MiB, 12 * MiB),
        (20 * MiB, 20 * MiB),
        (20 * MiB + 512, 22 * MiB),
        (100 * MiB + 512, 102 * MiB),
    ],
)
def test_segment_size_default(rounded: int, segment: int) -> None:
    assert _core.segment_size(DEFAULT, rounded) == segment


def test_segment_size_large_segment_smaller_than_min_large_alloc() -> None:
    # A request below min_large_alloc that does not fit a large segment gets its own.
    c = config(large_segment_size=8 * MiB)
    assert _core.segment_size(c, 5 * MiB) == 8 * MiB
    assert _core.segment_size(c, 8 * MiB) == 8 * MiB
    assert _core.segment_size(c, 9 * MiB) == 10 * MiB


@pytest.mark.parametrize(
    ("rounded", "segment"),
    [
        (512, 512),
        (1 * MiB, 1 * MiB),
        (1 * MiB + 512, 2 * MiB),
        (3 * MiB, 4 * MiB),
        (4 * MiB, 4 * MiB),
        (10 * MiB, 10 * MiB),
        (10 * MiB + 512, 12 * MiB),
    ],
)
def test_min_segment_size(rounded: int, segment: int) -> None:
    assert _core.min_segment_size(DEFAULT, rounded) == segment


# ---------------------------------------------------------------------------- can_use


@pytest.mark.parametrize(
    ("block", "rounded", "ok"),
    [
        (512, 512, True),
        (1024, 512, True),
        (512, 1024, False),
        (2 * MiB, 1 * MiB, True),
        (20 * MiB, 2 * MiB, True),  # no max_split_size: any larger block will do
        (1 << 45, 512, True),
    ],
)
def test_can_use_default(block: int, rounded: int, ok: bool) -> None:
    assert _core.can_use(DEFAULT, block, rounded) is ok


@pytest.mark.parametrize(
    ("block", "rounded", "ok"),
    [
        (16 * MiB, 2 * MiB, True),  # below max_split_size: normal best fit
        (32 * MiB - 512, 2 * MiB, True),
        (32 * MiB, 2 * MiB, False),  # oversize block kept for oversize requests
        (32 * MiB, 32 * MiB - 512, False),
        (31 * MiB, 32 * MiB, False),  # too small
        (32 * MiB, 32 * MiB, True),
        (40 * MiB, 32 * MiB, True),  # waste 8 MiB < 20 MiB
        (52 * MiB - 512, 32 * MiB, True),  # waste just under 20 MiB
        (52 * MiB, 32 * MiB, False),  # waste of 20 MiB is too much
        (100 * MiB, 64 * MiB, False),
    ],
)
def test_can_use_max_split(block: int, rounded: int, ok: bool) -> None:
    assert _core.can_use(SPLIT32, block, rounded) is ok


# ---------------------------------------------------------------------------- should_split


@pytest.mark.parametrize(
    ("block", "rounded", "split"),
    [
        # small pool: any remainder of >= 512 B becomes a block
        (2 * MiB, 512, True),
        (1024, 512, True),
        (512, 512, False),
        (2 * MiB, 1 * MiB, True),
        (2 * MiB, 2 * MiB - 512, False),  # 2 MiB - 512 is large: a 512 B rest stays attached
        # large pool: only a remainder above small_size (1 MiB) is split off
        (20 * MiB, 2 * MiB, True),
        (3 * MiB, 2 * MiB, False),  # remainder exactly 1 MiB
        (3 * MiB + 512, 2 * MiB, True),  # remainder 1 MiB + 512
        (20 * MiB, 19 * MiB + 512, False),
        (20 * MiB, 20 * MiB, False),
    ],
)
def test_should_split_default(block: int, rounded: int, split: bool) -> None:
    assert _core.should_split(DEFAULT, block, rounded) is split


def test_should_split_small_boundary() -> None:
    # 1 MiB is the largest small request: its remainder splits at 512 B already.
    assert _core.should_split(DEFAULT, 1 * MiB + 512, 1 * MiB) is True
    # 1 MiB + 512 is large: a remainder of 1 MiB is not enough.
    assert _core.should_split(DEFAULT, 2 * MiB + 512, 1 * MiB + 512) is False


@pytest.mark.parametrize(
    ("block", "rounded", "split"),
    [
        (31 * MiB, 2 * MiB, True),
        (32 * MiB - 512, 2 * MiB, True),
        (32 * MiB, 32 * MiB - 4 * MiB, False),  # an oversize block is never split
        (40 * MiB, 32 * MiB, False),
        (52 * MiB - 512, 32 * MiB, False),
    ],
)
def test_should_split_max_split(block: int, rounded: int, split: bool) -> None:
    assert _core.should_split(SPLIT32, block, rounded) is split
