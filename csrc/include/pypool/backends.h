// Factories for the concrete backends. Each lives in csrc/backend/.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "pypool/backend.h"

namespace pypool {

// ---- host: real memory from the OS (mmap), for CPU machines and tests ----
class HostBackend;
struct HostBackendOptions {
  std::size_t capacity = std::size_t(80) << 30;  // stands in for an 80 GiB device
  bool touch = false;                            // write every page on allocate (tests)
};
std::shared_ptr<HostBackend> make_host_backend(const HostBackendOptions& opts);

// ---- null: bookkeeping only; hands out addresses that are never backed by memory.
// Used for replaying traces at full size on any machine. ----
std::shared_ptr<Backend> make_null_backend(std::size_t capacity);

// ---- CUDA (driver API loaded at run time with dlopen("libcuda.so.1")) ----
// True when this build contains the CUDA backend (PYPOOL_WITH_CUDA).
bool cuda_backend_compiled() noexcept;
// Number of CUDA devices, or 0 with `why` set when the driver or a device is missing.
// Never throws.
int cuda_device_count(std::string* why) noexcept;
// Backend for one device, using that device's primary context. Throws BackendError with
// a clear message when the driver/device is not usable.
std::shared_ptr<Backend> make_cuda_backend(int device);

}  // namespace pypool
