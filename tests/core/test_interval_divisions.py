"""round_up_interval_divisions: PyTorch's per-interval roundup_power2_divisions (Note
[Interval divisions] in csrc/include/pypool/size_policy.h).

The rounding is checked against `torch_round` below, written from c10's
CUDACachingAllocator::round_size / roundup_power2_next_division and
AcceleratorAllocatorConfig (torch 2.14.1), not from pypool's code, and against sizes
native torch 2.14.1 gave on the simulated device. Parsing follows c10's
parseRoundUpPower2Divisions (`torch_parse`).
"""

from __future__ import annotations

import random
import re
from typing import Callable, Dict, List, Union

import pytest

import pypool
from pool_backends import Backend
from pypool import PoolConfig, _core
from pypool import _torch_conf
from pypool.config import interval_divisions

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
K_MIN_BLOCK = 512


# ------------------------------------------------------------------ the reference


def torch_parse(spec: str) -> List[int]:
    """c10's reading of roundup_power2_divisions' value (tokens of "[k:v,...]" or N)."""
    divs = [0] * 16
    if not spec.startswith("["):
        return [int(spec)] * 16
    first, last = True, 0
    for item in filter(None, spec[1:-1].split(",")):
        key, value = item.split(":")
        v = int(value)
        if key == ">":
            for i in range(last + 1, 16):
                divs[i] = v
        else:
            index = min(int(key).bit_length() - 1, 15)
            if first:
                for i in range(index):
                    divs[i] = v
                first = False
            divs[index] = v
            last = index
    return divs


