// pybind11 module pypool._core: conversions only. Policy lives in the C++ core; names
// and validation for users live in the Python package.
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <unordered_map>
#include <cstdlib>
#include <random>
#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include "pypool/allocator.h"
#include "pypool/backends.h"
#include "pypool/c_api.h"
#include "pypool/host_backend.h"
#include "pypool/registry.h"

namespace py = pybind11;
using namespace pypool;

void init_config(py::module_& m);  // csrc/bindings/config.cpp

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
  static const char* kTypes[3] = {"all", "small_pool", "large_pool"};
  auto put = [&](const char* name, const StatArray& a) {
    for (int i = 0; i < 3; ++i) {
      const std::string p = std::string(name) + "." + kTypes[i] + ".";
      d[py::str(p + "current")] = a[i].current;
      d[py::str(p + "peak")] = a[i].peak;
      d[py::str(p + "allocated")] = a[i].allocated();
      d[py::str(p + "freed")] = a[i].freed;
    }
  };
#define PYPOOL_PUT_ARRAY(name) put(#name, s.name);
  PYPOOL_ARRAY_STATS(PYPOOL_PUT_ARRAY)
#undef PYPOOL_PUT_ARRAY
#define PYPOOL_PUT_SCALAR(name) d[#name] = s.name;
  PYPOOL_SCALAR_STATS(PYPOOL_PUT_SCALAR)
#undef PYPOOL_PUT_SCALAR
  d["max_pool_size"] = s.max_pool_size;
  d["stats_version"] = kStatsVersion;
  return d;
}

