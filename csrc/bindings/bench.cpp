// pypool._core, benchmark loops timed in C++: no Python in the timed region.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bindings.h"
#include "pypool/backends.h"
#include "pypool/c_api.h"
#include "pypool/device_pool.h"
#include "pypool/host_backend.h"

namespace pypool::bindings {

namespace {

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

void init_bench(py::module_& m) {
  using GR = py::call_guard<py::gil_scoped_release>;
  m.def("bench_free_scaling", &bench_free_scaling, py::arg("n_free"), py::arg("iters"),
        py::arg("size") = 4096, py::arg("seed") = 1, GR());

  m.def("bench_c_api_pairs",
        [](std::size_t size, std::size_t iters, int device) {
          return time_pairs(size, iters,
                            [device](std::size_t s) { return pypool_malloc(s, device, nullptr); },
                            [device](void* p) { pypool_free(p, 0, device, nullptr); });
        },
        py::arg("size"), py::arg("iters"), py::arg("device") = 0, GR());
  // torch's entry points (Note [Torch entry points]): their cost over bench_c_api_pairs
  // is the mode check.
  m.def("bench_c_api_torch_pairs",
        [](std::size_t size, std::size_t iters, int device) {
          return time_pairs(size, iters,
                            [device](std::size_t s) { return pypool_torch_malloc(s, device, nullptr); },
                            [device](void* p) { pypool_torch_free(p, 0, device, nullptr); });
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

}  // namespace pypool::bindings
