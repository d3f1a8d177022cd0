#include "pypool/c_api.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <exception>
#include <limits>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "pypool/backends.h"
#include "pypool/registry.h"
#include "pypool/size_policy.h"
#include "torch_oom.h"
#include "torch_profiler.h"

#include <cxxabi.h>

namespace {

std::atomic<std::uint64_t> g_errors{0};

// pypool_last_error's text: a fixed buffer per thread, so recording an error never
// allocates (it may be reporting a std::bad_alloc).
thread_local char t_last_error[2048] = "";

void set_last_error(const char* where, const char* what) noexcept {
  std::snprintf(t_last_error, sizeof t_last_error, "pypool: %s: %s", where, what);
}

void report(const char* where, const char* what) {
  g_errors.fetch_add(1, std::memory_order_relaxed);
  set_last_error(where, what);
  std::fprintf(stderr, "pypool: %s: %s\n", where, what);
}

bool valid_device(int device) noexcept {
  return device >= 0 && device < pypool::Registry::kMaxDevices;
}

// A device index in range that the backend does not have (CUDA device 5 of 2): the
// backend's error, seen when the device's pool is first made, is about the device.
bool device_missing(int device) noexcept {
  try {
    auto& r = pypool::Registry::instance();
    if (r.existing(device) != nullptr) return false;
    const std::string kind = r.backend_kind();
    if (kind != "cuda" && kind != "auto") return false;
    std::string why;
    const int n = pypool::cuda_device_count(&why);
    return n > 0 && device >= n;
  } catch (...) {
    return false;
  }
}

[[noreturn]] void throw_invalid_device(int device) {
  throw std::invalid_argument("pypool: device index " + std::to_string(device) +
                              " out of range [0, " +
                              std::to_string(pypool::Registry::kMaxDevices) + ")");
}


// Note [Torch entry points]: torch's own allocator has modes a pluggable allocator's
// malloc / free do not see: caching disabled (torch.cuda.caching_allocator_enable(False)
// or PYTORCH_NO_CUDA_MEMORY_CACHING=1: cudaMalloc / cudaFree per tensor, no stats),
// reports to torch.profiler, out-of-memory observers. pypool gives torch its own pair,
// pypool_torch_malloc / pypool_torch_free, so that pypool_malloc / pypool_free (C, ctypes
// and the benchmarks) stay as they are, and the torch pair pays one relaxed load and a
// branch (g_torch_mode) while no mode is on; the mode work is out of line. An uncached
// allocation comes from the device pool's backend (the device's memory, with no block,
// segment or stat) and is recorded in g_uncached; its free is looked up there only when
// the pool says the pointer is not one of its live blocks (DevicePool::free throws
// InvalidPointerError before changing anything), so a cached free never searches the
// table, and a pointer keeps the kind it was allocated with across a mode change, as
// torch's DataPtr keeps its deleter. Uncached allocations are not reported to the
// profiler, as torch's are not.
enum : unsigned { kModeUncached = 1, kModeForced = 2, kModeProfiler = 4 };
std::atomic<unsigned> g_torch_mode{0};
std::atomic<int> g_caching_enabled{1};

void set_mode(unsigned bit, bool on) noexcept {
  if (on) {
    g_torch_mode.fetch_or(bit, std::memory_order_acq_rel);
  } else {
    g_torch_mode.fetch_and(~bit, std::memory_order_acq_rel);
  }
}

struct Uncached {
  std::size_t size;
  int device;
};
std::mutex g_uncached_mu;
std::unordered_map<void*, Uncached>& uncached() {
  static auto* m = new std::unordered_map<void*, Uncached>();  // never destroyed: frees at exit
  return *m;
}
std::size_t g_uncached_bytes = 0;  // guarded by g_uncached_mu

constexpr int kMaxObservers = 64;
std::mutex g_observers_mu;
std::vector<pypool_oom_observer>& observers() {
  static auto* v = new std::vector<pypool_oom_observer>();
  return *v;
}

void* uncached_malloc(std::size_t size, int device) {
  if (size == 0) return nullptr;
  pypool::Backend& backend = pypool::Registry::instance().pool(device).backend();
  void* p = backend.allocate(size);
  if (p == nullptr) {
    throw pypool::OutOfMemoryError("pypool: caching is disabled and the device refused " +
                                   std::to_string(size) + " bytes on device " +
                                   std::to_string(device));
  }
  try {
    std::lock_guard<std::mutex> g(g_uncached_mu);
    uncached().emplace(p, Uncached{size, device});
    g_uncached_bytes += size;
  } catch (...) {
    backend.deallocate(p, size);
    throw;
  }
  return p;
}

// True when p was an uncached allocation (now given back).
bool uncached_free(void* p) {
  Uncached u{};
  {
    std::lock_guard<std::mutex> g(g_uncached_mu);
    auto it = uncached().find(p);
    if (it == uncached().end()) return false;
    u = it->second;
    uncached().erase(it);
    g_uncached_bytes -= u.size;
  }
  pypool::Registry::instance().pool(u.device).backend().deallocate(p, u.size);
  return true;
}

// torch's OutOfMemoryObserver arguments (PyTorch's DeviceCachingAllocator::malloc):
// the segment size it tried to get, the memory allowed (fraction cap or total), free.
// Note [Forced unwind]: a thread that ends inside an allocation (pthread_exit from
// CPython when a thread that is not the main one takes the GIL at interpreter shutdown,
// or a cancellation) unwinds through these entry points with abi::__forced_unwind; a
// catch-all that swallows it aborts the process ("exception not rethrown"), so the entry
// points that can reach the context hook pass it on.
//
// `uncached`: the request went to the device as it is (caching disabled), not rounded
// to a segment.
void notify_oom(std::size_t size, int device, bool uncached = false) noexcept {
  std::vector<pypool_oom_observer> local;
  {
    std::lock_guard<std::mutex> g(g_observers_mu);
    local = observers();
  }
  const bool profiling = pypool::abi::profiler_wants_memory();
  if (local.empty() && !profiling) return;
  try {
    pypool::DevicePool& pool = pypool::Registry::instance().pool(device);
    const pypool::MemInfo info = pool.backend().mem_info();
    std::size_t alloc = size;
    if (!uncached && size <= pypool::policy::kMaxRequest) {
      const pypool::Config cfg = pool.config();
      alloc = pypool::policy::segment_size(cfg, pypool::policy::round_size(cfg, size));
    }
    const std::size_t cap = pool.cap();
    const std::size_t allowed = cap == pypool::Config::kUnlimited ? info.total : std::min(cap, info.total);
    if (profiling) {
      const pypool::Stats st = pool.stats();
      pypool::abi::profiler_report_oom(static_cast<std::int64_t>(alloc),
                                       static_cast<std::size_t>(st.allocated_bytes[pypool::kStatAll].current),
                                       static_cast<std::size_t>(st.reserved_bytes[pypool::kStatAll].current),
                                       device);
    }
    for (pypool_oom_observer fn : local) fn(device, alloc, allowed, info.free);
  } catch (const std::exception& e) {
    report("oom_observer", e.what());
  } catch (...) {
    report("oom_observer", "unknown error");
  }
}

void report_to_profiler(pypool::DevicePool& pool, void* p, std::int64_t signed_size) noexcept {
  try {
    const pypool::Stats st = pool.stats();
    pypool::abi::profiler_report(p, signed_size,
                                 static_cast<std::size_t>(st.allocated_bytes[pypool::kStatAll].current),
                                 static_cast<std::size_t>(st.reserved_bytes[pypool::kStatAll].current),
                                 pool.device());
  } catch (...) {  // reporting never fails an allocation
  }
}

// The malloc shared by pypool_malloc and torch's entry point, inlined into each (so
// pypool_malloc's code is what it was); kNotify: torch's OOM observers are called first,
// outside the pool lock.
template <bool kNotify>
__attribute__((always_inline)) inline void* malloc_body(std::size_t size, int device, void* stream) {
  // A bad device index is the caller's error, not "no memory".
  if (!valid_device(device)) throw_invalid_device(device);
  try {
    return pypool::Registry::instance().pool(device).malloc(size, reinterpret_cast<pypool::Stream>(stream));
  } catch (const pypool::OutOfMemoryError& e) {
    if constexpr (kNotify) notify_oom(size, device);
    // Deliberate: torch reports it to Python as torch.OutOfMemoryError (when enabled,
    // Note [torch OutOfMemoryError]) or as a RuntimeError.
    pypool::abi::throw_oom(e.what());
  } catch (const std::exception& e) {
    if (device_missing(device)) throw std::invalid_argument(e.what());
    // Any other failure (absurd size, broken device) is still "no memory" for torch,
    // which has no other channel: keep one exception type at the boundary.
    pypool::abi::throw_oom(e.what());
  } catch (abi::__forced_unwind&) {  // Note [Forced unwind]
    throw;
  } catch (...) {
    pypool::abi::throw_oom("pypool: unknown error in malloc");
  }
}

void* torch_malloc_cached(std::size_t size, int device, void* stream) {
  return malloc_body<true>(size, device, stream);
}

// pypool_torch_malloc with a mode on.
void* torch_malloc_modes(std::size_t size, int device, void* stream, unsigned mode) {
  if (!valid_device(device)) throw_invalid_device(device);
  if ((mode & (kModeUncached | kModeForced)) != 0) {
    try {
      return uncached_malloc(size, device);
    } catch (const pypool::OutOfMemoryError& e) {
      notify_oom(size, device, /*uncached=*/true);
      pypool::abi::throw_oom(e.what());
    } catch (const std::exception& e) {
      if (device_missing(device)) throw std::invalid_argument(e.what());
      pypool::abi::throw_oom(e.what());
    }
  }
  void* p = torch_malloc_cached(size, device, stream);
  if (p != nullptr && pypool::abi::profiler_wants_memory()) {
    pypool::DevicePool& pool = pypool::Registry::instance().pool(device);
    std::size_t block = size;
    try {
      block = pool.size_of(p);
    } catch (...) {
    }
    report_to_profiler(pool, p, static_cast<std::int64_t>(block));
  }
  return p;
}
}  // namespace

