#!/usr/bin/env python3
"""Record real models' allocation sequences on the simulated CUDA device.

Three small real PyTorch models run a few tens of steps each on pypool's simulated device
(``python -m pypool simdevice``; Note [Simulated device] in csrc/simdevice/sim_state.h)
with PyTorch's own caching allocator, recorded with torch's memory history
(``torch.cuda.memory._record_memory_history`` + ``torch.cuda.memory._snapshot()``). The
snapshots ship as the bundled workloads ``recorded_*`` of :mod:`pypool.workloads`
(``pypool/workloads_data/<name>.pickle.gz``):

  recorded_gpt_train          a GPT (8 layers, d=768, 12 heads, vocab 32000, 82 M
                              parameters) trained with AdamW under bf16 autocast, batch 8,
                              a new sequence length every step (64..1024, multiples of 64)
  recorded_cnn_growing_batch  a ResNet-18-style CNN on 64x64 images trained with SGD
                              (momentum, weight decay) under bf16 autocast, the batch
                              growing from 16 to 192 over the run
  recorded_gpt_decode         GPT inference in bf16 (12 layers, d=1024, 16 heads, 186 M
                              parameters): batches of requests, each a prefill over its
                              prompt and token-by-token decoding with a per-layer KV
                              cache grown by torch.cat every token (as HuggingFace's
                              DynamicCache does)

Recording starts before the model is built, so parameters, optimizer states, cuBLAS
workspaces (torch takes them from its caching allocator) and every temporary are in the
trace. Kernels do not run on the simulated device (tensor values are junk), but nothing
in these loops depends on a value, so -- data-dependent shapes aside, of which there are
none here -- this is the allocation sequence PyTorch makes on a GPU (compute capability
9.0, as the simulated device reports), with two settings a GPU run would not need:

  * torch.backends.cudnn.enabled = False: cuDNN is not simulated, so convolutions take
    PyTorch's own im2col + cuBLAS path (its `columns` buffers instead of cuDNN
    workspaces), and batch norm its native kernels;
  * torch.backends.cuda.enable_cudnn_sdp(False): attention uses flash attention (bf16),
    as on a GPU where the cuDNN attention backend is off.

What is kept of each snapshot (to fit the repository: < 300 KB gzip-compressed each):
``device_traces`` entries with ``action``, ``addr``, ``size`` and ``stream`` only (no
frames -- recorded with context=None --, no ``time_us``: on the simulated device it is
host time, not GPU time), and ``segments`` without frames, plus a ``pypool_recording``
dict saying what was run (model, steps, shapes, torch version, PyTorch's peak
allocated/reserved bytes). :meth:`pypool.trace.Trace.load` and
:func:`pypool.trace.torch_reserved_profile` read them like any ``_dump_snapshot()``.

How to rerun (needs a CUDA build of torch and pypool built with the simulated device,
installed into the same environment)::

    /tmp/venv-cuda/bin/pip install --no-build-isolation --no-deps .
    /tmp/venv-cuda/bin/python tools/record_sim_workloads.py            # all three
    /tmp/venv-cuda/bin/python tools/record_sim_workloads.py --only recorded_gpt_decode --out /tmp/rec

Each workload is recorded in a fresh child process on an 80 GiB simulated device (the
parent starts it with pypool.simdevice.environ()), so the caching allocator starts empty
and the recordings do not depend on each other. A rerun gives the same event sequence
(allocation ids, sizes and order; addresses differ). Each takes seconds.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "pypool" / "workloads_data"
SIM_MEMORY = "80GiB"
MAX_ENTRIES = 2_000_000  # far more than any recording here: nothing is dropped

KEEP_ENTRY = ("action", "addr", "size", "stream")
KEEP_SEGMENT = ("device", "address", "total_size", "allocated_size", "active_size", "requested_size", "stream",
                "segment_type", "is_expandable")
KEEP_BLOCK = ("address", "size", "requested_size", "state")


# ============================================================================ models
# Imported lazily: the parent process needs neither torch nor a device.

def _gpt_classes() -> Any:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self, d: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.ln1 = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.ln2 = nn.LayerNorm(d)
            self.up = nn.Linear(d, 4 * d)
            self.down = nn.Linear(4 * d, d)

        def attend(self, x: "torch.Tensor", cache: Any = None) -> "torch.Tensor":
            B, T, C = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
            if cache is not None:  # decoding: grow the layer's K and V caches by T tokens
                if cache[0] is not None:
                    k = torch.cat([cache[0], k], dim=2)
                    v = torch.cat([cache[1], v], dim=2)
                cache[0], cache[1] = k, v
            causal = cache is None or T > 1
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            return self.proj(y.transpose(1, 2).reshape(B, T, C))

        def forward(self, x: "torch.Tensor", cache: Any = None) -> "torch.Tensor":
            x = x + self.attend(x, cache)
            return x + self.down(F.gelu(self.up(self.ln2(x))))

    class GPT(nn.Module):
        def __init__(self, vocab: int, d: int, heads: int, layers: int, context: int) -> None:
            super().__init__()
            self.tok = nn.Embedding(vocab, d)
            self.pos = nn.Embedding(context, d)
            self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
            self.lnf = nn.LayerNorm(d)
            self.head = nn.Linear(d, vocab, bias=False)
            self.head.weight = self.tok.weight  # tied, as GPT-2

        def forward(self, idx: "torch.Tensor", caches: Any = None, start: int = 0) -> "torch.Tensor":
            pos = torch.arange(start, start + idx.shape[1], device=idx.device)
            x = self.tok(idx) + self.pos(pos)
            for i, b in enumerate(self.blocks):
                x = b(x, None if caches is None else caches[i])
            return self.head(self.lnf(x))

    return GPT


def _resnet(num_classes: int = 1000) -> Any:
    import torch.nn as nn

    class Basic(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.short = None
            if stride != 1 or cin != cout:
                self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x: Any) -> Any:
            y = self.relu(self.b1(self.c1(x)))
            y = self.b2(self.c2(y))
            return self.relu(y + (x if self.short is None else self.short(x)))

    layers: List[Any] = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Basic(cin, cout, stride), Basic(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


# ============================================================================ workloads

def gpt_train() -> Dict[str, Any]:
    import torch
    import torch.nn.functional as F

    cfg = dict(vocab=32000, d=768, heads=12, layers=8, context=1024, batch=8, steps=20, seq_multiple=64)
    gen = torch.Generator().manual_seed(0)
    seqs = [int(s) * cfg["seq_multiple"] for s in torch.randint(1, cfg["context"] // cfg["seq_multiple"] + 1,
                                                                 (cfg["steps"],), generator=gen)]
    model = _gpt_classes()(cfg["vocab"], cfg["d"], cfg["heads"], cfg["layers"], cfg["context"]).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1)
    for T in seqs:
        idx = torch.randint(0, cfg["vocab"], (cfg["batch"], T), generator=gen).cuda(non_blocking=True)
        tgt = torch.randint(0, cfg["vocab"], (cfg["batch"], T), generator=gen).cuda(non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(idx)
        loss = F.cross_entropy(logits.float().view(-1, cfg["vocab"]), tgt.view(-1))
        del logits
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"model": "GPT", "optimizer": "AdamW (foreach)", "autocast": "bfloat16", **cfg, "seq_lens": seqs,
            "parameters": sum(p.numel() for p in model.parameters())}


def cnn_growing_batch() -> Dict[str, Any]:
    import torch
    import torch.nn.functional as F

    cfg = dict(image=64, classes=1000, steps=24, min_batch=16, max_batch=192)
    n = cfg["steps"]
    batches = [int(round(cfg["min_batch"] + (cfg["max_batch"] - cfg["min_batch"]) * i / (n - 1))) for i in range(n)]
    gen = torch.Generator().manual_seed(0)
    model = _resnet(cfg["classes"]).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for B in batches:
        x = torch.randn(B, 3, cfg["image"], cfg["image"], generator=gen).cuda(non_blocking=True)
        y = torch.randint(0, cfg["classes"], (B,), generator=gen).cuda(non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        del out
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"model": "ResNet-18 (BasicBlock [2, 2, 2, 2], 3x3 stem)", "optimizer": "SGD (momentum 0.9, foreach)",
            "autocast": "bfloat16", **cfg, "batches": batches,
            "parameters": sum(p.numel() for p in model.parameters())}


def gpt_decode() -> Dict[str, Any]:
    import torch

    cfg = dict(vocab=32000, d=1024, heads=16, layers=12, context=2048, requests=4)
    gen = torch.Generator().manual_seed(1)
    reqs = []
    for _ in range(cfg["requests"]):
        b = int(torch.randint(1, 9, (1,), generator=gen))
        prompt = int(torch.randint(32, 513, (1,), generator=gen))
        new = int(torch.randint(24, 49, (1,), generator=gen))
        reqs.append([b, prompt, new])
    model = _gpt_classes()(cfg["vocab"], cfg["d"], cfg["heads"], cfg["layers"], cfg["context"])
    model = model.to(device="cuda", dtype=torch.bfloat16).eval()
    with torch.inference_mode():
        for b, prompt, new in reqs:
            idx = torch.randint(0, cfg["vocab"], (b, prompt), generator=gen).cuda(non_blocking=True)
            caches: List[List[Any]] = [[None, None] for _ in range(cfg["layers"])]
            logits = model(idx, caches, 0)[:, -1]
            tok = logits.argmax(-1, keepdim=True)  # on the device: no synchronization
            del logits, idx
            pos = prompt
            for _ in range(new):
                logits = model(tok, caches, pos)[:, -1]
                tok = logits.argmax(-1, keepdim=True)
                del logits
                pos += 1
            del caches, tok
    return {"model": "GPT (bf16 weights, inference_mode)", "cache": "per-layer K/V grown by torch.cat every token",
            **cfg, "requests_batch_prompt_new": reqs, "parameters": sum(p.numel() for p in model.parameters())}


WORKLOADS: Dict[str, Callable[[], Dict[str, Any]]] = {
    "recorded_gpt_train": gpt_train,
    "recorded_cnn_growing_batch": cnn_growing_batch,
    "recorded_gpt_decode": gpt_decode,
}


# ============================================================================ recording

def strip(snapshot: Dict[str, Any]) -> Dict[str, Any]:
    """The parts of a snapshot that pypool reads (see the module docstring)."""
    traces = [[{k: e[k] for k in KEEP_ENTRY if k in e} for e in dev] for dev in snapshot["device_traces"]]
    segments = []
    for s in snapshot["segments"]:
        seg = {k: s[k] for k in KEEP_SEGMENT if k in s}
        seg["blocks"] = [{k: b[k] for k in KEEP_BLOCK if k in b} for b in s.get("blocks", [])]
        segments.append(seg)
    return {"segments": segments, "device_traces": traces}


def record_child(name: str, out: Path) -> None:
    """Runs on the simulated device: one workload, recorded and saved."""
    import torch

    from pypool import simdevice

    if not simdevice.active():
        sys.exit("record_sim_workloads: the child must run on the simulated device")
    torch.backends.cudnn.enabled = False
    torch.backends.cuda.enable_cudnn_sdp(False)
    torch.manual_seed(0)
    torch.cuda.init()
    torch.cuda.memory._record_memory_history(max_entries=MAX_ENTRIES, context=None, stacks="python")
    t0 = time.perf_counter()
    info = WORKLOADS[name]()
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    entries = len(snap["device_traces"][0])
    if entries >= MAX_ENTRIES:
        sys.exit(f"record_sim_workloads: {name}: the ring buffer filled ({entries} entries); raise MAX_ENTRIES")
    data = strip(snap)
    data["pypool_recording"] = {
        "workload": name,
        **info,
        "torch": str(torch.__version__),
        "device": "pypool simulated device (" + simdevice.control().version() + "), compute capability 9.0",
        "settings": {"cudnn": False, "cudnn_sdp": False, "allocator": "PyTorch CUDACachingAllocator (native)"},
        "max_memory_allocated": torch.cuda.max_memory_allocated(),
        "max_memory_reserved": torch.cuda.max_memory_reserved(),
        "trace_entries": entries,
        "recorded_by": "tools/record_sim_workloads.py",
    }
    raw = pickle.dumps(data, protocol=4)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(raw, compresslevel=9, mtime=0))
    print(json.dumps({"workload": name, "entries": entries, "seconds": round(seconds, 2),
                      "bytes": out.stat().st_size, "max_memory_reserved": torch.cuda.max_memory_reserved()}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"folder for <name>.pickle.gz (default {DEFAULT_OUT})")
    ap.add_argument("--only", choices=sorted(WORKLOADS), action="append", help="record only these (repeatable)")
    ap.add_argument("--child", choices=sorted(WORKLOADS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        record_child(args.child, args.out / f"{args.child}.pickle.gz")
        return 0

    from pypool import simdevice
    from pypool.trace import Trace

    env = simdevice.environ(memory=SIM_MEMORY)
    failed = 0
    for name in args.only or list(WORKLOADS):
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", name, "--out", str(args.out)],
                           env=env, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{name}: FAILED ({r.returncode})\n{r.stdout}{r.stderr}", file=sys.stderr)
            failed += 1
            continue
        stats = json.loads(r.stdout.strip().splitlines()[-1])
        trace = Trace.load(args.out / f"{name}.pickle.gz")
        print(f"{name}: {stats['entries']} entries in {stats['seconds']} s, {stats['bytes'] / 1024:.0f} KiB; "
              f"{trace.num_allocs} allocations, floor (peak live) {trace.peak_live() / 2**20:.1f} MiB, "
              f"PyTorch reserved {stats['max_memory_reserved'] / 2**20:.1f} MiB at peak")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
