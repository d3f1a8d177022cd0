# The two README commands: `make bench` (main job) and `make test` (the test suite, what
# CI runs through .ci/run). Each creates its own virtual environment in .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.pypool-installed
# The simulated-device suite runs in a second environment with the CUDA build of torch.
SIM_VENV := .venv-sim
SIM_PY := $(SIM_VENV)/bin/python
SIM_STAMP := $(SIM_VENV)/.pypool-installed
WHEEL_DIR := build/dist
SOURCES := $(shell find csrc pypool -type f \( -name '*.cpp' -o -name '*.c' -o -name '*.h' -o -name '*.inc' -o -name '*.map' -o -name '*.txt' -o -name '*.py' -o -name '*.pyi' -o -name '*.pickle.gz' \)) CMakeLists.txt pyproject.toml

.PHONY: all install bench test test-py test-sim sanitize chromium clean

all: test

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: requirements-dev.txt | $(VENV)/bin/python
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

# One wheel, installed into both environments (built once).
$(STAMP): $(VENV)/.deps $(SOURCES)
	rm -rf $(WHEEL_DIR)
	$(PY) -m pip wheel -q --no-build-isolation --no-deps -w $(WHEEL_DIR) .
	$(PY) -m pip install -q --force-reinstall --no-deps $(WHEEL_DIR)/pypool-*.whl
	touch $@

$(SIM_VENV)/.deps: requirements-sim.txt
	$(PYTHON) -m venv $(SIM_VENV)
	$(SIM_PY) -m pip install -q --upgrade pip
	$(SIM_PY) -m pip install -q -r requirements-sim.txt
	touch $@

$(SIM_STAMP): $(SIM_VENV)/.deps $(STAMP)
	$(SIM_PY) -m pip install -q --force-reinstall --no-deps $(WHEEL_DIR)/pypool-*.whl
	touch $@

install: $(STAMP)

# Main job: benchmarks against the default allocator (glibc on CPU, PyTorch's on a GPU)
# and the fragmentation report of a replayed workload.
bench: $(STAMP)
	$(PY) -P -m pypool bench --quick --json out/bench.json --html out/bench.html
	$(PY) -P -m pypool replay --workload transformer --report out/fragmentation
	@echo; echo "== fragmentation report of the replayed transformer workload at peak reserved =="
	@cat out/fragmentation/peak.txt

# Tests: mypy, pytest (CPU), the C++ stress driver under ASan+UBSan and TSan, the
# benchmark suite run once each as a smoke test, and the GPU suite on the simulated
# device against the real PyTorch CUDA build (test-sim).
test: $(STAMP) sanitize chromium
	$(PY) -m mypy --ignore-missing-imports --follow-imports=silent pypool
	$(PY) -P -m pytest -q tests --ignore=tests/gpu
	$(PY) -P -m pytest -q benchmarks --benchmark-disable
	$(MAKE) test-sim

# tests/gpu on two simulated devices (with the generic suites of tests/core on the cuda
# backend: tests/gpu/test_generic_cuda.py); kernel-marked tests skip there (they need real
# kernels) and run on a real GPU. Plus `pypool bench --device sim` end to end (smoke).
test-sim: $(SIM_STAMP)
	PYPOOL_REQUIRE_GPU=1 $(SIM_PY) -P -m pypool simdevice --devices 2 -- \
	  $(SIM_PY) -P -m pytest -q -rs tests/gpu tests/bench/test_bench_cli.py::test_bench_sim_smoke

test-py: $(STAMP)
	$(PY) -P -m pytest -q tests

# Headless Chromium renders the HTML report in a screenshot test. Optional: without it
# that one test skips and says why. Run as root with a package mirror, this target
# apt-get installs Debian's `chromium` package with its dependencies (about 115 packages,
# some 400 MB) and shows apt's list of what it installs; PYPOOL_NO_APT=1 skips it.
chromium:
	@if command -v chromium >/dev/null 2>&1; then \
	  echo "chromium: $$(command -v chromium) (for the HTML screenshot test)"; \
	elif [ -n "$$PYPOOL_NO_APT" ]; then \
	  echo "chromium: not installed (PYPOOL_NO_APT set): the HTML screenshot test will skip"; \
	elif [ "$$(id -u)" != 0 ]; then \
	  echo "chromium: not installed and not root: the HTML screenshot test will skip"; \
	else \
	  echo "chromium: installing Debian's chromium package and its dependencies with apt-get"; \
	  echo "  (optional, for the HTML screenshot test; PYPOOL_NO_APT=1 skips this)"; \
	  timeout 600 sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium' \
	    | grep -v -E '^(Get|Selecting|Preparing|Unpacking|Processing|Reading|Building)' \
	    || echo "chromium: apt-get failed: the HTML screenshot test will skip"; \
	  command -v chromium >/dev/null 2>&1 || echo "chromium: not installed: the HTML screenshot test will skip"; \
	fi

sanitize:
	@for san in address,undefined thread; do \
	  dir=build/sanitize-$${san%%,*}; \
	  cmake -S . -B $$dir -G Ninja -DPYPOOL_BUILD_PYTHON=OFF -DPYPOOL_BUILD_TOOLS=ON \
	    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DPYPOOL_SANITIZE=$$san > /dev/null || exit 1; \
	  cmake --build $$dir > /dev/null || exit 1; \
	  echo "stress under -fsanitize=$$san"; \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  TSAN_OPTIONS=halt_on_error=1 $$dir/pypool_stress 5000 || exit 1; \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  TSAN_OPTIONS=halt_on_error=1 $$dir/pypool_fault_paths > $$dir/fault_paths.log || { cat $$dir/fault_paths.log; exit 1; }; \
	  echo "contention (growth/release protocol, record_stream kernels) under -fsanitize=$$san"; \
	  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  TSAN_OPTIONS=halt_on_error=1 $$dir/pypool_contention all || exit 1; \
	  if [ "$$san" = address,undefined ]; then \
	    echo "contention on a core broken on purpose (1 in 16 events complete early): must fail"; \
	    cmake --build $$dir --target pypool_contention_broken > /dev/null || exit 1; \
	    if ASAN_OPTIONS=detect_leaks=0 $$dir/pypool_contention_broken kernels 1500 > $$dir/broken.log 2>&1; then \
	      cat $$dir/broken.log; echo "the kernel stress did not notice early reuse"; exit 1; fi; \
	  fi; \
	  if [ -x $$dir/csrc/simdevice/pypool_simdevice_smoke ]; then \
	    echo "simulated-device runtime smoke under -fsanitize=$$san"; \
	    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	    TSAN_OPTIONS=halt_on_error=1 PYPOOL_SIM_QUIET=1 $$dir/csrc/simdevice/pypool_simdevice_smoke > $$dir/sim_smoke.log 2>&1 \
	      || { tail -40 $$dir/sim_smoke.log; exit 1; }; \
	  fi; \
	done

clean:
	rm -rf build $(VENV) $(SIM_VENV) out