def torch_round(size: int, divs: List[int]) -> int:
    """c10's round_size with kMinBlockSize = 512."""
    if size < K_MIN_BLOCK:
        return K_MIN_BLOCK
    index = min(max(size.bit_length() - 1 - 20, 0), 15)
    d = divs[index]
    if d > 1 and size > K_MIN_BLOCK * d:
        if size & (size - 1) == 0:
            return size
        floor = 1 << (size.bit_length() - 1)
        step = floor >> (d.bit_length() - 1)
        if step == 0:
            return floor << 1
        low = size & ~(step - 1)
        return size if low == size else low + step
    return K_MIN_BLOCK * ((size + K_MIN_BLOCK - 1) // K_MIN_BLOCK)


def random_spec(rng: random.Random) -> str:
    keys = sorted(rng.sample([1 << i for i in range(17)], rng.randint(1, 6)))
    pick = lambda: rng.choice([0, 1, 2, 4, 8, 16, 32, 64, 1024, 32768])  # noqa: E731
    items = [f"{k}:{pick()}" for k in keys]
    if rng.random() < 0.7:
        items.append(f">:{pick()}")
    return "[" + ",".join(items) + "]"


def sizes(rng: random.Random) -> List[int]:
    out = [1, 511, 512, 513, 600 * KiB + 1, MiB - 1, MiB, MiB + 1, 3 * MiB + 1, 300 * MiB + 1,
           400 * MiB, 1100 * MiB, 33 * GiB + 5, 64 * GiB + 1, 100 * GiB + 12345]
    for k in range(9, 40):
        base = 1 << k
        out += [base - 1, base, base + 1, base + rng.randrange(base)]
    out += [rng.randrange(1, 1 << rng.randint(10, 45)) for _ in range(300)]
    return out


SPECS = ["[64:8,128:2,256:2,512:2,1024:1,>:1]", "[>:4]", "[256:4,>:2]", "[1:16,>:0]", "[2:8]",
         "[65536:4]", "[256:4,]", "[1:4,>:4]", "[128:0,>:8]", "[8:2,2:32]"]


# ------------------------------------------------------------------ rounding


def test_torch_parse_reference_agrees_with_pypool_parse() -> None:
    rng = random.Random(5)
    for spec in SPECS + [random_spec(rng) for _ in range(300)]:
        assert interval_divisions(spec) == torch_parse(spec), spec


@pytest.mark.parametrize("spec", SPECS)
def test_rounding_matches_torch(spec: str) -> None:
    cfg = PoolConfig(round_up_interval_divisions=spec).to_core()
    divs = torch_parse(spec)
    for s in sizes(random.Random(spec)):
        assert _core.round_size(cfg, s) == torch_round(s, divs), (spec, s)


def test_rounding_matches_torch_random_specs() -> None:
    rng = random.Random(11)
    for _ in range(60):
        spec = random_spec(rng)
        cfg = PoolConfig(round_up_interval_divisions=spec).to_core()
        divs = torch_parse(spec)
        for s in sizes(rng)[::3]:
            assert _core.round_size(cfg, s) == torch_round(s, divs), (spec, s)


# Allocated bytes native torch 2.14.1 gave on the simulated device for these requests
# (torch.empty(n, dtype=uint8) after _set_allocator_settings("roundup_power2_divisions:" + spec)).
NATIVE_REQUESTS = (600 * KiB + 1, MiB + 1, 3 * MiB + 1, 300 * MiB + 1, 400 * MiB, 1100 * MiB)
NATIVE = {
    "[>:4]": [614912, 1049088, 3670016, 335544320, 469762048, 1342177280],
    "[256:4,>:2]": [655360, 1310720, 3670016, 335544320, 469762048, 1610612736],
    "[64:8,128:2,256:2,512:2,1024:1,>:1]": [655360, 1179648, 3407872, 402653184, 536870912, 1153433600],
    "[1:16,>:0]": [622592, 1114112, 3146240, 314573312, 419430400, 1153433600],
    "[2:8]": [655360, 1179648, 3407872, 314573312, 419430400, 1153433600],
    "[]": [614912, 1049088, 3146240, 314573312, 419430400, 1153433600],
}


@pytest.mark.parametrize("spec", sorted(NATIVE))
def test_rounding_matches_native_torch(spec: str) -> None:
    cfg = PoolConfig(round_up_interval_divisions=spec).to_core()
    assert [_core.round_size(cfg, n) for n in NATIVE_REQUESTS] == NATIVE[spec]


def test_torch_scalar_form_is_every_interval() -> None:
    # torch's "roundup_power2_divisions:4" (native: the "4" row matched "[256:4,>:2]"'s
    # first three and 4 divisions above): sizes below 1 MiB round too, unlike pypool's
    # own round_up_divisions, which starts above small_size.
    fields, lines = _torch_conf.translate("roundup_power2_divisions:4")
    assert lines == [] and fields == {"round_up_interval_divisions": "[1:4,>:4]"}
    cfg = PoolConfig(**fields).to_core()
    assert [_core.round_size(cfg, n) for n in NATIVE_REQUESTS] == [
        655360, 1310720, 3670016, 335544320, 469762048, 1342177280]
    assert _core.round_size(PoolConfig(round_up_divisions=4).to_core(), 600 * KiB + 1) == 614912


def test_scalar_field_keeps_its_meaning() -> None:
    # round_up_divisions = N is every interval at N, above small_size only.
    for n in (2, 4, 16, 64):
        scalar = PoolConfig(round_up_divisions=n, small_size=4 * MiB, small_segment_size=4 * MiB,
                            large_segment_size=20 * MiB).to_core()
        divs = [n] * 16
        for s in sizes(random.Random(n))[::2]:
            want = torch_round(s, divs) if s > 4 * MiB else K_MIN_BLOCK * -(-s // K_MIN_BLOCK)
            assert _core.round_size(scalar, s) == want, (n, s)


def test_other_min_block_size() -> None:
    # A step below min_block_size falls back to min_block_size, as torch's does at 512.
    cfg = PoolConfig(min_block_size=4096, round_up_interval_divisions="[1:1024,>:1024]").to_core()
    assert _core.round_size(cfg, 4 * MiB + 1) == 4 * MiB + 4096  # step 4 KiB
    assert _core.round_size(cfg, 2 * MiB + 1) == 2 * MiB + 4096  # step 2 KiB < 4 KiB
    assert _core.round_size(cfg, 5000) == 8192


# ------------------------------------------------------------------ forms and round trips


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("[64:8,128:2,256:2,512:2,1024:1,>:1]", "[64:8,128:2,256:2,512:2,>:0]"),
        ({64: 8, 128: 2, 256: 2, 512: 2, 1024: 1, ">": 1}, "[64:8,128:2,256:2,512:2,>:0]"),
        ("[>:4]", "[1:0,>:4]"),
        ("[ 256 : 4 , > : 2 ]", "[256:4,>:2]"),
        ("[1:4,>:4]", "[1:4,>:4]"),
        ({"2": 8}, "[2:8,>:0]"),
        ("[1:16,>:0]", "[1:16,>:0]"),
        ("[65536:4]", "[1:4,>:4]"),
        ("[]", None), ("[1:1,>:0]", None), ({}, None), (None, None), ("off", None),
    ],
)
def test_forms_and_canonical_text(given: object, shown: object) -> None:
    c = PoolConfig(round_up_interval_divisions=given)  # type: ignore[arg-type]
    assert c.round_up_interval_divisions == shown
    if shown is not None:
        assert off(interval_divisions(shown)) == off(interval_divisions(given))  # type: ignore[arg-type]
        assert interval_divisions(str(shown)) == torch_parse(str(shown))


