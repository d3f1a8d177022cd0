// The CUDA driver API, resolved at run time from libcuda.so.1 (private to csrc/backend).
//
// Note [Driver declarations without the toolkit]
// ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
// A table of function pointers loaded with dlsym needs only declarations, and a user's
// GPU machine often has no CUDA toolkit: the driver ships with the GPU and torch's
// runtime comes from pip wheels. So the few types, constants and signatures the table
// uses are declared here, from the driver API's documented, stable ABI (the _v2 symbols
// and struct layouts have not changed since CUDA 10.2), and the CUDA backend is built
// whether or not <cuda.h> exists. They live in namespace pypool::cuda so that a file may
// include <cuda.h> as well: cuda_driver_check.cpp does, in any build that finds the
// toolkit, and static_asserts that every signature, constant and struct layout below
// matches the header's (the guard against drift). See Note [CUDA driver via dlopen] in
// cuda_backend.cpp.
#pragma once

#include <cstddef>
#include <string>

// The per-thread-default-stream variants (cuEventRecord_ptsz, ...) would be other
// symbols; the table resolves the legacy names.
#if defined(CUDA_API_PER_THREAD_DEFAULT_STREAM)
#error "pypool resolves legacy-stream driver symbols; do not define CUDA_API_PER_THREAD_DEFAULT_STREAM"
#endif

namespace pypool {
namespace cuda {

// ---- types (the layouts of <cuda.h> on LP64 Linux) ----
enum CUresult : int {
  CUDA_SUCCESS = 0,
  CUDA_ERROR_OUT_OF_MEMORY = 2,
  CUDA_ERROR_DEINITIALIZED = 4,
  CUDA_ERROR_NO_DEVICE = 100,
  CUDA_ERROR_NOT_READY = 600,
};
using CUdevice = int;
using CUdeviceptr = unsigned long long;
using CUmemGenericAllocationHandle = unsigned long long;
struct CUctx_st;
struct CUevent_st;
struct CUstream_st;
using CUcontext = CUctx_st*;
using CUevent = CUevent_st*;
using CUstream = CUstream_st*;

enum CUdevice_attribute : int { CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED = 102 };
enum CUevent_flags : int { CU_EVENT_DISABLE_TIMING = 0x2 };
enum CUmemAllocationType : int { CU_MEM_ALLOCATION_TYPE_PINNED = 0x1 };
enum CUmemAllocationHandleType : int { CU_MEM_HANDLE_TYPE_NONE = 0x0 };
enum CUmemLocationType : int { CU_MEM_LOCATION_TYPE_DEVICE = 0x1 };
enum CUmemAccess_flags : int { CU_MEM_ACCESS_FLAGS_PROT_READWRITE = 0x3 };
enum CUmemAllocationGranularity_flags : int { CU_MEM_ALLOC_GRANULARITY_MINIMUM = 0x0 };

struct CUmemLocation {
  CUmemLocationType type;
  int id;
};

struct CUmemAllocationProp {
  CUmemAllocationType type;
  CUmemAllocationHandleType requestedHandleTypes;
  CUmemLocation location;
  void* win32HandleMetaData;
  struct {
    unsigned char compressionType;
    unsigned char gpuDirectRDMACapable;
    unsigned short usage;
    unsigned char reserved[4];
  } allocFlags;
};

struct CUmemAccessDesc {
  CUmemLocation location;
  CUmemAccess_flags flags;
};

// X(field, symbol, parameters): `symbol` is the exported, versioned name (the _v2 that
// <cuda.h> #defines the plain name to); every function returns CUresult. Fields drop the
// "cu" prefix so that <cuda.h>'s `#define cuMemAlloc cuMemAlloc_v2` style macros never
// rewrite them in a file that includes both.
#define PYPOOL_CUDA_DRIVER_API(X)                                                                     \
  X(Init, cuInit, (unsigned int))                                                                     \
  X(GetErrorString, cuGetErrorString, (CUresult, const char**))                                       \
  X(GetErrorName, cuGetErrorName, (CUresult, const char**))                                           \
  X(DeviceGetCount, cuDeviceGetCount, (int*))                                                         \
  X(DeviceGet, cuDeviceGet, (CUdevice*, int))                                                         \
  X(DeviceGetAttribute, cuDeviceGetAttribute, (int*, CUdevice_attribute, CUdevice))                   \
  X(DevicePrimaryCtxRetain, cuDevicePrimaryCtxRetain, (CUcontext*, CUdevice))                         \
  X(DevicePrimaryCtxRelease, cuDevicePrimaryCtxRelease_v2, (CUdevice))                                \
  X(CtxPushCurrent, cuCtxPushCurrent_v2, (CUcontext))                                                 \
  X(CtxPopCurrent, cuCtxPopCurrent_v2, (CUcontext*))                                                  \
  X(MemAlloc, cuMemAlloc_v2, (CUdeviceptr*, std::size_t))                                             \
  X(MemFree, cuMemFree_v2, (CUdeviceptr))                                                             \
  X(MemGetInfo, cuMemGetInfo_v2, (std::size_t*, std::size_t*))                                        \
  X(EventCreate, cuEventCreate, (CUevent*, unsigned int))                                             \
  X(EventRecord, cuEventRecord, (CUevent, CUstream))                                                  \
  X(EventQuery, cuEventQuery, (CUevent))                                                              \
  X(EventSynchronize, cuEventSynchronize, (CUevent))                                                  \
  X(EventDestroy, cuEventDestroy_v2, (CUevent))                                                       \
  X(MemAddressReserve, cuMemAddressReserve,                                                           \
    (CUdeviceptr*, std::size_t, std::size_t, CUdeviceptr, unsigned long long))                        \
  X(MemAddressFree, cuMemAddressFree, (CUdeviceptr, std::size_t))                                     \
  X(MemCreate, cuMemCreate,                                                                           \
    (CUmemGenericAllocationHandle*, std::size_t, const CUmemAllocationProp*, unsigned long long))     \
  X(MemRelease, cuMemRelease, (CUmemGenericAllocationHandle))                                         \
  X(MemMap, cuMemMap,                                                                                 \
    (CUdeviceptr, std::size_t, std::size_t, CUmemGenericAllocationHandle, unsigned long long))        \
  X(MemUnmap, cuMemUnmap, (CUdeviceptr, std::size_t))                                                 \
  X(MemSetAccess, cuMemSetAccess, (CUdeviceptr, std::size_t, const CUmemAccessDesc*, std::size_t))    \
  X(MemGetAllocationGranularity, cuMemGetAllocationGranularity,                                       \
    (std::size_t*, const CUmemAllocationProp*, CUmemAllocationGranularity_flags))

struct Driver {
#define PYPOOL_CUDA_FIELD(field, symbol, params) CUresult(*field) params = nullptr;
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
