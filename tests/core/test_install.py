"""pypool.install() against fakes of torch's entry points (runs on CPU).

The fake mirrors the torch surface install() uses (torch 2.8 - 2.14):
``torch.version.cuda``, ``torch.cuda.is_initialized / device_count / _lazy_call /
get_device_properties``, ``torch.cuda.memory.CUDAPluggableAllocator(path, alloc, free)``
(which, like torch, resolves the two symbols with ctypes) whose ``.allocator()`` has the
``set_*_fn`` hook setters, and ``change_current_allocator``. The registry calls are real:
install() configures the process-wide registry for "cuda" (no pool is made, so no GPU is
needed), and the fixture resets it.
"""

from __future__ import annotations

import ctypes
import json
import logging
import types
from types import SimpleNamespace
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

import pypool
from pypool import PoolConfig, _core, _torch, _torch_conf, memory
from pypool.__main__ import main
from pypool._torch import HOOKS, PATCHED_NAMES, InstallError

MiB = 1 << 20
GiB = 1 << 30

TORCH_RAISES = "CUDAPluggableAllocator does not yet support getDeviceStats"


class FakeRawAllocator:
    """torch._C._CUDAPluggableAllocator: records what each hook setter received."""

    def __init__(self, missing: Sequence[str]) -> None:
        self.calls: List[Tuple[str, int]] = []
        for setter, _ in HOOKS:
            if setter not in missing:
                setattr(self, setter, self._setter(setter))

    def _setter(self, name: str) -> Callable[[int], None]:
        def set_fn(address: int) -> None:
            # torch's binding takes a uint64_t: a non-int would be a TypeError there.
            assert type(address) is int and address > 0, (name, address)
            self.calls.append((name, address))

        return set_fn


class FakeTorch:
    """A torch module tree with just what install() touches, and knobs for failures."""

    def __init__(
        self,
        *,
        cuda: Optional[str] = "13.0",
        hip: Optional[str] = None,
        initialized: bool = False,
        device_count: int = 1,
        missing_hooks: Sequence[str] = (),
        swap_error: Optional[str] = None,
        totals: Sequence[int] = (80 * GiB,),
        lazy_call: bool = True,
    ) -> None:
        self.initialized = initialized
        self.n_devices = device_count
        self.swap_error = swap_error
        self.totals = list(totals)
        self.queued: List[Callable[[], None]] = []
        self.created: List[Any] = []
        self.current: Any = None
        self.swaps = 0
        fake = self

        class CUDAPluggableAllocator:
            def __init__(self, path: str, alloc_fn_name: str, free_fn_name: str) -> None:
                # As torch does: the library must export both names.
                lib = ctypes.CDLL(path)
                self.args = (path, alloc_fn_name, free_fn_name)
                self.alloc_address = ctypes.cast(getattr(lib, alloc_fn_name), ctypes.c_void_p).value
                self.free_address = ctypes.cast(getattr(lib, free_fn_name), ctypes.c_void_p).value
                self._raw = FakeRawAllocator(missing_hooks)
                fake.created.append(self)

            def allocator(self) -> FakeRawAllocator:
                return self._raw

        def change_current_allocator(allocator: Any) -> None:
            fake.swaps += 1
            if fake.swap_error is not None:
                raise RuntimeError(fake.swap_error)
            fake.current = allocator

        def raising(name: str) -> Callable[..., Any]:
            def torch_stat(*args: Any, **kwargs: Any) -> Any:
                raise RuntimeError(TORCH_RAISES)

            torch_stat.__name__ = name
            return torch_stat

        self.torch = types.ModuleType("torch")
        self.torch.__version__ = "2.13.0+cu130" if cuda else "2.13.0+cpu"
        self.torch.version = types.SimpleNamespace(cuda=cuda, hip=hip)
        mod_cuda = types.ModuleType("torch.cuda")
        mod_mem = types.ModuleType("torch.cuda.memory")
        mod_cuda.memory = mod_mem
        mod_cuda.is_initialized = lambda: fake.initialized
        mod_cuda.device_count = lambda: fake.n_devices
        mod_cuda.get_device_properties = lambda d: types.SimpleNamespace(total_memory=fake.totals[d])
        if lazy_call:
            mod_cuda._lazy_call = fake.queued.append
        mod_mem.CUDAPluggableAllocator = CUDAPluggableAllocator
        mod_mem.change_current_allocator = change_current_allocator
        self.originals: Dict[str, Callable[..., Any]] = {}
        for name in PATCHED_NAMES:
            fn = raising(name)
            self.originals[name] = fn
            setattr(mod_mem, name, fn)  # torch.cuda re-exports the same objects
            setattr(mod_cuda, name, fn)
        self.torch.cuda = mod_cuda
        self.cuda = mod_cuda
        self.mem = mod_mem

    @property
    def raw(self) -> FakeRawAllocator:
        assert len(self.created) == 1
        return self.created[0].allocator()