extern "C" {

void* pypool_malloc(size_t size, int device, void* stream) {
  return malloc_body<false>(size, device, stream);
}

void* pypool_try_malloc(size_t size, int device, void* stream, int* error) {
  int code = PYPOOL_OK;
  void* p = nullptr;
  try {
    if (!valid_device(device)) throw_invalid_device(device);
    p = pypool::Registry::instance().pool(device).malloc(size, reinterpret_cast<pypool::Stream>(stream));
  } catch (const pypool::OutOfMemoryError& e) {
    code = PYPOOL_ERROR_OUT_OF_MEMORY;
    set_last_error("malloc", e.what());
  } catch (const std::bad_alloc&) {
    code = PYPOOL_ERROR_OUT_OF_MEMORY;  // host memory for the pool's own bookkeeping
    set_last_error("malloc", "out of host memory for the pool's bookkeeping");
  } catch (const std::invalid_argument& e) {
    code = valid_device(device) ? PYPOOL_ERROR_INVALID_ARGUMENT : PYPOOL_ERROR_INVALID_DEVICE;
    set_last_error("malloc", e.what());
  } catch (const pypool::BackendError& e) {
    code = device_missing(device) ? PYPOOL_ERROR_INVALID_DEVICE : PYPOOL_ERROR_BACKEND;
    set_last_error("malloc", e.what());
  } catch (const std::exception& e) {
    code = PYPOOL_ERROR_INTERNAL;
    set_last_error("malloc", e.what());
  } catch (abi::__forced_unwind&) {  // Note [Forced unwind]
    throw;
  } catch (...) {
    code = PYPOOL_ERROR_INTERNAL;
    set_last_error("malloc", "unknown error");
  }
  if (error != nullptr) *error = code;
  return p;
}

const char* pypool_last_error(void) { return t_last_error; }

void pypool_free(void* ptr, size_t size, int device, void* stream) {
  (void)size;
  (void)stream;
  try {
    // Never make a pool for a free: a device without one cannot own the pointer.
    pypool::DevicePool* pool = pypool::Registry::instance().existing(device);
    if (pool == nullptr) {
      report("free", "pointer freed on a device that has no pypool pool");
      return;
    }
    pool->free(ptr);
  } catch (const std::exception& e) {
    report("free", e.what());
  } catch (abi::__forced_unwind&) {  // Note [Forced unwind]
    throw;
  } catch (...) {
    report("free", "unknown error");
  }
}

// torch's init hook: nothing to do. Pools are made lazily at a device's first
// allocation, which keeps CUDA contexts off GPUs this process never uses.
void pypool_init(int device_count) { (void)device_count; }

void pypool_empty_cache(void) {
  try {
    auto& r = pypool::Registry::instance();
    for (int d : r.devices()) {
      try {
        r.pool(d).empty_cache();
      } catch (const std::exception& e) {
        report("empty_cache", e.what());
      }
    }
  } catch (abi::__forced_unwind&) {  // Note [Forced unwind]
    throw;
  } catch (...) {
    report("empty_cache", "unknown error");
  }
}

void pypool_set_memory_fraction(double fraction, int device) {
  try {
    // Note [Fraction zero]: torch's set_per_process_memory_fraction(0.0) allows no
    // memory at all, while the pool's fraction 0 means "no fraction cap". The smallest
    // positive fraction caps the pool at 0 bytes, as torch means, and reads back as 0.0
    // (pypool.memory.get_per_process_memory_fraction). per_process_memory_fraction:0.0 in
    // torch's settings becomes the same memory_fraction (pypool/_torch_conf.py FRACTION_ZERO).
    if (fraction == 0.0) fraction = std::numeric_limits<double>::denorm_min();
    pypool::Registry::instance().pool(device).set_memory_fraction(fraction);
  } catch (const std::exception& e) {
    report("set_memory_fraction", e.what());
  } catch (abi::__forced_unwind&) {  // Note [Forced unwind]
    throw;
  } catch (...) {
    report("set_memory_fraction", "unknown error");
  }
}

void pypool_record_stream(void* ptr, void* stream) {
  try {
    // torch does not pass the device: find the pool that owns the pointer, without an
    // exception (and a formatted message) per pool that does not.
    auto& r = pypool::Registry::instance();
    for (int d : r.devices()) {
      pypool::DevicePool* pool = r.existing(d);
      if (pool != nullptr && pool->record_stream_if_owned(ptr, reinterpret_cast<pypool::Stream>(stream)))
        return;
    }
    report("record_stream", "pointer not allocated by pypool");
  } catch (const std::exception& e) {
    report("record_stream", e.what());
  } catch (abi::__forced_unwind&) {  // Note [Forced unwind]
    throw;
  } catch (...) {
    report("record_stream", "unknown error");
  }
}

uint64_t pypool_error_count(void) { return g_errors.load(std::memory_order_relaxed); }

void pypool_set_caching_enabled(int enabled) {
  g_caching_enabled.store(enabled != 0 ? 1 : 0, std::memory_order_relaxed);
  set_mode(kModeUncached, enabled == 0);
}

int pypool_caching_enabled(void) { return g_caching_enabled.load(std::memory_order_relaxed); }

void pypool_force_uncached(int on) { set_mode(kModeForced, on != 0); }

int pypool_uncached_forced(void) {
  return (g_torch_mode.load(std::memory_order_relaxed) & kModeForced) != 0;
}

size_t pypool_uncached_count(void) {
  std::lock_guard<std::mutex> g(g_uncached_mu);
  return uncached().size();
}

size_t pypool_uncached_bytes(void) {
  std::lock_guard<std::mutex> g(g_uncached_mu);
  return g_uncached_bytes;
}

int pypool_add_oom_observer(pypool_oom_observer fn) {
  if (fn == nullptr) return -1;
  std::lock_guard<std::mutex> g(g_observers_mu);
  if (static_cast<int>(observers().size()) >= kMaxObservers) return -1;
  observers().push_back(fn);
  return 0;
}

void pypool_clear_oom_observers(void) {
  std::lock_guard<std::mutex> g(g_observers_mu);
  observers().clear();
}

int pypool_torch_profiler_active(void) {
  return (g_torch_mode.load(std::memory_order_relaxed) & kModeProfiler) != 0;
}

void* pypool_torch_malloc(size_t size, int device, void* stream) {
  const unsigned mode = g_torch_mode.load(std::memory_order_relaxed);
  if (__builtin_expect(mode != 0, 0)) return torch_malloc_modes(size, device, stream, mode);
  return torch_malloc_cached(size, device, stream);
}

void pypool_torch_free(void* ptr, size_t size, int device, void* stream) {
  (void)size;
  (void)stream;
  if (ptr == nullptr) return;
  try {
    pypool::DevicePool* pool = pypool::Registry::instance().existing(device);
    if (pool == nullptr) {
      if (!uncached_free(ptr)) report("free", "pointer freed on a device that has no pypool pool");
      return;
    }
    if (__builtin_expect((g_torch_mode.load(std::memory_order_relaxed) & kModeProfiler) != 0, 0) &&
        pypool::abi::profiler_wants_memory()) {
      std::size_t block = 0;
      try {
        block = pool->size_of(ptr);
      } catch (const pypool::InvalidPointerError&) {  // uncached, or a bad pointer: below
      }
      if (block != 0) {
        pool->free(ptr);
        report_to_profiler(*pool, ptr, -static_cast<std::int64_t>(block));
        return;
      }
    }
    try {
      pool->free(ptr);
    } catch (const pypool::InvalidPointerError& e) {
      if (!uncached_free(ptr)) throw;
    }
  } catch (const std::exception& e) {
    report("free", e.what());
  } catch (abi::__forced_unwind&) {  // Note [Forced unwind]
    throw;
  } catch (...) {
    report("free", "unknown error");
  }
}

}  // extern "C"

namespace pypool::abi {
void set_profiler_mode(bool on) noexcept { set_mode(kModeProfiler, on); }
}  // namespace pypool::abi
