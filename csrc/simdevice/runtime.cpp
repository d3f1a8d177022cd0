// The CUDA runtime stand-in (libpypool_simcudart.so, SONAME libcudart.so.13): every
// runtime entry point the PyTorch CUDA wheel imports, over the simulated device's state
// (sim_state.h). See Note [Simulated device].
//
// Types, struct layouts and enum values come from the CUDA 13 toolkit headers, and every
// function is defined with the header's exact signature, so a mismatch is a compile
// error rather than a corrupted stack in torch. All exported names are bound to version
// node libcudart.so.13 by libcudart.map (torch imports them as name@libcudart.so.13).
// Everything else the real library exports is a weak "not supported" stub generated
// elsewhere (symbols/cudart.inc); the definitions here override those at link time.
//
// Conventions:
//  * Every entry point counts itself (sim::count_call, a string literal per function;
//    syncs = true for the calls that synchronize on real hardware).
//  * A failed call sets the thread's last error (cudaGetLastError returns and clears it,
//    cudaPeekAtLastError returns it). The simulation never produces sticky errors.
//  * Nothing throws across the C ABI: the few places that allocate catch and report
//    cudaErrorMemoryAllocation.
//  * Kernels never run. A launch (and an async copy or memset) enqueues one unit of work
//    on its stream, so stream/event completion is observable exactly as on a GPU; copies
//    and memsets do happen at once, since all device memory is host memory.

// Never define __CUDART_API_PER_THREAD_DEFAULT_STREAM / CUDA_API_PER_THREAD_DEFAULT_STREAM:
// the header would rename cudaMemcpy etc. to their _ptds/_ptsz variants, and torch imports
// the plain names.
#if defined(CUDA_API_PER_THREAD_DEFAULT_STREAM) || defined(__CUDART_API_PER_THREAD_DEFAULT_STREAM)
#error "runtime.cpp must define the legacy-stream names"
#endif

#include <cuda_runtime_api.h>
#include <driver_types.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "device_facts.h"
#include "sim_state.h"

#include "nvcc_internal.h"

#define PYPOOL_SIM_EXPORT __attribute__((visibility("default")))

namespace {

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

thread_local cudaError_t tls_last_error = cudaSuccess;

inline cudaError_t done(cudaError_t e) noexcept {
  if (e != cudaSuccess) tls_last_error = e;
  return e;
}

cudaError_t to_cuda(sim::Status s) noexcept {
  switch (s) {
    case sim::Status::ok: return cudaSuccess;
    case sim::Status::invalid_value: return cudaErrorInvalidValue;
    case sim::Status::out_of_memory: return cudaErrorMemoryAllocation;
    case sim::Status::invalid_device: return cudaErrorInvalidDevice;
    case sim::Status::invalid_handle: return cudaErrorInvalidResourceHandle;
    case sim::Status::not_mapped: return cudaErrorInvalidValue;  // cudaMemcpy etc. on unmapped VMM
    case sim::Status::already_mapped: return cudaErrorAlreadyMapped;
    case sim::Status::not_ready: return cudaErrorNotReady;
    case sim::Status::in_use: return cudaErrorInvalidValue;
    case sim::Status::not_supported: return cudaErrorNotSupported;
  }
  return cudaErrorUnknown;
}

inline cudaError_t done(sim::Status s) noexcept { return done(to_cuda(s)); }

// ---------------------------------------------------------------------------------------
// Handles
// ---------------------------------------------------------------------------------------

inline sim::Stream* S(cudaStream_t s) noexcept { return reinterpret_cast<sim::Stream*>(s); }
inline sim::Event* E(cudaEvent_t e) noexcept { return reinterpret_cast<sim::Event*>(e); }

constexpr int kMaxDevices = 16;  // sim: PYPOOL_SIM_DEVICES is 1..16

inline bool valid_device(int dev) noexcept { return dev >= 0 && dev < sim::device_count(); }

// The device a stream belongs to (the current device for the default-stream aliases).
inline sim::Status stream_device(cudaStream_t s, int* dev) noexcept {
  unsigned flags = 0;
  int priority = 0;
  return sim::stream_info(S(s), dev, &flags, &priority);
}

// ---------------------------------------------------------------------------------------
// The simulated device's properties: an H100-like device (Note [Simulated device]: only
// the capacity matters to an allocator; the rest is what torch's init reads). The shared
// figures come from device_facts.h, so the driver, NVML and this runtime describe the
// same device (torch matches its NVML device by the PCI location of cudaDeviceProp).
// ---------------------------------------------------------------------------------------

namespace facts = sim::facts;
constexpr const char* kDeviceName = facts::kName;
constexpr int kMajor = facts::kCcMajor, kMinor = facts::kCcMinor;
constexpr int kSmCount = facts::kSmCount;
constexpr int kWarpSize = facts::kWarpSize;
constexpr int kMaxThreadsPerBlock = facts::kMaxThreadsPerBlock;
constexpr int kMaxBlockDim[3] = {1024, 1024, 64};
constexpr int kMaxGridDim[3] = {2147483647, 65535, 65535};
constexpr int kSharedPerBlock = facts::kSharedPerBlock;
constexpr int kSharedPerBlockOptin = facts::kSharedPerBlockOptin;
constexpr int kSharedPerSm = facts::kSharedPerSm;
constexpr int kReservedSharedPerBlock = facts::kReservedSharedPerBlock;
constexpr int kRegsPerBlock = facts::kRegsPerBlock;
constexpr int kRegsPerSm = facts::kRegsPerSm;
constexpr int kMaxThreadsPerSm = facts::kMaxThreadsPerSm;
constexpr int kMaxBlocksPerSm = facts::kMaxBlocksPerSm;
constexpr int kL2Size = facts::kL2Bytes;
constexpr int kPersistingL2Max = facts::kPersistingL2Max;
constexpr int kAccessPolicyMaxWindow = 134213632;
constexpr int kBusWidth = facts::kMemBusWidth;
constexpr int kClockKHz = facts::kClockKhz;
constexpr int kMemClockKHz = facts::kMemClockKhz;
constexpr int kTotalConstMem = 65536;
constexpr int kMaxPitch = 2147483647;
constexpr int kTextureAlignment = 512;
constexpr int kTexturePitchAlignment = 32;
constexpr int kSurfaceAlignment = 512;
constexpr int kAsyncEngines = facts::kAsyncEngines;
// cudaDeviceProp::gpuPciDeviceID: 16-bit device id over 16-bit vendor id.
constexpr unsigned kGpuPciDeviceId = (facts::kPciDeviceId << 16) | facts::kPciVendor;
constexpr unsigned kGpuPciSubsystemId = facts::kPciSubsystemId;
constexpr int kDriverVersion = 13000;
constexpr int kRuntimeVersion = 13000;
constexpr int kLeastPriority = facts::kLeastStreamPriority;
constexpr int kGreatestPriority = facts::kGreatestStreamPriority;

inline int pci_bus_id(int dev) noexcept { return static_cast<int>(facts::pci_bus(dev)); }
inline int pci_domain_id(int dev) noexcept { return static_cast<int>(facts::pci_domain(dev)); }
inline int pci_device_id(int dev) noexcept { return static_cast<int>(facts::pci_device(dev)); }

void device_uuid(int dev, char out[16]) noexcept {
  facts::uuid(dev, reinterpret_cast<unsigned char*>(out));
}

void fill_props(cudaDeviceProp* p, int dev) noexcept {
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "%s", kDeviceName);
  device_uuid(dev, p->uuid.bytes);
  p->totalGlobalMem = static_cast<size_t>(sim::device_total(dev));
  p->sharedMemPerBlock = kSharedPerBlock;
  p->regsPerBlock = kRegsPerBlock;
  p->warpSize = kWarpSize;
  p->memPitch = kMaxPitch;
  p->maxThreadsPerBlock = kMaxThreadsPerBlock;
  for (int i = 0; i < 3; ++i) {
    p->maxThreadsDim[i] = kMaxBlockDim[i];
    p->maxGridSize[i] = kMaxGridDim[i];
  }
  p->totalConstMem = kTotalConstMem;
  p->major = kMajor;
  p->minor = kMinor;
  p->textureAlignment = kTextureAlignment;
  p->texturePitchAlignment = kTexturePitchAlignment;
  p->multiProcessorCount = kSmCount;
  p->integrated = 0;
  p->canMapHostMemory = 1;
  p->maxTexture1D = 131072;
  p->maxTexture1DMipmap = 32768;
  p->maxTexture2D[0] = 131072; p->maxTexture2D[1] = 65536;
  p->maxTexture2DMipmap[0] = 32768; p->maxTexture2DMipmap[1] = 32768;
  p->maxTexture2DLinear[0] = 131072; p->maxTexture2DLinear[1] = 65000;
  p->maxTexture2DLinear[2] = 2097120;
  p->maxTexture2DGather[0] = 32768; p->maxTexture2DGather[1] = 32768;
  p->maxTexture3D[0] = p->maxTexture3D[1] = p->maxTexture3D[2] = 16384;
  p->maxTexture3DAlt[0] = p->maxTexture3DAlt[1] = 8192; p->maxTexture3DAlt[2] = 32768;
  p->maxTextureCubemap = 32768;
  p->maxTexture1DLayered[0] = 32768; p->maxTexture1DLayered[1] = 2048;
  p->maxTexture2DLayered[0] = p->maxTexture2DLayered[1] = 32768;
  p->maxTexture2DLayered[2] = 2048;
  p->maxTextureCubemapLayered[0] = 32768; p->maxTextureCubemapLayered[1] = 2046;
  p->maxSurface1D = 32768;
  p->maxSurface2D[0] = 131072; p->maxSurface2D[1] = 65536;
  p->maxSurface3D[0] = p->maxSurface3D[1] = p->maxSurface3D[2] = 16384;
  p->maxSurface1DLayered[0] = 32768; p->maxSurface1DLayered[1] = 2048;
  p->maxSurface2DLayered[0] = p->maxSurface2DLayered[1] = 32768;
  p->maxSurface2DLayered[2] = 2048;
  p->maxSurfaceCubemap = 32768;
  p->maxSurfaceCubemapLayered[0] = 32768; p->maxSurfaceCubemapLayered[1] = 2046;
  p->surfaceAlignment = kSurfaceAlignment;
  p->concurrentKernels = 1;
  p->ECCEnabled = 1;
  p->pciBusID = pci_bus_id(dev);
  p->pciDeviceID = pci_device_id(dev);
  p->pciDomainID = pci_domain_id(dev);
  p->tccDriver = 0;
  p->asyncEngineCount = kAsyncEngines;
  p->unifiedAddressing = 1;
  p->memoryBusWidth = kBusWidth;
  p->l2CacheSize = kL2Size;
  p->persistingL2CacheMaxSize = kPersistingL2Max;
  p->maxThreadsPerMultiProcessor = kMaxThreadsPerSm;
  p->streamPrioritiesSupported = 1;
  p->globalL1CacheSupported = 1;
  p->localL1CacheSupported = 1;
  p->sharedMemPerMultiprocessor = kSharedPerSm;
  p->regsPerMultiprocessor = kRegsPerSm;
  p->managedMemory = 1;
  p->isMultiGpuBoard = 0;
  p->multiGpuBoardGroupID = dev;
  p->hostNativeAtomicSupported = 0;
  p->pageableMemoryAccess = 0;
  p->concurrentManagedAccess = 1;
  p->computePreemptionSupported = 1;
  p->canUseHostPointerForRegisteredMem = 1;
  p->cooperativeLaunch = 1;
  p->sharedMemPerBlockOptin = kSharedPerBlockOptin;
  p->pageableMemoryAccessUsesHostPageTables = 0;
  p->directManagedMemAccessFromHost = 0;
  p->maxBlocksPerMultiProcessor = kMaxBlocksPerSm;
  p->accessPolicyMaxWindowSize = kAccessPolicyMaxWindow;
  p->reservedSharedMemPerBlock = kReservedSharedPerBlock;
  p->hostRegisterSupported = 1;
  p->sparseCudaArraySupported = 1;
  p->hostRegisterReadOnlySupported = 1;
  p->timelineSemaphoreInteropSupported = 1;
  p->memoryPoolsSupported = 1;  // cudaMallocAsync is simulated (stream-ordered mem_alloc)
  p->gpuDirectRDMASupported = 0;
  p->gpuDirectRDMAFlushWritesOptions = 0;
  p->gpuDirectRDMAWritesOrdering = 0;
  p->memoryPoolSupportedHandleTypes = 0;  // no IPC in the simulation
  p->deferredMappingCudaArraySupported = 1;
  p->ipcEventSupported = 0;
  p->clusterLaunch = 1;
  p->unifiedFunctionPointers = 1;
  p->deviceNumaConfig = 0;
  p->deviceNumaId = -1;
  p->mpsEnabled = 0;
  p->hostNumaId = -1;
  p->gpuPciDeviceID = kGpuPciDeviceId;
  p->gpuPciSubsystemID = kGpuPciSubsystemId;
  p->hostNumaMultinodeIpcSupported = 0;
}

