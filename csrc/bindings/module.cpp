// pybind11 module pypool._core: the module itself, its exceptions and Config. The rest is
// registered by one file per concern (bindings.h): conversions, Python stack capture,
// the replay engine and benchmark timing loops.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.h"
#include "pypool/device_pool.h"
#include "pypool/registry.h"

namespace py = pybind11;
using namespace pypool;

PYBIND11_MODULE(_core, m) {
  m.doc() = "pypool native core (private; use the pypool package)";

  py::register_exception<OutOfMemoryError>(m, "OutOfMemoryError", PyExc_RuntimeError);
  py::register_exception<InvalidPointerError>(m, "InvalidPointerError", PyExc_ValueError);
  py::register_exception<InvariantError>(m, "InvariantError", PyExc_AssertionError);
  py::register_exception<BackendError>(m, "BackendError", PyExc_RuntimeError);

  py::enum_<GrowthPolicy>(m, "GrowthPolicy")
      .value("segment", GrowthPolicy::kSegment)
      .value("exact", GrowthPolicy::kExact)
      .value("double", GrowthPolicy::kDouble)
      .value("fixed", GrowthPolicy::kFixed);

  py::class_<Config>(m, "Config")
      .def(py::init<>())
#define F(name) .def_readwrite(#name, &Config::name)
      F(max_pool_size) F(memory_fraction) F(min_block_size) F(small_size) F(small_segment_size)
      F(large_segment_size) F(min_large_alloc) F(round_large) F(round_up_divisions)
      F(max_split_size) F(expandable_segments) F(expandable_reserve) F(initial_pool_size)
      F(growth) F(growth_step) F(release_threshold) F(garbage_collection_threshold)
      F(reclaim_before_grow)
#undef F
      .def("validate", &Config::validate)
      .def("__repr__", &Config::to_string);
  m.attr("UNLIMITED") = py::int_(Config::kUnlimited);
  m.attr("MAX_REQUEST") = py::int_(policy::kMaxRequest);
  m.attr("MAX_DEVICES") = py::int_(Registry::kMaxDevices);

  bindings::init_conversions(m);
  bindings::init_stack_capture(m);
  bindings::init_replay(m);
  bindings::init_bench(m);
}
