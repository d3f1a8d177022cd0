// Note [torch profiler bridge]: torch.profiler.profile(profile_memory=True) learns of
// device memory only from the allocator: torch's own caching allocator calls
// c10::reportMemoryUsageToProfiler on each allocation (+block size) and free (-block
// size), with the device's allocated and reserved bytes after the change, and
// c10::reportOutOfMemoryToProfiler on an out-of-memory. A pluggable allocator gets no
// such call from torch, so pypool makes them itself from its torch entry points
// (pypool_torch_malloc / pypool_torch_free), through the functions libc10.so exports,
// resolved with dlsym as Note [torch OutOfMemoryError] does; pypool is built without
// torch. What pypool assumes, and how each assumption is guarded:
//   * the signatures, (void*, int64_t, size_t, size_t, c10::Device),
//     (int64_t, size_t, size_t, c10::Device) and bool(): they are in the mangled symbol
//     names (c10::memoryProfilingEnabled has no parameters and its return type is not
//     mangled: bool since it was added in 2020), so a torch that changes them lacks the
//     symbols and the bridge stays off;
//   * c10::Device is {int8_t DeviceType, int8_t DeviceIndex} (c10/core/Device.h, with
//     DeviceType in torch/headeronly/core/DeviceType.h, CUDA = 1, in torch 2.13 and
//     2.14.1), trivially copyable, so the Itanium/SysV ABI passes it by value in a
//     register exactly as it passes TorchDevice below; tests/gpu/test_torch_c_hooks.py
//     compiles that layout against the installed torch's headers.
// memoryProfilingEnabled() is asked first on every report (a thread-local read in
// libc10), so the allocator reads its totals only while the profiler wants them.
// Enabled only by pypool.install() (the torch entry points are torch's only); Linux only.
#include "torch_profiler.h"

#include <atomic>

#include "pypool/c_api.h"

#if defined(__linux__)
#include <dlfcn.h>
#define PYPOOL_TORCH_PROFILER 1
#else
#define PYPOOL_TORCH_PROFILER 0
#endif

namespace {

// Same layout as c10::Device.
struct TorchDevice {
  std::int8_t type;
  std::int8_t index;
};
constexpr std::int8_t kDeviceTypeCuda = 1;

using EnabledFn = bool (*)();
using ReportFn = void (*)(void*, std::int64_t, std::size_t, std::size_t, TorchDevice);
using ReportOomFn = void (*)(std::int64_t, std::size_t, std::size_t, TorchDevice);

constexpr const char* kEnabledSymbol = "_ZN3c1022memoryProfilingEnabledEv";
constexpr const char* kReportSymbol = "_ZN3c1027reportMemoryUsageToProfilerEPvlmmNS_6DeviceE";
constexpr const char* kReportOomSymbol = "_ZN3c1027reportOutOfMemoryToProfilerElmmNS_6DeviceE";

// Set together before the mode bit is turned on, never cleared while it is on.
std::atomic<EnabledFn> g_enabled{nullptr};
std::atomic<ReportFn> g_report{nullptr};
std::atomic<ReportOomFn> g_report_oom{nullptr};

TorchDevice cuda_device(int device) {
  return TorchDevice{kDeviceTypeCuda, static_cast<std::int8_t>(device)};
}

}  // namespace

namespace pypool::abi {

bool profiler_wants_memory() noexcept {
  EnabledFn fn = g_enabled.load(std::memory_order_acquire);
  return fn != nullptr && fn();
}

void profiler_report(void* ptr, std::int64_t size, std::size_t allocated, std::size_t reserved,
                     int device) noexcept {
  ReportFn fn = g_report.load(std::memory_order_acquire);
  if (fn == nullptr) return;
  try {
    fn(ptr, size, allocated, reserved, cuda_device(device));
  } catch (...) {  // a report must never turn an allocation into an error
  }
}

void profiler_report_oom(std::int64_t size, std::size_t allocated, std::size_t reserved,
                         int device) noexcept {
  ReportOomFn fn = g_report_oom.load(std::memory_order_acquire);
  if (fn == nullptr) return;
  try {
    fn(size, allocated, reserved, cuda_device(device));
  } catch (...) {
  }
}

}  // namespace pypool::abi

extern "C" {

int pypool_use_torch_profiler(const char* libc10_path) {
#if PYPOOL_TORCH_PROFILER
  if (libc10_path == nullptr) {
    // The pointers stay: a report already past the mode check may still use them.
    pypool::abi::set_profiler_mode(false);
    return 0;
  }
  void* lib = dlopen(libc10_path, RTLD_NOW | RTLD_NOLOAD);  // only torch's own, never closed
  if (lib == nullptr) return -1;
  void* enabled = dlsym(lib, kEnabledSymbol);
  void* report = dlsym(lib, kReportSymbol);
  void* report_oom = dlsym(lib, kReportOomSymbol);
  if (enabled == nullptr || report == nullptr || report_oom == nullptr) return -2;
  g_report.store(reinterpret_cast<ReportFn>(report), std::memory_order_release);
  g_report_oom.store(reinterpret_cast<ReportOomFn>(report_oom), std::memory_order_release);
  g_enabled.store(reinterpret_cast<EnabledFn>(enabled), std::memory_order_release);
  pypool::abi::set_profiler_mode(true);
  return 1;
#else
  (void)libc10_path;
  return -5;
#endif
}

int pypool_torch_profiler_gate(int on) {
#if PYPOOL_TORCH_PROFILER
  if (g_enabled.load(std::memory_order_acquire) == nullptr) return -1;
  pypool::abi::set_profiler_mode(on != 0);
  return 1;
#else
  (void)on;
  return -5;
#endif
}

}  // extern "C"