// cudaDeviceGetAttribute: the same values as fill_props. Unknown attributes read 0.
int device_attribute(cudaDeviceAttr attr, int dev) noexcept {
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: return kMaxThreadsPerBlock;
    case cudaDevAttrMaxBlockDimX: return kMaxBlockDim[0];
    case cudaDevAttrMaxBlockDimY: return kMaxBlockDim[1];
    case cudaDevAttrMaxBlockDimZ: return kMaxBlockDim[2];
    case cudaDevAttrMaxGridDimX: return kMaxGridDim[0];
    case cudaDevAttrMaxGridDimY: return kMaxGridDim[1];
    case cudaDevAttrMaxGridDimZ: return kMaxGridDim[2];
    case cudaDevAttrMaxSharedMemoryPerBlock: return kSharedPerBlock;
    case cudaDevAttrTotalConstantMemory: return kTotalConstMem;
    case cudaDevAttrWarpSize: return kWarpSize;
    case cudaDevAttrMaxPitch: return kMaxPitch;
    case cudaDevAttrMaxRegistersPerBlock: return kRegsPerBlock;
    case cudaDevAttrClockRate: return kClockKHz;
    case cudaDevAttrTextureAlignment: return kTextureAlignment;
    case cudaDevAttrGpuOverlap: return 1;
    case cudaDevAttrMultiProcessorCount: return kSmCount;
    case cudaDevAttrKernelExecTimeout: return 0;
    case cudaDevAttrIntegrated: return 0;
    case cudaDevAttrCanMapHostMemory: return 1;
    case cudaDevAttrComputeMode: return cudaComputeModeDefault;
    case cudaDevAttrMaxTexture1DWidth: return 131072;
    case cudaDevAttrMaxTexture2DWidth: return 131072;
    case cudaDevAttrMaxTexture2DHeight: return 65536;
    case cudaDevAttrMaxTexture3DWidth:
    case cudaDevAttrMaxTexture3DHeight:
    case cudaDevAttrMaxTexture3DDepth: return 16384;
    case cudaDevAttrMaxTexture2DLayeredWidth:
    case cudaDevAttrMaxTexture2DLayeredHeight: return 32768;
    case cudaDevAttrMaxTexture2DLayeredLayers: return 2048;
    case cudaDevAttrSurfaceAlignment: return kSurfaceAlignment;
    case cudaDevAttrConcurrentKernels: return 1;
    case cudaDevAttrEccEnabled: return 1;
    case cudaDevAttrPciBusId: return pci_bus_id(dev);
    case cudaDevAttrPciDeviceId: return pci_device_id(dev);
    case cudaDevAttrTccDriver: return 0;
    case cudaDevAttrMemoryClockRate: return kMemClockKHz;
    case cudaDevAttrGlobalMemoryBusWidth: return kBusWidth;
    case cudaDevAttrL2CacheSize: return kL2Size;
    case cudaDevAttrMaxThreadsPerMultiProcessor: return kMaxThreadsPerSm;
    case cudaDevAttrAsyncEngineCount: return kAsyncEngines;
    case cudaDevAttrUnifiedAddressing: return 1;
    case cudaDevAttrMaxTexture1DLayeredWidth: return 32768;
    case cudaDevAttrMaxTexture1DLayeredLayers: return 2048;
    case cudaDevAttrMaxTexture2DGatherWidth:
    case cudaDevAttrMaxTexture2DGatherHeight: return 32768;
    case cudaDevAttrMaxTexture3DWidthAlt:
    case cudaDevAttrMaxTexture3DHeightAlt: return 8192;
    case cudaDevAttrMaxTexture3DDepthAlt: return 32768;
    case cudaDevAttrPciDomainId: return pci_domain_id(dev);
    case cudaDevAttrTexturePitchAlignment: return kTexturePitchAlignment;
    case cudaDevAttrMaxTextureCubemapWidth:
    case cudaDevAttrMaxTextureCubemapLayeredWidth: return 32768;
    case cudaDevAttrMaxTextureCubemapLayeredLayers: return 2046;
    case cudaDevAttrMaxSurface1DWidth: return 32768;
    case cudaDevAttrMaxSurface2DWidth: return 131072;
    case cudaDevAttrMaxSurface2DHeight: return 65536;
    case cudaDevAttrMaxSurface3DWidth:
    case cudaDevAttrMaxSurface3DHeight:
    case cudaDevAttrMaxSurface3DDepth: return 16384;
    case cudaDevAttrMaxSurface1DLayeredWidth: return 32768;
    case cudaDevAttrMaxSurface1DLayeredLayers: return 2048;
    case cudaDevAttrMaxSurface2DLayeredWidth:
    case cudaDevAttrMaxSurface2DLayeredHeight: return 32768;
    case cudaDevAttrMaxSurface2DLayeredLayers: return 2048;
    case cudaDevAttrMaxSurfaceCubemapWidth:
    case cudaDevAttrMaxSurfaceCubemapLayeredWidth: return 32768;
    case cudaDevAttrMaxSurfaceCubemapLayeredLayers: return 2046;
    case cudaDevAttrMaxTexture1DLinearWidth: return 268435456;
    case cudaDevAttrMaxTexture2DLinearWidth: return 131072;
    case cudaDevAttrMaxTexture2DLinearHeight: return 65000;
    case cudaDevAttrMaxTexture2DLinearPitch: return 2097120;
    case cudaDevAttrMaxTexture2DMipmappedWidth:
    case cudaDevAttrMaxTexture2DMipmappedHeight:
    case cudaDevAttrMaxTexture1DMipmappedWidth: return 32768;
    case cudaDevAttrComputeCapabilityMajor: return kMajor;
    case cudaDevAttrComputeCapabilityMinor: return kMinor;
    case cudaDevAttrStreamPrioritiesSupported: return 1;
    case cudaDevAttrGlobalL1CacheSupported: return 1;
    case cudaDevAttrLocalL1CacheSupported: return 1;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: return kSharedPerSm;
    case cudaDevAttrMaxRegistersPerMultiprocessor: return kRegsPerSm;
    case cudaDevAttrManagedMemory: return 1;
    case cudaDevAttrIsMultiGpuBoard: return 0;
    case cudaDevAttrMultiGpuBoardGroupID: return dev;
    case cudaDevAttrHostNativeAtomicSupported: return 0;
    case cudaDevAttrSingleToDoublePrecisionPerfRatio: return 2;
    case cudaDevAttrPageableMemoryAccess: return 0;
    case cudaDevAttrConcurrentManagedAccess: return 1;
    case cudaDevAttrComputePreemptionSupported: return 1;
    case cudaDevAttrCanUseHostPointerForRegisteredMem: return 1;
    case cudaDevAttrCooperativeLaunch: return 1;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: return kSharedPerBlockOptin;
    case cudaDevAttrCanFlushRemoteWrites: return 0;
    case cudaDevAttrHostRegisterSupported: return 1;
    case cudaDevAttrPageableMemoryAccessUsesHostPageTables: return 0;
    case cudaDevAttrDirectManagedMemAccessFromHost: return 0;
    case cudaDevAttrMaxBlocksPerMultiprocessor: return kMaxBlocksPerSm;
    case cudaDevAttrMaxPersistingL2CacheSize: return kPersistingL2Max;
    case cudaDevAttrMaxAccessPolicyWindowSize: return kAccessPolicyMaxWindow;
    case cudaDevAttrReservedSharedMemoryPerBlock: return kReservedSharedPerBlock;
    case cudaDevAttrSparseCudaArraySupported: return 1;
    case cudaDevAttrHostRegisterReadOnlySupported: return 1;
    case cudaDevAttrTimelineSemaphoreInteropSupported: return 1;
    case cudaDevAttrMemoryPoolsSupported: return 1;
    case cudaDevAttrGPUDirectRDMASupported: return 0;
    case cudaDevAttrGPUDirectRDMAFlushWritesOptions: return 0;
    case cudaDevAttrGPUDirectRDMAWritesOrdering: return 0;
    case cudaDevAttrMemoryPoolSupportedHandleTypes: return 0;
    case cudaDevAttrClusterLaunch: return 1;
    case cudaDevAttrDeferredMappingCudaArraySupported: return 1;
    case cudaDevAttrIpcEventSupport: return 0;
    case cudaDevAttrMemSyncDomainCount: return 4;
    case cudaDevAttrNumaConfig: return 0;
    case cudaDevAttrNumaId: return -1;
    case cudaDevAttrMpsEnabled: return 0;
    case cudaDevAttrHostNumaId: return -1;
    case cudaDevAttrGpuPciDeviceId: return static_cast<int>(kGpuPciDeviceId);
    case cudaDevAttrGpuPciSubsystemId: return static_cast<int>(kGpuPciSubsystemId);
    default: return 0;
  }
}

// ---------------------------------------------------------------------------------------
// Process-wide bookkeeping the runtime keeps itself. Heap singletons, never destroyed:
// torch's libraries call __cudaUnregisterFatBinary from atexit handlers, after this
// library's static destructors could have run.
// ---------------------------------------------------------------------------------------

// Pinned host memory (cudaHostAlloc) and registered ranges (cudaHostRegister), for
// cudaPointerGetAttributes and the register/unregister errors. sim_state.h can allocate
// pinned memory but not look it up, hence this map; memory the driver's cuMemHostAlloc
// hands out is therefore not known here.
struct HostRange {
  std::size_t size;
  int device;       // current device at allocation (cudaPointerAttributes::device)
  bool registered;  // cudaHostRegister, as opposed to cudaHostAlloc
};

// Device allocations the runtime must recognize again: managed memory (its pointer type)
// and cudaMallocAsync memory (the default pool's usage counters).
enum class Special : unsigned char { managed, async };
struct SpecialAlloc {
  Special kind;
  int device;
  std::size_t size;
};

// A registered __device__/__constant__ variable: a zeroed host buffer stands in for it.
struct Var {
  void** module;
  void* buffer;
  std::size_t size;
};

struct Module {
  void* fat_cubin;  // &fat_cubin is the handle nvcc's code holds
  Module* next;     // every module ever registered stays reachable (they are never freed)
};
std::atomic<Module*> g_modules{nullptr};

struct KernelSlot {
  char unused;
};
struct Library {
  std::vector<std::unique_ptr<KernelSlot>> kernels;  // cudaLibraryGetKernel handles
};

struct State {
  std::mutex host_mu;
  std::map<std::uintptr_t, HostRange> host;  // by base address

  std::mutex special_mu;
  std::unordered_map<const void*, SpecialAlloc> special;

  std::mutex var_mu;
  std::unordered_map<const void*, Var> vars;  // by host shadow address

  std::mutex lib_mu;
  std::unordered_map<const void*, std::unique_ptr<Library>> libraries;
};

State& state() {
  static State* s = new State;  // leaked on purpose (see above)
  return *s;
}

// Lets cudaFree skip the special-allocation lock while there are none (the common case).
std::atomic<std::size_t> g_special_count{0};

// Peer access enabled from device i to device j: bit j of g_peer[i].
std::atomic<std::uint32_t> g_peer[kMaxDevices];

std::atomic<unsigned> g_device_flags[kMaxDevices];

// The default memory pool of each device (cudaDeviceGetDefaultMemPool). cudaMallocAsync
// takes memory straight from the device and nothing is cached: "used" is what was
// requested, "reserved" what the device charged for it (whole granules, as sim::mem_alloc
// charges), so torch's cudaMallocAsync backend reports what the device lost.
struct MemPool {
  std::atomic<int> reuse_follow_event{1};
  std::atomic<int> reuse_opportunistic{1};
  std::atomic<int> reuse_internal{1};
  std::atomic<std::uint64_t> release_threshold{0};
  std::atomic<std::uint64_t> used{0};
  std::atomic<std::uint64_t> used_high{0};
  std::atomic<std::uint64_t> reserved{0};
  std::atomic<std::uint64_t> reserved_high{0};
};
MemPool g_pools[kMaxDevices];

inline cudaMemPool_t pool_handle(int dev) noexcept {
  return reinterpret_cast<cudaMemPool_t>(&g_pools[dev]);
}
inline MemPool* pool_of(cudaMemPool_t h) noexcept {
  auto* p = reinterpret_cast<MemPool*>(h);
  if (p < &g_pools[0] || p >= &g_pools[kMaxDevices]) return nullptr;
  return p;
}

void raise_to(std::atomic<std::uint64_t>& high, std::uint64_t now) noexcept {
  std::uint64_t h = high.load();
  while (now > h && !high.compare_exchange_weak(h, now)) {}
}

void pool_account(int dev, std::size_t size, bool alloc) noexcept {
  if (dev < 0 || dev >= kMaxDevices) return;
  MemPool& p = g_pools[dev];
  const std::uint64_t g = sim::granularity();
  const std::uint64_t charged = (size + g - 1) / g * g;
  if (alloc) {
    raise_to(p.used_high, p.used.fetch_add(size) + size);
    raise_to(p.reserved_high, p.reserved.fetch_add(charged) + charged);
  } else {
    p.used.fetch_sub(size);
    p.reserved.fetch_sub(charged);
  }
}

bool special_insert(const void* p, Special kind, int dev, std::size_t size) noexcept {
  try {
    std::lock_guard<std::mutex> g(state().special_mu);
    state().special[p] = SpecialAlloc{kind, dev, size};
    g_special_count.store(state().special.size());
    return true;
  } catch (...) {
    return false;
  }
}

// Forgets `p` if it is special; returns what it was.
bool special_erase(const void* p, SpecialAlloc* out) noexcept {
  if (g_special_count.load(std::memory_order_relaxed) == 0) return false;
  std::lock_guard<std::mutex> g(state().special_mu);
  auto it = state().special.find(p);
  if (it == state().special.end()) return false;
  *out = it->second;
  state().special.erase(it);
  g_special_count.store(state().special.size());
  return true;
}

bool special_find(const void* base, SpecialAlloc* out) noexcept {
  if (g_special_count.load(std::memory_order_relaxed) == 0) return false;
  std::lock_guard<std::mutex> g(state().special_mu);
  auto it = state().special.find(base);
  if (it == state().special.end()) return false;
  *out = it->second;
  return true;
}

// The host range holding [p, p+size), if any.
bool host_find(const void* p, std::size_t size, std::uintptr_t* base, HostRange* out) noexcept {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  std::lock_guard<std::mutex> g(state().host_mu);
  auto& m = state().host;
  auto it = m.upper_bound(a);
  if (it == m.begin()) return false;
  --it;
  if (a - it->first >= it->second.size || size > it->second.size - (a - it->first)) return false;
  if (base != nullptr) *base = it->first;
  if (out != nullptr) *out = it->second;
  return true;
}

