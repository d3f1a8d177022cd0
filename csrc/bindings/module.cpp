// pybind11 module pypool._core: the module itself and its exceptions. The rest is
// registered by one file per concern (bindings.h): Config, conversions, Python stack
// capture, the replay engine and benchmark timing loops.
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

  bindings::init_config(m);
  m.attr("MAX_REQUEST") = py::int_(policy::kMaxRequest);
  m.attr("MAX_DEVICES") = py::int_(Registry::kMaxDevices);

  bindings::init_conversions(m);
  bindings::init_stack_capture(m);
  bindings::init_replay(m);
  bindings::init_bench(m);
}
