// pypool._core, conversions: the core's classes and functions with their results as the
// dicts and lists the Python package reads (torch's key names for stats and segments).
// Policy lives in the C++ core; names and validation for users live in the package.
#include <pybind11/functional.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bindings.h"
#include "pypool/backends.h"
#include "pypool/c_api.h"
#include "pypool/device_pool.h"
#include "pypool/host_backend.h"
#include "pypool/registry.h"

namespace pypool::bindings {

namespace {

const char* state_name(BlockState s) {
  switch (s) {
    case BlockState::kFree: return "inactive";
    case BlockState::kAllocated: return "active_allocated";
    case BlockState::kPendingFree: return "active_pending_free";
  }
  return "unknown";
}

py::dict stats_dict(const Stats& s) {
  py::dict d;
  auto put = [&](const char* name, const StatArray& a) {
    for (int i = 0; i < kNumStatTypes; ++i) {
      const std::string p = std::string(name) + "." + kStatTypeNames[i] + ".";
      d[py::str(p + "current")] = a[i].current;
      d[py::str(p + "peak")] = a[i].peak;
      d[py::str(p + "allocated")] = a[i].allocated();
      d[py::str(p + "freed")] = a[i].freed;
    }
  };
#define PYPOOL_PUT_ARRAY(name) put(#name, s.name);
  PYPOOL_ARRAY_STATS(PYPOOL_PUT_ARRAY)
#undef PYPOOL_PUT_ARRAY
  auto put_single = [&](const char* name, const Stat& a) {
    const std::string p = std::string(name) + ".";
    d[py::str(p + "current")] = a.current;
    d[py::str(p + "peak")] = a.peak;
    d[py::str(p + "allocated")] = a.allocated();
    d[py::str(p + "freed")] = a.freed;
  };
#define PYPOOL_PUT_SINGLE(name) put_single(#name, s.name);
  PYPOOL_SINGLE_STATS(PYPOOL_PUT_SINGLE)
#undef PYPOOL_PUT_SINGLE
#define PYPOOL_PUT_SCALAR(name) d[#name] = s.name;
  PYPOOL_SCALAR_STATS(PYPOOL_PUT_SCALAR)
#undef PYPOOL_PUT_SCALAR
  d["max_pool_size"] = s.max_pool_size;
  d["max_split_size"] = s.max_split_size;
  // torch counts allocations refused up front by its throw_on_cudamalloc_oom policy here;
  // pypool has no such policy (a request the cap refuses is an OOM, in num_ooms, as torch
  // counts it without that policy), so none is ever counted.
  d["num_oom_rejections"] = 0;
  d["stats_version"] = kStatsVersion;
  return d;
}

py::dict block_dict(const BlockInfo& b) {
  py::dict d;
  d["address"] = b.address;
  d["size"] = b.size;
  d["requested_size"] = b.requested;
  d["last_requested_size"] = b.last_requested;
  d["state"] = state_name(b.state);
  d["stream"] = b.stream;
  d["seq"] = b.seq;
  d["context"] = b.context;
  d["time_us"] = b.time_us;
  return d;
}

py::list segments_list(const std::vector<SegmentInfo>& segs) {
  py::list out;
  for (const auto& s : segs) {
    py::dict d;
    d["address"] = s.address;
    d["total_size"] = s.size;
    d["segment_type"] = s.kind == PoolKind::kSmall ? "small" : "large";
    d["stream"] = s.stream;
    d["is_expandable"] = s.expandable;
    d["reserved_va"] = s.reserved_va;
    py::list blocks;
    for (const auto& b : s.blocks) blocks.append(block_dict(b));
    d["blocks"] = blocks;
    out.append(d);
  }
  return out;
}

}  // namespace

void init_conversions(py::module_& m) {
  // Size policy, exposed for table tests and the advisor.
  m.def("round_size", [](const Config& c, std::size_t s) {
    if (s == 0 || s > policy::kMaxRequest) throw std::invalid_argument("size out of range");
    return policy::round_size(c, s);
  });
  m.def("pool_for", [](const Config& c, std::size_t r) {
    return policy::pool_for(c, r) == PoolKind::kSmall ? "small" : "large";
  });
  m.def("interval_divisions_text", &policy::interval_divisions_text,
        "A packed round_up_interval_divisions word in torch's \"[k:v,...,>:v]\" form");
  m.def("segment_size", &policy::segment_size);
  m.def("min_segment_size", &policy::min_segment_size);
  m.def("can_use", &policy::can_use);
  m.def("should_split", &policy::should_split);

  py::class_<Backend, std::shared_ptr<Backend>>(m, "Backend")
      .def_property_readonly("name", &Backend::name)
      .def("mem_info", [](Backend& b) {
        auto mi = b.mem_info();
        return py::make_tuple(mi.free, mi.total);
      })
      .def_property_readonly("supports_vmm", &Backend::supports_vmm);

  py::class_<HostBackend, Backend, std::shared_ptr<HostBackend>>(m, "HostBackend")
      .def(py::init([](std::size_t capacity, bool touch) {
             HostBackendOptions o;
             o.capacity = capacity;
             o.touch = touch;
             return make_host_backend(o);
           }),
           py::arg("capacity"), py::arg("touch") = false)
      .def("fail_allocation_at", &HostBackend::fail_allocation_at)
      .def("set_byte_budget", &HostBackend::set_byte_budget)
      .def("set_capacity", &HostBackend::set_capacity)
      .def("hold_stream", &HostBackend::hold_stream)
      .def("release_stream", &HostBackend::release_stream)
      .def("set_delays", &HostBackend::set_delays, py::arg("allocate_us") = 0,
           py::arg("deallocate_us") = 0, py::arg("synchronize_us") = 0)
      .def("set_event_latency", &HostBackend::set_event_latency, py::arg("us"))
      .def("set_sync_waits_for_release", &HostBackend::set_sync_waits_for_release, py::arg("on"))
      .def_property_readonly("pending_events", &HostBackend::pending_events)
      .def_property_readonly("used", &HostBackend::used)
      .def_property_readonly("num_allocations", &HostBackend::num_allocations)
      .def_property_readonly("num_failures", &HostBackend::num_failures)
      .def_property_readonly("live_allocations", &HostBackend::live_allocations)
      .def_property_readonly("calls",
                             [](const HostBackend& b) {
                               const BackendCalls c = b.calls();
                               py::dict d;
#define PYPOOL_PUT_CALLS(name) d[#name] = c.name;
                               PYPOOL_BACKEND_OPS(PYPOOL_PUT_CALLS)
#undef PYPOOL_PUT_CALLS
                               return d;
                             })
      .def("reset_calls", &HostBackend::reset_calls);

  m.def("make_null_backend", &make_null_backend);
  m.def("make_cuda_backend", &make_cuda_backend);
  m.def("cuda_backend_compiled", &cuda_backend_compiled);
  m.def("cuda_device_count", []() {
    std::string why;
    int n = cuda_device_count(&why);
    return py::make_tuple(n, why);
  });

  using GR = py::call_guard<py::gil_scoped_release>;
  py::class_<DevicePool>(m, "DevicePool")
      .def(py::init([](const Config& c, std::shared_ptr<Backend> b, int device) {
             return std::make_unique<DevicePool>(c, std::move(b), device);
           }),
           py::arg("config"), py::arg("backend"), py::arg("device") = 0)
      .def("malloc",
           [](DevicePool& p, std::size_t size, Stream s) {
             return reinterpret_cast<std::uintptr_t>(p.malloc(size, s));
           },
           py::arg("size"), py::arg("stream") = 0, GR())
      .def("free", [](DevicePool& p, std::uintptr_t ptr) { p.free(reinterpret_cast<void*>(ptr)); },
           GR())
      .def("record_stream",
           [](DevicePool& p, std::uintptr_t ptr, Stream s) {
             p.record_stream(reinterpret_cast<void*>(ptr), s);
           })
      .def("empty_cache", &DevicePool::empty_cache, GR())
      .def("release_all_cached", &DevicePool::release_all_cached, GR())
      .def("memory_stats", [](const DevicePool& p) { return stats_dict(p.stats()); })
      .def("reset_peak_memory_stats", &DevicePool::reset_peak_stats)
      .def("reset_accumulated_memory_stats", &DevicePool::reset_accumulated_stats)
      .def("segments", [](const DevicePool& p) { return segments_list(p.segments()); })
      .def("live_blocks",
           [](const DevicePool& p, std::uint64_t min_seq) {
             py::list out;
             for (const auto& b : p.live_blocks(min_seq)) out.append(block_dict(b));
             return out;
           },
           py::arg("min_seq") = 0)
      .def("check_invariants", &DevicePool::check_invariants, GR())
      .def("set_memory_fraction", &DevicePool::set_memory_fraction)
      .def("memory_fraction", &DevicePool::memory_fraction)
      .def_property_readonly("cap", &DevicePool::cap)
      .def_property_readonly("next_seq", &DevicePool::next_seq)
      .def_property_readonly("device", &DevicePool::device)
      .def_property_readonly("config", &DevicePool::config)
      // Waits for grow_mu, which a growth holds across device calls: without the GIL.
      .def("update_config", &DevicePool::update_config, py::arg("config"), GR())
      .def_property_readonly("backend_name", [](DevicePool& p) { return p.backend().name(); })
      .def("mem_info",
           [](DevicePool& p) {
             auto mi = p.backend().mem_info();
             return py::make_tuple(mi.free, mi.total);
           })
      .def("size_of", [](const DevicePool& p, std::uintptr_t ptr) { return p.size_of(reinterpret_cast<void*>(ptr)); })
      .def("set_history", &DevicePool::set_history, py::arg("enabled"), py::arg("max_entries") = 0)
      .def("history",
           [](const DevicePool& p) {
             py::list out;
             for (const auto& e : p.history()) {
               py::dict d;
               d["action"] = trace_action_name(e.action);
               d["addr"] = e.addr;
               d["size"] = e.size;
               d["stream"] = e.stream;
               d["time_us"] = e.time_us;
               d["context"] = e.context;
               d["seq"] = e.seq;
               d["metadata"] = e.metadata;
               out.append(d);
             }
             return out;
           })
      .def(
          "set_capture_context",
          [](DevicePool& p, bool on, const std::string& hook) {
            const NamedHook h = context_hook_named(hook);  // throws before anything changes
            p.set_context_hook(on ? h.hook : nullptr, on ? h.user : nullptr);
            p.set_capture_context(on);
          },
          py::arg("on"), py::arg("hook") = "native",
          "Turn context capture on with the named hook (\"native\", \"torch_python\", \"torch_all\"), "
          "or off.")
      .def("set_capture_free_context", &DevicePool::set_capture_free_context, py::arg("on"),
           "Record the stack of each free and each empty_cache as well (Note [Free stacks]).");

  m.def("registry_owns", [](const DevicePool& p) { return Registry::instance().owns(&p); });

  // ---- registry (the state behind the C ABI) ----
  m.def("registry_configure",
        [](const std::string& backend, const Config& c, std::size_t cap) {
          Registry::instance().configure(backend, c, cap);
        });
  m.def("registry_configured", [] { return Registry::instance().configured(); });
  m.def("registry_backend", [] { return Registry::instance().backend_kind(); });
  m.def("registry_config", [] { return Registry::instance().config(); });
  m.def("registry_update_config", [](const Config& c) { Registry::instance().update_config(c); },
        py::arg("config"), py::call_guard<py::gil_scoped_release>());
  m.def("registry_pool", [](int d) -> DevicePool& { return Registry::instance().pool(d); },
        py::return_value_policy::reference);
  m.def("registry_has_pool", [](int d) { return Registry::instance().existing(d) != nullptr; });
  m.def("registry_devices", [] { return Registry::instance().devices(); });
  m.def("registry_reset", [] { Registry::instance().reset(); });
  m.def("c_api_error_count", [] { return pypool_error_count(); });
  m.def("c_api_symbols", [] {
    py::dict d;
    d["pypool_malloc"] = reinterpret_cast<std::uintptr_t>(&pypool_malloc);
    d["pypool_free"] = reinterpret_cast<std::uintptr_t>(&pypool_free);
    d["pypool_torch_malloc"] = reinterpret_cast<std::uintptr_t>(&pypool_torch_malloc);
    d["pypool_torch_free"] = reinterpret_cast<std::uintptr_t>(&pypool_torch_free);
    d["pypool_init"] = reinterpret_cast<std::uintptr_t>(&pypool_init);
    d["pypool_empty_cache"] = reinterpret_cast<std::uintptr_t>(&pypool_empty_cache);
    d["pypool_set_memory_fraction"] = reinterpret_cast<std::uintptr_t>(&pypool_set_memory_fraction);
    d["pypool_record_stream"] = reinterpret_cast<std::uintptr_t>(&pypool_record_stream);
    return d;
  });
}

}  // namespace pypool::bindings
