"""Bundled allocation workloads: seeded generators of realistic GPU allocation traces,
and allocation sequences recorded from real models.

``WORKLOADS[name](seed=0, scale=1.0, **params) -> Trace`` are the synthetic generators;
``RECORDED_WORKLOADS`` the recordings (below); ``ALL_WORKLOADS`` both, and
:func:`generate` takes any of their names. The same arguments always give the same trace. ``scale`` multiplies the length (steps, requests, events), not the
tensor sizes, so a small scale keeps the size mix of the full workload; at 1.0 each
trace has 170 k to 640 k events and is generated in well under a second.

* ``transformer``: mixed-precision training of a GPT-style decoder with variable
  sequence lengths (a new length every step): per layer the saved activations sized by
  batch x seq x hidden, attention scores and probabilities batch x heads x seq^2,
  autocast weight copies; a backward pass that frees them in reverse while producing
  gradients; a foreach Adam step with persistent optimizer states; gradients set to
  None after each step (PyTorch's default).
* ``growing_batch``: the same training loop at a fixed sequence length with the batch
  size growing step by step (batch-size warm-up), so every step needs slightly larger
  blocks than any cached one.
* ``kv_cache``: LLM inference: persistent bf16 weights; batches of requests, each with
  a prefill over the prompt and token-by-token decoding; per layer a key and a value
  cache that is reallocated ``chunk`` tokens larger (allocate, copy, free) whenever it
  fills, plus per-token temporaries.
* ``random``: RMM's ``random_allocations`` benchmark: each event allocates with
  probability 0.73 (a size uniform in [1, max_size]) or frees a random live allocation;
  an allocation that would take live bytes beyond ``max_usage`` frees instead.

Recorded workloads (``RECORDED_WORKLOADS``): what PyTorch's own caching allocator was
asked for while small real models ran a few tens of steps on pypool's simulated CUDA
device, recorded with ``torch.cuda.memory._record_memory_history`` and shipped as
stripped torch snapshots in ``pypool/workloads_data/<name>.pickle.gz``
(``tools/record_sim_workloads.py`` says how they were made and how to redo them; the
trace's ``meta["recording"]`` says what ran). Kernels do not run on the simulated device,
but no shape in these loops depends on a value, so this is the allocation sequence
PyTorch makes on a GPU (with cuDNN off: convolutions use PyTorch's im2col path).

* ``recorded_gpt_train``: an 82 M-parameter GPT trained with AdamW under bf16 autocast,
  batch 8, a new sequence length (64..1024) every step, 20 steps.
* ``recorded_cnn_growing_batch``: a ResNet-18-style CNN (64x64 images) trained with SGD
  under bf16 autocast, the batch growing from 16 to 192 over 24 steps.
* ``recorded_gpt_decode``: inference with a 186 M-parameter GPT in bf16: 4 batches of
  requests, each a prefill and 24-48 decoding steps with per-layer KV caches grown by
  ``torch.cat`` every token.

A recording has one length: ``scale`` in (0, 1] keeps that fraction of its events (a
prefix; allocations still live at the cut are simply never freed), and ``seed`` is
accepted for symmetry with the generators and ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List

import numpy as np

from .trace import ALLOC, FREE, Trace, load_torch_snapshot

__all__ = ["WORKLOADS", "RECORDED_WORKLOADS", "ALL_WORKLOADS", "generate", "transformer", "growing_batch",
           "kv_cache", "random_workload", "recorded", "recorded_path"]

MiB = 1 << 20
GiB = 1 << 30


class _Builder:
    """Collects events in Python lists (the generators' hot loop) and a simulated clock."""

    __slots__ = ("acts", "ids", "sizes", "streams", "times", "size_of", "stream_of", "t", "live", "peak")

    def __init__(self) -> None:
        self.acts: List[int] = []
        self.ids: List[int] = []
        self.sizes: List[int] = []
        self.streams: List[int] = []
        self.times: List[float] = []
        self.size_of: List[int] = []
        self.stream_of: List[int] = []
        self.t = 0.0
        self.live = 0
        self.peak = 0

    def alloc(self, size: int, stream: int = 0) -> int:
        size = int(size)
        i = len(self.size_of)
        self.size_of.append(size)
        self.stream_of.append(stream)
        self.acts.append(ALLOC)
        self.ids.append(i)
        self.sizes.append(size)
        self.streams.append(stream)
        self.times.append(self.t)
        self.t += 1.0  # the allocator call itself; compute() adds kernel time
        self.live += size
        if self.live > self.peak:
            self.peak = self.live
        return i

    def free(self, i: int) -> None:
        s = self.size_of[i]
        self.acts.append(FREE)
        self.ids.append(i)
        self.sizes.append(s)
        self.streams.append(self.stream_of[i])
        self.times.append(self.t)
        self.t += 1.0
        self.live -= s

    def free_all(self, ids: List[int]) -> None:
        for i in ids:
            self.free(i)

    def compute(self, us: float) -> None:
        self.t += us

    def trace(self, name: str, meta: Dict[str, Any]) -> Trace:
        return Trace(np.array(self.acts, np.int8), np.array(self.ids, np.int64),
                     np.array(self.sizes, np.int64), np.array(self.streams, np.int64),
                     np.array(self.times, np.float64), name=name, meta=meta, validate=False)


def _check_common(seed: int, scale: float) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale: expected a positive number, got {scale!r}")


def _scaled(n: int, scale: float, minimum: int) -> int:
    return max(minimum, int(round(n * scale)))


# ============================================================================ training


@dataclass(frozen=True)
class _Model:
    layers: int
    hidden: int
    heads: int
    vocab: int
    act_bytes: int = 2    # bf16 activations under autocast
    param_bytes: int = 4  # fp32 master weights, gradients and Adam states
    tflops: float = 400.0  # simulated device speed, for the clock only

    def layer_params(self) -> List[int]:
        """Element counts of one layer's parameters (weights and biases, LayerNorms)."""
        h = self.hidden
        return [3 * h * h, 3 * h, h * h, h, h, h, 4 * h * h, 4 * h, 4 * h * h, h, h, h]

    def matmul_us(self, tokens: int, k: int, n: int) -> float:
        return 2.0 * tokens * k * n / (self.tflops * 1e6)


def _train_step(b: _Builder, m: _Model, batch: int, seq: int, params: List[int],
                adam: List[int]) -> None:
    """One optimizer step: forward (saving activations), loss, backward (freeing them in
    reverse, producing gradients), foreach Adam, zero_grad(set_to_none=True)."""
    h, H, a, p = m.hidden, m.heads, m.act_bytes, m.param_bytes
    T = batch * seq
    th = T * h * a
    score = batch * H * seq * seq * a
    stats = T * 4  # LayerNorm mean / rstd (fp32 per token)
    n_per_layer = len(m.layer_params())

    tokens = b.alloc(T * 8)  # int64 token ids
    x = b.alloc(th)  # embedding output
    b.compute(1.0)
    saved: List[List[int]] = []
    for _ in range(m.layers):
        s: List[int] = []
        ln1 = b.alloc(th); mu1 = b.alloc(stats); rs1 = b.alloc(stats)
        w_qkv = b.alloc(3 * h * h * a)  # autocast copy, saved for backward
        qkv = b.alloc(3 * th)
        b.compute(m.matmul_us(T, h, 3 * h))
        scores = b.alloc(score)
        b.compute(m.matmul_us(batch * H * seq, h // H, seq))
        probs = b.alloc(score)
        b.free(scores)
        attn = b.alloc(th)
        b.compute(m.matmul_us(batch * H * seq, seq, h // H))
        w_o = b.alloc(h * h * a)
        proj = b.alloc(th)
        b.compute(m.matmul_us(T, h, h))
        res1 = b.alloc(th)
        b.free(proj)
        ln2 = b.alloc(th); mu2 = b.alloc(stats); rs2 = b.alloc(stats)
        w_up = b.alloc(4 * h * h * a)
        up = b.alloc(4 * th)
        b.compute(m.matmul_us(T, h, 4 * h))
        gelu = b.alloc(4 * th)
        w_down = b.alloc(4 * h * h * a)
        down = b.alloc(th)
        b.compute(m.matmul_us(T, 4 * h, h))
        out = b.alloc(th)
        b.free(down)
        s += [x, ln1, mu1, rs1, w_qkv, qkv, probs, attn, w_o, res1, ln2, mu2, rs2, w_up, up, gelu, w_down]
        saved.append(s)
        x = out
    # Head: final LayerNorm, logits (bf16), fp32 upcast, log-softmax saved by the loss.
    lnf = b.alloc(th)
    logits = b.alloc(T * m.vocab * a)
    b.compute(m.matmul_us(T, h, m.vocab))
    up32 = b.alloc(T * m.vocab * 4)
    b.free(logits)
    logp = b.alloc(T * m.vocab * 4)
    b.free(up32)
    loss = b.alloc(4)

    # Backward: gradients are allocated as they are produced (set_to_none=True).
    grads: List[int] = []
    g_logits = b.alloc(T * m.vocab * 4)
    b.free(logp); b.free(loss)
    g_l16 = b.alloc(T * m.vocab * a)
    b.free(g_logits)
    grads.append(b.alloc(m.vocab * h * p))  # output projection (tied embedding) gradient
    g = b.alloc(th)
    b.compute(2 * m.matmul_us(T, h, m.vocab))
    b.free(g_l16); b.free(lnf); b.free(x)
    for layer in reversed(range(m.layers)):
        (x_in, ln1, mu1, rs1, w_qkv, qkv, probs, attn, w_o, res1,
         ln2, mu2, rs2, w_up, up, gelu, w_down) = saved[layer]
        layer_grads = [b.alloc(n * p) for n in m.layer_params()[::-1]]
        g_gelu = b.alloc(4 * th)
        b.compute(2 * m.matmul_us(T, 4 * h, h))
        b.free(gelu); b.free(w_down)
        g_up = b.alloc(4 * th)
        b.free(g_gelu); b.free(up)
        g_ln2 = b.alloc(th)
        b.compute(2 * m.matmul_us(T, h, 4 * h))
        b.free(g_up); b.free(w_up)
        g_res1 = b.alloc(th)
        b.free(g_ln2); b.free(ln2); b.free(mu2); b.free(rs2); b.free(res1)
        g_attn = b.alloc(th)
        b.compute(2 * m.matmul_us(T, h, h))
        b.free(w_o)
        g_probs = b.alloc(score)
        b.free(attn)
        g_scores = b.alloc(score)
        b.free(g_probs); b.free(probs)
        g_qkv = b.alloc(3 * th)
        b.compute(4 * m.matmul_us(batch * H * seq, seq, h // H))
        b.free(g_scores); b.free(g_attn); b.free(qkv)
        g_ln1 = b.alloc(th)
        b.compute(2 * m.matmul_us(T, h, 3 * h))
        b.free(g_qkv); b.free(w_qkv)
        g_x = b.alloc(th)
        b.free(g_ln1); b.free(ln1); b.free(mu1); b.free(rs1); b.free(g_res1); b.free(g)
        b.free(x_in)
        grads.extend(layer_grads)
        g = g_x
    grads.append(b.alloc(m.vocab * h * p))  # embedding gradient
    b.free(g); b.free(tokens)

    # Adam (foreach): lazily created states, then per-step temporaries for every
    # parameter at once (the foreach ops return lists), then zero_grad(set_to_none).
    sizes = [m.vocab * h * p] + [n * p for _ in range(m.layers) for n in m.layer_params()]
    if not adam:
        for sz in sizes:
            adam.append(b.alloc(sz))
            adam.append(b.alloc(sz))
    denom = [b.alloc(sz) for sz in sizes]
    b.compute(sum(sizes) / 2e6)  # memory bound, ~2 TB/s
    b.free_all(denom)
    b.free_all(grads)
    del params  # parameters are persistent; kept for symmetry with the caller


def _model_params(b: _Builder, m: _Model) -> List[int]:
    params = [b.alloc(m.vocab * m.hidden * m.param_bytes)]
    for _ in range(m.layers):
        params.extend(b.alloc(n * m.param_bytes) for n in m.layer_params())
    return params


def transformer(seed: int = 0, scale: float = 1.0, *, steps: int = 160, layers: int = 16,
                hidden: int = 2048, heads: int = 16, vocab: int = 32000, batch: int = 4,
                min_seq: int = 128, max_seq: int = 2048, seq_multiple: int = 64) -> Trace:
    """GPT-style training with a new sequence length every step (see module docstring).

    Defaults: 16 layers, hidden 2048 (~0.9 B parameters), batch 4, lengths uniform in
    [128, 2048] in steps of 64; peak live memory is about 30 GiB.
    """
    _check_common(seed, scale)
    if not 0 < min_seq <= max_seq or seq_multiple <= 0:
        raise ValueError(f"min_seq/max_seq/seq_multiple: need 0 < min_seq <= max_seq and seq_multiple > 0, "
                         f"got {min_seq}, {max_seq}, {seq_multiple}")
    rng = np.random.default_rng(seed)
    m = _Model(layers, hidden, heads, vocab)
    n_steps = _scaled(steps, scale, 2)
    lo, hi = -(-min_seq // seq_multiple), max_seq // seq_multiple
    seqs = (rng.integers(lo, hi + 1, size=n_steps) * seq_multiple).tolist()
    b = _Builder()
    params = _model_params(b, m)
    adam: List[int] = []
    for seq in seqs:
        _train_step(b, m, batch, int(seq), params, adam)
    meta = {"generator": "transformer", "seed": seed, "scale": scale, "steps": n_steps,
            "layers": layers, "hidden": hidden, "heads": heads, "vocab": vocab, "batch": batch,
            "seq_range": [min_seq, max_seq]}
    return b.trace("transformer", meta)


def growing_batch(seed: int = 0, scale: float = 1.0, *, steps: int = 96, layers: int = 16,
                  hidden: int = 2048, heads: int = 16, vocab: int = 32000, seq: int = 512,
                  min_batch: int = 1, max_batch: int = 32) -> Trace:
    """Training with the batch size growing from ``min_batch`` to ``max_batch`` over the
    run (a little every step; the seed only jitters the sequence of sizes by +-1)."""
    _check_common(seed, scale)
    if not 0 < min_batch <= max_batch:
        raise ValueError(f"min_batch/max_batch: need 0 < min_batch <= max_batch, got {min_batch}, {max_batch}")
    rng = np.random.default_rng(seed)
    m = _Model(layers, hidden, heads, vocab)
    n_steps = _scaled(steps, scale, 2)
    ramp = np.linspace(min_batch, max_batch, n_steps)
    jitter = rng.integers(-1, 2, size=n_steps)
    batches = np.clip(np.round(ramp).astype(np.int64) + jitter, min_batch, max_batch)
    batches = np.maximum.accumulate(batches)  # it grows (never shrinks)
    b = _Builder()
    params = _model_params(b, m)
    adam: List[int] = []
    for bs in batches.tolist():
        _train_step(b, m, int(bs), seq, params, adam)
    meta = {"generator": "growing_batch", "seed": seed, "scale": scale, "steps": n_steps,
            "layers": layers, "hidden": hidden, "heads": heads, "vocab": vocab, "seq": seq,
            "batch_range": [min_batch, max_batch]}
    return b.trace("growing_batch", meta)


# ============================================================================ inference


def kv_cache(seed: int = 0, scale: float = 1.0, *, requests: int = 6, layers: int = 32,
             hidden: int = 4096, heads: int = 32, vocab: int = 32000, max_batch: int = 8,
             min_prompt: int = 64, max_prompt: int = 1024, min_new: int = 64, max_new: int = 384,
             chunk: int = 128) -> Trace:
    """Batched LLM inference with a growing KV cache (7B-like model in bf16, ~13 GiB of
    weights). ``requests`` batches run one after the other."""
    _check_common(seed, scale)
    if chunk <= 0 or not (0 < min_prompt <= max_prompt) or not (0 < min_new <= max_new):
        raise ValueError("chunk, prompt and generation lengths: must be positive ranges")
    rng = np.random.default_rng(seed)
    h, H, L, a = hidden, heads, layers, 2
    n_req = _scaled(requests, scale, 1)
    # At small scale also shorten generation, so tests get small traces.
    new_hi = max(min_new, int(round(max_new * min(1.0, scale))))
    b = _Builder()
    weights = [b.alloc(vocab * h * a)]
    for _ in range(L):
        weights += [b.alloc(n * a) for n in (3 * h * h, 3 * h, h * h, h, h, h, 4 * h * h, 4 * h, 4 * h * h, h, h, h)]
    weights.append(b.alloc(vocab * h * a))
    for _ in range(n_req):
        B = int(rng.integers(1, max_batch + 1))
        P = int(rng.integers(min_prompt, max_prompt + 1))
        G = int(rng.integers(min_new, new_hi + 1))
        T = B * P
        cap = -(-(P + 1) // chunk) * chunk  # tokens the caches hold
        per_tok = B * h * a  # one token of K (or V) for the whole batch
        ids_t = b.alloc(T * 8)
        x = b.alloc(T * h * a)
        kc: List[int] = []
        vc: List[int] = []
        for _ in range(L):  # prefill
            ln = b.alloc(T * h * a)
            qkv = b.alloc(3 * T * h * a)
            b.free(ln)
            kc.append(b.alloc(cap * per_tok))
            vc.append(b.alloc(cap * per_tok))
            scores = b.alloc(B * H * P * P * a)
            probs = b.alloc(B * H * P * P * a)
            b.free(scores)
            attn = b.alloc(T * h * a)
            b.free(probs); b.free(qkv)
            o = b.alloc(T * h * a)
            b.free(attn)
            up = b.alloc(4 * T * h * a)
            act = b.alloc(4 * T * h * a)
            b.free(up)
            down = b.alloc(T * h * a)
            b.free(act)
            nx = b.alloc(T * h * a)
            b.free(o); b.free(down); b.free(x)
            x = nx
            b.compute(2.0 * T * 12 * h * h / 4e8)
        logits = b.alloc(B * vocab * 4)
        b.free(x); b.free(ids_t)
        length = P
        for _ in range(G):  # decode, one token for the whole batch per iteration
            b.free(logits)
            tok = b.alloc(B * 8)
            x = b.alloc(B * h * a)
            length += 1
            grow = length > cap
            if grow:
                cap += chunk
            for layer in range(L):
                ln = b.alloc(B * h * a)
                qkv = b.alloc(3 * B * h * a)
                b.free(ln)
                if grow:  # torch.cat-style reallocation: new, copy, free old
                    for caches in (kc, vc):
                        new = b.alloc(cap * per_tok)
                        b.free(caches[layer])
                        caches[layer] = new
                probs = b.alloc(B * H * length * 4)
                attn = b.alloc(B * h * a)
                b.free(probs); b.free(qkv)
                up = b.alloc(4 * B * h * a)
                down = b.alloc(B * h * a)
                b.free(up)
                nx = b.alloc(B * h * a)
                b.free(attn); b.free(down); b.free(x)
                x = nx
                b.compute(2.0 * B * 12 * h * h / 4e8 + 5.0)
            logits = b.alloc(B * vocab * 4)
            b.free(x); b.free(tok)
        b.free(logits)
        b.free_all(kc)
        b.free_all(vc)
    meta = {"generator": "kv_cache", "seed": seed, "scale": scale, "requests": n_req,
            "layers": layers, "hidden": hidden, "heads": heads, "max_batch": max_batch,
            "prompt_range": [min_prompt, max_prompt], "new_range": [min_new, new_hi], "chunk": chunk}
    return b.trace("kv_cache", meta)


# ============================================================================ random


def random_workload(seed: int = 0, scale: float = 1.0, *, events: int = 500_000,
                    max_size: int = 16 * MiB, max_usage: int = 16 * GiB,
                    alloc_probability: float = 0.73) -> Trace:
    """RMM ``random_allocations``: allocate with probability ``alloc_probability`` (size
    uniform in [1, max_size]), else free a random live allocation; an allocation that
    would take live bytes past ``max_usage`` frees instead. Everything left is freed at
    the end."""
    _check_common(seed, scale)
    if not 0 < alloc_probability < 1 or max_size <= 0 or max_usage < max_size:
        raise ValueError("alloc_probability in (0, 1), max_size > 0 and max_usage >= max_size are required")
    rng = np.random.default_rng(seed)
    n = _scaled(events, scale, 100)
    want_alloc = (rng.random(n) < alloc_probability).tolist()
    sizes = rng.integers(1, max_size + 1, size=n).tolist()
    picks = rng.random(n).tolist()
    b = _Builder()
    live: List[int] = []
    used = 0
    size_of = b.size_of
    for i in range(n):
        s = sizes[i]
        if live and (not want_alloc[i] or used + s > max_usage):
            j = int(picks[i] * len(live))
            k = live[j]
            live[j] = live[-1]
            live.pop()
            used -= size_of[k]
            b.free(k)
        else:
            live.append(b.alloc(s))
            used += s
    for k in live:
        b.free(k)
    meta = {"generator": "random", "seed": seed, "scale": scale, "events": n, "max_size": max_size,
            "max_usage": max_usage, "alloc_probability": alloc_probability}
    return b.trace("random", meta)


# ============================================================================ recorded

_DATA_DIR = Path(__file__).resolve().parent / "workloads_data"
_RECORDED_NAMES = ("recorded_gpt_train", "recorded_cnn_growing_batch", "recorded_gpt_decode")


def recorded_path(name: str) -> Path:
    """The file of the recorded workload ``name`` (``pypool/workloads_data``)."""
    if name not in _RECORDED_NAMES:
        raise ValueError(f"recorded workload: unknown {name!r} (bundled: {', '.join(_RECORDED_NAMES)})")
    return _DATA_DIR / f"{name}.pickle.gz"


def recorded(name: str, seed: int = 0, scale: float = 1.0) -> Trace:
    """The recorded workload ``name`` as a :class:`Trace` (see the module docstring).

    ``scale`` in (0, 1] keeps that fraction of the events (a prefix); ``seed`` is ignored.
    ``meta["recording"]`` describes the run (model, steps, shapes, torch version,
    PyTorch's own peak allocated/reserved bytes); ``meta["torch"]`` is PyTorch's reserved
    profile (:func:`pypool.trace.torch_reserved_profile`).
    """
    _check_common(seed, scale)
    if scale > 1:
        raise ValueError(f"scale: a recorded workload has one length; expected a scale in (0, 1], got {scale!r}")
    path = recorded_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"recorded workload {name!r}: {path} is missing from this pypool install "
                                "(package data pypool/workloads_data)")
    snap = load_torch_snapshot(path)
    trace = Trace.from_torch_snapshot(snap, device=0, name=name)
    trace.meta["recorded"] = name
    trace.meta["recording"] = snap.get("pypool_recording", {})
    if scale < 1:
        n = max(1, int(round(len(trace) * scale)))
        trace = trace[:n]
        trace.meta["scale"] = scale
    return trace


def _recorded_loader(name: str) -> Callable[..., Trace]:
    def load(seed: int = 0, scale: float = 1.0) -> Trace:
        return recorded(name, seed=seed, scale=scale)

    load.__name__ = name
    load.__doc__ = f"The recorded workload {name!r} (see :func:`recorded`)."
    return load


WORKLOADS: Dict[str, Callable[..., Trace]] = {
    "transformer": transformer,
    "growing_batch": growing_batch,
    "kv_cache": kv_cache,
    "random": random_workload,
}

RECORDED_WORKLOADS: Dict[str, Callable[..., Trace]] = {name: _recorded_loader(name) for name in _RECORDED_NAMES}

ALL_WORKLOADS: Dict[str, Callable[..., Trace]] = {**WORKLOADS, **RECORDED_WORKLOADS}


def generate(name: str, seed: int = 0, scale: float = 1.0, **params: Any) -> Trace:
    """``ALL_WORKLOADS[name](seed=seed, scale=scale, **params)`` with a clear error for an
    unknown name (recorded workloads take no other parameters)."""
    try:
        gen = ALL_WORKLOADS[name]
    except KeyError:
        raise ValueError(f"workload: unknown {name!r} (bundled: {', '.join(ALL_WORKLOADS)})") from None
    return gen(seed=seed, scale=scale, **params)