@pytest.fixture(autouse=True)
def clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A forgotten install and an unconfigured registry around every test."""
    monkeypatch.delenv("PYPOOL_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    _torch._reset_for_tests()
    _core.registry_reset()
    yield
    _torch._reset_for_tests()
    _core.registry_reset()


@pytest.fixture
def use_fake(monkeypatch: pytest.MonkeyPatch) -> Callable[..., FakeTorch]:
    """``use_fake(**knobs)``: install() sees a FakeTorch and ``gpus`` native devices."""

    def make(gpus: int = 1, why: str = "", **knobs: Any) -> FakeTorch:
        fake = FakeTorch(**knobs)
        monkeypatch.setattr(_torch, "_import_torch", lambda: fake.torch)
        monkeypatch.setattr(_torch, "_native_cuda_devices", lambda: (gpus, why))
        return fake

    return make


def expected_hooks() -> List[Tuple[str, int]]:
    symbols = _core.c_api_symbols()
    return [(setter, symbols[symbol]) for setter, symbol in HOOKS]


# ---------------------------------------------------------------------------- success path


def test_install_registers_the_c_abi_and_wires_every_hook(use_fake: Callable[..., FakeTorch]) -> None:
    fake = use_fake()
    cfg = pypool._torch.install(max_pool_size="2GiB", round_up_divisions=4)

    assert cfg == PoolConfig(max_pool_size=2 * GiB, round_up_divisions=4)
    assert _torch.is_installed() and _torch.installed_config() == cfg
    (alloc,) = fake.created
    assert alloc.args == (pypool.library_path(), "pypool_torch_malloc", "pypool_torch_free")
    symbols = _core.c_api_symbols()
    # The library torch loads is the one _core lives in: same addresses either way.
    assert (alloc.alloc_address, alloc.free_address) == (symbols["pypool_torch_malloc"], symbols["pypool_torch_free"])
    assert fake.raw.calls == expected_hooks()
    assert fake.current is alloc and fake.swaps == 1
    assert _core.registry_backend() == "cuda"
    assert repr(_core.registry_config()) == repr(cfg.to_core())
    assert _core.registry_devices() == []  # install makes no pool (no GPU context yet)
    assert fake.queued == []  # install defers nothing to CUDA init


def test_hooks_set_before_the_swap(use_fake: Callable[..., FakeTorch]) -> None:
    fake = use_fake()
    seen: List[int] = []
    swap = fake.mem.change_current_allocator
    fake.mem.change_current_allocator = lambda a: (seen.append(len(a.allocator().calls)), swap(a))
    _torch.install()
    # torch may call empty_cache or record_stream as soon as the allocator is current.
    assert seen == [len(HOOKS)]


def test_wired_addresses_are_the_c_functions_with_torchs_signatures(
    use_fake: Callable[..., FakeTorch], capfd: pytest.CaptureFixture[str]
) -> None:
    """Call each address handed to torch with the C signature torch's binding casts it to."""
    fake = use_fake()
    _torch.install()
    hooks = dict(fake.raw.calls)
    # Run the functions against a host registry (the "cuda" one would need a GPU).
    _core.registry_reset()
    _core.registry_configure("host", PoolConfig().to_core(), 1 * GiB)
    pool = _core.registry_pool(0)

    init = ctypes.CFUNCTYPE(None, ctypes.c_int)(hooks["set_init_fn"])
    reset = ctypes.CFUNCTYPE(None)(hooks["set_reset_fn"])
    fraction = ctypes.CFUNCTYPE(None, ctypes.c_double, ctypes.c_int)(hooks["set_memory_fraction_fn"])
    record = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(hooks["set_record_stream_fn"])

    init(1)
    fraction(0.25, 0)
    assert pool.cap == GiB // 4

    p = pool.malloc(3 * MiB, 0)
    errors = _core.c_api_error_count()
    record(p, 7)
    assert _core.c_api_error_count() == errors  # a pointer of ours: accepted
    record(p + 512, 7)
    assert _core.c_api_error_count() == errors + 1  # not a block start: reported, not thrown
    assert "record_stream" in capfd.readouterr().err
    pool.free(p)
    assert pool.memory_stats()["reserved_bytes.all.current"] > 0
    reset()  # torch.cuda.empty_cache()
    assert pool.memory_stats()["reserved_bytes.all.current"] == 0
    pool.check_invariants()


