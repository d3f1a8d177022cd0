#!/usr/bin/env bash
# Developer loop: rebuild into .venv and drop the module into the source tree (atomically,
# so processes that have the old one mapped keep working), so that tests run from the
# checkout import the fresh build.
set -euo pipefail
cd "$(dirname "$0")/.."
make install
so=$(ls .venv/lib/python3*/site-packages/pypool/_core*.so)
cp "$so" "pypool/.core.tmp" && mv "pypool/.core.tmp" "pypool/$(basename "$so")"
