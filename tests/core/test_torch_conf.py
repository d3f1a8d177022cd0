"""PyTorch's allocator settings translated to pypool's (pypool._torch_conf), and the
out-of-memory message's wording, on CPU. The same paths against the real torch are in
tests/gpu/test_torch_parity.py."""

from __future__ import annotations

import warnings

import pytest

import pypool
from pypool import PoolConfig, _torch_conf
from pypool._torch_conf import TorchSettingWarning, translate

MiB = 1 << 20


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("max_split_size_mb:64", {"max_split_size": 64 * MiB}),
        ("roundup_power2_divisions:4", {"round_up_interval_divisions": "[1:4,>:4]"}),
        ("roundup_power2_divisions:[256:4,512:4,>:4]", {"round_up_interval_divisions": "[1:4,>:4]"}),
        ("roundup_power2_divisions:[256:4,512:4]", {"round_up_interval_divisions": "[512:4,>:0]"}),
        ("garbage_collection_threshold:0.6", {"garbage_collection_threshold": 0.6}),
        ("expandable_segments:True", {"expandable_segments": True}),
        ("expandable_segments:False", {"expandable_segments": False}),
        ("per_process_memory_fraction:0.5", {"memory_fraction": 0.5}),
        (" max_split_size_mb : 64 , expandable_segments:True ", {"max_split_size": 64 * MiB, "expandable_segments": True}),
        ("backend:native", {}),
        ("pinned_use_cuda_host_register:True,pinned_num_register_threads:8", {}),  # torch's host allocator
        ("", {}),
    ],
)
def test_keys_with_an_equivalent_map_silently(text: str, fields: dict) -> None:
    got, lines = translate(text)
    assert got == fields and lines == []
    PoolConfig().replace(**got)  # valid PoolConfig fields


def test_bucketed_divisions_are_kept_per_interval() -> None:
    # pypool took the finest of them for every size, with a warning, before
    # round_up_interval_divisions (issue 16).
    got, lines = translate("roundup_power2_divisions:[256:1,512:2,1024:4,>:8],max_split_size_mb:40")
    assert got == {"round_up_interval_divisions": "[256:0,512:2,1024:4,>:8]", "max_split_size": 40 * MiB}
    assert lines == []


@pytest.mark.parametrize(
    "key",
    ["release_lock_on_cudamalloc:True", "max_non_split_rounding_mb:512", "graph_capture_record_stream_reuse:True",
     "backend:cudaMallocAsync", "no_such_key:1", "throw_on_cudamalloc_oom:True"],
)
def test_keys_without_an_equivalent_are_named(key: str) -> None:
    got, lines = translate(key)
    assert got == {} and len(lines) == 1 and key.split(":")[0] in lines[0]
    assert key.startswith("no_such_key") or "pypool knows" not in lines[0]  # a torch key is known


def test_each_call_resets_what_torch_resets() -> None:
    # Note [Settings reset by each call]
    assert _torch_conf.with_resets({"expandable_segments": True}) == {
        "expandable_segments": True, "max_split_size": None, "round_up_divisions": 0,
        "round_up_interval_divisions": None, "garbage_collection_threshold": 0.0}
    assert _torch_conf.with_resets({"max_split_size": 64 * MiB})["max_split_size"] == 64 * MiB


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("max_split_size_mb:big", "max_split_size_mb"),
        ("roundup_power2_divisions:x", "roundup_power2_divisions"),
        ("roundup_power2_divisions:[256:1,512", "roundup_power2_divisions"),
        ("roundup_power2_divisions:[256-1]", "roundup_power2_divisions"),
        ("expandable_segments:maybe", "expandable_segments"),
        ("garbage_collection_threshold:high", "garbage_collection_threshold"),
        ("per_process_memory_fraction:1.5", "per_process_memory_fraction"),
    ],
)
def test_bad_values_name_the_source_and_key(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=f"PYTORCH_CUDA_ALLOC_CONF: {match}"):
        translate(text)


