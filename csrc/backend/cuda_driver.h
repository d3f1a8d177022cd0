// The CUDA driver API, resolved at run time from libcuda.so.1 (private to csrc/backend).
//
// <cuda.h> is included only for types and prototypes: nothing here links against libcuda.
// See Note [CUDA driver via dlopen] in cuda_backend.cpp.
#pragma once

#ifndef PYPOOL_WITH_CUDA
#error "cuda_driver.h is only usable in builds with PYPOOL_WITH_CUDA"
#endif

#include <cuda.h>

#include <string>

// The per-thread-default-stream variants (cuEventRecord_ptsz, ...) would silently change
// which symbol decltype names below; the table resolves the legacy names.
#if defined(CUDA_API_PER_THREAD_DEFAULT_STREAM)
#error "pypool resolves legacy-stream driver symbols; do not define CUDA_API_PER_THREAD_DEFAULT_STREAM"
#endif

// X(field, symbol): `symbol` is the exported, versioned name (the _v2 that <cuda.h>
// #defines the plain name to); its <cuda.h> prototype gives the field's type, so a
// signature can never drift from the header. Fields drop the "cu" prefix so that the
// header's `#define cuMemAlloc cuMemAlloc_v2` style macros never rewrite them.
#define PYPOOL_CUDA_DRIVER_API(X)                                  \
  X(Init, cuInit)                                                  \
  X(GetErrorString, cuGetErrorString)                              \
  X(GetErrorName, cuGetErrorName)                                  \
  X(DeviceGetCount, cuDeviceGetCount)                              \
  X(DeviceGet, cuDeviceGet)                                        \
  X(DeviceGetAttribute, cuDeviceGetAttribute)                      \
  X(DevicePrimaryCtxRetain, cuDevicePrimaryCtxRetain)              \
  X(DevicePrimaryCtxRelease, cuDevicePrimaryCtxRelease_v2)         \
  X(CtxPushCurrent, cuCtxPushCurrent_v2)                           \
  X(CtxPopCurrent, cuCtxPopCurrent_v2)                             \
  X(MemAlloc, cuMemAlloc_v2)                                       \
  X(MemFree, cuMemFree_v2)                                         \
  X(MemGetInfo, cuMemGetInfo_v2)                                   \
  X(EventCreate, cuEventCreate)                                    \
  X(EventRecord, cuEventRecord)                                    \
  X(EventQuery, cuEventQuery)                                      \
  X(EventSynchronize, cuEventSynchronize)                          \
  X(EventDestroy, cuEventDestroy_v2)                               \
  X(MemAddressReserve, cuMemAddressReserve)                        \
  X(MemAddressFree, cuMemAddressFree)                              \
  X(MemCreate, cuMemCreate)                                        \
  X(MemRelease, cuMemRelease)                                      \
  X(MemMap, cuMemMap)                                              \
  X(MemUnmap, cuMemUnmap)                                          \
  X(MemSetAccess, cuMemSetAccess)                                  \
  X(MemGetAllocationGranularity, cuMemGetAllocationGranularity)

namespace pypool {
namespace cuda {

struct Driver {
#define PYPOOL_CUDA_FIELD(field, symbol) decltype(&::symbol) field = nullptr;
  PYPOOL_CUDA_DRIVER_API(PYPOOL_CUDA_FIELD)
#undef PYPOOL_CUDA_FIELD
};

// The process-wide table, loaded and cuInit'ed once (thread-safe). nullptr when libcuda
// is missing, lacks a symbol, or cuInit fails; then *why (if given) says which. Never
// throws. libcuda stays loaded for the life of the process.
const Driver* driver(std::string* why) noexcept;

// "cuMemAlloc: CUDA_ERROR_INVALID_VALUE (invalid argument)".
std::string error_text(const Driver& d, CUresult rc, const char* call);

}  // namespace cuda
}  // namespace pypool