py::dict block_dict(const BlockInfo& b) {
  py::dict d;
  d["address"] = b.address;
  d["size"] = b.size;
  d["requested_size"] = b.requested;
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

// Note [Native stack capture]: while capture is on, each allocation records the Python
// stack of the calling thread. The walk runs here in C++ (public frame API), keyed on
// (code object, instruction offset) pairs and interned in a table that holds strong
// references to the code objects; line numbers and strings are only made when a report
// asks (context_frames). A Python-level walk cost 4-17 us per allocation; this costs
// well under one. The table is guarded by the GIL. The hook runs before the pool lock is
// taken (see allocator.h), so taking the GIL here cannot deadlock with the pool.
struct StackKeyHash {
  std::size_t operator()(const std::vector<std::uintptr_t>& v) const noexcept {
    std::size_t h = 1469598103934665603ull;
    for (std::uintptr_t x : v) h = (h ^ x) * 1099511628211ull;
    return h;
  }
};
struct StackTable {
  std::unordered_map<std::vector<std::uintptr_t>, std::uint64_t, StackKeyHash> ids;
  std::vector<std::vector<std::pair<PyObject*, int>>> stacks{1};  // id 0 = none
};
StackTable& stack_table() {
  static auto* t = new StackTable();  // leaked: code objects stay alive to exit
  return *t;
}
constexpr int kMaxFrames = 48;

std::uint64_t native_context_hook(void*) {
  // At interpreter shutdown a thread without a Python state must not take the GIL
  // (CPython would end it with pthread_exit, unwinding through torch's frames).
#if PY_VERSION_HEX >= 0x030D0000
  if (!Py_IsInitialized() || Py_IsFinalizing()) return 0;
#else
  if (!Py_IsInitialized() || _Py_IsFinalizing()) return 0;
#endif
  py::gil_scoped_acquire gil;
  PyFrameObject* f = PyThreadState_GetFrame(PyThreadState_Get());  // new reference
  if (f == nullptr) return 0;  // a thread with no Python frames (autograd workers)
  thread_local std::vector<std::uintptr_t> key;
  key.clear();
  for (int n = 0; f != nullptr && n < kMaxFrames; ++n) {
    PyCodeObject* code = PyFrame_GetCode(f);  // new reference
#if PY_VERSION_HEX >= 0x030B0000
    const int where = PyFrame_GetLasti(f);
#else
    const int where = PyFrame_GetLineNumber(f);
#endif
    key.push_back(reinterpret_cast<std::uintptr_t>(code));
    key.push_back(static_cast<std::uintptr_t>(where));
    Py_DECREF(code);  // the table takes its own reference below when the stack is new
    PyFrameObject* back = PyFrame_GetBack(f);
    Py_DECREF(f);
    f = back;
  }
  Py_XDECREF(f);
  StackTable& t = stack_table();
  auto it = t.ids.find(key);
  if (it != t.ids.end()) return it->second;
  std::vector<std::pair<PyObject*, int>> stack;
  for (std::size_t i = 0; i < key.size(); i += 2) {
    auto* code = reinterpret_cast<PyObject*>(key[i]);
    Py_INCREF(code);
    stack.emplace_back(code, static_cast<int>(key[i + 1]));
  }
  const std::uint64_t id = t.stacks.size();
  t.stacks.push_back(std::move(stack));
  t.ids.emplace(key, id);
  return id;
}

py::list context_frames(std::uint64_t id) {
  py::list out;
  StackTable& t = stack_table();
  if (id == 0 || id >= t.stacks.size()) return out;
  for (const auto& [obj, where] : t.stacks[id]) {
    auto* code = reinterpret_cast<PyCodeObject*>(obj);
#if PY_VERSION_HEX >= 0x030B0000
    const int line = PyCode_Addr2Line(code, where);
#else
    const int line = where;
#endif
    py::dict d;
    d["filename"] = py::reinterpret_borrow<py::object>(code->co_filename);
    d["line"] = line;
    d["name"] = py::reinterpret_borrow<py::object>(code->co_name);
    out.append(d);
  }
  return out;
}

// ---- C++-timed benchmark loops (no Python in the timed region) ----
using Clock = std::chrono::steady_clock;

template <class Alloc, class Free>
double time_pairs(std::size_t size, std::size_t iters, Alloc a, Free f) {
  // Warm the cache first so every timed pair is a hit.
  f(a(size));
  const auto t0 = Clock::now();
  for (std::size_t i = 0; i < iters; ++i) {
    void* p = a(size);
    asm volatile("" : : "r"(p) : "memory");
    f(p);
  }
  const auto t1 = Clock::now();
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / double(iters);
}

// RMM random_allocations style: `live_max` slots; each step allocates (prob 0.73, into an
// empty slot) or frees a random live slot. Returns ns per op.
template <class Alloc, class Free>
double time_random(std::size_t max_size, std::size_t ops, std::size_t live_max,
                   std::uint64_t seed, Alloc a, Free f) {
  std::mt19937_64 rng(seed);
  std::vector<std::size_t> sizes(ops);
  std::vector<std::uint8_t> is_alloc(ops);
  std::uniform_int_distribution<std::size_t> dsize(1, max_size);
  std::bernoulli_distribution dalloc(0.73);
  std::vector<std::size_t> pick(ops);
  for (std::size_t i = 0; i < ops; ++i) {
    sizes[i] = dsize(rng);
    is_alloc[i] = dalloc(rng);
    pick[i] = rng();
  }
  std::vector<void*> live;
  live.reserve(live_max);
  auto pass = [&] {
    for (std::size_t i = 0; i < ops; ++i) {
      if ((is_alloc[i] && live.size() < live_max) || live.empty()) {
        live.push_back(a(sizes[i]));
      } else {
        const std::size_t j = pick[i] % live.size();
        f(live[j]);
        live[j] = live.back();
        live.pop_back();
      }
    }
    for (void* p : live) f(p);
    live.clear();
  };
  pass();  // warm-up: the pool reaches its working set, so the timed pass measures reuse
  const auto t0 = Clock::now();
  pass();
  const auto t1 = Clock::now();
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / double(ops);
}


// Contention without the GIL: `threads` C++ threads, released together, each timing
// `iters` malloc+free pairs of `size` bytes through pypool's C ABI (the calls torch makes)
// on `device`. Returns the wall time from the first thread's start to the last one's end
// and each thread's own ns per pair. An exception in a thread (out of memory) stops that
// thread and is raised here after all have joined.
py::dict bench_c_api_threads(std::size_t size, std::size_t iters, int threads, int device) {
  if (threads < 1 || threads > 256) throw std::invalid_argument("threads must be in 1..256");
  if (size == 0) throw std::invalid_argument("size must be > 0");
  std::vector<double> per_thread(static_cast<std::size_t>(threads), 0.0);
  std::vector<Clock::time_point> begin(static_cast<std::size_t>(threads)), end(begin.size());
  std::vector<std::string> errors(begin.size());
  {
    py::gil_scoped_release nogil;
    std::atomic<int> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> pool;
    pool.reserve(begin.size());
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        const auto k = static_cast<std::size_t>(t);
        try {
          // Warm this thread's path (first call per thread may set a CUDA context) before
          // the start line.
          pypool_free(pypool_malloc(size, device, nullptr), 0, device, nullptr);
        } catch (const std::exception& e) {
          errors[k] = e.what();
        }
        ready.fetch_add(1);
        while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
        begin[k] = Clock::now();
        if (errors[k].empty()) {
          try {
            for (std::size_t i = 0; i < iters; ++i) {
              void* p = pypool_malloc(size, device, nullptr);
              asm volatile("" : : "r"(p) : "memory");
              pypool_free(p, 0, device, nullptr);
            }
          } catch (const std::exception& e) {
            errors[k] = e.what();
          }
        }
        end[k] = Clock::now();
      });
    }
    while (ready.load() < threads) std::this_thread::yield();
    go.store(true, std::memory_order_release);
    for (auto& th : pool) th.join();
  }
  for (const auto& e : errors)
    if (!e.empty()) throw OutOfMemoryError("bench_c_api_threads: " + e);
  auto first = begin[0], last = end[0];
  for (std::size_t k = 0; k < begin.size(); ++k) {
    first = std::min(first, begin[k]);
    last = std::max(last, end[k]);
    per_thread[k] = std::chrono::duration<double, std::nano>(end[k] - begin[k]).count() /
                    double(std::max<std::size_t>(1, iters));
  }
  const double wall = std::chrono::duration<double, std::nano>(last - first).count();
  py::dict d;
  d["threads"] = threads;
  d["iters"] = iters;
  d["size"] = size;
  d["wall_ns"] = wall;
  // All pairs of all threads over the wall time: the cost of one pair to the process.
  d["ns_per_pair"] = wall / double(std::max<std::size_t>(1, iters * static_cast<std::size_t>(threads)));
  d["thread_ns_per_pair"] = per_thread;
  return d;
}