def off(divisions: List[int]) -> List[int]:
    """0 and 1 both mean off (kept as 0)."""
    return [0 if d <= 1 else d for d in divisions]


def test_canonical_text_reads_back_the_same() -> None:
    rng = random.Random(3)
    for _ in range(300):
        spec = random_spec(rng)
        text = PoolConfig(round_up_interval_divisions=spec).round_up_interval_divisions
        if text is None:
            assert off(torch_parse(spec)) == [0] * 16
        else:
            assert off(torch_parse(text)) == off(torch_parse(spec)), (spec, text)


def test_text_in_every_place_settings_are_shown() -> None:
    spec = "[64:8,128:2,256:2,512:2,1024:1,>:1]"
    c = PoolConfig(round_up_interval_divisions=spec, max_pool_size="1GiB")
    shown = "[64:8,128:2,256:2,512:2,>:0]"
    assert c.to_string() == f"max_pool_size:{GiB},round_up_interval_divisions:{shown}"
    assert PoolConfig.from_string(c.to_string()) == c
    assert f"round_up_interval_divisions='{shown}'" in repr(c)
    assert f"round_up_interval_divisions:{shown}," in repr(c.to_core())
    assert "round_up_interval_divisions:[]," in repr(PoolConfig().to_core())
    assert PoolConfig.from_core(c.to_core()) == c


def test_pypool_conf_reads_the_brackets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYPOOL_CONF", "max_pool_size:2GiB,round_up_interval_divisions:[256:4,>:2],release_threshold:1MiB")
    c = PoolConfig.from_env()
    assert c == PoolConfig(max_pool_size=2 * GiB, round_up_interval_divisions={256: 4, ">": 2}, release_threshold=MiB)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("[3:4]", r"intervals have to be power of 2.*'3'"),
        ("[0:4]", r"intervals have to be power of 2"),
        ("[256:3]", r"divisions has to be power of 2 or 0 .*got 3"),
        ("[256:65536]", r"must be <= 32768"),
        ("[256:4", r"expected \[size_mb:divisions"),
        ("256:4]", r"expected \[size_mb:divisions"),
        ("[[256:4]]", r"expected \[size_mb:divisions"),
        ("[256-4]", r"expected size_mb:divisions, got '256-4'"),
        ("[256:4,,512:2]", r"expected size_mb:divisions, got ''"),
        ("[x:4]", r"interval key: expected a whole number, got 'x'"),
        ("[256:-4]", r"expected a whole number, got '-4'"),
        ("[256:4.5]", r"expected a whole number"),
        ("4", r"expected \[size_mb:divisions"),
        ({256: 3}, r"divisions has to be power of 2"),
        ({256: True}, r"expected an int, got bool"),
    ],
)
def test_bad_values_are_named(value: object, says: str) -> None:
    with pytest.raises((ValueError, TypeError), match=r"PoolConfig\.round_up_interval_divisions: .*" + says):
        PoolConfig(round_up_interval_divisions=value)  # type: ignore[arg-type]


