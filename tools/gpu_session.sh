#!/usr/bin/env bash
# One call on a lent GPU machine (see benchmarks/results/README.md): build, run the GPU
# tests and the full benchmark against PyTorch's allocator, leave everything under $OUT.
# Usage (device tool):  bash tools/gpu_session.sh
set -uo pipefail
OUT=${OUT:-out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
{
  echo "# date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$OUT/env.txt" 2>&1
python3 -m pip install -q --no-build-isolation --no-deps . > "$OUT/build.log" 2>&1 || { tail -50 "$OUT/build.log"; exit 1; }
cd /tmp  # import the installed package, not the source tree
python3 -m pytest -q -p no:cacheprovider -m gpu "$OLDPWD/tests" 2>&1 | tee "$OUT/gpu-tests.txt"
python3 -m pypool bench --device cuda --json "$OUT/bench.json" --html "$OUT/bench.html" 2>&1 | tee "$OUT/bench.txt"