// Whether an operation may touch [p, p+size). Device memory: every byte must be device
// memory, walking across consecutive mappings (torch's expandable segments map one
// physical handle per page, and a tensor may span several); a range running into
// unmapped address space is what faults on a GPU and would fault here. Anything outside
// device memory is host memory: pinned (known) or pageable (cannot be checked), and
// refused only where the call requires device memory.
cudaError_t check_range(const void* p, std::size_t size, bool must_be_device) {
  if (p == nullptr) return cudaErrorInvalidValue;
  int dev = 0;
  void* base = nullptr;
  std::size_t alloc = 0;
  if (sim::find_device_pointer(p, &dev, &base, &alloc)) {
    auto at = reinterpret_cast<std::uintptr_t>(p);
    const std::uintptr_t end = at + size;
    if (end < at) return cudaErrorInvalidValue;
    for (;;) {
      const std::uintptr_t chunk_end = reinterpret_cast<std::uintptr_t>(base) + alloc;
      if (end <= chunk_end) return cudaSuccess;
      at = chunk_end;
      if (!sim::find_device_pointer(reinterpret_cast<const void*>(at), &dev, &base, &alloc) ||
          reinterpret_cast<std::uintptr_t>(base) != at) {
        return cudaErrorInvalidValue;
      }
    }
  }
  if (must_be_device && !host_find(p, size, nullptr, nullptr)) {
    // With unified addressing pinned host memory is a valid "device" pointer; anything
    // else is not.
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

// Validates a copy's direction and its device-side ranges.
cudaError_t check_copy(void* dst, const void* src, std::size_t count, cudaMemcpyKind kind) {
  if (count == 0) return cudaSuccess;
  bool dst_dev = false, src_dev = false;
  switch (kind) {
    case cudaMemcpyHostToHost: break;
    case cudaMemcpyHostToDevice: dst_dev = true; break;
    case cudaMemcpyDeviceToHost: src_dev = true; break;
    case cudaMemcpyDeviceToDevice: dst_dev = src_dev = true; break;
    case cudaMemcpyDefault: break;
    default: return cudaErrorInvalidMemcpyDirection;
  }
  cudaError_t e = check_range(dst, count, dst_dev);
  if (e != cudaSuccess) return e;
  return check_range(src, count, src_dev);
}

inline void copy_bytes(void* dst, const void* src, std::size_t count) noexcept {
  if (count != 0 && dst != src) std::memmove(dst, src, count);
}

// ---------------------------------------------------------------------------------------
// <<<>>> launch configuration: nvcc's code pushes the configuration, then the kernel's
// host stub pops it and launches. A fixed per-thread stack (nesting happens only when a
// launch's arguments themselves launch kernels).
// ---------------------------------------------------------------------------------------

struct LaunchConfig {
  unsigned grid[3];
  unsigned block[3];
  std::size_t shared_mem;
  cudaStream_t stream;
};
struct ConfigStack {
  LaunchConfig items[32];
  int depth;
};
thread_local ConfigStack tls_configs;  // zero-initialized, no TLS constructor

thread_local cudaStreamCaptureMode tls_capture_mode = cudaStreamCaptureModeGlobal;

// A launch's configuration as the hardware would reject it.
cudaError_t check_launch(const void* func, dim3 grid, dim3 block, std::size_t shared_mem) {
  if (func == nullptr) return cudaErrorInvalidDeviceFunction;
  if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 ||
      grid.z == 0) {
    return cudaErrorInvalidConfiguration;
  }
  if (block.x > static_cast<unsigned>(kMaxBlockDim[0]) ||
      block.y > static_cast<unsigned>(kMaxBlockDim[1]) ||
      block.z > static_cast<unsigned>(kMaxBlockDim[2]) ||
      static_cast<std::uint64_t>(block.x) * block.y * block.z >
          static_cast<std::uint64_t>(kMaxThreadsPerBlock) ||
      grid.x > static_cast<unsigned>(kMaxGridDim[0]) ||
      grid.y > static_cast<unsigned>(kMaxGridDim[1]) ||
      grid.z > static_cast<unsigned>(kMaxGridDim[2])) {
    return cudaErrorInvalidConfiguration;
  }
  if (shared_mem > static_cast<std::size_t>(kSharedPerBlockOptin)) {
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

cudaError_t launch(const void* func, dim3 grid, dim3 block, std::size_t shared_mem,
                   cudaStream_t stream) {
  cudaError_t e = check_launch(func, grid, block, shared_mem);
  if (e != cudaSuccess) return done(e);
  return done(sim::stream_enqueue(S(stream)));  // the kernel itself never runs
}

// ---------------------------------------------------------------------------------------
// Error names and strings: the real runtime's, verbatim (generated with the toolkit's
// libcudart.so.13 from every cudaError_t enumerator).
// ---------------------------------------------------------------------------------------

#define PYPOOL_SIM_CUDA_ERRORS(X)                                                          \
  X(cudaSuccess, "no error")                                                               \
  X(cudaErrorInvalidValue, "invalid argument")                                             \
  X(cudaErrorMemoryAllocation, "out of memory")                                            \
  X(cudaErrorInitializationError, "initialization error")                                  \
  X(cudaErrorCudartUnloading, "driver shutting down")                                      \
  X(cudaErrorProfilerDisabled, "profiler disabled while using external profiling tool")    \
  X(cudaErrorProfilerNotInitialized,                                                       \
    "profiler not initialized: call cudaProfilerInitialize()")                             \
  X(cudaErrorProfilerAlreadyStarted, "profiler already started")                           \
  X(cudaErrorProfilerAlreadyStopped, "profiler already stopped")                           \
  X(cudaErrorInvalidConfiguration, "invalid configuration argument")                       \
  X(cudaErrorInvalidPitchValue, "invalid pitch argument")                                  \
  X(cudaErrorInvalidSymbol, "invalid device symbol")                                       \
  X(cudaErrorInvalidHostPointer, "invalid host pointer")                                   \
  X(cudaErrorInvalidDevicePointer, "invalid device pointer")                               \
  X(cudaErrorInvalidTexture, "invalid texture reference")                                  \
  X(cudaErrorInvalidTextureBinding, "texture is not bound to a pointer")                   \
  X(cudaErrorInvalidChannelDescriptor, "invalid channel descriptor")                       \
  X(cudaErrorInvalidMemcpyDirection, "invalid copy direction for memcpy")                  \
  X(cudaErrorAddressOfConstant, "invalid address of constant")                             \
  X(cudaErrorTextureFetchFailed, "fetch from texture failed")                              \
  X(cudaErrorTextureNotBound, "cannot fetch from a texture that is not bound")             \
  X(cudaErrorSynchronizationError, "incorrect use of __syncthreads()")                     \
  X(cudaErrorInvalidFilterSetting, "linear filtering not supported for non-float type")    \
  X(cudaErrorInvalidNormSetting, "read as normalized float not supported for data type")   \
  X(cudaErrorMixedDeviceExecution,                                                         \
    "device emulation mode and device execution mode cannot be mixed")                     \
  X(cudaErrorNotYetImplemented, "feature not yet implemented")                             \
  X(cudaErrorMemoryValueTooLarge, "memory size or pointer value too large to fit in 32 bit") \
  X(cudaErrorStubLibrary, "CUDA driver is a stub library")                                 \
  X(cudaErrorInsufficientDriver, "CUDA driver version is insufficient for CUDA runtime version") \
  X(cudaErrorCallRequiresNewerDriver, "API call is not supported in the installed CUDA driver") \
  X(cudaErrorInvalidSurface, "invalid surface reference")                                  \
  X(cudaErrorDuplicateVariableName, "duplicate global variable looked up by string name")  \
  X(cudaErrorDuplicateTextureName, "duplicate texture looked up by string name")           \
  X(cudaErrorDuplicateSurfaceName, "duplicate surface looked up by string name")           \
  X(cudaErrorDevicesUnavailable, "CUDA-capable device(s) is/are busy or unavailable")      \
  X(cudaErrorIncompatibleDriverContext, "incompatible driver context")                     \
  X(cudaErrorMissingConfiguration, "__global__ function call is not configured")           \
  X(cudaErrorPriorLaunchFailure, "unspecified launch failure in prior launch")             \
  X(cudaErrorLaunchMaxDepthExceeded, "launch would exceed maximum depth of nested launches") \
  X(cudaErrorLaunchFileScopedTex,                                                          \
    "launch failed because kernel uses unsupported, file-scoped textures (texture objects are supported)") \
  X(cudaErrorLaunchFileScopedSurf,                                                         \
    "launch failed because kernel uses unsupported, file-scoped surfaces (surface objects are supported)") \
  X(cudaErrorSyncDepthExceeded,                                                            \
    "cudaDeviceSynchronize failed because caller's grid depth exceeds cudaLimitDevRuntimeSyncDepth") \
  X(cudaErrorLaunchPendingCountExceeded,                                                   \
    "launch failed because launch would exceed cudaLimitDevRuntimePendingLaunchCount")     \
  X(cudaErrorInvalidDeviceFunction, "invalid device function")                             \
  X(cudaErrorNoDevice, "no CUDA-capable device is detected")                               \
  X(cudaErrorInvalidDevice, "invalid device ordinal")                                      \
  X(cudaErrorDeviceNotLicensed, "device doesn't have valid Grid license")                  \
  X(cudaErrorSoftwareValidityNotEstablished, "integrity checks failed")                    \
  X(cudaErrorStartupFailure, "startup failure in cuda runtime")                            \
  X(cudaErrorInvalidKernelImage, "device kernel image is invalid")                         \
  X(cudaErrorDeviceUninitialized, "invalid device context")                                \
  X(cudaErrorMapBufferObjectFailed, "mapping of buffer object failed")                     \
  X(cudaErrorUnmapBufferObjectFailed, "unmapping of buffer object failed")                 \
  X(cudaErrorArrayIsMapped, "array is mapped")                                             \
  X(cudaErrorAlreadyMapped, "resource already mapped")                                     \
  X(cudaErrorNoKernelImageForDevice, "no kernel image is available for execution on the device") \
  X(cudaErrorAlreadyAcquired, "resource already acquired")                                 \
  X(cudaErrorNotMapped, "resource not mapped")                                             \
  X(cudaErrorNotMappedAsArray, "resource not mapped as array")                             \
  X(cudaErrorNotMappedAsPointer, "resource not mapped as pointer")                         \
  X(cudaErrorECCUncorrectable, "uncorrectable ECC error encountered")                      \
  X(cudaErrorUnsupportedLimit, "limit is not supported on this architecture")              \
  X(cudaErrorDeviceAlreadyInUse, "exclusive-thread device already in use by a different thread") \
  X(cudaErrorPeerAccessUnsupported, "peer access is not supported between these two devices") \
  X(cudaErrorInvalidPtx, "a PTX JIT compilation failed")                                   \
  X(cudaErrorInvalidGraphicsContext, "invalid OpenGL or DirectX context")                  \
  X(cudaErrorNvlinkUncorrectable, "uncorrectable NVLink error detected during the execution") \
  X(cudaErrorJitCompilerNotFound, "PTX JIT compiler library not found")                    \
  X(cudaErrorUnsupportedPtxVersion, "the provided PTX was compiled with an unsupported toolchain.") \
  X(cudaErrorJitCompilationDisabled, "PTX JIT compilation was disabled")                   \
  X(cudaErrorUnsupportedExecAffinity, "the provided execution affinity is not supported")  \
  X(cudaErrorUnsupportedDevSideSync,                                                       \
    "the provided PTX contains unsupported call to cudaDeviceSynchronize")                 \
  X(cudaErrorContained, "Invalid access of peer GPU memory over nvlink or a hardware error") \
  X(cudaErrorInvalidSource, "device kernel image is invalid")                              \
  X(cudaErrorFileNotFound, "file not found")                                               \
  X(cudaErrorSharedObjectSymbolNotFound, "shared object symbol not found")                 \
  X(cudaErrorSharedObjectInitFailed, "shared object initialization failed")                \
  X(cudaErrorOperatingSystem, "OS call failed or operation not supported on this OS")      \
  X(cudaErrorInvalidResourceHandle, "invalid resource handle")                             \
  X(cudaErrorIllegalState, "the operation cannot be performed in the present state")       \
  X(cudaErrorLossyQuery, "attempted introspection would be semantically lossy")            \
  X(cudaErrorSymbolNotFound, "named symbol not found")                                     \
  X(cudaErrorNotReady, "device not ready")                                                 \
  X(cudaErrorIllegalAddress, "an illegal memory access was encountered")                   \
  X(cudaErrorLaunchOutOfResources, "too many resources requested for launch")              \
  X(cudaErrorLaunchTimeout, "the launch timed out and was terminated")                     \
  X(cudaErrorLaunchIncompatibleTexturing, "launch uses incompatible texturing mode")       \
  X(cudaErrorPeerAccessAlreadyEnabled, "peer access is already enabled")                   \
  X(cudaErrorPeerAccessNotEnabled, "peer access has not been enabled")                     \
  X(cudaErrorSetOnActiveProcess, "cannot set while device is active in this process")      \
  X(cudaErrorContextIsDestroyed, "context is destroyed")                                   \
  X(cudaErrorAssert, "device-side assert triggered")                                       \
  X(cudaErrorTooManyPeers, "peer mapping resources exhausted")                             \
  X(cudaErrorHostMemoryAlreadyRegistered,                                                  \
    "part or all of the requested memory range is already mapped")                         \
  X(cudaErrorHostMemoryNotRegistered,                                                      \
    "pointer does not correspond to a registered memory region")                           \
  X(cudaErrorHardwareStackError, "hardware stack error")                                   \
  X(cudaErrorIllegalInstruction, "an illegal instruction was encountered")                 \
  X(cudaErrorMisalignedAddress, "misaligned address")                                      \
  X(cudaErrorInvalidAddressSpace, "operation not supported on global/shared address space") \
  X(cudaErrorInvalidPc, "invalid program counter")                                         \
  X(cudaErrorLaunchFailure, "unspecified launch failure")                                  \
  X(cudaErrorCooperativeLaunchTooLarge, "too many blocks in cooperative launch")           \
  X(cudaErrorTensorMemoryLeak, "tensor memory not completely freed")                       \
  X(cudaErrorNotPermitted, "operation not permitted")                                      \
  X(cudaErrorNotSupported, "operation not supported")                                      \
  X(cudaErrorSystemNotReady, "system not yet initialized")                                 \
  X(cudaErrorSystemDriverMismatch,                                                         \
    "system has unsupported display driver / cuda driver combination")                     \
  X(cudaErrorCompatNotSupportedOnDevice, "forward compatibility was attempted on non supported HW") \
  X(cudaErrorMpsConnectionFailed,                                                          \
    "MPS client failed to connect to the MPS control daemon or the MPS server")            \
  X(cudaErrorMpsRpcFailure,                                                                \
    "the remote procedural call between the MPS server and the MPS client failed")         \
  X(cudaErrorMpsServerNotReady, "MPS server is not ready to accept new MPS client requests") \
  X(cudaErrorMpsMaxClientsReached,                                                         \
    "the hardware resources required to create MPS client have been exhausted")           \
  X(cudaErrorMpsMaxConnectionsReached,                                                     \
    "the hardware resources required to support device connections have been exhausted")  \
  X(cudaErrorMpsClientTerminated, "the MPS client has been terminated by the server")      \
  X(cudaErrorCdpNotSupported,                                                              \
    "is using CUDA Dynamic Parallelism, but the current configuration, like MPS, does not support it") \
  X(cudaErrorCdpVersionMismatch,                                                           \
    "unsupported interaction between different versions of CUDA Dynamic Parallelism")      \
  X(cudaErrorStreamCaptureUnsupported, "operation not permitted when stream is capturing") \
  X(cudaErrorStreamCaptureInvalidated, "operation failed due to a previous error during capture") \
  X(cudaErrorStreamCaptureMerge, "operation would result in a merge of separate capture sequences") \
  X(cudaErrorStreamCaptureUnmatched, "capture was not ended in the same stream as it began") \
  X(cudaErrorStreamCaptureUnjoined, "capturing stream has unjoined work")                  \
  X(cudaErrorStreamCaptureIsolation, "dependency created on uncaptured work in another stream") \
  X(cudaErrorStreamCaptureImplicit,                                                        \
    "operation would make the legacy stream depend on a capturing blocking stream")        \
  X(cudaErrorCapturedEvent,                                                                \
    "operation not permitted on an event last recorded in a capturing stream")             \
  X(cudaErrorStreamCaptureWrongThread,                                                     \
    "attempt to terminate a thread-local capture sequence from another thread")            \
  X(cudaErrorTimeout, "wait operation timed out")                                          \
  X(cudaErrorGraphExecUpdateFailure,                                                       \
    "the graph update was not performed because it included changes which violated constraints specific to instantiated graph update") \
  X(cudaErrorExternalDevice, "an async error has occured in external entity outside of CUDA") \
  X(cudaErrorInvalidClusterSize, "a kernel launch error has occurred due to cluster misconfiguration") \
  X(cudaErrorFunctionNotLoaded,                                                            \
    "the function handle is not loaded when calling an API that requires a loaded function") \
  X(cudaErrorInvalidResourceType,                                                          \
    "one or more resources passed in are not valid resource types for the operation")      \
  X(cudaErrorInvalidResourceConfiguration,                                                 \
    "one or more resources are insufficient or non-applicable for the operation")          \
  X(cudaErrorUnknown, "unknown error")                                                     \
  X(cudaErrorApiFailureBase, "api failure base")

constexpr const char* kUnrecognized = "unrecognized error code";

const char* error_name(cudaError_t e) noexcept {
  switch (e) {
#define PYPOOL_SIM_NAME(name, text) \
  case name: return #name;
    PYPOOL_SIM_CUDA_ERRORS(PYPOOL_SIM_NAME)
#undef PYPOOL_SIM_NAME
    default: return kUnrecognized;
  }
}

const char* error_string(cudaError_t e) noexcept {
  switch (e) {
#define PYPOOL_SIM_TEXT(name, text) \
  case name: return text;
    PYPOOL_SIM_CUDA_ERRORS(PYPOOL_SIM_TEXT)
#undef PYPOOL_SIM_TEXT
    default: return kUnrecognized;
  }
}

// A graph/capture/IPC feature the simulation does not have. Like the generated stubs
// (stubs.h), `fn` names itself on stderr once unless PYPOOL_SIM_QUIET=1, so that
// `python -m pypool simdevice --verbose` says which call torch's "operation not
// supported" came from.
cudaError_t not_simulated(const char* fn) noexcept {
  static std::mutex mu;
  static std::set<std::string>* warned = new std::set<std::string>;  // leaked, as State
  if (!sim::quiet()) {
    try {
      std::lock_guard<std::mutex> g(mu);
      if (warned->insert(fn).second)
        std::fprintf(stderr, "pypool-simdevice: %s is not simulated; it returns 'not supported' (%d)\n", fn,
                     static_cast<int>(cudaErrorNotSupported));
    } catch (...) {
    }
  }
  return done(cudaErrorNotSupported);
}

}  // namespace

// =======================================================================================
// The exported API (PYPOOL_SIM_EXPORT: default visibility; libcudart.map binds the names
// to version node libcudart.so.13 and hides everything else).
// =======================================================================================
extern "C" {

// ---- errors ---------------------------------------------------------------------------

PYPOOL_SIM_EXPORT cudaError_t cudaGetLastError(void) {
  sim::count_call("cudaGetLastError", false);
  const cudaError_t e = tls_last_error;
  tls_last_error = cudaSuccess;
  return e;
}

PYPOOL_SIM_EXPORT cudaError_t cudaPeekAtLastError(void) {
  sim::count_call("cudaPeekAtLastError", false);
  return tls_last_error;
}

PYPOOL_SIM_EXPORT const char* cudaGetErrorName(cudaError_t error) {
  sim::count_call("cudaGetErrorName", false);
  return error_name(error);
}

PYPOOL_SIM_EXPORT const char* cudaGetErrorString(cudaError_t error) {
  sim::count_call("cudaGetErrorString", false);
  return error_string(error);
}

// ---- versions -------------------------------------------------------------------------

PYPOOL_SIM_EXPORT cudaError_t cudaDriverGetVersion(int* driverVersion) {
  sim::count_call("cudaDriverGetVersion", false);
  if (driverVersion == nullptr) return done(cudaErrorInvalidValue);
  *driverVersion = kDriverVersion;
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaRuntimeGetVersion(int* runtimeVersion) {
  sim::count_call("cudaRuntimeGetVersion", false);
  if (runtimeVersion == nullptr) return done(cudaErrorInvalidValue);
  *runtimeVersion = kRuntimeVersion;
  return cudaSuccess;
}

// ---- devices --------------------------------------------------------------------------

PYPOOL_SIM_EXPORT cudaError_t cudaGetDeviceCount(int* count) {
  sim::count_call("cudaGetDeviceCount", false);
  if (count == nullptr) return done(cudaErrorInvalidValue);
  *count = sim::device_count();
  return *count > 0 ? cudaSuccess : done(cudaErrorNoDevice);
}

// Hot: torch calls cudaGetDevice around nearly every operation. No locks.
PYPOOL_SIM_EXPORT cudaError_t cudaGetDevice(int* device) {
  sim::count_call("cudaGetDevice", false);
  if (device == nullptr) return done(cudaErrorInvalidValue);
  *device = sim::current_device();
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaSetDevice(int device) {
  sim::count_call("cudaSetDevice", false);
  return done(sim::set_current_device(device));
}

PYPOOL_SIM_EXPORT cudaError_t cudaInitDevice(int device, unsigned int deviceFlags, unsigned int flags) {
  sim::count_call("cudaInitDevice", false);
  if (!valid_device(device)) return done(cudaErrorInvalidDevice);
  if ((deviceFlags & ~static_cast<unsigned>(cudaDeviceMask)) != 0 || flags > 1) {
    return done(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaChooseDevice(int* device, const struct cudaDeviceProp* prop) {
  sim::count_call("cudaChooseDevice", false);
  if (device == nullptr || prop == nullptr) return done(cudaErrorInvalidValue);
  *device = 0;  // every simulated device is identical
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaSetDeviceFlags(unsigned int flags) {
  sim::count_call("cudaSetDeviceFlags", false);
  if ((flags & ~static_cast<unsigned>(cudaDeviceMask)) != 0) return done(cudaErrorInvalidValue);
  const int dev = sim::current_device();
  if (dev >= 0 && dev < kMaxDevices) g_device_flags[dev].store(flags);
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaGetDeviceFlags(unsigned int* flags) {
  sim::count_call("cudaGetDeviceFlags", false);
  if (flags == nullptr) return done(cudaErrorInvalidValue);
  const int dev = sim::current_device();
  // Mapped pinned memory is always available (unified addressing), as on a real device.
  *flags = (dev >= 0 && dev < kMaxDevices ? g_device_flags[dev].load() : 0u) | cudaDeviceMapHost;
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp* prop, int device) {
  sim::count_call("cudaGetDeviceProperties", false);
  if (prop == nullptr) return done(cudaErrorInvalidValue);
  if (!valid_device(device)) return done(cudaErrorInvalidDevice);
  fill_props(prop, device);
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaDeviceGetAttribute(int* value, enum cudaDeviceAttr attr, int device) {
  sim::count_call("cudaDeviceGetAttribute", false);
  if (value == nullptr) return done(cudaErrorInvalidValue);
  if (!valid_device(device)) return done(cudaErrorInvalidDevice);
  *value = device_attribute(attr, device);
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaDeviceGetPCIBusId(char* pciBusId, int len, int device) {
  sim::count_call("cudaDeviceGetPCIBusId", false);
  if (pciBusId == nullptr || len <= 0) return done(cudaErrorInvalidValue);
  if (!valid_device(device)) return done(cudaErrorInvalidDevice);
  std::snprintf(pciBusId, static_cast<std::size_t>(len), "%04x:%02x:%02x.0", pci_domain_id(device),
                pci_bus_id(device), pci_device_id(device));
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaDeviceGetStreamPriorityRange(int* leastPriority, int* greatestPriority) {
  sim::count_call("cudaDeviceGetStreamPriorityRange", false);
  if (leastPriority != nullptr) *leastPriority = kLeastPriority;
  if (greatestPriority != nullptr) *greatestPriority = kGreatestPriority;
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaDeviceCanAccessPeer(int* canAccessPeer, int device, int peerDevice) {
  sim::count_call("cudaDeviceCanAccessPeer", false);
  if (canAccessPeer == nullptr) return done(cudaErrorInvalidValue);
  if (!valid_device(device) || !valid_device(peerDevice)) return done(cudaErrorInvalidDevice);
  *canAccessPeer = device != peerDevice ? 1 : 0;
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaDeviceEnablePeerAccess(int peerDevice, unsigned int flags) {
  sim::count_call("cudaDeviceEnablePeerAccess", false);
  if (flags != 0) return done(cudaErrorInvalidValue);
  const int dev = sim::current_device();
  if (!valid_device(peerDevice) || peerDevice == dev || dev < 0 || dev >= kMaxDevices) {
    return done(cudaErrorInvalidDevice);
  }
  const std::uint32_t bit = 1u << peerDevice;
  if (g_peer[dev].fetch_or(bit) & bit) return done(cudaErrorPeerAccessAlreadyEnabled);
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaDeviceDisablePeerAccess(int peerDevice) {
  sim::count_call("cudaDeviceDisablePeerAccess", false);
  const int dev = sim::current_device();
  if (!valid_device(peerDevice) || peerDevice == dev || dev < 0 || dev >= kMaxDevices) {
    return done(cudaErrorInvalidDevice);
  }
  const std::uint32_t bit = 1u << peerDevice;
  if (!(g_peer[dev].fetch_and(~bit) & bit)) return done(cudaErrorPeerAccessNotEnabled);
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaDeviceSynchronize(void) {
  sim::count_call("cudaDeviceSynchronize", true);
  return done(sim::device_synchronize(sim::current_device()));
}

// Real: destroys every allocation of the device. The simulation has no "free all", so
// this only waits for the device; allocations stay counted until freed.
PYPOOL_SIM_EXPORT cudaError_t cudaDeviceReset(void) {
  sim::count_call("cudaDeviceReset", true);
  return done(sim::device_synchronize(sim::current_device()));
}

PYPOOL_SIM_EXPORT cudaError_t cudaDeviceGetLimit(size_t* pValue, enum cudaLimit limit) {
  sim::count_call("cudaDeviceGetLimit", false);
  if (pValue == nullptr) return done(cudaErrorInvalidValue);
  switch (limit) {
    case cudaLimitStackSize: *pValue = 1024; break;
    case cudaLimitPrintfFifoSize: *pValue = 1 << 20; break;
    case cudaLimitMallocHeapSize: *pValue = 8 << 20; break;
    case cudaLimitDevRuntimeSyncDepth: *pValue = 2; break;
    case cudaLimitDevRuntimePendingLaunchCount: *pValue = 2048; break;
    case cudaLimitMaxL2FetchGranularity: *pValue = 32; break;
    case cudaLimitPersistingL2CacheSize: *pValue = 0; break;
    default: return done(cudaErrorUnsupportedLimit);
  }
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaDeviceSetLimit(enum cudaLimit limit, size_t value) {
  sim::count_call("cudaDeviceSetLimit", false);
  (void)value;
  if (static_cast<int>(limit) < 0 || limit > cudaLimitPersistingL2CacheSize) {
    return done(cudaErrorUnsupportedLimit);
  }
  return cudaSuccess;
}

// ---- driver entry points --------------------------------------------------------------

// Shared by both entry-point queries. Unknown symbols are not an error: success with a
// null pointer, and the status says why (what the real runtime does).
static cudaError_t entry_point(const char* symbol, void** funcPtr, unsigned int cudaVersion,
                               unsigned long long flags,
                               enum cudaDriverEntryPointQueryResult* driverStatus) {
  if (symbol == nullptr || funcPtr == nullptr ||
      (flags & ~static_cast<unsigned long long>(cudaEnableLegacyStream |
                                                cudaEnablePerThreadDefaultStream)) != 0) {
    return done(cudaErrorInvalidValue);
  }
  *funcPtr = sim::driver_entry_point(symbol, cudaVersion);
  if (driverStatus != nullptr) {
    *driverStatus =
        *funcPtr != nullptr ? cudaDriverEntryPointSuccess : cudaDriverEntryPointSymbolNotFound;
  }
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaGetDriverEntryPointByVersion(const char* symbol, void** funcPtr,
                                             unsigned int cudaVersion, unsigned long long flags,
                                             enum cudaDriverEntryPointQueryResult* driverStatus) {
  sim::count_call("cudaGetDriverEntryPointByVersion", false);
  return entry_point(symbol, funcPtr, cudaVersion, flags, driverStatus);
}

PYPOOL_SIM_EXPORT cudaError_t cudaGetDriverEntryPoint(const char* symbol, void** funcPtr, unsigned long long flags,
                                    enum cudaDriverEntryPointQueryResult* driverStatus) {
  sim::count_call("cudaGetDriverEntryPoint", false);
  return entry_point(symbol, funcPtr, CUDART_VERSION, flags, driverStatus);
}

// ---- device memory --------------------------------------------------------------------

PYPOOL_SIM_EXPORT cudaError_t cudaMalloc(void** devPtr, size_t size) {
  sim::count_call("cudaMalloc", false);
  if (devPtr == nullptr) return done(cudaErrorInvalidValue);
  *devPtr = nullptr;
  return done(sim::mem_alloc(sim::current_device(), size, devPtr));
}

// cudaFree synchronizes the device on real hardware (the reason caching allocators
// exist); cudaFree(nullptr) does nothing, so it is counted under its own name (a counter
// keeps the sync flag of its first call).
PYPOOL_SIM_EXPORT cudaError_t cudaFree(void* devPtr) {
  if (devPtr == nullptr) {
    sim::count_call("cudaFree(nullptr)", false);
    return cudaSuccess;
  }
  sim::count_call("cudaFree", true);
  int dev = sim::current_device();
  void* base = nullptr;
  std::size_t size = 0;
  if (!sim::find_device_pointer(devPtr, &dev, &base, &size) || base != devPtr) {
    return done(cudaErrorInvalidValue);
  }
  sim::device_synchronize(dev);
  SpecialAlloc special{};
  const bool was_special = special_erase(devPtr, &special);
  const sim::Status s = sim::mem_free(devPtr);
  if (s == sim::Status::ok && was_special && special.kind == Special::async) {
    pool_account(special.device, special.size, false);
  }
  return done(s);
}

PYPOOL_SIM_EXPORT cudaError_t cudaMallocAsync(void** devPtr, size_t size, cudaStream_t hStream) {
  sim::count_call("cudaMallocAsync", false);
  if (devPtr == nullptr) return done(cudaErrorInvalidValue);
  *devPtr = nullptr;
  int dev = 0;
  sim::Status s = stream_device(hStream, &dev);
  if (s != sim::Status::ok) return done(s);
  // Stream-ordered in name only: the memory is usable at once, which is never earlier
  // than a real pool would hand it out.
  s = sim::mem_alloc(dev, size, devPtr);
  if (s != sim::Status::ok) return done(s);
  if (*devPtr != nullptr) {
    if (!special_insert(*devPtr, Special::async, dev, size)) {
      sim::mem_free(*devPtr);
      *devPtr = nullptr;
      return done(cudaErrorMemoryAllocation);
    }
    pool_account(dev, size, true);
  }
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaFreeAsync(void* devPtr, cudaStream_t hStream) {
  sim::count_call("cudaFreeAsync", false);
  int dev = 0;
  sim::Status s = stream_device(hStream, &dev);
  if (s != sim::Status::ok) return done(s);
  if (devPtr == nullptr) return cudaSuccess;
  void* base = nullptr;
  std::size_t size = 0;
  if (!sim::find_device_pointer(devPtr, &dev, &base, &size) || base != devPtr) {
    return done(cudaErrorInvalidValue);
  }
  SpecialAlloc special{};
  const bool was_special = special_erase(devPtr, &special);
  s = sim::mem_free(devPtr);
  if (s == sim::Status::ok && was_special && special.kind == Special::async) {
    pool_account(special.device, special.size, false);
  }
  return done(s);
}

// Managed memory is device memory the host can touch: here all device memory is, so it
// is a plain device allocation (counted against the device) remembered as managed.
PYPOOL_SIM_EXPORT cudaError_t cudaMallocManaged(void** devPtr, size_t size, unsigned int flags) {
  sim::count_call("cudaMallocManaged", false);
  if (devPtr == nullptr || size == 0 ||
      (flags != cudaMemAttachGlobal && flags != cudaMemAttachHost)) {
    return done(cudaErrorInvalidValue);
  }
  *devPtr = nullptr;
  const int dev = sim::current_device();
  const sim::Status s = sim::mem_alloc(dev, size, devPtr);
  if (s != sim::Status::ok) return done(s);
  if (!special_insert(*devPtr, Special::managed, dev, size)) {
    sim::mem_free(*devPtr);
    *devPtr = nullptr;
    return done(cudaErrorMemoryAllocation);
  }
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  sim::count_call("cudaMemGetInfo", false);
  if (free == nullptr && total == nullptr) return done(cudaErrorInvalidValue);
  const int dev = sim::current_device();
  const std::uint64_t cap = sim::device_total(dev);
  const std::uint64_t used = sim::device_used(dev);
  if (free != nullptr) *free = static_cast<size_t>(used < cap ? cap - used : 0);
  if (total != nullptr) *total = static_cast<size_t>(cap);
  return cudaSuccess;
}

// ---- pinned host memory ---------------------------------------------------------------

PYPOOL_SIM_EXPORT cudaError_t cudaHostAlloc(void** pHost, size_t size, unsigned int flags) {
  sim::count_call("cudaHostAlloc", false);
  if (pHost == nullptr ||
      (flags & ~static_cast<unsigned>(cudaHostAllocPortable | cudaHostAllocMapped |
                                      cudaHostAllocWriteCombined)) != 0) {
    return done(cudaErrorInvalidValue);
  }
  *pHost = nullptr;
  const sim::Status s = sim::host_alloc(size, pHost);
  if (s != sim::Status::ok || *pHost == nullptr) return done(s);
  try {
    std::lock_guard<std::mutex> g(state().host_mu);
    state().host[reinterpret_cast<std::uintptr_t>(*pHost)] =
        HostRange{size, sim::current_device(), false};
  } catch (...) {
    sim::host_free(*pHost);
    *pHost = nullptr;
    return done(cudaErrorMemoryAllocation);
  }
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaMallocHost(void** ptr, size_t size) {
  sim::count_call("cudaMallocHost", false);
  return cudaHostAlloc(ptr, size, cudaHostAllocDefault);
}

// Freeing pinned memory synchronizes the device on real hardware (nullptr: a no-op,
// counted apart as for cudaFree).
PYPOOL_SIM_EXPORT cudaError_t cudaFreeHost(void* ptr) {
  if (ptr == nullptr) {
    sim::count_call("cudaFreeHost(nullptr)", false);
    return cudaSuccess;
  }
  sim::count_call("cudaFreeHost", true);
  {
    std::lock_guard<std::mutex> g(state().host_mu);
    auto& m = state().host;
    auto it = m.find(reinterpret_cast<std::uintptr_t>(ptr));
    if (it == m.end() || it->second.registered) return done(cudaErrorInvalidValue);
    m.erase(it);
  }
  sim::device_synchronize(sim::current_device());
  return done(sim::host_free(ptr));
}

PYPOOL_SIM_EXPORT cudaError_t cudaHostRegister(void* ptr, size_t size, unsigned int flags) {
  sim::count_call("cudaHostRegister", false);
  if (ptr == nullptr || size == 0 ||
      (flags & ~static_cast<unsigned>(cudaHostRegisterPortable | cudaHostRegisterMapped |
                                      cudaHostRegisterIoMemory | cudaHostRegisterReadOnly)) != 0) {
    return done(cudaErrorInvalidValue);
  }
  if (flags & cudaHostRegisterIoMemory) return done(cudaErrorNotSupported);  // no I/O space
  const auto a = reinterpret_cast<std::uintptr_t>(ptr);
  try {
    std::lock_guard<std::mutex> g(state().host_mu);
    auto& m = state().host;
    auto it = m.lower_bound(a);
    if (it != m.end() && it->first < a + size) return done(cudaErrorHostMemoryAlreadyRegistered);
    if (it != m.begin()) {
      --it;
      if (it->first + it->second.size > a) return done(cudaErrorHostMemoryAlreadyRegistered);
    }
    m[a] = HostRange{size, sim::current_device(), true};
  } catch (...) {
    return done(cudaErrorMemoryAllocation);
  }
  return cudaSuccess;
}

// Unregistering synchronizes on real hardware, like freeing pinned memory.
PYPOOL_SIM_EXPORT cudaError_t cudaHostUnregister(void* ptr) {
  sim::count_call("cudaHostUnregister", true);
  {
    std::lock_guard<std::mutex> g(state().host_mu);
    auto& m = state().host;
    auto it = m.find(reinterpret_cast<std::uintptr_t>(ptr));
    if (ptr == nullptr || it == m.end() || !it->second.registered) {
      return done(cudaErrorHostMemoryNotRegistered);
    }
    m.erase(it);
  }
  return done(sim::device_synchronize(sim::current_device()));
}

PYPOOL_SIM_EXPORT cudaError_t cudaPointerGetAttributes(struct cudaPointerAttributes* attributes, const void* ptr) {
  sim::count_call("cudaPointerGetAttributes", false);
  if (attributes == nullptr) return done(cudaErrorInvalidValue);
  std::memset(attributes, 0, sizeof *attributes);
  int dev = 0;
  void* base = nullptr;
  std::size_t size = 0;
  if (ptr != nullptr && sim::find_device_pointer(ptr, &dev, &base, &size)) {
    SpecialAlloc special{};
    attributes->device = dev;
    attributes->devicePointer = const_cast<void*>(ptr);
    if (special_find(base, &special) && special.kind == Special::managed) {
      attributes->type = cudaMemoryTypeManaged;
      attributes->hostPointer = const_cast<void*>(ptr);
    } else {
      attributes->type = cudaMemoryTypeDevice;
    }
    return cudaSuccess;
  }
  HostRange range{};
  if (ptr != nullptr && host_find(ptr, 1, nullptr, &range)) {
    attributes->type = cudaMemoryTypeHost;
    attributes->device = range.device;
    attributes->devicePointer = const_cast<void*>(ptr);  // unified addressing: same address
    attributes->hostPointer = const_cast<void*>(ptr);
    return cudaSuccess;
  }
  // Since CUDA 11 an unknown host pointer is not an error.
  attributes->type = cudaMemoryTypeUnregistered;
  attributes->device = -2;
  return cudaSuccess;
}

// ---- copies and memsets ---------------------------------------------------------------

// Blocking copy: synchronizes on real hardware; the legacy default stream's pending work
// completes first.
PYPOOL_SIM_EXPORT cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind) {
  sim::count_call("cudaMemcpy", true);
  const cudaError_t e = check_copy(dst, src, count, kind);
  if (e != cudaSuccess) return done(e);
  copy_bytes(dst, src, count);
  return done(sim::stream_synchronize(nullptr));
}

PYPOOL_SIM_EXPORT cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, enum cudaMemcpyKind kind,
                            cudaStream_t stream) {
  sim::count_call("cudaMemcpyAsync", false);
  const cudaError_t e = check_copy(dst, src, count, kind);
  if (e != cudaSuccess) return done(e);
  const sim::Status s = sim::stream_enqueue(S(stream));
  if (s != sim::Status::ok) return done(s);
  copy_bytes(dst, src, count);
  return cudaSuccess;
}

static cudaError_t copy_2d(void* dst, size_t dpitch, const void* src, size_t spitch,
                           size_t width, size_t height, cudaMemcpyKind kind) {
  if (width == 0 || height == 0) return cudaSuccess;
  if (width > dpitch || width > spitch) return cudaErrorInvalidPitchValue;
  const std::size_t dspan = dpitch * (height - 1) + width;
  const std::size_t sspan = spitch * (height - 1) + width;
  bool dst_dev = false, src_dev = false;
  switch (kind) {
    case cudaMemcpyHostToHost: case cudaMemcpyDefault: break;
    case cudaMemcpyHostToDevice: dst_dev = true; break;
    case cudaMemcpyDeviceToHost: src_dev = true; break;
    case cudaMemcpyDeviceToDevice: dst_dev = src_dev = true; break;
    default: return cudaErrorInvalidMemcpyDirection;
  }
  cudaError_t e = check_range(dst, dspan, dst_dev);
  if (e == cudaSuccess) e = check_range(src, sspan, src_dev);
  if (e != cudaSuccess) return e;
  for (std::size_t row = 0; row < height; ++row) {
    copy_bytes(static_cast<char*>(dst) + row * dpitch,
               static_cast<const char*>(src) + row * spitch, width);
  }
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaMemcpy2D(void* dst, size_t dpitch, const void* src, size_t spitch, size_t width,
                         size_t height, enum cudaMemcpyKind kind) {
  sim::count_call("cudaMemcpy2D", true);
  const cudaError_t e = copy_2d(dst, dpitch, src, spitch, width, height, kind);
  if (e != cudaSuccess) return done(e);
  return done(sim::stream_synchronize(nullptr));
}

PYPOOL_SIM_EXPORT cudaError_t cudaMemcpy2DAsync(void* dst, size_t dpitch, const void* src, size_t spitch,
                              size_t width, size_t height, enum cudaMemcpyKind kind,
                              cudaStream_t stream) {
  sim::count_call("cudaMemcpy2DAsync", false);
  int dev = 0;
  const sim::Status s = stream_device(stream, &dev);
  if (s != sim::Status::ok) return done(s);
  const cudaError_t e = copy_2d(dst, dpitch, src, spitch, width, height, kind);
  if (e != cudaSuccess) return done(e);
  return done(sim::stream_enqueue(S(stream)));
}

static cudaError_t copy_peer(void* dst, int dstDevice, const void* src, int srcDevice,
                             size_t count) {
  if (!valid_device(dstDevice) || !valid_device(srcDevice)) return cudaErrorInvalidDevice;
  return check_copy(dst, src, count, cudaMemcpyDeviceToDevice);
}

// Asynchronous with respect to the host (serialized with the devices' work): one unit on
// the legacy default stream.
PYPOOL_SIM_EXPORT cudaError_t cudaMemcpyPeer(void* dst, int dstDevice, const void* src, int srcDevice,
                           size_t count) {
  sim::count_call("cudaMemcpyPeer", false);
  const cudaError_t e = copy_peer(dst, dstDevice, src, srcDevice, count);
  if (e != cudaSuccess) return done(e);
  copy_bytes(dst, src, count);
  return done(sim::stream_enqueue(nullptr));
}

PYPOOL_SIM_EXPORT cudaError_t cudaMemcpyPeerAsync(void* dst, int dstDevice, const void* src, int srcDevice,
                                size_t count, cudaStream_t stream) {
  sim::count_call("cudaMemcpyPeerAsync", false);
  const cudaError_t e = copy_peer(dst, dstDevice, src, srcDevice, count);
  if (e != cudaSuccess) return done(e);
  const sim::Status s = sim::stream_enqueue(S(stream));
  if (s != sim::Status::ok) return done(s);
  copy_bytes(dst, src, count);
  return cudaSuccess;
}

// Device memsets are asynchronous with respect to the host: one unit of work.
PYPOOL_SIM_EXPORT cudaError_t cudaMemset(void* devPtr, int value, size_t count) {
  sim::count_call("cudaMemset", false);
  if (count == 0) return cudaSuccess;
  const cudaError_t e = check_range(devPtr, count, true);
  if (e != cudaSuccess) return done(e);
  std::memset(devPtr, value, count);
  return done(sim::stream_enqueue(nullptr));
}

PYPOOL_SIM_EXPORT cudaError_t cudaMemsetAsync(void* devPtr, int value, size_t count, cudaStream_t stream) {
  sim::count_call("cudaMemsetAsync", false);
  if (count == 0) return cudaSuccess;
  const cudaError_t e = check_range(devPtr, count, true);
  if (e != cudaSuccess) return done(e);
  const sim::Status s = sim::stream_enqueue(S(stream));
  if (s != sim::Status::ok) return done(s);
  std::memset(devPtr, value, count);
  return cudaSuccess;
}

// ---- device variables (symbols) -------------------------------------------------------

PYPOOL_SIM_EXPORT cudaError_t cudaGetSymbolAddress(void** devPtr, const void* symbol) {
  sim::count_call("cudaGetSymbolAddress", false);
  if (devPtr == nullptr) return done(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> g(state().var_mu);
  auto it = state().vars.find(symbol);
  if (it == state().vars.end()) return done(cudaErrorInvalidSymbol);
  *devPtr = it->second.buffer;
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaGetSymbolSize(size_t* size, const void* symbol) {
  sim::count_call("cudaGetSymbolSize", false);
  if (size == nullptr) return done(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> g(state().var_mu);
  auto it = state().vars.find(symbol);
  if (it == state().vars.end()) return done(cudaErrorInvalidSymbol);
  *size = it->second.size;
  return cudaSuccess;
}

// Synchronous with respect to the host (like cudaMemcpy).
PYPOOL_SIM_EXPORT cudaError_t cudaMemcpyToSymbol(const void* symbol, const void* src, size_t count, size_t offset,
                               enum cudaMemcpyKind kind) {
  sim::count_call("cudaMemcpyToSymbol", true);
  if (kind != cudaMemcpyHostToDevice && kind != cudaMemcpyDeviceToDevice &&
      kind != cudaMemcpyDefault) {
    return done(cudaErrorInvalidMemcpyDirection);
  }
  void* dst = nullptr;
  {
    std::lock_guard<std::mutex> g(state().var_mu);
    auto it = state().vars.find(symbol);
    if (it == state().vars.end()) return done(cudaErrorInvalidSymbol);
    if (offset > it->second.size || count > it->second.size - offset) {
      return done(cudaErrorInvalidValue);
    }
    dst = static_cast<char*>(it->second.buffer) + offset;
  }
  if (count != 0 && src == nullptr) return done(cudaErrorInvalidValue);
  copy_bytes(dst, src, count);
  return done(sim::stream_synchronize(nullptr));
}

// ---- streams --------------------------------------------------------------------------

PYPOOL_SIM_EXPORT cudaError_t cudaStreamCreate(cudaStream_t* pStream) {
  sim::count_call("cudaStreamCreate", false);
  if (pStream == nullptr) return done(cudaErrorInvalidValue);
  sim::Stream* s = nullptr;
  const sim::Status st = sim::stream_create(sim::current_device(), cudaStreamDefault, 0, &s);
  if (st != sim::Status::ok) return done(st);
  *pStream = reinterpret_cast<cudaStream_t>(s);
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaStreamCreateWithFlags(cudaStream_t* pStream, unsigned int flags) {
  sim::count_call("cudaStreamCreateWithFlags", false);
  if (pStream == nullptr || (flags & ~static_cast<unsigned>(cudaStreamNonBlocking)) != 0) {
    return done(cudaErrorInvalidValue);
  }
  sim::Stream* s = nullptr;
  const sim::Status st = sim::stream_create(sim::current_device(), flags, 0, &s);
  if (st != sim::Status::ok) return done(st);
  *pStream = reinterpret_cast<cudaStream_t>(s);
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaStreamCreateWithPriority(cudaStream_t* pStream, unsigned int flags,
                                         int priority) {
  sim::count_call("cudaStreamCreateWithPriority", false);
  if (pStream == nullptr || (flags & ~static_cast<unsigned>(cudaStreamNonBlocking)) != 0) {
    return done(cudaErrorInvalidValue);
  }
  // Out-of-range priorities are clamped, as the real runtime does.
  priority = std::min(kLeastPriority, std::max(kGreatestPriority, priority));
  sim::Stream* s = nullptr;
  const sim::Status st = sim::stream_create(sim::current_device(), flags, priority, &s);
  if (st != sim::Status::ok) return done(st);
  *pStream = reinterpret_cast<cudaStream_t>(s);
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  sim::count_call("cudaStreamDestroy", false);
  return done(sim::stream_destroy(S(stream)));
}

PYPOOL_SIM_EXPORT cudaError_t cudaStreamQuery(cudaStream_t stream) {
  sim::count_call("cudaStreamQuery", false);
  return done(sim::stream_query(S(stream)));
}

PYPOOL_SIM_EXPORT cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  sim::count_call("cudaStreamSynchronize", true);
  return done(sim::stream_synchronize(S(stream)));
}

PYPOOL_SIM_EXPORT cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned int flags) {
  sim::count_call("cudaStreamWaitEvent", false);
  if ((flags & ~static_cast<unsigned>(cudaEventWaitExternal)) != 0) {
    return done(cudaErrorInvalidValue);
  }
  return done(sim::stream_wait_event(S(stream), E(event)));
}

PYPOOL_SIM_EXPORT cudaError_t cudaStreamGetPriority(cudaStream_t hStream, int* priority) {
  sim::count_call("cudaStreamGetPriority", false);
  if (priority == nullptr) return done(cudaErrorInvalidValue);
  int dev = 0;
  unsigned flags = 0;
  return done(sim::stream_info(S(hStream), &dev, &flags, priority));
}

PYPOOL_SIM_EXPORT cudaError_t cudaStreamGetFlags(cudaStream_t hStream, unsigned int* flags) {
  sim::count_call("cudaStreamGetFlags", false);
  if (flags == nullptr) return done(cudaErrorInvalidValue);
  int dev = 0, priority = 0;
  return done(sim::stream_info(S(hStream), &dev, flags, &priority));
}

PYPOOL_SIM_EXPORT cudaError_t cudaStreamGetDevice(cudaStream_t hStream, int* device) {
  sim::count_call("cudaStreamGetDevice", false);
  if (device == nullptr) return done(cudaErrorInvalidValue);
  return done(stream_device(hStream, device));
}

// Host functions are host code: running one at once, on the calling thread, is a legal
// schedule (it would run once the stream's prior work completes; nothing here observes
// the difference, and kernels never run anyway).
PYPOOL_SIM_EXPORT cudaError_t cudaStreamAddCallback(cudaStream_t stream, cudaStreamCallback_t callback,
                                  void* userData, unsigned int flags) {
  sim::count_call("cudaStreamAddCallback", false);
  if (callback == nullptr || flags != 0) return done(cudaErrorInvalidValue);
  int dev = 0;
  const sim::Status s = stream_device(stream, &dev);
  if (s != sim::Status::ok) return done(s);
  callback(stream, cudaSuccess, userData);
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaLaunchHostFunc(cudaStream_t stream, cudaHostFn_t fn, void* userData) {
  sim::count_call("cudaLaunchHostFunc", false);
  if (fn == nullptr) return done(cudaErrorInvalidValue);
  int dev = 0;
  const sim::Status s = stream_device(stream, &dev);
  if (s != sim::Status::ok) return done(s);
  fn(userData);  // run at once (see cudaStreamAddCallback)
  return cudaSuccess;
}

// ---- stream capture and graphs: not simulated. Nothing is ever capturing. -------------

PYPOOL_SIM_EXPORT cudaError_t cudaStreamIsCapturing(cudaStream_t stream, enum cudaStreamCaptureStatus* pCaptureStatus) {
  sim::count_call("cudaStreamIsCapturing", false);
  if (pCaptureStatus == nullptr) return done(cudaErrorInvalidValue);
  int dev = 0;
  const sim::Status s = stream_device(stream, &dev);
  if (s != sim::Status::ok) return done(s);
  *pCaptureStatus = cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaStreamGetCaptureInfo(cudaStream_t stream,
                                     enum cudaStreamCaptureStatus* captureStatus_out,
                                     unsigned long long* id_out, cudaGraph_t* graph_out,
                                     const cudaGraphNode_t** dependencies_out,
                                     const cudaGraphEdgeData** edgeData_out,
                                     size_t* numDependencies_out) {
  sim::count_call("cudaStreamGetCaptureInfo", false);
  if (captureStatus_out == nullptr) return done(cudaErrorInvalidValue);
  int dev = 0;
  const sim::Status s = stream_device(stream, &dev);
  if (s != sim::Status::ok) return done(s);
  *captureStatus_out = cudaStreamCaptureStatusNone;
  if (id_out != nullptr) *id_out = 0;
  if (graph_out != nullptr) *graph_out = nullptr;
  if (dependencies_out != nullptr) *dependencies_out = nullptr;
  if (edgeData_out != nullptr) *edgeData_out = nullptr;
  if (numDependencies_out != nullptr) *numDependencies_out = 0;
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaThreadExchangeStreamCaptureMode(enum cudaStreamCaptureMode* mode) {
  sim::count_call("cudaThreadExchangeStreamCaptureMode", false);
  if (mode == nullptr || *mode < cudaStreamCaptureModeGlobal ||
      *mode > cudaStreamCaptureModeRelaxed) {
    return done(cudaErrorInvalidValue);
  }
  const cudaStreamCaptureMode old = tls_capture_mode;
  tls_capture_mode = *mode;
  *mode = old;
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaStreamBeginCapture(cudaStream_t stream, enum cudaStreamCaptureMode mode) {
  sim::count_call("cudaStreamBeginCapture", false);
  (void)stream; (void)mode;
  return not_simulated(__func__);
}

PYPOOL_SIM_EXPORT cudaError_t cudaStreamBeginCaptureToGraph(cudaStream_t stream, cudaGraph_t graph,
                                          const cudaGraphNode_t* dependencies,
                                          const cudaGraphEdgeData* dependencyData,
                                          size_t numDependencies, enum cudaStreamCaptureMode mode) {
  sim::count_call("cudaStreamBeginCaptureToGraph", false);
  (void)stream; (void)graph; (void)dependencies; (void)dependencyData; (void)numDependencies;
  (void)mode;
  return not_simulated(__func__);
}

PYPOOL_SIM_EXPORT cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* pGraph) {
  sim::count_call("cudaStreamEndCapture", false);
  (void)stream;
  if (pGraph != nullptr) *pGraph = nullptr;
  return not_simulated(__func__);
}

// No stream is ever capturing, which is the real runtime's "illegal state" for this call.
PYPOOL_SIM_EXPORT cudaError_t cudaStreamUpdateCaptureDependencies(cudaStream_t stream, cudaGraphNode_t* dependencies,
                                                const cudaGraphEdgeData* dependencyData,
                                                size_t numDependencies, unsigned int flags) {
  sim::count_call("cudaStreamUpdateCaptureDependencies", false);
  (void)stream; (void)dependencies; (void)dependencyData; (void)numDependencies; (void)flags;
  return done(cudaErrorIllegalState);
}

PYPOOL_SIM_EXPORT cudaError_t cudaGraphAddNode(cudaGraphNode_t* pGraphNode, cudaGraph_t graph,
                             const cudaGraphNode_t* pDependencies,
                             const cudaGraphEdgeData* dependencyData, size_t numDependencies,
                             struct cudaGraphNodeParams* nodeParams) {
  sim::count_call("cudaGraphAddNode", false);
  (void)pGraphNode; (void)graph; (void)pDependencies; (void)dependencyData;
  (void)numDependencies; (void)nodeParams;
  return not_simulated(__func__);
}

PYPOOL_SIM_EXPORT cudaError_t cudaGraphConditionalHandleCreate(cudaGraphConditionalHandle* pHandle_out,
                                             cudaGraph_t graph, unsigned int defaultLaunchValue,
                                             unsigned int flags) {
  sim::count_call("cudaGraphConditionalHandleCreate", false);
  (void)pHandle_out; (void)graph; (void)defaultLaunchValue; (void)flags;
  return not_simulated(__func__);
}

PYPOOL_SIM_EXPORT cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  sim::count_call("cudaGraphDestroy", false);
  (void)graph;
  return not_simulated(__func__);
}

PYPOOL_SIM_EXPORT cudaError_t cudaGraphExecDestroy(cudaGraphExec_t graphExec) {
  sim::count_call("cudaGraphExecDestroy", false);
  (void)graphExec;
  return not_simulated(__func__);
}

PYPOOL_SIM_EXPORT cudaError_t cudaGraphGetNodes(cudaGraph_t graph, cudaGraphNode_t* nodes, size_t* numNodes) {
  sim::count_call("cudaGraphGetNodes", false);
  (void)graph; (void)nodes; (void)numNodes;
  return not_simulated(__func__);
}

PYPOOL_SIM_EXPORT cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t* pGraphExec, cudaGraph_t graph,
                                          unsigned long long flags) {
  sim::count_call("cudaGraphInstantiateWithFlags", false);
  (void)pGraphExec; (void)graph; (void)flags;
  return not_simulated(__func__);
}

PYPOOL_SIM_EXPORT cudaError_t cudaGraphLaunch(cudaGraphExec_t graphExec, cudaStream_t stream) {
  sim::count_call("cudaGraphLaunch", false);
  (void)graphExec; (void)stream;
  return not_simulated(__func__);
}

PYPOOL_SIM_EXPORT cudaError_t cudaGraphNodeGetDependencies(cudaGraphNode_t node, cudaGraphNode_t* pDependencies,
                                         cudaGraphEdgeData* edgeData, size_t* pNumDependencies) {
  sim::count_call("cudaGraphNodeGetDependencies", false);
  (void)node; (void)pDependencies; (void)edgeData; (void)pNumDependencies;
  return not_simulated(__func__);
}

PYPOOL_SIM_EXPORT cudaError_t cudaGraphRetainUserObject(cudaGraph_t graph, cudaUserObject_t object,
                                      unsigned int count, unsigned int flags) {
  sim::count_call("cudaGraphRetainUserObject", false);
  (void)graph; (void)object; (void)count; (void)flags;
  return not_simulated(__func__);
}

PYPOOL_SIM_EXPORT cudaError_t cudaUserObjectCreate(cudaUserObject_t* object_out, void* ptr, cudaHostFn_t destroy,
                                 unsigned int initialRefcount, unsigned int flags) {
  sim::count_call("cudaUserObjectCreate", false);
  (void)object_out; (void)ptr; (void)destroy; (void)initialRefcount; (void)flags;
  return not_simulated(__func__);
}

PYPOOL_SIM_EXPORT cudaError_t cudaUserObjectRelease(cudaUserObject_t object, unsigned int count) {
  sim::count_call("cudaUserObjectRelease", false);
  (void)object; (void)count;
  return not_simulated(__func__);
}

// Graph memory: no graphs, so no graph memory. Reading the counters is harmless (all 0),
// and resetting the high watermarks (the only legal set) is a no-op.
PYPOOL_SIM_EXPORT cudaError_t cudaDeviceGetGraphMemAttribute(int device, enum cudaGraphMemAttributeType attr,
                                           void* value) {
  sim::count_call("cudaDeviceGetGraphMemAttribute", false);
  if (value == nullptr || attr < cudaGraphMemAttrUsedMemCurrent ||
      attr > cudaGraphMemAttrReservedMemHigh) {
    return done(cudaErrorInvalidValue);
  }
  if (!valid_device(device)) return done(cudaErrorInvalidDevice);
  *static_cast<std::uint64_t*>(value) = 0;
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaDeviceSetGraphMemAttribute(int device, enum cudaGraphMemAttributeType attr,
                                           void* value) {
  sim::count_call("cudaDeviceSetGraphMemAttribute", false);
  if (!valid_device(device)) return done(cudaErrorInvalidDevice);
  if (value == nullptr ||
      (attr != cudaGraphMemAttrUsedMemHigh && attr != cudaGraphMemAttrReservedMemHigh) ||
      *static_cast<std::uint64_t*>(value) != 0) {
    return done(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

// ---- events ---------------------------------------------------------------------------

static cudaError_t create_event(cudaEvent_t* event, unsigned flags) {
  if (event == nullptr ||
      (flags & ~static_cast<unsigned>(cudaEventBlockingSync | cudaEventDisableTiming |
                                      cudaEventInterprocess)) != 0 ||
      ((flags & cudaEventInterprocess) && !(flags & cudaEventDisableTiming))) {
    return done(cudaErrorInvalidValue);
  }
  sim::Event* e = nullptr;
  const sim::Status s = sim::event_create(flags, &e);
  if (s != sim::Status::ok) return done(s);
  *event = reinterpret_cast<cudaEvent_t>(e);
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaEventCreate(cudaEvent_t* event) {
  sim::count_call("cudaEventCreate", false);
  return create_event(event, cudaEventDefault);
}

PYPOOL_SIM_EXPORT cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  sim::count_call("cudaEventCreateWithFlags", false);
  return create_event(event, flags);
}

PYPOOL_SIM_EXPORT cudaError_t cudaEventDestroy(cudaEvent_t event) {
  sim::count_call("cudaEventDestroy", false);
  return done(sim::event_destroy(E(event)));
}

PYPOOL_SIM_EXPORT cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  sim::count_call("cudaEventRecord", false);
  return done(sim::event_record(E(event), S(stream)));
}

PYPOOL_SIM_EXPORT cudaError_t cudaEventRecordWithFlags(cudaEvent_t event, cudaStream_t stream, unsigned int flags) {
  sim::count_call("cudaEventRecordWithFlags", false);
  if ((flags & ~static_cast<unsigned>(cudaEventRecordExternal)) != 0) {
    return done(cudaErrorInvalidValue);
  }
  return done(sim::event_record(E(event), S(stream)));
}

PYPOOL_SIM_EXPORT cudaError_t cudaEventQuery(cudaEvent_t event) {
  sim::count_call("cudaEventQuery", false);
  return done(sim::event_query(E(event)));
}

PYPOOL_SIM_EXPORT cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  sim::count_call("cudaEventSynchronize", true);
  return done(sim::event_synchronize(E(event)));
}

PYPOOL_SIM_EXPORT cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  sim::count_call("cudaEventElapsedTime", false);
  if (ms == nullptr) return done(cudaErrorInvalidValue);
  return done(sim::event_elapsed_ms(E(start), E(end), ms));
}

// ---- IPC: not simulated (one process) -------------------------------------------------

PYPOOL_SIM_EXPORT cudaError_t cudaIpcGetMemHandle(cudaIpcMemHandle_t* handle, void* devPtr) {
  sim::count_call("cudaIpcGetMemHandle", false);
  (void)handle; (void)devPtr;
  return not_simulated(__func__);
}

PYPOOL_SIM_EXPORT cudaError_t cudaIpcOpenMemHandle(void** devPtr, cudaIpcMemHandle_t handle, unsigned int flags) {
  sim::count_call("cudaIpcOpenMemHandle", false);
  (void)handle; (void)flags;
  if (devPtr != nullptr) *devPtr = nullptr;
  return not_simulated(__func__);
}

PYPOOL_SIM_EXPORT cudaError_t cudaIpcCloseMemHandle(void* devPtr) {
  sim::count_call("cudaIpcCloseMemHandle", false);
  (void)devPtr;
  return not_simulated(__func__);
}

PYPOOL_SIM_EXPORT cudaError_t cudaIpcGetEventHandle(cudaIpcEventHandle_t* handle, cudaEvent_t event) {
  sim::count_call("cudaIpcGetEventHandle", false);
  (void)handle; (void)event;
  return not_simulated(__func__);
}

PYPOOL_SIM_EXPORT cudaError_t cudaIpcOpenEventHandle(cudaEvent_t* event, cudaIpcEventHandle_t handle) {
  sim::count_call("cudaIpcOpenEventHandle", false);
  (void)handle;
  if (event != nullptr) *event = nullptr;
  return not_simulated(__func__);
}

// ---- memory pools: the default pool of each device, backing cudaMallocAsync ----------

PYPOOL_SIM_EXPORT cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* memPool, int device) {
  sim::count_call("cudaDeviceGetDefaultMemPool", false);
  if (memPool == nullptr) return done(cudaErrorInvalidValue);
  if (!valid_device(device) || device >= kMaxDevices) return done(cudaErrorInvalidDevice);
  *memPool = pool_handle(device);
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t memPool, enum cudaMemPoolAttr attr, void* value) {
  sim::count_call("cudaMemPoolSetAttribute", false);
  MemPool* p = pool_of(memPool);
  if (p == nullptr || value == nullptr) return done(cudaErrorInvalidValue);
  switch (attr) {
    case cudaMemPoolReuseFollowEventDependencies:
      p->reuse_follow_event.store(*static_cast<int*>(value));
      return cudaSuccess;
    case cudaMemPoolReuseAllowOpportunistic:
      p->reuse_opportunistic.store(*static_cast<int*>(value));
      return cudaSuccess;
    case cudaMemPoolReuseAllowInternalDependencies:
      p->reuse_internal.store(*static_cast<int*>(value));
      return cudaSuccess;
    case cudaMemPoolAttrReleaseThreshold:
      p->release_threshold.store(*static_cast<std::uint64_t*>(value));
      return cudaSuccess;
    case cudaMemPoolAttrReservedMemHigh:
    case cudaMemPoolAttrUsedMemHigh: {
      // Only a reset (to 0) is legal; it restarts the watermark at the current usage.
      if (*static_cast<std::uint64_t*>(value) != 0) return done(cudaErrorInvalidValue);
      if (attr == cudaMemPoolAttrUsedMemHigh) {
        p->used_high.store(p->used.load());
      } else {
        p->reserved_high.store(p->reserved.load());
      }
      return cudaSuccess;
    }
    default:
      return done(cudaErrorInvalidValue);
  }
}

PYPOOL_SIM_EXPORT cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t memPool, enum cudaMemPoolAttr attr, void* value) {
  sim::count_call("cudaMemPoolGetAttribute", false);
  MemPool* p = pool_of(memPool);
  if (p == nullptr || value == nullptr) return done(cudaErrorInvalidValue);
  switch (attr) {
    case cudaMemPoolReuseFollowEventDependencies:
      *static_cast<int*>(value) = p->reuse_follow_event.load();
      return cudaSuccess;
    case cudaMemPoolReuseAllowOpportunistic:
      *static_cast<int*>(value) = p->reuse_opportunistic.load();
      return cudaSuccess;
    case cudaMemPoolReuseAllowInternalDependencies:
      *static_cast<int*>(value) = p->reuse_internal.load();
      return cudaSuccess;
    case cudaMemPoolAttrReleaseThreshold:
      *static_cast<std::uint64_t*>(value) = p->release_threshold.load();
      return cudaSuccess;
    case cudaMemPoolAttrReservedMemCurrent:
      *static_cast<std::uint64_t*>(value) = p->reserved.load();
      return cudaSuccess;
    case cudaMemPoolAttrUsedMemCurrent:
      *static_cast<std::uint64_t*>(value) = p->used.load();
      return cudaSuccess;
    case cudaMemPoolAttrReservedMemHigh:
      *static_cast<std::uint64_t*>(value) = p->reserved_high.load();
      return cudaSuccess;
    case cudaMemPoolAttrUsedMemHigh:
      *static_cast<std::uint64_t*>(value) = p->used_high.load();
      return cudaSuccess;
    default:
      return done(cudaErrorInvalidValue);
  }
}

PYPOOL_SIM_EXPORT cudaError_t cudaMemPoolSetAccess(cudaMemPool_t memPool, const struct cudaMemAccessDesc* descList,
                                 size_t count) {
  sim::count_call("cudaMemPoolSetAccess", false);
  if (pool_of(memPool) == nullptr || (count != 0 && descList == nullptr)) {
    return done(cudaErrorInvalidValue);
  }
  return cudaSuccess;  // every device can access every pool (all memory is host memory)
}

// Nothing is cached in the pool (cudaFreeAsync returns memory to the device at once).
PYPOOL_SIM_EXPORT cudaError_t cudaMemPoolTrimTo(cudaMemPool_t memPool, size_t minBytesToKeep) {
  sim::count_call("cudaMemPoolTrimTo", false);
  (void)minBytesToKeep;
  if (pool_of(memPool) == nullptr) return done(cudaErrorInvalidValue);
  return cudaSuccess;
}

// ---- kernels --------------------------------------------------------------------------

PYPOOL_SIM_EXPORT cudaError_t cudaLaunchKernel(const void* func, dim3 gridDim, dim3 blockDim, void** args,
                             size_t sharedMem, cudaStream_t stream) {
  sim::count_call("cudaLaunchKernel", false);
  (void)args;
  return launch(func, gridDim, blockDim, sharedMem, stream);
}

PYPOOL_SIM_EXPORT cudaError_t cudaLaunchCooperativeKernel(const void* func, dim3 gridDim, dim3 blockDim, void** args,
                                        size_t sharedMem, cudaStream_t stream) {
  sim::count_call("cudaLaunchCooperativeKernel", false);
  (void)args;
  return launch(func, gridDim, blockDim, sharedMem, stream);
}

PYPOOL_SIM_EXPORT cudaError_t cudaLaunchKernelExC(const cudaLaunchConfig_t* config, const void* func, void** args) {
  sim::count_call("cudaLaunchKernelExC", false);
  (void)args;
  if (config == nullptr || (config->numAttrs != 0 && config->attrs == nullptr)) {
    return done(cudaErrorInvalidValue);
  }
  return launch(func, config->gridDim, config->blockDim, config->dynamicSmemBytes,
                config->stream);
}

PYPOOL_SIM_EXPORT cudaError_t __cudaLaunchKernel(cudaKernel_t kernel, dim3 gridDim, dim3 blockDim, void** args,
                               size_t sharedMem, cudaStream_t stream) {
  sim::count_call("__cudaLaunchKernel", false);
  (void)args;
  return launch(kernel, gridDim, blockDim, sharedMem, stream);
}

PYPOOL_SIM_EXPORT unsigned __cudaPushCallConfiguration(dim3 gridDim, dim3 blockDim, size_t sharedMem,
                                     struct CUstream_st* stream) {
  sim::count_call("__cudaPushCallConfiguration", false);
  ConfigStack& st = tls_configs;
  if (st.depth >= static_cast<int>(sizeof st.items / sizeof st.items[0])) return 1;
  LaunchConfig& c = st.items[st.depth++];
  c.grid[0] = gridDim.x; c.grid[1] = gridDim.y; c.grid[2] = gridDim.z;
  c.block[0] = blockDim.x; c.block[1] = blockDim.y; c.block[2] = blockDim.z;
  c.shared_mem = sharedMem;
  c.stream = stream;
  return 0;
}

PYPOOL_SIM_EXPORT cudaError_t __cudaPopCallConfiguration(dim3* gridDim, dim3* blockDim, size_t* sharedMem,
                                       void* stream) {
  sim::count_call("__cudaPopCallConfiguration", false);
  ConfigStack& st = tls_configs;
  if (st.depth == 0) return done(cudaErrorMissingConfiguration);
  const LaunchConfig& c = st.items[--st.depth];
  if (gridDim != nullptr) *gridDim = dim3(c.grid[0], c.grid[1], c.grid[2]);
  if (blockDim != nullptr) *blockDim = dim3(c.block[0], c.block[1], c.block[2]);
  if (sharedMem != nullptr) *sharedMem = c.shared_mem;
  if (stream != nullptr) *static_cast<cudaStream_t*>(stream) = c.stream;
  return cudaSuccess;
}

// A kernel handle is the host stub's address: unique per kernel and never dereferenced.
PYPOOL_SIM_EXPORT cudaError_t __cudaGetKernel(cudaKernel_t* kernel, const void* hostFun) {
  sim::count_call("__cudaGetKernel", false);
  if (kernel == nullptr || hostFun == nullptr) return done(cudaErrorInvalidValue);
  *kernel = reinterpret_cast<cudaKernel_t>(const_cast<void*>(hostFun));
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaFuncGetAttributes(struct cudaFuncAttributes* attr, const void* func) {
  sim::count_call("cudaFuncGetAttributes", false);
  if (attr == nullptr) return done(cudaErrorInvalidValue);
  if (func == nullptr) return done(cudaErrorInvalidDeviceFunction);
  std::memset(attr, 0, sizeof *attr);
  attr->maxThreadsPerBlock = kMaxThreadsPerBlock;
  attr->numRegs = 32;
  attr->ptxVersion = kMajor * 10 + kMinor;
  attr->binaryVersion = kMajor * 10 + kMinor;
  attr->maxDynamicSharedSizeBytes = kSharedPerBlock;
  attr->preferredShmemCarveout = -1;
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaFuncSetAttribute(const void* func, enum cudaFuncAttribute attr, int value) {
  sim::count_call("cudaFuncSetAttribute", false);
  if (func == nullptr) return done(cudaErrorInvalidDeviceFunction);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize &&
      (value < 0 || value > kSharedPerBlockOptin)) {
    return done(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaKernelSetAttributeForDevice(cudaKernel_t kernel, enum cudaFuncAttribute attr,
                                            int value, int device) {
  sim::count_call("cudaKernelSetAttributeForDevice", false);
  if (kernel == nullptr) return done(cudaErrorInvalidDeviceFunction);
  if (!valid_device(device)) return done(cudaErrorInvalidDevice);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize &&
      (value < 0 || value > kSharedPerBlockOptin)) {
    return done(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

// What an SM could hold of a kernel with 32 registers per thread: limited by warps,
// registers, shared memory and the resident-block cap.
static cudaError_t occupancy(int* numBlocks, const void* func, int blockSize,
                             size_t dynamicSMemSize) {
  if (numBlocks == nullptr || blockSize <= 0) return done(cudaErrorInvalidValue);
  if (func == nullptr) return done(cudaErrorInvalidDeviceFunction);
  if (blockSize > kMaxThreadsPerBlock ||
      dynamicSMemSize > static_cast<size_t>(kSharedPerBlockOptin)) {
    *numBlocks = 0;
    return cudaSuccess;
  }
  const int warps = (blockSize + kWarpSize - 1) / kWarpSize;
  int blocks = std::min(kMaxBlocksPerSm, (kMaxThreadsPerSm / kWarpSize) / warps);
  blocks = std::min(blocks, kRegsPerSm / (32 * kWarpSize * warps));
  const std::size_t smem_per_block = dynamicSMemSize + kReservedSharedPerBlock;
  blocks = std::min<int>(blocks, static_cast<int>(kSharedPerSm / smem_per_block));
  *numBlocks = std::max(blocks, 0);
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* numBlocks, const void* func,
                                                          int blockSize, size_t dynamicSMemSize) {
  sim::count_call("cudaOccupancyMaxActiveBlocksPerMultiprocessor", false);
  return occupancy(numBlocks, func, blockSize, dynamicSMemSize);
}

PYPOOL_SIM_EXPORT cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(int* numBlocks, const void* func,
                                                                   int blockSize,
                                                                   size_t dynamicSMemSize,
                                                                   unsigned int flags) {
  sim::count_call("cudaOccupancyMaxActiveBlocksPerMultiprocessorWithFlags", false);
  if ((flags & ~static_cast<unsigned>(cudaOccupancyDisableCachingOverride)) != 0) {
    return done(cudaErrorInvalidValue);
  }
  return occupancy(numBlocks, func, blockSize, dynamicSMemSize);
}

// Libraries (runtime-compiled code, e.g. torch's jiterator): loading keeps nothing but
// handles; a kernel handle is a distinct non-null pointer owned by its library.
PYPOOL_SIM_EXPORT cudaError_t cudaLibraryLoadData(cudaLibrary_t* library, const void* code,
                                enum cudaJitOption* jitOptions, void** jitOptionsValues,
                                unsigned int numJitOptions,
                                enum cudaLibraryOption* libraryOptions,
                                void** libraryOptionValues, unsigned int numLibraryOptions) {
  sim::count_call("cudaLibraryLoadData", false);
  (void)jitOptions; (void)jitOptionsValues; (void)numJitOptions;
  (void)libraryOptions; (void)libraryOptionValues; (void)numLibraryOptions;
  if (library == nullptr || code == nullptr) return done(cudaErrorInvalidValue);
  try {
    auto lib = std::make_unique<Library>();
    const void* key = lib.get();
    std::lock_guard<std::mutex> g(state().lib_mu);
    state().libraries.emplace(key, std::move(lib));
    *library = reinterpret_cast<cudaLibrary_t>(const_cast<void*>(key));
  } catch (...) {
    return done(cudaErrorMemoryAllocation);
  }
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaLibraryGetKernel(cudaKernel_t* pKernel, cudaLibrary_t library, const char* name) {
  sim::count_call("cudaLibraryGetKernel", false);
  if (pKernel == nullptr || name == nullptr) return done(cudaErrorInvalidValue);
  try {
    std::lock_guard<std::mutex> g(state().lib_mu);
    auto it = state().libraries.find(library);
    if (it == state().libraries.end()) return done(cudaErrorInvalidResourceHandle);
    it->second->kernels.emplace_back(new KernelSlot{0});
    *pKernel = reinterpret_cast<cudaKernel_t>(it->second->kernels.back().get());
  } catch (...) {
    return done(cudaErrorMemoryAllocation);
  }
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaLibraryUnload(cudaLibrary_t library) {
  sim::count_call("cudaLibraryUnload", false);
  std::unique_ptr<Library> doomed;
  {
    std::lock_guard<std::mutex> g(state().lib_mu);
    auto it = state().libraries.find(library);
    if (it == state().libraries.end()) return done(cudaErrorInvalidResourceHandle);
    doomed = std::move(it->second);
    state().libraries.erase(it);
  }
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaProfilerStart(void) {
  sim::count_call("cudaProfilerStart", false);
  return cudaSuccess;
}

PYPOOL_SIM_EXPORT cudaError_t cudaProfilerStop(void) {
  sim::count_call("cudaProfilerStop", false);
  return cudaSuccess;
}

// ---- module registration (nvcc-generated static initializers) -------------------------
// These run while libtorch_cuda.so is being loaded, for thousands of kernels: keep them
// cheap and never fail. Kernels are not recorded (a launch needs only the host stub's
// address); device variables get a zeroed host buffer each.

PYPOOL_SIM_EXPORT void** __cudaRegisterFatBinary(void* fatCubin) {
  sim::count_call("__cudaRegisterFatBinary", false);
  Module* m = new (std::nothrow) Module{fatCubin, g_modules.load(std::memory_order_relaxed)};
  if (m == nullptr) {
    static void* fallback = nullptr;  // still non-null: registration cannot fail
    return &fallback;
  }
  // A lock-free push: registration runs in static initializers, thousands of times.
  while (!g_modules.compare_exchange_weak(m->next, m, std::memory_order_release, std::memory_order_relaxed)) {
  }
  return &m->fat_cubin;
}

PYPOOL_SIM_EXPORT void __cudaRegisterFatBinaryEnd(void** fatCubinHandle) {
  sim::count_call("__cudaRegisterFatBinaryEnd", false);
  (void)fatCubinHandle;
}

PYPOOL_SIM_EXPORT void __cudaUnregisterFatBinary(void** fatCubinHandle) {
  sim::count_call("__cudaUnregisterFatBinary", false);
  if (fatCubinHandle == nullptr) return;
  // Forget the module's variables: after a dlclose their host addresses may be reused.
  std::lock_guard<std::mutex> g(state().var_mu);
  auto& vars = state().vars;
  for (auto it = vars.begin(); it != vars.end();) {
    if (it->second.module == fatCubinHandle) {
      std::free(it->second.buffer);
      it = vars.erase(it);
    } else {
      ++it;
    }
  }
  // The Module itself is leaked: nvcc's atexit handler may still hold the handle, and it
  // is one pointer per loaded binary.
}

PYPOOL_SIM_EXPORT void __cudaRegisterFunction(void** fatCubinHandle, const char* hostFun, char* deviceFun,
                            const char* deviceName, int thread_limit, uint3* tid, uint3* bid,
                            dim3* bDim, dim3* gDim, int* wSize) {
  sim::count_call("__cudaRegisterFunction", false);
  (void)fatCubinHandle; (void)hostFun; (void)deviceFun; (void)deviceName;
  (void)thread_limit; (void)tid; (void)bid; (void)bDim; (void)gDim; (void)wSize;
}

PYPOOL_SIM_EXPORT void __cudaRegisterVar(void** fatCubinHandle, char* hostVar, char* deviceAddress,
                       const char* deviceName, int ext, size_t size, int constant, int global) {
  sim::count_call("__cudaRegisterVar", false);
  (void)deviceAddress; (void)deviceName; (void)ext; (void)constant; (void)global;
  if (hostVar == nullptr) return;
  void* buffer = std::calloc(size != 0 ? size : 1, 1);
  if (buffer == nullptr) return;  // cannot fail here; cudaGetSymbolAddress will
  try {
    std::lock_guard<std::mutex> g(state().var_mu);
    auto r = state().vars.emplace(hostVar, Var{fatCubinHandle, buffer, size});
    if (!r.second) std::free(buffer);  // registered twice: keep the first
  } catch (...) {
    std::free(buffer);
  }
}

// Managed variables: the host shadow becomes a pointer to the variable's storage.
PYPOOL_SIM_EXPORT void __cudaRegisterManagedVar(void** fatCubinHandle, void** hostVarPtrAddress, char* deviceAddress,
                              const char* deviceName, int ext, size_t size, int constant,
                              int global) {
  sim::count_call("__cudaRegisterManagedVar", false);
  (void)deviceAddress; (void)deviceName; (void)ext; (void)constant; (void)global;
  if (hostVarPtrAddress == nullptr) return;
  void* buffer = std::calloc(size != 0 ? size : 1, 1);
  if (buffer == nullptr) return;
  try {
    std::lock_guard<std::mutex> g(state().var_mu);
    auto r = state().vars.emplace(hostVarPtrAddress, Var{fatCubinHandle, buffer, size});
    if (!r.second) {
      std::free(buffer);
      buffer = r.first->second.buffer;
    }
  } catch (...) {
    std::free(buffer);
    return;
  }
  *hostVarPtrAddress = buffer;
}

// Called before the first access to a module's managed variables; true = initialized.
PYPOOL_SIM_EXPORT char __cudaInitModule(void** fatCubinHandle) {
  sim::count_call("__cudaInitModule", false);
  (void)fatCubinHandle;
  return 1;
}

}  // extern "C"
