#include "pypool/c_api.h"

#include <atomic>
#include <cstdio>
#include <exception>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>

#include "pypool/backends.h"
#include "pypool/registry.h"
#include "torch_oom.h"

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

}  // namespace

extern "C" {

void* pypool_malloc(size_t size, int device, void* stream) {
  // A bad device index is the caller's error, not "no memory".
  if (!valid_device(device)) throw_invalid_device(device);
  try {
    return pypool::Registry::instance().pool(device).malloc(size, reinterpret_cast<pypool::Stream>(stream));
  } catch (const pypool::OutOfMemoryError& e) {
    // Deliberate: torch reports it to Python as torch.OutOfMemoryError (when enabled,
    // Note [torch OutOfMemoryError]) or as a RuntimeError.
    pypool::abi::throw_oom(e.what());
  } catch (const std::exception& e) {
    if (device_missing(device)) throw std::invalid_argument(e.what());
    // Any other failure (absurd size, broken device) is still "no memory" for torch,
    // which has no other channel: keep one exception type at the boundary.
    pypool::abi::throw_oom(e.what());
  } catch (...) {
    pypool::abi::throw_oom("pypool: unknown error in malloc");
  }
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
    // (pypool.memory.get_per_process_memory_fraction). per_process_memory_fraction:0.0 in
    // torch's settings becomes the same memory_fraction (pypool/_torch_conf.py FRACTION_ZERO).
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
  } catch (...) {
    report("record_stream", "unknown error");
  }
}

uint64_t pypool_error_count(void) { return g_errors.load(std::memory_order_relaxed); }

}  // extern "C"