// Replays an allocation trace through a pool: actions[i] is 0 = alloc (ids[i], sizes[i],
// streams[i]) or 1 = free (ids[i]); ids are dense (0..max_id). Runs without Python in
// the loop. An alloc that fails with out-of-memory is counted and its free skipped.
py::dict replay_trace(DevicePool& pool, py::array_t<std::int8_t, py::array::c_style | py::array::forcecast> actions,
                      py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> ids,
                      py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> sizes,
                      py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> streams,
                      std::int64_t sample_every) {
  const auto n = static_cast<std::size_t>(actions.size());
  if (ids.size() != actions.size() || sizes.size() != actions.size() || streams.size() != actions.size())
    throw std::invalid_argument("replay: actions, ids, sizes and streams must have the same length");
  const std::int8_t* act = actions.data();
  const std::int64_t* id = ids.data();
  const std::int64_t* sz = sizes.data();
  const std::int64_t* st = streams.data();
  std::int64_t max_id = -1;
  for (std::size_t i = 0; i < n; ++i) {
    if (id[i] < 0) throw std::invalid_argument("replay: negative id at event " + std::to_string(i));
    max_id = std::max(max_id, id[i]);
  }
  std::vector<void*> ptr(static_cast<std::size_t>(max_id + 1), nullptr);
  std::vector<std::size_t> req(static_cast<std::size_t>(max_id + 1), 0);
  std::size_t live = 0, peak_live = 0;
  std::int64_t ooms = 0, bad = 0;
  std::int64_t first_oom = -1;  // event index of the first allocation that failed
  std::vector<std::int64_t> s_event, s_live, s_alloc, s_reserved;
  const auto t0 = Clock::now();
  {
    py::gil_scoped_release nogil;
    for (std::size_t i = 0; i < n; ++i) {
      const auto k = static_cast<std::size_t>(id[i]);
      if (act[i] == 0) {
        if (ptr[k] != nullptr) { ++bad; continue; }
        try {
          ptr[k] = pool.malloc(static_cast<std::size_t>(sz[i]), static_cast<Stream>(st[i]));
          req[k] = static_cast<std::size_t>(sz[i]);
          live += req[k];
          if (live > peak_live) peak_live = live;
        } catch (const OutOfMemoryError&) {
          if (ooms++ == 0) first_oom = static_cast<std::int64_t>(i);
        }
      } else {
        if (ptr[k] == nullptr) { ++bad; continue; }
        pool.free(ptr[k]);
        ptr[k] = nullptr;
        live -= req[k];
      }
      if (sample_every > 0 && i % static_cast<std::size_t>(sample_every) == 0) {
        const Stats s = pool.stats();
        s_event.push_back(static_cast<std::int64_t>(i));
        s_live.push_back(static_cast<std::int64_t>(live));
        s_alloc.push_back(s.allocated_bytes[0].current);
        s_reserved.push_back(s.reserved_bytes[0].current);
      }
    }
  }
  const auto t1 = Clock::now();
  const double secs = std::chrono::duration<double>(t1 - t0).count();
  py::dict d;
  d["events"] = n;
  d["seconds"] = secs;
  d["events_per_second"] = secs > 0 ? double(n) / secs : 0.0;
  d["peak_live_requested"] = peak_live;
  d["final_live_requested"] = live;
  d["ooms"] = ooms;
  d["first_oom_event"] = first_oom;
  d["skipped_events"] = bad;
  d["timeline"] = py::dict(py::arg("event") = s_event, py::arg("live") = s_live,
                           py::arg("allocated") = s_alloc, py::arg("reserved") = s_reserved);
  return d;
}

