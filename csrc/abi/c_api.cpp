#include "pypool/c_api.h"

#include <atomic>
#include <cstdio>
#include <exception>
#include <limits>

#include "pypool/registry.h"
#include "torch_oom.h"

namespace {

std::atomic<std::uint64_t> g_errors{0};

void report(const char* where, const char* what) {
  g_errors.fetch_add(1, std::memory_order_relaxed);
  std::fprintf(stderr, "pypool: %s: %s\n", where, what);
}

}  // namespace

extern "C" {

void* pypool_malloc(size_t size, int device, void* stream) {
  try {
    return pypool::Registry::instance().pool(device).malloc(size, reinterpret_cast<pypool::Stream>(stream));
  } catch (const pypool::OutOfMemoryError& e) {
    // Deliberate: torch reports it to Python as torch.OutOfMemoryError (when enabled,
    // Note [torch OutOfMemoryError]) or as a RuntimeError.
    pypool::abi::throw_oom(e.what());
  } catch (const std::exception& e) {
    // Any other failure (broken device) is still "no memory" for torch, which has no
    // other channel: keep one exception type at the boundary.
    pypool::abi::throw_oom(e.what());
  } catch (...) {
    pypool::abi::throw_oom("pypool: unknown error in malloc");
  }
}

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
  } catch (...) {
    report("empty_cache", "unknown error");
  }
}

void pypool_set_memory_fraction(double fraction, int device) {
  try {
    // Note [Fraction zero]: torch's set_per_process_memory_fraction(0.0) allows no
    // memory at all, while the pool's fraction 0 means "no fraction cap". The smallest
    // positive fraction caps the pool at 0 bytes, as torch means, and reads back as 0.0
    // (pypool.memory.get_per_process_memory_fraction).
    if (fraction == 0.0) fraction = std::numeric_limits<double>::denorm_min();
    pypool::Registry::instance().pool(device).set_memory_fraction(fraction);
  } catch (const std::exception& e) {
    report("set_memory_fraction", e.what());
  } catch (...) {
    report("set_memory_fraction", "unknown error");
  }
}

void pypool_record_stream(void* ptr, void* stream) {
  try {
    // torch does not pass the device: find the pool that owns the pointer.
    auto& r = pypool::Registry::instance();
    for (int d : r.devices()) {
      try {
        r.pool(d).record_stream(ptr, reinterpret_cast<pypool::Stream>(stream));
        return;
      } catch (const pypool::InvalidPointerError&) {
        continue;
      }
    }
    report("record_stream", "pointer not allocated by pypool");
  } catch (const std::exception& e) {
    report("record_stream", e.what());
  } catch (...) {
    report("record_stream", "unknown error");
  }
}

uint64_t pypool_error_count(void) { return g_errors.load(std::memory_order_relaxed); }

}  // extern "C"