def test_bad_type() -> None:
    with pytest.raises(TypeError, match=r"PoolConfig\.round_up_interval_divisions: expected torch's"):
        PoolConfig(round_up_interval_divisions=4)  # type: ignore[arg-type]


def test_bad_pypool_conf_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYPOOL_CONF", "round_up_interval_divisions:[256:3]")
    with pytest.raises(ValueError, match=r"^PYPOOL_CONF='round_up_interval_divisions:\[256:3\]': "
                                         r"PoolConfig\.round_up_interval_divisions: divisions"):
        PoolConfig.from_env()


def test_one_rounding_setting() -> None:
    # Note [One rounding setting].
    with pytest.raises(ValueError, match=r"round_up_interval_divisions: set either it or round_up_divisions \(4\), not both"):
        PoolConfig(round_up_divisions=4, round_up_interval_divisions="[1:2,>:2]")
    c = PoolConfig(round_up_divisions=4)
    d = c.replace(round_up_interval_divisions="[1:2,>:2]")
    assert (d.round_up_divisions, d.round_up_interval_divisions) == (0, "[1:2,>:2]")
    e = d.replace(round_up_divisions=8)
    assert (e.round_up_divisions, e.round_up_interval_divisions) == (8, None)
    assert PoolConfig.from_string("round_up_divisions:2", base=d) == PoolConfig(round_up_divisions=2)
    assert PoolConfig.coerce(c, round_up_interval_divisions={1: 2, ">": 2}) == d
    # Naming both is taken as written, and refused.
    with pytest.raises(ValueError, match="not both"):
        c.replace(round_up_divisions=4, round_up_interval_divisions="[1:2,>:2]")
    core = PoolConfig().to_core()
    core.round_up_divisions, core.round_up_interval_divisions = 4, 1
    with pytest.raises(ValueError, match="not both"):
        core.validate()


# ------------------------------------------------------------------ torch's key


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("roundup_power2_divisions:3", r"For roundups, the divisions has to be power of 2, got '3'"),
        ("roundup_power2_divisions:0", r"For roundups, the divisions has to be power of 2, got '0'"),
        ("roundup_power2_divisions:65536", r"must be <= 32768"),
        ("roundup_power2_divisions:[256:3]", r"divisions has to be power of 2 or 0"),
        ("roundup_power2_divisions:[3:4]", r"intervals have to be power of 2"),
        ("roundup_power2_divisions:[256:4", r"expected \[size_mb:divisions"),
        ("roundup_power2_divisions:x", r"expects an integer or \[size_mb:divisions"),
    ],
)
def test_torch_key_errors(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=r"^PYTORCH_CUDA_ALLOC_CONF: roundup_power2_divisions.*" + says):
        _torch_conf.translate(text)


def test_torch_key_resets_the_other_rounding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "roundup_power2_divisions:[64:8,>:1]")
    c = _torch_conf.from_env(PoolConfig(round_up_divisions=4))
    assert (c.round_up_divisions, c.round_up_interval_divisions) == (0, "[64:8,>:0]")
    assert _torch_conf.with_resets({})["round_up_interval_divisions"] is None
    assert "round_up_interval_divisions" in _torch_conf.RESET_EACH_CALL


def test_snapshot_settings_show_torch_form() -> None:
    from pypool.snapshot import _settings
    # torch's snapshot shows {interval start in MiB: divisions} (review finding: a string
    # there broke code that indexes torch's dict).
    s = _settings(PoolConfig(round_up_interval_divisions="[256:4,>:2]"))
    expect = {str(1 << i): (4 if i <= 8 else 2) for i in range(16)}
    assert s["roundup_power2_divisions"] == expect and s["round_up_interval_divisions"] == "[256:4,>:2]"
    # The scalar field rounds only above small_size (1 MiB by default): every interval.
    assert _settings(PoolConfig(round_up_divisions=4))["roundup_power2_divisions"] == {str(1 << i): 4 for i in range(16)}
    assert set(_settings(PoolConfig())["roundup_power2_divisions"].values()) == {0}