// Time per malloc+free pair with `n_free` free blocks of random sizes scattered through
// the small pool (allocate 2n, free every other), on a fresh host-backed pool.
double bench_free_scaling(std::size_t n_free, std::size_t iters, std::size_t size, std::uint64_t seed) {
  HostBackendOptions o;
  o.capacity = std::size_t(1) << 46;
  DevicePool pool(Config{}, make_host_backend(o));
  std::mt19937_64 rng(seed);
  std::vector<void*> blocks(2 * n_free);
  for (auto& p : blocks) p = pool.malloc(512 + rng() % (64 << 10), 0);
  for (std::size_t i = 0; i < blocks.size(); i += 2) pool.free(blocks[i]);
  const double ns = time_pairs(size, iters, [&](std::size_t s) { return pool.malloc(s, 0); },
                               [&](void* p) { pool.free(p); });
  for (std::size_t i = 1; i < blocks.size(); i += 2) pool.free(blocks[i]);
  return ns;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "pypool native core (private; use the pypool package)";

  py::register_exception<OutOfMemoryError>(m, "OutOfMemoryError", PyExc_RuntimeError);
  py::register_exception<InvalidPointerError>(m, "InvalidPointerError", PyExc_ValueError);
  py::register_exception<InvariantError>(m, "InvariantError", PyExc_AssertionError);
  py::register_exception<BackendError>(m, "BackendError", PyExc_RuntimeError);

  init_config(m);
  m.attr("MAX_REQUEST") = py::int_(policy::kMaxRequest);
  m.attr("MAX_DEVICES") = py::int_(Registry::kMaxDevices);

  // Size policy, exposed for table tests and the advisor.
  m.def("round_size", [](const Config& c, std::size_t s) {
    if (s == 0 || s > policy::kMaxRequest) throw std::invalid_argument("size out of range");
    return policy::round_size(c, s);
  });
  m.def("pool_for", [](const Config& c, std::size_t r) {
    return policy::pool_for(c, r) == PoolKind::kSmall ? "small" : "large";
  });
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
               out.append(d);
             }
             return out;
           })
      .def("set_capture_context",
           [](DevicePool& p, bool on) {
             p.set_context_hook(on ? &native_context_hook : nullptr, nullptr);
             p.set_capture_context(on);
           });

  m.def("context_frames", &context_frames, py::arg("context"),
        "The Python stack recorded for a context id, innermost frame first.");
  m.def("context_count", [] { return stack_table().stacks.size() - 1; });
  m.def("registry_capture_new_pools", [](bool on) {
    Registry::instance().set_capture_new_pools(on ? &native_context_hook : nullptr, nullptr, on);
  });
  m.def("registry_owns", [](const DevicePool& p) { return Registry::instance().owns(&p); });

  // ---- registry (the state behind the C ABI) ----
  m.def("registry_configure",
        [](const std::string& backend, const Config& c, std::size_t cap) {
          Registry::instance().configure(backend, c, cap);
        });
  m.def("registry_configured", [] { return Registry::instance().configured(); });
  m.def("registry_backend", [] { return Registry::instance().backend_kind(); });
  m.def("registry_config", [] { return Registry::instance().config(); });
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
    d["pypool_init"] = reinterpret_cast<std::uintptr_t>(&pypool_init);
    d["pypool_empty_cache"] = reinterpret_cast<std::uintptr_t>(&pypool_empty_cache);
    d["pypool_set_memory_fraction"] = reinterpret_cast<std::uintptr_t>(&pypool_set_memory_fraction);
    d["pypool_record_stream"] = reinterpret_cast<std::uintptr_t>(&pypool_record_stream);
    return d;
  });

  m.def("replay_trace", &replay_trace, py::arg("pool"), py::arg("actions"), py::arg("ids"),
        py::arg("sizes"), py::arg("streams"), py::arg("sample_every") = 0);
  m.def("bench_free_scaling", &bench_free_scaling, py::arg("n_free"), py::arg("iters"),
        py::arg("size") = 4096, py::arg("seed") = 1, GR());

  // ---- benchmarks timed in C++ ----
  m.def("bench_c_api_pairs",
        [](std::size_t size, std::size_t iters, int device) {
          return time_pairs(size, iters,
                            [device](std::size_t s) { return pypool_malloc(s, device, nullptr); },
                            [device](void* p) { pypool_free(p, 0, device, nullptr); });
        },
        py::arg("size"), py::arg("iters"), py::arg("device") = 0, GR());
  m.def("bench_c_api_threads", &bench_c_api_threads, py::arg("size"), py::arg("iters"),
        py::arg("threads"), py::arg("device") = 0);
  m.def("bench_glibc_pairs",
        [](std::size_t size, std::size_t iters) {
          return time_pairs(size, iters, [](std::size_t s) { return std::malloc(s); },
                            [](void* p) { std::free(p); });
        },
        GR());
  m.def("bench_c_api_random",
        [](std::size_t max_size, std::size_t ops, std::size_t live_max, std::uint64_t seed,
           int device) {
          return time_random(max_size, ops, live_max, seed,
                             [device](std::size_t s) { return pypool_malloc(s, device, nullptr); },
                             [device](void* p) { pypool_free(p, 0, device, nullptr); });
        },
        py::arg("max_size"), py::arg("ops"), py::arg("live_max"), py::arg("seed") = 1,
        py::arg("device") = 0, GR());
  m.def("bench_glibc_random",
        [](std::size_t max_size, std::size_t ops, std::size_t live_max, std::uint64_t seed) {
          return time_random(max_size, ops, live_max, seed,
                             [](std::size_t s) { return std::malloc(s); },
                             [](void* p) { std::free(p); });
        },
        py::arg("max_size"), py::arg("ops"), py::arg("live_max"), py::arg("seed") = 1, GR());
}
