"""One table of config fields (Note [Config X-macro], Note [PoolConfig from the table]).

``_core.CONFIG_FIELDS`` is expanded from the C++ declaration; every other list of the
fields (PoolConfig, ``_core.Config``'s attributes, the type stub, the snapshot's
``allocator_settings``, the README's table) must agree with it, and the conversions
driven by it must round-trip every field.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import re
from typing import Any, Dict, Iterator, List

import pytest

import pypool
from pypool import PoolConfig, _core
from pypool.snapshot import snapshot

ROOT = pathlib.Path(__file__).resolve().parents[2]
KINDS = {"size", "optional_size", "int", "fraction", "optional_fraction", "bool", "growth", "interval_divisions"}
# allocator_settings keys that are not config fields (torch's names and pypool's own).
SETTINGS_EXTRA = {"allocator", "PYTORCH_CUDA_ALLOC_CONF", "PYPOOL_CONF", "roundup_power2_divisions"}

# Every field away from its default, valid together.
NON_DEFAULT: Dict[str, Any] = {
    "max_pool_size": 8 << 30,
    "memory_fraction": 0.5,
    "min_block_size": 1024,
    "small_size": 2 << 20,
    "small_segment_size": 4 << 20,
    "large_segment_size": 40 << 20,
    "min_large_alloc": 20 << 20,
    "round_large": 4 << 20,
    "round_up_divisions": 4,
    "max_split_size": 64 << 20,
    "expandable_segments": True,
    "expandable_reserve": 1 << 36,
    "initial_pool_size": 1 << 20,
    "growth": "double",
    "growth_step": 64 << 20,
    "release_threshold": 1 << 30,
    "garbage_collection_threshold": 0.75,
    "reclaim_before_grow": False,
    "reclaim_threshold": 0.5,
}
# Fields that cannot leave their default together with one in NON_DEFAULT (Note [One
# rounding setting]): NON_DEFAULT_2 is NON_DEFAULT with them set instead.
EXCLUSIVE: Dict[str, Any] = {"round_up_interval_divisions": "[64:8,128:2,>:0]"}
NON_DEFAULT_2: Dict[str, Any] = {**NON_DEFAULT, "round_up_divisions": 0, **EXCLUSIVE}


def table_names() -> List[str]:
    return [row[0] for row in _core.CONFIG_FIELDS]


def test_table_rows() -> None:
    names = table_names()
    assert len(names) == len(set(names)) and names
    for name, kind, _default, doc in _core.CONFIG_FIELDS:
        assert kind in KINDS, (name, kind)
        assert isinstance(doc, str) and doc, name


def test_every_list_of_the_fields_agrees_with_the_table() -> None:
    names = table_names()
    assert [f.name for f in dataclasses.fields(PoolConfig)] == names
    core = _core.Config()
    attrs = [a for a in dir(core) if not a.startswith("_") and not callable(getattr(core, a))]
    assert sorted(attrs) == sorted(names)
    stub = ast.parse((ROOT / "pypool" / "_core.pyi").read_text())
    (cls,) = [n for n in stub.body if isinstance(n, ast.ClassDef) and n.name == "Config"]
    assert [n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)
            and isinstance(n.target, ast.Name)] == names
    settings = snapshot(pool=pypool.Pool(capacity=1 << 30))["allocator_settings"]
    assert set(settings) - SETTINGS_EXTRA == set(names)
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Configuration"):readme.index("### Expandable segments")]
    rows = re.findall(r"^\| `(\w+)` \|", section, re.M)
    assert set(rows) <= set(names) and rows == [n for n in names if n in rows]
    assert [n for n in names if f"`{n}`" not in section] == []  # growth_step: in growth's row
    assert NON_DEFAULT.keys() | EXCLUSIVE.keys() == set(names)


def test_defaults_agree() -> None:
    assert PoolConfig().to_core() == _core.Config()
    assert PoolConfig.from_core(_core.Config()) == PoolConfig()
    core = _core.Config()
    for name, _kind, default, _doc in _core.CONFIG_FIELDS:
        assert getattr(core, name) == default, name


@pytest.mark.parametrize("values", [NON_DEFAULT, NON_DEFAULT_2])
def test_every_field_round_trips(values: Dict[str, Any]) -> None:
    c = PoolConfig(**values)
    core = c.to_core()
    for name, kind, default, _doc in _core.CONFIG_FIELDS:
        if name in values and (values is NON_DEFAULT or name != "round_up_divisions"):
            assert getattr(core, name) != default, name  # NON_DEFAULT really changes each one
    assert core != _core.Config()
    assert PoolConfig.from_core(core) == c
    # Through PYPOOL_CONF text: the parser handles every kind in the table.
    assert PoolConfig.from_string(c.to_string()) == c
    assert set(re.findall(r"(?:^|,)([a-z_]+):", c.to_string())) == {k for k in values if getattr(c, k) != getattr(PoolConfig(), k)}


def test_native_text_form() -> None:
    # The registry's mismatch message; expandable_reserve was missing before the table.
    assert repr(_core.Config()) == (
        "max_pool_size:unlimited,memory_fraction:0,min_block_size:512,small_size:1048576,"
        "small_segment_size:2097152,large_segment_size:20971520,min_large_alloc:10485760,"
        "round_large:2097152,round_up_divisions:0,round_up_interval_divisions:[],max_split_size:unlimited,"
        "expandable_segments:false,expandable_reserve:1099511627776,initial_pool_size:0,"
        "growth:0,growth_step:0,release_threshold:0,garbage_collection_threshold:0,"
        "reclaim_before_grow:true,reclaim_threshold:0.8")
    c = PoolConfig(**NON_DEFAULT).to_core()
    assert repr(c).split(",")[0] == "max_pool_size:8589934592"
    assert "growth:2," in repr(c) and "memory_fraction:0.5," in repr(c)


def test_snapshot_settings_have_every_field() -> None:
    # memory_fraction and reclaim_before_grow were missing from allocator_settings.
    p = pypool.Pool(capacity=1 << 30, memory_fraction=0.5, reclaim_before_grow=False)
    s = snapshot(pool=p)["allocator_settings"]
    assert s["memory_fraction"] == 0.5 and s["reclaim_before_grow"] is False
    assert s["growth"] == "segment" and s["max_pool_size"] is None
    assert s["PYPOOL_CONF"] == "memory_fraction:0.5,reclaim_before_grow:false"
    assert snapshot(pool=pypool.Pool(capacity=1 << 30))["allocator_settings"]["memory_fraction"] is None


@pytest.fixture
def registry() -> Iterator[None]:
    _core.registry_reset()
    yield
    for d in _core.registry_devices():
        core = _core.registry_pool(d)
        for b in core.live_blocks():
            core.free(b["address"])
    _core.registry_reset()


@pytest.mark.parametrize("name", sorted(NON_DEFAULT_2))
def test_registry_refuses_any_changed_field(registry: None, name: str) -> None:
    # The registry compares every field (Config::operator==). It compared to_string(),
    # which lacked expandable_reserve, so a different reserve was silently ignored.
    base = PoolConfig()
    _core.registry_configure("host", base.to_core(), 1 << 30)
    p = _core.registry_pool(0).malloc(4096, 0)
    try:
        _core.registry_configure("host", base.to_core(), 1 << 30)  # the same: a no-op
        changed = base.to_core()
        setattr(changed, name, getattr(PoolConfig(**NON_DEFAULT_2 if name in EXCLUSIVE else NON_DEFAULT).to_core(), name))
        with pytest.raises(RuntimeError, match=r"already in use with a different configuration "
                                               r"\(backend 'host', max_pool_size:unlimited,"):
            _core.registry_configure("host", changed, 1 << 30)
    finally:
        _core.registry_pool(0).free(p)