def test_pypool_conf_wins_over_the_torch_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Note [Which settings win]: PYTORCH_CUDA_ALLOC_CONF < PYPOOL_CONF.
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:64,garbage_collection_threshold:0.6,release_lock_on_cudamalloc:True")
    monkeypatch.setenv("PYPOOL_CONF", "garbage_collection_threshold:0.8")
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    with pytest.warns(TorchSettingWarning, match="release_lock_on_cudamalloc"):
        base = _torch_conf.from_env()
    cfg = PoolConfig.from_env(base=base)
    assert cfg.max_split_size == 64 * MiB and cfg.garbage_collection_threshold == 0.8


def test_pytorch_alloc_conf_is_read_first(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch 2.9+ reads PYTORCH_ALLOC_CONF before PYTORCH_CUDA_ALLOC_CONF.
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:64")
    monkeypatch.setenv("PYTORCH_ALLOC_CONF", "max_split_size_mb:128")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _torch_conf.from_env().max_split_size == 128 * MiB


def test_max_split_size_mb_20_torchs_minimum_is_accepted_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch accepts max_split_size_mb:20 (>= its 20 MiB large buffer); install() raised
    # "PoolConfig.max_split_size: must be larger than large_segment_size".
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:20")
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    with pytest.warns(TorchSettingWarning, match="max_split_size_mb:20 .*using 22 MiB"):
        cfg = _torch_conf.from_env()
    assert cfg.max_split_size == 22 * MiB
    with pytest.raises(ValueError, match=r"PYTORCH_CUDA_ALLOC_CONF: max_split_size_mb must be >= 20 \(PyTorch's minimum\), got '19'"):
        translate("max_split_size_mb:19")


def test_values_pool_config_refuses_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # roundup_power2_divisions:3 said only "PoolConfig.round_up_divisions: ...", a field the
    # user never wrote (the torch key's own reading refuses that one now, naming the key).
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "garbage_collection_threshold:1.5")
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    with pytest.raises(ValueError, match=r"^PYTORCH_CUDA_ALLOC_CONF='garbage_collection_threshold:1.5': "
                                         r"PoolConfig.garbage_collection_threshold"):
        _torch_conf.from_env()
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "roundup_power2_divisions:3")
    with pytest.raises(ValueError, match=r"^PYTORCH_CUDA_ALLOC_CONF: roundup_power2_divisions: For roundups"):
        _torch_conf.from_env()


# ---------------------------------------------------------------------------- OOM text


def test_expandable_oom_names_the_reserve_and_not_expandable_segments() -> None:
    # Issue 14: the message reported the device's free bytes as the limit and advised
    # turning on expandable segments, which were on.
    pool = pypool.Pool(backend="host", capacity="1GiB", expandable_segments=True, expandable_reserve="64MiB")
    live = pool.malloc(48 * MiB)
    with pytest.raises(pypool.OutOfMemoryError) as info:
        pool.malloc(32 * MiB)
    msg = str(info.value)
    assert msg.startswith("pypool (host backend): out of memory. Tried to allocate 32.00 MiB. Device 0 has a total "
                          "capacity of 1024.00 MiB of which "), msg
    assert "has mapped 48.00 MiB of the 64.00 MiB of address space it reserved (expandable_reserve)" in msg
    assert "raise expandable_reserve" in msg
    assert "expandable_segments:true" not in msg
    pool.free(live)
    pool.check_invariants()


def test_oom_advice_without_cap_does_not_suggest_raising_it() -> None:
    pool = pypool.Pool(backend="host", capacity="64MiB")
    with pytest.raises(pypool.OutOfMemoryError) as info:
        pool.malloc(100 * MiB)
    msg = str(info.value)
    assert "max_pool_size" not in msg and "allowed;" not in msg, msg
    assert "Limit: the request is larger than the whole device" in msg


def test_request_beyond_any_device_is_out_of_memory() -> None:
    pool = pypool.Pool(backend="host", capacity="64MiB")
    for size in ((1 << 50) + 1, 1 << 64):
        with pytest.raises(pypool.OutOfMemoryError, match="1 PiB"):
            pool.malloc(size)
    assert pool.memory_stats()["num_ooms"] == 0  # refused before the pool was asked
    pool.check_invariants()
