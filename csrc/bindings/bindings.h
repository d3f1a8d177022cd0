// Private to csrc/bindings/: the pieces of pypool._core, one file per concern. Each
// registers its part of the module with its init_ function, called in order from
// PYBIND11_MODULE in module.cpp (one translation unit per concern keeps rebuilds of the
// module short, as pybind11's documentation suggests).
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

namespace pypool::bindings {

namespace py = pybind11;

// config.cpp: GrowthPolicy, Config and the field table CONFIG_FIELDS (Note [Config
// X-macro]).
void init_config(py::module_& m);
// conversions.cpp: size policy, backends, DevicePool, the registry and the C ABI; C++
// results become dicts and lists with the keys torch and the Python package use.
void init_conversions(py::module_& m);
// stack_capture.cpp: context ids and the Python stacks behind them (Note [Native stack
// capture]).
void init_stack_capture(py::module_& m);
// replay.cpp: replay_trace, a trace run through a pool with no Python in the loop.
void init_replay(py::module_& m);
// bench.cpp: benchmark loops timed in C++.
void init_bench(py::module_& m);

// The context hook that records the calling thread's Python stack and returns its id
// (stack_capture.cpp); DevicePool.set_capture_context installs it.
std::uint64_t native_context_hook(void* user);

// The context hook named "native", "torch_python" or "torch_all" and the user pointer it
// takes (Note [Torch tracebacks] in stack_capture.cpp); throws std::invalid_argument for
// another name.
struct NamedHook {
  std::uint64_t (*hook)(void*);
  void* user;
};
NamedHook context_hook_named(const std::string& name);

}  // namespace pypool::bindings