# ------------------------------------------------------------------ per_process_memory_fraction


def test_fraction_zero_is_no_memory() -> None:
    fields, lines = _torch_conf.translate("per_process_memory_fraction:0.0")
    assert lines == [] and fields == {"memory_fraction": _torch_conf.FRACTION_ZERO}
    assert 0.0 < _torch_conf.FRACTION_ZERO < 1e-300
    assert PoolConfig(**fields).memory_fraction == _torch_conf.FRACTION_ZERO


@pytest.mark.parametrize("value", ["-0.1", "1.1", "nan"])
def test_fraction_out_of_range_says_torchs_words(value: str) -> None:
    with pytest.raises(ValueError, match=re.escape("per_process_memory_fraction is invalid, set it in [0.0, 1.0]")):
        _torch_conf.translate(f"per_process_memory_fraction:{value}")


def test_fraction_zero_pool_refuses_every_request(backend: Backend) -> None:
    pool = backend(memory_fraction=_torch_conf.FRACTION_ZERO)
    with pytest.raises(pypool.OutOfMemoryError):
        pool.malloc(512)
    assert pool.memory_stats()["reserved_bytes.all.current"] == 0


# ------------------------------------------------------------------ live


def test_live_update_applies_to_the_next_request(backend: Backend, pool_ok: Callable[[pypool.Pool], None]) -> None:
    pool = backend()
    a = pool.malloc(400 * MiB)
    assert pool.size_of(a) == 400 * MiB
    pool.update_config(round_up_interval_divisions="[64:8,128:2,256:2,512:2,1024:1,>:1]")
    b = pool.malloc(400 * MiB)
    assert pool.size_of(b) == 512 * MiB  # torch's test_allocator_settings: 2 divisions
    c = pool.malloc(80 * MiB + 1)
    assert pool.size_of(c) == 88 * MiB  # 8 divisions of [64, 128) MiB
    pool.update_config(round_up_divisions=4)  # turns the intervals off (one rounding setting)
    assert pool.config.round_up_interval_divisions is None
    d = pool.malloc(400 * MiB)
    assert pool.size_of(d) == 448 * MiB
    for p in (a, b, c, d):
        pool.free(p)
    pool_ok(pool)


@pytest.mark.parametrize("bad", ["[256:3]", "[3:4]", "[256:4", {256: 1 << 16}])
def test_refused_live_update_changes_nothing(backend: Backend, bad: Union[str, Dict[int, int]]) -> None:
    pool = backend(round_up_interval_divisions="[256:2,>:2]")
    before = pool._pool.config
    with pytest.raises(ValueError, match="round_up_interval_divisions"):
        pool.update_config(round_up_interval_divisions=bad, reclaim_before_grow=False)
    assert pool._pool.config == before
    p = pool.malloc(400 * MiB)
    assert pool.size_of(p) == 512 * MiB
    pool.free(p)


def test_split_rest_keeps_the_last_request() -> None:
    # Note [Last requested size]: the rest of a split free block keeps the request the
    # whole block last served, as torch's does (review finding: it showed 0).
    import pypool

    pool = pypool.Pool(backend="host", capacity="1GiB")
    a = pool.malloc(8000)
    c = pool.malloc(5000)
    pool.free(a)
    b = pool.malloc(600)
    blocks = [blk for s in pool.segments() for blk in s["blocks"]]
    rest = [blk for blk in blocks if blk["state"] == "inactive" and blk["size"] == 7168]
    assert rest and rest[0]["requested_size"] == 0 and rest[0]["last_requested_size"] == 7168, blocks
    pool.free(b)
    pool.free(c)
    pool.check_invariants()
