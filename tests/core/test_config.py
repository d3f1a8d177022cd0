"""PoolConfig: validation naming the field, size strings, PYPOOL_CONF parsing and the
to_string / from_string round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Type

import pytest

import pypool
from pypool import PoolConfig, _core, format_size, parse_size

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30


# ---------------------------------------------------------------------------- sizes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (4096, 4096),
        ("4096", 4096),
        ("512MiB", 512 * MiB),
        ("512 MiB", 512 * MiB),
        ("2 GiB", 2 * GiB),
        ("2GiB", 2 * GiB),
        ("2g", 2 * GiB),
        ("2G", 2 * GiB),
        ("40GB", 40 * 10**9),  # decimal
        ("40gb", 40 * 10**9),
        ("1KB", 1000),
        ("1KiB", 1024),
        ("1k", 1024),
        ("3MB", 3 * 10**6),
        ("1TiB", 1 << 40),
        ("1TB", 10**12),
        ("1.5KiB", 1536),
        ("0.5 GiB", GiB // 2),
        ("  7 B ", 7),
    ],
)
def test_parse_size(text: Any, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("value", "exc"),
    [
        ("", ValueError),
        ("lots", ValueError),
        ("12 XB", ValueError),
        ("-1MiB", ValueError),
        ("1.3KiB", ValueError),  # 1331.2 bytes is not a whole number
        ("1,5GiB", ValueError),
        (-1, ValueError),
        (1.5, TypeError),
        (True, TypeError),
        (None, TypeError),
        ([1], TypeError),
    ],
)
def test_parse_size_rejects(value: Any, exc: Type[Exception]) -> None:
    with pytest.raises(exc, match="my_field"):
        parse_size(value, "my_field")


def test_format_size() -> None:
    assert format_size(0) == "0 B"
    assert format_size(1023) == "1023 B"
    assert format_size(1024) == "1.00 KiB"
    assert format_size(3 * MiB) == "3.00 MiB"
    assert format_size(40 * GiB) == "40.00 GiB"
    assert format_size(None) == "unlimited"


# ---------------------------------------------------------------------------- fields


def test_defaults_match_the_core() -> None:
    c = PoolConfig()
    core = c.to_core()
    ref = _core.Config()
    for name in ("min_block_size", "small_size", "small_segment_size", "large_segment_size",
                 "min_large_alloc", "round_large", "round_up_divisions", "round_up_interval_divisions",
                 "max_split_size", "max_pool_size", "expandable_segments", "expandable_reserve",
                 "initial_pool_size", "growth_step", "release_threshold",
                 "garbage_collection_threshold", "reclaim_before_grow", "reclaim_threshold"):
        assert getattr(core, name) == getattr(ref, name), name
    assert c.max_pool_size is None and c.max_split_size is None and c.memory_fraction is None


def test_sizes_accept_strings() -> None:
    c = PoolConfig(max_pool_size="40GiB", max_split_size="64MiB", release_threshold="1 GiB")
    assert c.max_pool_size == 40 * GiB
    assert c.max_split_size == 64 * MiB
    assert c.release_threshold == GiB
    core = c.to_core()
    assert core.max_pool_size == 40 * GiB
    assert core.max_split_size == 64 * MiB
    assert PoolConfig(max_pool_size="unlimited").max_pool_size is None
    assert PoolConfig(max_split_size="none").to_core().max_split_size == _core.UNLIMITED


BAD_FIELDS = [
    # (field, kwargs, exception)
    ("max_pool_size", {"max_pool_size": "lots"}, ValueError),
    ("max_pool_size", {"max_pool_size": -1}, ValueError),
    ("max_pool_size", {"max_pool_size": 0}, ValueError),
    ("max_pool_size", {"max_pool_size": 1.5}, TypeError),
    ("memory_fraction", {"memory_fraction": 0.0}, ValueError),
    ("memory_fraction", {"memory_fraction": 1.5}, ValueError),
    ("memory_fraction", {"memory_fraction": "half"}, TypeError),
    ("min_block_size", {"min_block_size": 1000}, ValueError),
    ("min_block_size", {"min_block_size": 8}, ValueError),
    ("min_block_size", {"min_block_size": "big"}, ValueError),
    ("small_size", {"small_size": 256}, ValueError),
    ("small_segment_size", {"small_segment_size": 512 * KiB}, ValueError),
    ("large_segment_size", {"large_segment_size": 1 * MiB}, ValueError),
    ("large_segment_size", {"large_segment_size": 21 * MiB}, ValueError),
    ("min_large_alloc", {"min_large_alloc": 512 * KiB}, ValueError),
    ("round_large", {"round_large": 3 * MiB}, ValueError),
    ("round_up_divisions", {"round_up_divisions": 3}, ValueError),
    ("round_up_divisions", {"round_up_divisions": 128}, ValueError),
    ("round_up_divisions", {"round_up_divisions": "4"}, TypeError),
    ("round_up_divisions", {"round_up_divisions": True}, TypeError),
    ("max_split_size", {"max_split_size": 1 * MiB}, ValueError),
    ("max_split_size", {"max_split_size": 1.0}, TypeError),
    ("expandable_segments", {"expandable_segments": "yes"}, TypeError),
    ("expandable_segments", {"expandable_segments": 1}, TypeError),
    ("expandable_reserve", {"expandable_segments": True, "expandable_reserve": 2 * MiB}, ValueError),
    ("growth", {"growth": "bogus"}, ValueError),
    ("growth_step", {"growth": "fixed"}, ValueError),
    ("release_threshold", {"release_threshold": -5}, ValueError),
    ("garbage_collection_threshold", {"garbage_collection_threshold": 1.0}, ValueError),
    ("garbage_collection_threshold", {"garbage_collection_threshold": -0.1}, ValueError),
    ("garbage_collection_threshold", {"garbage_collection_threshold": "x"}, TypeError),
    ("reclaim_before_grow", {"reclaim_before_grow": "no"}, TypeError),
    ("reclaim_before_grow", {"reclaim_before_grow": 0}, TypeError),
    ("reclaim_threshold", {"reclaim_threshold": 1.0}, ValueError),
    ("reclaim_threshold", {"reclaim_threshold": -0.1}, ValueError),
    ("reclaim_threshold", {"reclaim_threshold": "x"}, TypeError),
]


@pytest.mark.parametrize(("field", "kwargs", "exc"), BAD_FIELDS, ids=[f"{f}-{i}" for i, (f, _, _) in enumerate(BAD_FIELDS)])
def test_bad_field_is_named(field: str, kwargs: Dict[str, Any], exc: Type[Exception]) -> None:
    with pytest.raises(exc, match=f"PoolConfig.{field}"):
        PoolConfig(**kwargs)


def test_core_validate_names_the_field() -> None:
    c = _core.Config()
    c.round_large = 3 * MiB
    with pytest.raises(ValueError, match="round_large"):
        c.validate()


def test_replace_validates() -> None:
    c = PoolConfig(max_pool_size="8GiB")
    d = c.replace(round_up_divisions=8)
    assert d.round_up_divisions == 8 and d.max_pool_size == 8 * GiB
    assert c.round_up_divisions == 0  # frozen original untouched
    with pytest.raises(ValueError, match="round_up_divisions"):
        c.replace(round_up_divisions=6)


def test_initial_pool_size_above_max_pool_size_is_refused_when_a_pool_is_made() -> None:
    # Only a pool being made needs initial_pool_size <= max_pool_size (Config::validate_new):
    # a live pool may lower max_pool_size below it (tests/core/test_live_settings.py).
    cfg = PoolConfig(max_pool_size="1GiB", initial_pool_size="2GiB")
    with pytest.raises(ValueError, match="PoolConfig.initial_pool_size: must be <= max_pool_size"):
        cfg.to_core().validate_new()
    with pytest.raises(ValueError, match="PoolConfig.initial_pool_size"):
        pypool.Pool("host", capacity="4GiB", config=cfg)
    with pytest.raises(ValueError, match="PoolConfig.initial_pool_size"):
        pypool.Pool("host", capacity="4GiB", max_pool_size="1GiB", initial_pool_size="2GiB")


def test_frozen() -> None:
    c = PoolConfig()
    with pytest.raises(AttributeError):
        c.max_pool_size = 5  # type: ignore[misc]


# ---------------------------------------------------------------------------- PYPOOL_CONF


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYPOOL_CONF", "max_pool_size:40GiB,round_up_divisions:4")
    c = PoolConfig.from_env()
    assert c.max_pool_size == 40 * GiB
    assert c.round_up_divisions == 4
    assert c == PoolConfig(max_pool_size=40 * GiB, round_up_divisions=4)


def test_from_env_unset_or_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYPOOL_CONF", raising=False)
    assert PoolConfig.from_env() == PoolConfig()
    monkeypatch.setenv("PYPOOL_CONF", "")
    assert PoolConfig.from_env() == PoolConfig()


def test_from_env_other_variable_and_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_CONF", "expandable_segments:true")
    base = PoolConfig(max_pool_size="1GiB")
    c = PoolConfig.from_env("MY_CONF", base=base)
    assert c.expandable_segments is True and c.max_pool_size == GiB


def test_from_string_all_kinds_of_values() -> None:
    c = PoolConfig.from_string(
        " max_pool_size : 2 GiB , expandable_segments:on, garbage_collection_threshold:0.6,"
        "growth:fixed,growth_step:64MiB,memory_fraction:0.5,max_split_size:none,,"
    )
    assert c.max_pool_size == 2 * GiB
    assert c.expandable_segments is True
    assert c.garbage_collection_threshold == 0.6
    assert c.growth == "fixed" and c.growth_step == 64 * MiB
    assert c.memory_fraction == 0.5
    assert c.max_split_size is None
    assert PoolConfig.from_string("reclaim_before_grow:off").reclaim_before_grow is False


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("max_pool_size:40GiB,bogus_key:1", "bogus_key"),
        ("max_pool_sizes:40GiB", "max_pool_sizes"),
        ("max_pool_size:lots", "max_pool_size"),
        ("round_up_divisions:four", "round_up_divisions"),
        ("round_up_divisions:3", "round_up_divisions"),
        ("expandable_segments:maybe", "expandable_segments"),
        ("reclaim_before_grow:sometimes", "reclaim_before_grow"),
        ("garbage_collection_threshold:high", "garbage_collection_threshold"),
        ("max_pool_size", "max_pool_size"),  # no value
        ("max_pool_size:", "max_pool_size"),
    ],
)
def test_from_string_errors_name_the_key(text: str, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        PoolConfig.from_string(text)


def test_from_string_rejects_non_str() -> None:
    with pytest.raises(TypeError, match="from_string"):
        PoolConfig.from_string(42)  # type: ignore[arg-type]


def test_from_env_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYPOOL_CONF", "max_pool_size:40GiB,round_up_divisions:4,nonsense:1")
    with pytest.raises(ValueError, match="nonsense"):
        PoolConfig.from_env()


@pytest.mark.parametrize(
    "config",
    [
        PoolConfig(),
        PoolConfig(max_pool_size="40GiB", round_up_divisions=4),
        PoolConfig(max_pool_size="40GB", memory_fraction=0.75, expandable_segments=True),
        PoolConfig(max_split_size="64MiB", garbage_collection_threshold=0.8, release_threshold="1GiB"),
        PoolConfig(growth="fixed", growth_step="256MiB", initial_pool_size="1GiB"),
        PoolConfig(growth="double", min_block_size=1024, small_size="512KiB"),
        PoolConfig(expandable_segments=True, expandable_reserve="64GiB"),
        PoolConfig(reclaim_before_grow=False, max_pool_size="3GB"),
    ],
)
def test_to_string_round_trip(config: PoolConfig) -> None:
    text = config.to_string()
    assert PoolConfig.from_string(text) == config
    assert PoolConfig.from_string(text).to_string() == text


def test_to_string_lists_only_changes() -> None:
    assert PoolConfig().to_string() == ""
    text = PoolConfig(max_pool_size="40GiB", round_up_divisions=4).to_string()
    assert sorted(text.split(",")) == sorted([f"max_pool_size:{40 * GiB}", "round_up_divisions:4"])


# ---------------------------------------------------------------------------- coerce / Pool


def test_coerce_forms() -> None:
    assert PoolConfig.coerce(None) == PoolConfig()
    assert PoolConfig.coerce("round_up_divisions:2").round_up_divisions == 2
    assert PoolConfig.coerce({"max_pool_size": "1GiB"}).max_pool_size == GiB
    assert PoolConfig.coerce(PoolConfig(), round_up_divisions=8).round_up_divisions == 8
    with pytest.raises(ValueError, match="nope"):
        PoolConfig.coerce({"nope": 1})
    with pytest.raises(TypeError, match="nope"):
        PoolConfig.coerce(None, nope=1)
    with pytest.raises(TypeError, match="config"):
        PoolConfig.coerce(3.5)  # type: ignore[arg-type]


def test_pool_takes_the_config() -> None:
    pool = pypool.Pool(config="max_pool_size:64MiB,round_up_divisions:4")
    assert pool.cap == 64 * MiB
    assert pool._pool.config.round_up_divisions == 4
    assert pypool.Pool().cap is None
    pool2 = pypool.Pool(max_pool_size="32MiB")
    assert pool2.cap == 32 * MiB


def test_pool_memory_fraction_sets_the_cap() -> None:
    pool = pypool.Pool(capacity="1GiB", memory_fraction=0.25)
    assert pool.cap == GiB // 4
    pool2 = pypool.Pool(capacity="1GiB", memory_fraction=0.5, max_pool_size="128MiB")
    assert pool2.cap == 128 * MiB  # the smaller cap wins


def test_readme_configuration_table_has_every_field() -> None:
    # The issue: expandable_reserve was missing from the table.
    import dataclasses
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = set(re.findall(r"^\| `(\w+)` \|", readme, re.M))
    missing = [f.name for f in dataclasses.fields(pypool.PoolConfig) if f.name not in rows]
    # growth_step is explained in the growth row.
    assert [m for m in missing if m != "growth_step"] == [], missing