def test_config_none_reads_pypool_conf_and_overrides_win(
    use_fake: Callable[..., FakeTorch], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake()
    monkeypatch.setenv("PYPOOL_CONF", "round_up_divisions:4,max_pool_size:8GiB")
    cfg = _torch.install(max_pool_size="2GiB")
    assert cfg == PoolConfig(round_up_divisions=4, max_pool_size=2 * GiB)


def test_explicit_config_ignores_pypool_conf(use_fake: Callable[..., FakeTorch], monkeypatch: pytest.MonkeyPatch) -> None:
    use_fake()
    monkeypatch.setenv("PYPOOL_CONF", "round_up_divisions:4")
    assert _torch.install({"max_pool_size": "1GiB"}) == PoolConfig(max_pool_size=GiB)


def test_config_none_translates_pytorch_cuda_alloc_conf_under_pypool_conf(
    use_fake: Callable[..., FakeTorch], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Note [Which settings win]: torch's variable < PYPOOL_CONF < keyword overrides.
    use_fake()
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:64,roundup_power2_divisions:2,expandable_segments:True")
    monkeypatch.setenv("PYPOOL_CONF", "round_up_divisions:4")
    cfg = _torch.install(max_pool_size="2GiB")
    assert cfg == PoolConfig(max_split_size=64 * MiB, round_up_divisions=4, expandable_segments=True, max_pool_size=2 * GiB)


def test_explicit_config_names_the_ignored_torch_variable(
    use_fake: Callable[..., FakeTorch], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_fake()
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    with pytest.warns(_torch_conf.TorchSettingWarning, match="PYTORCH_CUDA_ALLOC_CONF='expandable_segments:True' is not applied"):
        assert _torch.install({"max_pool_size": "1GiB"}) == PoolConfig(max_pool_size=GiB)


def test_bad_arguments_fail_before_torch_is_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_torch() -> Any:
        raise AssertionError("torch must not be imported for a bad argument")

    monkeypatch.setattr(_torch, "_import_torch", no_torch)
    with pytest.raises(ValueError, match="max_pool_size"):
        _torch.install(max_pool_size="lots")
    with pytest.raises(TypeError, match="unknown option"):
        _torch.install(max_pool=1)
    with pytest.raises(TypeError, match="patch_torch"):
        _torch.install(patch_torch="yes")  # type: ignore[arg-type]
    assert not _torch.is_installed() and not _core.registry_configured()


# ---------------------------------------------------------------------------- idempotence


def test_second_install_with_the_same_config_is_a_no_op(use_fake: Callable[..., FakeTorch]) -> None:
    fake = use_fake()
    first = _torch.install(max_pool_size="1GiB")
    fake.initialized = True  # CUDA in use by now: a real second swap would fail
    assert _torch.install(PoolConfig(max_pool_size=GiB)) == first
    assert _torch.install("max_pool_size:1GiB") == first
    assert len(fake.created) == 1 and fake.swaps == 1


def test_second_install_with_another_config_names_both(use_fake: Callable[..., FakeTorch]) -> None:
    use_fake()
    _torch.install(max_pool_size="1GiB")
    with pytest.raises(InstallError) as err:
        _torch.install(max_pool_size="2GiB", round_up_divisions=4)
    msg = str(err.value)
    assert "max_pool_size:1073741824" in msg
    assert "max_pool_size:2147483648,round_up_divisions:4" in msg
    assert "new process" in msg
    assert _torch.installed_config() == PoolConfig(max_pool_size=GiB)


def test_defaults_are_named_in_the_conflict(use_fake: Callable[..., FakeTorch]) -> None:
    use_fake()
    _torch.install()
    with pytest.raises(InstallError, match="installed with the defaults; cannot install again with max_pool_size"):
        _torch.install(max_pool_size="1GiB")


# ---------------------------------------------------------------------------- refusals


def assert_untouched(fake: Optional[FakeTorch]) -> None:
    assert not _torch.is_installed()
    assert not _core.registry_configured()
    if fake is not None:
        assert fake.current is None
        for name in PATCHED_NAMES:
            assert getattr(fake.cuda, name) is fake.originals[name]


def test_torch_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> Any:
        raise ModuleNotFoundError("No module named 'torch'")

    monkeypatch.setattr(_torch, "_import_torch", missing)
    with pytest.raises(InstallError, match=r"PyTorch is not installed \(No module named 'torch'\)") as err:
        _torch.install()
    assert "pypool.Pool(backend='host')" in str(err.value)
    assert_untouched(None)


def test_cpu_only_torch(use_fake: Callable[..., FakeTorch]) -> None:
    fake = use_fake(cuda=None)
    with pytest.raises(InstallError, match=r"2\.13\.0\+cpu\) is a CPU-only build \(torch.version.cuda is None\)") as err:
        _torch.install()
    assert "Install a CUDA build of PyTorch" in str(err.value)
    assert fake.created == []
    assert_untouched(fake)


def test_rocm_torch(use_fake: Callable[..., FakeTorch]) -> None:
    fake = use_fake(cuda=None, hip="6.2")
    with pytest.raises(InstallError, match="ROCm build"):
        _torch.install()
    assert_untouched(fake)


def test_cuda_already_initialized(use_fake: Callable[..., FakeTorch]) -> None:
    fake = use_fake(initialized=True)
    with pytest.raises(InstallError, match="call pypool.install\\(\\) first thing, before any CUDA call"):
        _torch.install()
    assert fake.created == []
    assert_untouched(fake)


def test_no_gpu_seen_by_torch(use_fake: Callable[..., FakeTorch]) -> None:
    fake = use_fake(device_count=0, gpus=0, why="libcuda.so.1 not found: no NVIDIA driver on this machine")
    with pytest.raises(InstallError) as err:
        _torch.install()
    msg = str(err.value)
    assert "torch.cuda.device_count() = 0" in msg
    assert "pypool sees 0 device(s): libcuda.so.1 not found" in msg
    assert "CUDA_VISIBLE_DEVICES" in msg
    assert_untouched(fake)


def test_no_gpu_for_pypools_own_backend(use_fake: Callable[..., FakeTorch]) -> None:
    fake = use_fake(device_count=2, gpus=0, why="pypool was built without CUDA support")
    with pytest.raises(InstallError, match="torch.cuda.device_count\\(\\) = 2; pypool sees 0 device\\(s\\): pypool was built without CUDA support"):
        _torch.install()
    assert_untouched(fake)


def test_no_gpu_on_this_machine_uses_the_real_native_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only torch is faked here: pypool's own CUDA layer answers (no GPU on CI)."""
    n, why = _core.cuda_device_count()
    if n > 0:
        pytest.skip("this machine has a GPU")
    fake = FakeTorch(device_count=1)
    monkeypatch.setattr(_torch, "_import_torch", lambda: fake.torch)
    with pytest.raises(InstallError) as err:
        _torch.install()
    assert f"pypool sees 0 device(s): {why}" in str(err.value)
    assert_untouched(fake)


def test_swap_refused_by_torch(use_fake: Callable[..., FakeTorch]) -> None:
    fake = use_fake(swap_error="Can't swap an already initialized allocator")
    with pytest.raises(InstallError) as err:
        _torch.install(max_pool_size="1GiB")
    msg = str(err.value)
    assert "Can't swap an already initialized allocator" in msg
    assert "call pypool.install() first thing" in msg
    assert isinstance(err.value.__cause__, RuntimeError)
    assert_untouched(fake)  # the registry configuration was rolled back
    # Fixed, the next attempt goes through.
    fake.swap_error = None
    fake.created.clear()
    assert _torch.install(max_pool_size="1GiB") == PoolConfig(max_pool_size=GiB)
    assert fake.current is fake.created[0]


def test_other_swap_failures_are_reported(use_fake: Callable[..., FakeTorch]) -> None:
    fake = use_fake(swap_error="something else")
    with pytest.raises(InstallError, match="change_current_allocator failed: something else"):
        _torch.install()
    assert_untouched(fake)


def test_registry_already_in_use(use_fake: Callable[..., FakeTorch]) -> None:
    fake = use_fake()
    _core.registry_configure("host", PoolConfig().to_core(), GiB)
    pool = _core.registry_pool(0)
    p = pool.malloc(4096, 0)
    try:
        with pytest.raises(InstallError, match=r"already in use \(backend 'host', devices \[0\]\)") as err:
            _torch.install()
        assert "before anything allocates through pypool" in str(err.value)
        assert fake.created == [] and not _torch.is_installed()
        assert _core.registry_backend() == "host"
    finally:
        pool.free(p)


def test_missing_hook_is_skipped_quietly(use_fake: Callable[..., FakeTorch], caplog: pytest.LogCaptureFixture) -> None:
    fake = use_fake(missing_hooks=("set_record_stream_fn",))
    with caplog.at_level(logging.DEBUG, logger="pypool"):
        _torch.install()  # no warning (warnings are errors in this suite)
    assert fake.raw.calls == [h for h in expected_hooks() if h[0] != "set_record_stream_fn"]
    assert _torch._state.skipped_hooks == ["set_record_stream_fn"]
    assert any("set_record_stream_fn" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)
    assert fake.current is fake.created[0]


# ---------------------------------------------------------------------------- torch stats


def test_patch_replaces_torch_stats_in_both_namespaces(use_fake: Callable[..., FakeTorch]) -> None:
    fake = use_fake()
    _torch.install()
    # One table says what replaces what (Note [Patch table]).
    want = {(ns, name): _torch._replacement(repl) for ns, name, repl in _torch.PATCHES}
    for name in PATCHED_NAMES:
        assert getattr(fake.cuda, name) is want["cuda", name]
        assert getattr(fake.mem, name) is want["cuda.memory", name]
    assert fake.cuda.memory_stats is memory.memory_stats
    assert fake.cuda.get_per_process_memory_fraction is memory.get_per_process_memory_fraction
    originals = _torch.torch_originals()
    assert len(originals) == 2 * len(PATCHED_NAMES)
    assert originals["torch.cuda.memory_stats"] is fake.originals["memory_stats"]
    assert originals["torch.cuda.memory.reset_peak_memory_stats"] is fake.originals["reset_peak_memory_stats"]
    with pytest.raises(RuntimeError, match="does not yet support"):
        originals["torch.cuda.memory_allocated"]()
    _torch._unpatch_torch()
    for name in PATCHED_NAMES:
        assert getattr(fake.cuda, name) is fake.originals[name]
        assert getattr(fake.mem, name) is fake.originals[name]


def test_patched_functions_read_the_registry(use_fake: Callable[..., FakeTorch]) -> None:
    fake = use_fake()
    _torch.install()
    _core.registry_reset()
    _core.registry_configure("host", PoolConfig().to_core(), GiB)
    pool = _core.registry_pool(0)
    p = pool.malloc(5 * MiB, 0)
    try:
        assert fake.cuda.memory_allocated(0) == fake.mem.memory_allocated("cuda:0") == pool.memory_stats()["allocated_bytes.all.current"] > 0
        assert fake.cuda.memory_stats()["requested_bytes.all.current"] == 5 * MiB
        assert fake.cuda.memory_stats_as_nested_dict()["reserved_bytes"]["all"]["current"] == fake.cuda.memory_reserved()
        assert "Allocated memory" in fake.cuda.memory_summary(0, abbreviated=True)
    finally:
        pool.free(p)
    fake.cuda.reset_peak_memory_stats()
    assert fake.cuda.max_memory_allocated() == 0


def test_patch_torch_false_leaves_torch_alone_until_asked(use_fake: Callable[..., FakeTorch]) -> None:
    fake = use_fake()
    _torch.install(patch_torch=False)
    for name in PATCHED_NAMES:
        assert getattr(fake.cuda, name) is fake.originals[name]
    assert _torch.torch_originals() == {}
    _torch.install(patch_torch=True)  # same config: only the patch is added
    assert fake.cuda.memory_stats is memory.memory_stats
    assert fake.swaps == 1
    _torch.install(patch_torch=True)  # patched once, not twice
    assert len(_torch.torch_originals()) == 2 * len(PATCHED_NAMES)


def test_get_pool_reports_the_installed_config(use_fake: Callable[..., FakeTorch]) -> None:
    use_fake()
    cfg = _torch.install(max_pool_size="3GiB", memory_fraction=0.5)
    _core.registry_reset()
    _core.registry_configure("host", cfg.to_core(), 4 * GiB)
    assert memory.get_pool(0).config == cfg


# ---------------------------------------------------------------------------- memory fraction


def test_memory_fraction_reaches_the_registry_config(use_fake: Callable[..., FakeTorch]) -> None:
    use_fake()
    _torch.install(memory_fraction=0.5, max_pool_size="2GiB")
    core = _core.registry_config()
    assert core.memory_fraction == 0.5
    assert core.max_pool_size == 2 << 30


def test_memory_fraction_caps_a_pool_from_its_creation() -> None:
    # The C++ pool applies the fraction when it is made (what the registry does at a
    # device's first allocation); the smaller of the two caps wins.
    pool = pypool.Pool("host", capacity="1GiB", memory_fraction=0.5)
    assert pool.cap == 512 << 20
    pool = pypool.Pool("host", capacity="1GiB", memory_fraction=0.5, max_pool_size="100MiB")
    assert pool.cap == 100 << 20
    with pytest.raises(pypool.OutOfMemoryError):
        pypool.Pool("host", capacity="1GiB", memory_fraction=0.25).malloc(300 << 20)


def test_info_and_install_say_loudly_when_the_cuda_backend_is_missing(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from pypool import _torch
    from pypool.cli import info as cli_info

    assert _core.cuda_backend_compiled()  # the build under test has it (needs no toolkit)
    assert main(["info"]) == 0
    assert "WARNING" not in capsys.readouterr().err
    monkeypatch.setattr(_core, "cuda_backend_compiled", lambda: False)
    assert cli_info.run(SimpleNamespace(json=True)) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["warning"].startswith("WARNING: this pypool was built WITHOUT its CUDA backend")
    assert "WITHOUT its CUDA backend" in err
    assert cli_info.run(SimpleNamespace(json=False)) == 0
    assert "WITHOUT its CUDA backend" in capsys.readouterr().err

    monkeypatch.setattr(_torch, "_native_cuda_devices", lambda: (0, "not built"))
    fake = SimpleNamespace(__version__="2.13.0", version=SimpleNamespace(cuda="13.0", hip=None),
                           cuda=SimpleNamespace(is_initialized=lambda: False, device_count=lambda: 1))
    with pytest.raises(_torch.InstallError, match="built without its CUDA backend"):
        _torch._check_torch(fake)
