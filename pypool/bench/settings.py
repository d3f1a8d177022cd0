"""How much work ``python -m pypool bench`` does, and which scenarios it runs: the
settings of each mode (``full``, ``quick``, ``smoke``) for the CPU suite, the GPU children
and the simulated device, and the allocators the simulated device compares.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from .common import PAIR_SIZES, SCALING_N_FREE

__all__ = ["BenchSettings", "gpu_settings", "gpu_scenarios", "sim_settings", "sim_scenarios",
           "memory_scenarios", "timing_scenarios", "SIM_ALLOCATORS", "SIM_EXCLUDED", "STEP"]


# ---------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class BenchSettings:
    """How much work each case does. Use :meth:`for_mode` rather than building one.

    Attributes:
        mode: ``"full"``, ``"quick"`` or ``"smoke"`` (seconds; for tests only).
        repeats: measurements per case (median / p99 / min / max over them; 7 quick, 15 full).
        pair_target_s: each timed repeat of a fixed-size pair case runs about this long
            (iterations are calibrated per allocator).
        pair_min_iters: lower bound of the calibrated iteration count.
        random_ops: steps of each random mix (same sequence for pypool and glibc).
        random_live_cap: most live blocks of a random mix.
        churn_ops, churn_live, churn_max: the mixed working-set churn.
        scaling_n_free, scaling_iters: free-block counts and pairs timed per repeat.
        replay_scale, replay_repeats: size and repetitions of the workload replays.
        gpu: settings of the GPU children (passed to them as JSON).
        sim: settings of the simulated-device scenarios (:func:`sim_settings`).
    """

    mode: str = "quick"
    repeats: int = 7
    pair_target_s: float = 0.02
    pair_min_iters: int = 1000
    random_ops: int = 20_000
    random_live_cap: int = 1000
    churn_ops: int = 50_000
    churn_live: int = 4096
    churn_max: int = 1 << 20
    scaling_n_free: Tuple[int, ...] = SCALING_N_FREE
    scaling_iters: int = 20_000
    replay_scale: float = 1.0
    replay_repeats: int = 3
    gpu: Dict[str, Any] = field(default_factory=dict)
    sim: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_mode(cls, mode: str, repeats: Optional[int] = None) -> "BenchSettings":
        """Settings of ``mode`` (``"full"``, ``"quick"`` or ``"smoke"``), optionally with
        another repeat count."""
        if mode == "full":
            s = cls(mode="full", repeats=15, pair_target_s=0.05, random_ops=50_000,
                    churn_ops=200_000, scaling_iters=100_000, replay_repeats=5,
                    gpu=gpu_settings("full"))
        elif mode == "quick":
            s = cls(mode="quick", gpu=gpu_settings("quick"))
        elif mode == "smoke":
            # Note [Smoke mode]: exercises every code path in a few seconds (the CLI test);
            # its figures mean nothing.
            s = cls(mode="smoke", repeats=2, pair_target_s=0.0005, pair_min_iters=100,
                    random_ops=1000, random_live_cap=50, churn_ops=3000, churn_live=256,
                    scaling_n_free=(100, 1000), scaling_iters=1000, replay_scale=0.05,
                    replay_repeats=1, gpu=gpu_settings("smoke"))
        else:
            raise ValueError(f"mode: must be 'full', 'quick' or 'smoke', got {mode!r}")
        s = dataclasses.replace(s, sim=sim_settings(mode))
        if repeats is not None:
            if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
                raise ValueError(f"repeats: must be an int >= 1, got {repeats!r}")
            s = dataclasses.replace(s, repeats=repeats)
        return s

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["scaling_n_free"] = list(self.scaling_n_free)
        return d


def gpu_settings(mode: str) -> Dict[str, Any]:
    """Work sizes of the GPU scenarios (see :mod:`pypool.bench.child`)."""
    if mode == "full":
        return dict(pair_batches=200, pair_batch_ops=200, warmup_batches=10,
                    rmm_allocations=10_000, rmm_max_mib=[1, 64, 1024], rmm_passes=3,
                    streams=4, stream_ops=20_000, stream_window=64,
                    trace_scale=1.0, trace_passes=3,
                    train_steps=60, train_warmup=5, train_dim=512, train_layers=6, train_heads=8,
                    train_batch=16, train_min_len=64, train_max_len=1024, train_vocab=16384)
    if mode == "quick":
        return dict(pair_batches=40, pair_batch_ops=100, warmup_batches=5,
                    rmm_allocations=1000, rmm_max_mib=[1, 64, 1024], rmm_passes=2,
                    streams=4, stream_ops=4000, stream_window=64,
                    trace_scale=1.0, trace_passes=2,
                    train_steps=30, train_warmup=5, train_dim=256, train_layers=4, train_heads=4,
                    train_batch=16, train_min_len=64, train_max_len=512, train_vocab=8192)
    return dict(pair_batches=3, pair_batch_ops=10, warmup_batches=1,
                rmm_allocations=50, rmm_max_mib=[1], rmm_passes=1,
                streams=2, stream_ops=100, stream_window=8,
                trace_scale=0.02, trace_passes=1,
                train_steps=2, train_warmup=1, train_dim=32, train_layers=1, train_heads=2,
                train_batch=2, train_min_len=4, train_max_len=16, train_vocab=64)


def gpu_scenarios(s: BenchSettings) -> List[str]:
    """Scenario names for the GPU children (``kind[:param]``)."""
    g = s.gpu
    names = [f"pairs:{size}" for size in PAIR_SIZES]
    names += [f"random:{mib}" for mib in g["rmm_max_mib"]]
    names += ["streams", "trace:transformer", "trace:growing_batch", "train:gpt"]
    return names


# ---------------------------------------------------------------------------- simulated device
#: Allocators compared on the simulated device (see the module docstring for the others).
SIM_ALLOCATORS: Tuple[str, ...] = ("native", "native-expandable", "pypool", "pypool-expandable")


#: Why the GPU suite's other allocators are not run here (printed with the refusal).
SIM_EXCLUDED = {
    "cudaMallocAsync": "its pool lives inside NVIDIA's driver, which the simulation does not model",
    "rmm": "its pool is one upstream allocation of a chosen size: peak and smallest capacity would be a setting",
}


#: Capacity steps of the smallest-capacity search.
STEP = 2 << 20


#: Workloads of the memory scenarios: the real models recorded on the simulated device (GPT
#: training, a CNN with a growing batch, GPT decoding with a KV cache) and the generated ones.
_ALL_SIM_WORKLOADS = ["recorded_gpt_train", "recorded_cnn_growing_batch", "recorded_gpt_decode",
                      "transformer", "growing_batch", "kv_cache", "random"]


def sim_settings(mode: str) -> Dict[str, Any]:
    """Work sizes of the simulated-device scenarios (the ``sim`` part of the settings).

    ``full`` is sized to finish in about ten minutes on a busy 2-core machine (the
    workloads at half length: same size mix, about the same peaks). ``sim_rounds``:
    the timing children run that many times per allocator, interleaved (see
    :func:`run_sim`).
    """
    if mode == "full":
        return dict(sim_memory="80GiB", sim_workloads=list(_ALL_SIM_WORKLOADS),
                    sim_trace_scale=0.5, sim_pair_sizes=[512, 1 << 20, 64 << 20], sim_pair_threads=[1, 4],
                    sim_pair_ops=2000, sim_pair_batches=21, sim_warmup_batches=2,
                    sim_ts_ops=4000, sim_ts_batches=15, sim_c_threads=[1, 2, 4], sim_c_iters=300_000,
                    sim_c_repeats=7, sim_rounds=3, sim_confirm=True)
    if mode == "quick":
        return dict(sim_memory="80GiB", sim_workloads=list(_ALL_SIM_WORKLOADS),
                    sim_trace_scale=0.1, sim_pair_sizes=[512, 1 << 20, 64 << 20], sim_pair_threads=[1, 4],
                    sim_pair_ops=1000, sim_pair_batches=11, sim_warmup_batches=2,
                    sim_ts_ops=2000, sim_ts_batches=7, sim_c_threads=[1, 2, 4], sim_c_iters=100_000,
                    sim_c_repeats=5, sim_rounds=2, sim_confirm=True)
    return dict(sim_memory="80GiB", sim_workloads=["kv_cache"], sim_trace_scale=0.02,
                sim_pair_sizes=[512], sim_pair_threads=[1, 2], sim_pair_ops=20, sim_pair_batches=3,
                sim_warmup_batches=1, sim_ts_ops=20, sim_ts_batches=2, sim_c_threads=[1, 2],
                sim_c_iters=200, sim_c_repeats=2, sim_rounds=1, sim_confirm=True)


def sim_scenarios(g: Dict[str, Any]) -> List[str]:
    """Scenario names of the simulated-device suite (``kind:param...``), in report order."""
    return memory_scenarios(g) + timing_scenarios(g)


def memory_scenarios(g: Dict[str, Any]) -> List[str]:
    """The workloads' memory scenarios (deterministic: run once per allocator)."""
    return [f"minmem:{w}" for w in g["sim_workloads"]]


def timing_scenarios(g: Dict[str, Any]) -> List[str]:
    """The host-overhead scenarios (run ``sim_rounds`` times per allocator)."""
    names: List[str] = []
    for size in g["sim_pair_sizes"]:
        for t in g["sim_pair_threads"]:
            names.append(f"tpairs:{size}:{t}")
    for size in g["sim_pair_sizes"]:
        for t in g["sim_c_threads"]:
            names.append(f"tspairs:{size}:{t}")
    for size in g["sim_pair_sizes"]:
        for t in g["sim_c_threads"]:
            names.append(f"cthreads:{size}:{t}")
    return names
